"""Does a commit exist in the app repository? Asked by `ferry release start` before anything starts.

A release of a SHA nobody pushed would start a branch coordinator and a release that can only fail in CI,
minutes later, on another machine. The CLI asks the repository ferry.yaml names (`repos.app.url`) instead:
- a local repository (a path or file:// URL, as in the sandbox): `git cat-file -e SHA^{commit}` in it;
- a remote: a fetch of just that commit (depth 1, no trees or blobs) into a throwaway bare repository, which
  git servers answer for any reachable commit (protocol v2) and refuse for an unknown one.
The answer is "there", "not there" (exit 2) or "cannot tell" (the remote is unreachable: exit 3).
"""

from __future__ import annotations

import re
import tempfile
from enum import Enum
from pathlib import Path

import git

from common.config import Repo
from starters.common import UNREACHABLE, USAGE, CommandError

# As the workers' git (activities/gitrepo.py): never wait for a password, stable English messages.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
FETCH_TIMEOUT = 60.0
# What git servers (and git's own upload-pack) answer when the wanted object is not in the repository.
_MISSING = re.compile(r"not our ref|unadvertised object|couldn't find remote ref|no such remote ref", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class Presence(Enum):
    """What the repository says about a commit."""

    THERE = "there"
    MISSING = "missing"


def local_path(url: str) -> Path | None:
    """The folder of a repository given as a local path or file:// URL; None for a remote URL."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url or ":" in url.split("/", 1)[0]:
        return None  # https://, ssh://, or git's scp-like [user@]host:path (a colon before any slash)
    return Path(url).expanduser()


def commit_presence(url: str, commit: str) -> Presence:
    """Whether `commit` (a full SHA, already checked) is a commit of the repository at `url`.

    Raises CommandError (UNREACHABLE) when the repository cannot be read or reached to tell.
    """
    path = local_path(url)
    if path is not None:
        return _local_presence(path, url, commit)
    return _remote_presence(url, commit)


def _local_presence(path: Path, url: str, commit: str) -> Presence:
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise CommandError(
            f"repos.app.url {url} is not a git repository on this machine; cannot check commit {commit}", USAGE
        ) from None
    try:
        repo.git.cat_file("-e", f"{commit}^{{commit}}", env=GIT_ENV)
        return Presence.THERE
    except git.GitCommandError:
        return Presence.MISSING
    finally:
        repo.close()


def _remote_presence(url: str, commit: str) -> Presence:
    with tempfile.TemporaryDirectory(prefix="ferry-commit-") as tmp:
        probe = git.Repo.init(tmp, bare=True)
        try:
            probe.git.remote("add", "--", "origin", url)  # "--": a URL is never read as an option
            return _fetched_presence(probe, url, commit)
        finally:
            probe.close()


def _fetched_presence(probe: git.Repo, url: str, commit: str) -> Presence:
    try:
        probe.git.fetch(
            "--quiet",
            "--no-tags",
            "--depth=1",
            "--filter=tree:0",
            "origin",
            commit,
            env=GIT_ENV,
            kill_after_timeout=FETCH_TIMEOUT,
        )
    except git.GitCommandError as e:
        stderr = str(e.stderr or "")
        if _MISSING.search(stderr):
            return Presence.MISSING
        shown = _USERINFO.sub("***@", stderr.strip().replace("\n", " "))[:300]
        raise CommandError(
            f"cannot check that commit {commit} is in {url} (repos.app.url): git fetch failed: {shown}; "
            "nothing was started",
            UNREACHABLE,
        ) from None
    try:
        probe.git.cat_file("-e", f"{commit}^{{commit}}", env=GIT_ENV)
        return Presence.THERE
    except git.GitCommandError:
        return Presence.MISSING  # the id names a tree or a blob, not a commit


def require_commits(repo: Repo, commits: dict[str, str]) -> None:
    """Exit 2 naming the argument, the commit and the repository for the first of `commits` not in `repo`.

    `commits` maps the argument that gave each SHA (e.g. "--commit", "--base") to the SHA.
    """
    for argument, commit in commits.items():
        if commit_presence(repo.url, commit) is Presence.MISSING:
            raise CommandError(
                f"{argument} {commit} is not a commit of the app repository {repo.short_name} ({repo.url}): push "
                "it first or check the SHA; nothing was started",
                USAGE,
            )
