"""Checks on names and paths that come from people (ferry.yaml, CLI arguments) before Ferry acts on them.

Each check returns None when the value is fine, else the reason, worded to follow the value it refuses
("'x' is not ..."): ferry.yaml validation and the CLI prefix it with the key or argument that held it.
What is valid is decided by the system that will use the value: the OCI distribution spec for image
repository names, git itself (`git check-ref-format --branch`) for branch names.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import PurePosixPath

# The distribution spec's <name> grammar (shared/specs/oci/distribution-spec.md, "Pulling manifests").
OCI_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
OCI_NAME = re.compile(rf"{OCI_COMPONENT}(/{OCI_COMPONENT})*")
OCI_COMPONENT_RE = re.compile(OCI_COMPONENT)
# "Many clients impose a limit of 255 characters on ... hostname (and optional port), /, and <name>".
MAX_IMAGE_REFERENCE = 255
OCI_RULES = "lowercase letters, digits, separators . _ __ -, path components joined by /"

# Longer names are no use in a workflow id or a UI, and git keeps each ref as a file (255 bytes per name).
MAX_BRANCH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: str) -> str:
    """The value as a message shows it: quoted, control characters escaped, long ones cut."""
    text = repr(value) if _CONTROL.search(value) else f"'{value}'"
    return text if len(text) <= 120 else f"{text[:100]}...' ({len(value)} characters)"


def oci_repository_problem(name: str) -> str | None:
    """Why `name` cannot be an OCI repository name (e.g. `api`, `team/api`), or None."""
    if not isinstance(name, str) or not OCI_NAME.fullmatch(name):
        return f"{_shown(str(name))} is not a valid OCI repository name ({OCI_RULES})"
    return None


def oci_component_problem(name: str) -> str | None:
    """Why `name` cannot be one path component of a repository name (a Harbor project), or None."""
    if not isinstance(name, str) or not OCI_COMPONENT_RE.fullmatch(name):
        return (
            f"{_shown(str(name))} is not a valid Harbor project name (one OCI path component: lowercase letters, "
            "digits, separators . _ __ -)"
        )
    return None


def image_reference_problem(registry: str, project: str, image: str) -> str | None:
    """Why `{registry}/{project}/{image}`, the name a service's image is pushed and pinned as, is refused."""
    problem = oci_repository_problem(f"{project}/{image}")
    if problem:
        return problem
    reference = f"{registry}/{project}/{image}"
    if len(reference) > MAX_IMAGE_REFERENCE:
        return (
            f"'{reference[:60]}...' is {len(reference)} characters long; registry clients refuse image names longer "
            f"than {MAX_IMAGE_REFERENCE} (registry, '/', repository)"
        )
    return None


def repo_path_problem(path: str, repo: str) -> str | None:
    """Why `path` (a folder or glob relative to the root of `repo`) could point outside it, or None.

    A path is taken as git takes it, '/'-separated from the repository root: it must be relative, must have no
    `..` component (however it would resolve), and no control character (NUL ends it for C, a newline forges
    lines in commit messages and logs).
    """
    if not isinstance(path, str) or not path.strip():
        return "an empty path is not a path inside the repository"
    if _CONTROL.search(path):
        return f"{_shown(path)} contains a control character (NUL, newline, ...)"
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", path):
        return f"{_shown(path)} must be relative to the root of the {repo}, not absolute"
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if ".." in parts:
        return f"{_shown(path)} must stay inside the {repo}: no '..' component"
    return None


def local_path_problem(path: str) -> str | None:
    """Why `path` (a file or folder on the worker) cannot be passed on to a tool, or None."""
    if not isinstance(path, str) or not path.strip():
        return "an empty path"
    if _CONTROL.search(path):
        return f"{_shown(path)} contains a control character (NUL, newline, ...)"
    return None


def branch_problem(name: str) -> str | None:
    """Why `name` is not a valid git branch name, by git's own rules (`git check-ref-format --branch`), or None."""
    if not isinstance(name, str) or not name:
        return "an empty name is not a valid git branch name"
    if _CONTROL.search(name):
        return f"{_shown(name)} is not a valid git branch name: it contains a control character"
    if len(name) > MAX_BRANCH:
        return f"{_shown(name)} is not a valid git branch name: longer than {MAX_BRANCH} characters"
    # git expands `@` and `@{-1}` inside a repository, and would read a leading '-' as an option: refused here.
    if name == "@" or name.startswith("-") or "@{" in name:
        return f"{_shown(name)} is not a valid git branch name (see `git check-ref-format --help`)"
    if not _git_accepts_branch(name):
        return f"{_shown(name)} is not a valid git branch name (see `git check-ref-format --help`)"
    return None


@functools.lru_cache(maxsize=256)
def _git_accepts_branch(name: str) -> bool:
    """git's verdict; the same rules in Python where git is not installed (a config-only host)."""
    git = shutil.which("git")
    if git is None:
        return _ref_rules_accept(name)
    try:
        done = subprocess.run(
            [git, "check-ref-format", "--branch", name],
            capture_output=True,
            timeout=10,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": "/", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return _ref_rules_accept(name)
    return done.returncode == 0


def _ref_rules_accept(name: str) -> bool:
    """git-check-ref-format(1)'s rules for a branch name, for hosts without git."""
    if name in ("HEAD", "@") or name.startswith("-") or name.endswith((".", "/")) or name.startswith("/"):
        return False
    if ".." in name or "//" in name or "@{" in name or re.search(r"[\x00-\x20\x7f~^:?*\[\\]", name):
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))
