"""Local bare git repositories for the sandbox: the example app monorepo and its GitOps repo.

The sandbox and the tests need real remotes (Ferry clones, fetches and pushes them exactly as it would a
GitLab server), so these helpers create bare repos from the templates in the source tree and make commits
in them the way a developer would: clone, edit, commit, push.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import git

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache", ".ruff_cache")
_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def _identity(name: str, email: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def _commit_all(work: git.Repo, message: str, author: tuple[str, str]) -> str:
    work.git.add("-A")
    work.git(c="commit.gpgsign=false").commit(
        "-q", "--no-verify", "--allow-empty", "-m", message, env={**_ENV, **_identity(*author)}
    )
    return work.head.commit.hexsha


def _create_bare(path: Path, template: Path, message: str) -> None:
    """A bare repo at `path` whose main branch has one commit with the template's files; atomic."""
    if not template.is_dir():
        raise FileNotFoundError(f"template {template} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        bare = staging / "bare.git"
        git.Repo.init(bare, bare=True, initial_branch="main")
        work_dir = staging / "work"
        shutil.copytree(template, work_dir, ignore=_IGNORED)
        work = git.Repo.init(work_dir, initial_branch="main")
        _commit_all(work, message, ("Ferry Sandbox", "sandbox@ferry.localhost"))
        work.git.push("-q", str(bare), "main:refs/heads/main", env=_ENV)
        work.close()
        # Built aside and renamed into place: a crash never leaves a half-made repo that looks "existing".
        os.replace(bare, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def create_repos(root: Path, gitops_template: Path, app_template: Path) -> tuple[Path, Path]:
    """Create `root/app.git` and `root/gitops.git` from the templates; existing repos are left as they are.

    Returns (app, gitops) paths, usable as repo URLs in ferry.yaml.
    """
    root = Path(root)
    app, gitops = root / "app.git", root / "gitops.git"
    for path, template, message in (
        (app, app_template, "Example monorepo"),
        (gitops, gitops_template, "GitOps repo: base manifests and environments"),
    ):
        if not (path / "HEAD").is_file():
            _create_bare(path, Path(template), message)
    return app, gitops


def commit_change(
    repo: Path,
    files: Mapping[str, str | None],
    message: str,
    branch: str = "main",
    author: tuple[str, str] = ("Dev", "dev@example.com"),
    *,
    start_point: str | None = None,
) -> str:
    """Clone `repo`, write `files` (None deletes one), commit on `branch`, push, and return the new SHA.

    A branch that does not exist yet starts at `start_point` (default: the repo's HEAD). The commit is made
    even when the files do not change anything, so every call yields a new commit.
    """
    with tempfile.TemporaryDirectory(prefix="ferry-commit-") as tmp:
        work = git.Repo.clone_from(str(repo), tmp, env=_ENV)
        try:
            remote_branches = {ref.remote_head for ref in work.remotes.origin.refs}
            if branch in remote_branches:
                work.git.checkout("-q", "-B", branch, f"origin/{branch}")
            else:
                work.git.checkout("-q", "-B", branch, start_point or "HEAD")
            for rel, content in files.items():
                target = Path(tmp) / rel
                if content is None:
                    target.unlink(missing_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(content)
            sha = _commit_all(work, message, author)
            work.git.push("-q", "origin", f"HEAD:refs/heads/{branch}", env=_ENV)
            return sha
        finally:
            work.close()


def read_file_at(repo: Path, rev: str, path: str) -> str:
    """The content of `path` at `rev` in `repo` (bare or not)."""
    return git.Git(str(repo)).show(f"{rev}:{path}", strip_newline_in_stdout=False)


def log(repo: Path, path: str | None = None, rev: str = "HEAD") -> list[tuple[str, str]]:
    """(sha, full message) of the commits reachable from `rev`, newest first, optionally touching `path`."""
    args = [rev, "--format=%H%x00%B%x1e"]
    if path is not None:
        args += ["--", path]
    out = git.Git(str(repo)).log(*args)
    entries = []
    for record in out.split("\x1e"):
        record = record.strip("\n")
        if record:
            sha, _, message = record.partition("\x00")
            entries.append((sha.strip(), message.strip()))
    return entries
