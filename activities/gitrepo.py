"""A worker-local cache of git clones that activities share.

Cloning a monorepo on every activity call is slow and hammers the git server, so a worker keeps one clone
per remote URL under its workdir: cloned once, fetched afterwards. Git is blocking, so every call runs in a
thread; one lock per URL serialises the activities that use the same clone (a GitOps move rewrites the
worktree and its branch, so nothing else may use that clone meanwhile). Git failures become classified
ApplicationErrors: an unreachable remote is retryable, an unknown commit is fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import git

from activities.errors import AUTH_FAILED, BAD_COMMIT, BAD_REQUEST, fatal, retryable
from activities.waiting import heartbeating

T = TypeVar("T")

# Never let git wait for a password on the worker's terminal: fail and report instead.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}

_SHA = re.compile(r"^[0-9a-fA-F]{4,40}$")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_AUTH_HINTS = ("authentication failed", "permission denied", "could not read username", "access denied")

# A network git command that hangs would hold the clone's lock for good: kill it and let Temporal retry.
DEFAULT_TIMEOUT = 300.0

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
"""The id of git's empty tree: the base of a root commit, against which every file is new."""


def redact(text: str) -> str:
    """Drop user:token@ from URLs so that messages and logs never carry a credential."""
    return _USERINFO.sub("***@", text)


def classify_git_error(err: git.GitCommandError, url: str, what: str) -> Exception:
    """Turn a failed git command into the right ApplicationError; the message names the remote, not secrets."""
    stderr = redact(str(err.stderr or "").strip().replace("\n", " "))[:400]
    where = f"git: {what} ({redact(url)})"
    if any(h in stderr.lower() for h in _AUTH_HINTS):
        return fatal(
            f"{where}: the git server refused the credential: {stderr}; check the deploy key or token of this "
            "worker and its access to the repository",
            AUTH_FAILED,
        )
    # Everything else (host down, timeouts, a path not there yet, a lock held by a crashed process) may be
    # transient, so Temporal retries within the activity's retry policy.
    return retryable(f"{where}: git exited {err.status}: {stderr}")


def check_sha(commit: str, url: str) -> str:
    """Reject anything that is not a hex commit id before it reaches a git command line."""
    if not _SHA.match(commit or ""):
        raise fatal(
            f"commit {commit!r} is not in {redact(url)}: it is not a hex commit SHA; pass the full SHA",
            BAD_COMMIT,
        )
    return commit.lower()


def check_branch(branch: str) -> str:
    """Reject branch names that git would take as options or that are not valid ref names."""
    if not branch or branch.startswith("-") or not re.match(r"^[\w./-]+$", branch) or ".." in branch:
        raise fatal(f"branch {branch!r} is not a valid git branch name", BAD_REQUEST)
    return branch


def resolve_commit(repo: git.Repo, commit: str, url: str) -> str:
    """The full SHA of `commit` in this clone, fetching it by id if no branch holds it; else BAD_COMMIT."""
    short = check_sha(commit, url)

    def lookup() -> str | None:
        try:
            return repo.git.rev_parse("--verify", "--quiet", f"{short}^{{commit}}").strip() or None
        except git.GitCommandError:
            return None

    found = lookup()
    if found is None and len(short) == 40:
        # A commit on a ref that is not a branch (a merge request ref, say): servers with protocol v2 hand
        # out any reachable object by id. Failing here just means the commit really is not there.
        with contextlib.suppress(git.GitCommandError):
            repo.git.fetch("origin", short, env=GIT_ENV, kill_after_timeout=DEFAULT_TIMEOUT)
        found = lookup()
    if found is None:
        raise fatal(f"commit {commit} is not in {redact(url)}: push it first or check the SHA", BAD_COMMIT)
    return found


def fetch(repo: git.Repo, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Update every remote-tracking branch (pruning deleted ones) from origin; killed after `timeout` s."""
    try:
        repo.git.fetch(
            "--prune",
            "--force",
            "origin",
            "+refs/heads/*:refs/remotes/origin/*",
            env=GIT_ENV,
            kill_after_timeout=timeout,
        )
    except git.GitCommandError as e:
        raise classify_git_error(e, url, "fetch") from None


class GitWorkspace:
    """One clone per remote URL under `root`, shared by the activities of one worker process.

    `run(url, fn)` makes sure the clone exists and is fetched, then calls `fn(repo)` in a thread while
    holding that URL's lock. The lock is a threading lock taken inside the thread (so it also holds between
    event loops and against synchronous callers) plus a file lock against other processes on the machine.
    """

    def __init__(self, root: Path, *, timeout: float = DEFAULT_TIMEOUT, heartbeat_every: float = 5.0) -> None:
        self.root = Path(root).expanduser()
        self.timeout = timeout
        self._heartbeat_every = heartbeat_every
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path_for(self, url: str) -> Path:
        """Where the clone of `url` lives: a readable name plus a hash, so two URLs never share a clone."""
        tail = re.sub(r"[^A-Za-z0-9._-]+", "-", redact(url).rstrip("/").split("/")[-1]).strip("-.") or "repo"
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        return self.root / f"{tail.removesuffix('.git')}-{digest}"

    def _lock(self, url: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(url, threading.Lock())

    async def run(self, url: str, fn: Callable[[git.Repo], T], *, what: str = "git", do_fetch: bool = True) -> T:
        """Clone or fetch `url`, then run `fn(repo)` in a thread under the URL's lock; heartbeats meanwhile."""
        async with heartbeating(what, every=self._heartbeat_every):
            return await asyncio.to_thread(self._run_locked, url, fn, what, do_fetch)

    @contextlib.contextmanager
    def _file_lock(self, url: str) -> Iterator[None]:
        # Two worker processes on one machine may share the workdir (the sandbox runs both): flock keeps
        # them off each other's clone as the thread lock does within one process.
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(url)
        with open(path.parent / f"{path.name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run_locked(self, url: str, fn: Callable[[git.Repo], T], what: str, do_fetch: bool) -> T:
        with self._lock(url), self._file_lock(url):
            repo = self._open(url, do_fetch)
            try:
                return fn(repo)
            except git.GitCommandError as e:
                raise classify_git_error(e, url, what) from None
            finally:
                repo.close()

    def _open(self, url: str, do_fetch: bool) -> git.Repo:
        path = self.path_for(url)
        if (path / ".git").is_dir():
            try:
                repo = git.Repo(path)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError):
                shutil.rmtree(path, ignore_errors=True)
            else:
                if do_fetch:
                    fetch(repo, url, self.timeout)
                return repo
        elif path.exists():
            # Left over from a crash before the rename below: not a clone, safe to drop.
            shutil.rmtree(path, ignore_errors=True)
        return self._clone(url, path)

    def _clone(self, url: str, path: Path) -> git.Repo:
        self.root.mkdir(parents=True, exist_ok=True)
        # Clone next to the final place and rename: a crash mid-clone never leaves a half clone in the cache.
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=self.root))
        try:
            # No checkout: analysis reads objects only; a GitOps move checks its branch out itself.
            git.Git().clone(
                "--quiet", "--no-checkout", "--", url, str(tmp), env=GIT_ENV, kill_after_timeout=self.timeout
            )
            os.replace(tmp, path)
        except git.GitCommandError as e:
            raise classify_git_error(e, url, "clone") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return git.Repo(path)
