"""Change analysis: which services does a commit touch, compared to what is already released?

A monorepo release should build and deploy only what changed. The base of the comparison is the app
commit last released to the first environment (read from the `Ferry-Commit:` trailer that `gitops.move`
writes), so a release picks up everything that changed since the last one even if several commits landed
in between; without such a release the base is the branch point or the parent commit.

Which engine maps the changed files to services is the input's `engine` (activities/change_engines.py):
`paths` (ferry.yaml's globs and depends_on, plus services.yaml / ferry-package.yaml manifests when
`package_manifests`), `bazel` (bazel query on a checkout of the commit), or `auto` (bazel when the commit
has a Bazel workspace and the worker has bazel; if Bazel then fails, the path graph answers and a warning
is logged, since the path graph is what ferry.yaml declares anyway).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from datetime import UTC
from pathlib import Path

import git
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.bazel import WORKSPACE_FILES, BazelEngine, BazelRunner
from activities.change_engines import (
    PACKAGE_MANIFEST,
    SERVICES_FILE,
    ChangeEngine,
    ManifestError,
    Package,
    PathGraphEngine,
    glob_match,
    parse_package_manifest,
    parse_services_file,
)
from activities.errors import BAD_COMMIT, BAD_REQUEST, fatal, retryable
from activities.gitrepo import (
    DEFAULT_TIMEOUT,
    EMPTY_TREE,
    GIT_ENV,
    GitWorkspace,
    check_branch,
    resolve_commit,
)
from workflows.types import AnalyzeChangesInput, ChangeSet, ServiceSpec

__all__ = ["ChangeActivities", "affected_services", "changed_files", "glob_match", "released_commits"]

log = logging.getLogger(__name__)

TRAILER = "Ferry-Commit"
# How far back the GitOps history is searched for a release whose app commit still exists.
MAX_RELEASES_SCANNED = 50
_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{40})")
ENGINES = ("auto", "paths", "bazel")


# --- ownership ---


def affected_services(services: list[ServiceSpec], changed: list[str]) -> tuple[list[str], dict[str, str]]:
    """The deployable services affected by `changed` files, sorted, and a human reason for each.

    A service or library is affected when one of its globs matches a changed file; then every service that
    depends on an affected one, transitively. Libraries propagate but are not deployable, so only
    kind == "service" names are returned. No global paths: see PathGraphEngine for those.
    """
    return PathGraphEngine.from_services(services, global_paths=()).affected(changed)


# --- git ---


def released_commits(repo: git.Repo, branch: str, path: str) -> list[str]:
    """App commits named by `Ferry-Commit:` trailers of GitOps commits touching `path`, newest first.

    A GitOps commit that was reverted later (`git revert` writes "This reverts commit <sha>.") no longer
    describes what is deployed, so its trailer is skipped: the release before it is the base again.
    """
    ref = f"origin/{check_branch(branch)}"
    try:
        repo.git.rev_parse("--verify", "--quiet", ref)
    except git.GitCommandError:
        return []  # an empty GitOps repo: nothing released yet
    out = repo.git.log(
        ref,
        f"--max-count={MAX_RELEASES_SCANNED}",
        f"--format=%H%x00%(trailers:key={TRAILER},valueonly,separator=%x2C)%x00%B%x1e",
        "--",
        path.strip("/") or ".",
    )
    shas: list[str] = []
    reverted: set[str] = set()
    for record in out.split("\x1e"):
        fields = record.strip().split("\x00")
        if len(fields) != 3:
            continue
        gitops_sha, trailer, body = fields
        if gitops_sha in reverted:
            continue  # and what it reverted itself counts again (a revert of a revert)
        reverted.update(_REVERTS.findall(body))
        value = trailer.strip().split(",")[-1].strip()  # several trailers: the last one wins
        if re.fullmatch(r"[0-9a-f]{40}", value):
            shas.append(value)
    return shas


def _merge_base(repo: git.Repo, a: str, b: str) -> str | None:
    try:
        return repo.git.merge_base(a, b).strip() or None
    except git.GitCommandError:
        return None  # unrelated histories


def _choose_base(repo: git.Repo, inp: AnalyzeChangesInput, commit: str, released: list[str]) -> str:
    url = inp.repo_url
    if inp.base_commit:
        given = resolve_commit(repo, inp.base_commit, url)
        return _merge_base(repo, given, commit) or given
    for candidate in released:
        if candidate == commit:
            # This very commit was released before (a reset or re-run): compare with the release before it,
            # so the analysis answers the same however often it runs.
            continue
        try:
            found = resolve_commit(repo, candidate, url)
        except ApplicationError as e:  # history rewritten since that release: look further back
            if e.type != BAD_COMMIT:
                raise
            log.warning("released commit %s is not in %s any more; trying the one before", candidate[:12], url)
            continue
        base = _merge_base(repo, found, commit)
        if base is not None:
            return base
    if inp.branch != inp.default_branch:
        ref = f"origin/{check_branch(inp.default_branch)}"
        try:
            repo.git.rev_parse("--verify", "--quiet", ref)
        except git.GitCommandError:
            pass
        else:
            base = _merge_base(repo, ref, commit)
            if base is not None:
                return base
    parents = repo.commit(commit).parents
    return parents[0].hexsha if parents else EMPTY_TREE


def changed_files(repo: git.Repo, base: str, commit: str) -> list[str]:
    """Paths changed between two commits; a rename counts as both its old and its new path."""
    out = repo.git.diff("--name-only", "--no-renames", "-z", base, commit, "--")
    return sorted({p for p in out.split("\0") if p})


def read_manifests(repo: git.Repo, commit: str) -> list[Package]:
    """Packages declared at `commit` by a root services.yaml and every */ferry-package.yaml.

    Listed with one `git ls-tree` and read with one `git cat-file --batch`, so ten thousand manifests cost
    two git processes, not ten thousand.
    """
    listing = repo.git.ls_tree("-r", "--name-only", "-z", commit)
    paths = [
        p
        for p in listing.split("\0")
        if (p in (SERVICES_FILE, PACKAGE_MANIFEST) or p.endswith("/" + PACKAGE_MANIFEST)) and "\n" not in p
    ]
    if not paths:
        return []
    request = "".join(f"{commit}:{p}\n" for p in paths).encode()
    try:
        out = subprocess.run(
            ["git", "cat-file", "--batch"],
            cwd=repo.git_dir,
            input=request,
            capture_output=True,
            check=True,
            env={**os.environ, **GIT_ENV},
            timeout=DEFAULT_TIMEOUT,
        ).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise retryable(f"git: read package manifests at {commit[:12]}: {e}") from None
    packages: list[Package] = []
    pos = 0
    for path in paths:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split()
        pos = header_end + 1
        if len(header) != 3:  # "<name> missing": a submodule entry, say; nothing to read
            continue
        size = int(header[2])
        text = out[pos : pos + size].decode("utf-8", errors="replace")
        pos += size + 1
        if header[1] != b"blob":
            continue
        if path == SERVICES_FILE:
            packages.extend(parse_services_file(text, path))
        else:
            packages.append(parse_package_manifest(path, text))
    return packages


def has_bazel_workspace(repo: git.Repo, commit: str) -> bool:
    """Does the commit have a WORKSPACE / WORKSPACE.bazel / MODULE.bazel at its root?"""
    return bool(repo.git.ls_tree("--name-only", commit, "--", *WORKSPACE_FILES).strip())


def checkout(repo: git.Repo, commit: str) -> Path:
    """The clone's worktree at exactly `commit` (Bazel reads files, not git objects); returns its path.

    Safe under the clone's lock: analysis only reads objects, and a GitOps move uses another clone.
    """
    repo.git.checkout("--force", "--quiet", "--detach", commit)
    repo.git.clean("-ffdxq")
    return Path(repo.working_tree_dir or repo.git_dir)


class ChangeActivities:
    """Change analysis over the worker's clone cache.

    `bazel` runs bazel query for the Bazel engine; by default `bazel` from PATH with its output next to
    the clone cache (`<workspace root>/../bazel`).
    """

    def __init__(self, workspace: GitWorkspace, bazel: BazelRunner | None = None) -> None:
        self.workspace = workspace
        self.bazel = bazel or BazelRunner(output_user_root=workspace.root.parent / "bazel")

    def engine(self, repo: git.Repo, inp: AnalyzeChangesInput, commit: str) -> tuple[ChangeEngine, PathGraphEngine]:
        """The engine the input asks for at this commit, and the path graph (the fallback of `auto`)."""
        if inp.engine not in ENGINES:
            raise fatal(
                f"change analysis engine {inp.engine!r} is unknown: use one of {', '.join(ENGINES)} "
                "(change_analysis.engine in ferry.yaml)",
                BAD_REQUEST,
            )
        try:
            packages = read_manifests(repo, commit) if inp.package_manifests else []
            graph = PathGraphEngine.from_services(inp.services, packages, inp.global_paths)
        except ManifestError as e:
            raise fatal(
                f"change analysis: {e} (at commit {commit[:12]} of {inp.repo_url}); fix the manifest and push",
                BAD_REQUEST,
            ) from None
        choice = inp.engine
        if choice == "auto":
            choice = "bazel" if has_bazel_workspace(repo, commit) and self.bazel.available() else "paths"
        if choice == "paths":
            return graph, graph
        return BazelEngine(checkout(repo, commit), graph, self.bazel), graph

    @activity.defn(name="changes.analyze")
    async def analyze(self, inp: AnalyzeChangesInput) -> ChangeSet:
        """Diff the commit against its base and map the changed files to the affected services.

        Read-only, so running it twice gives the same answer. An unknown commit is a fatal BAD_COMMIT.
        """
        released: list[str] = []
        if inp.base_commit is None and inp.gitops_repo_url and inp.first_env_path:
            branch, path = inp.gitops_branch, inp.first_env_path
            released = await self.workspace.run(
                inp.gitops_repo_url, lambda r: released_commits(r, branch, path), what="read released commits"
            )

        def analyze(repo: git.Repo) -> ChangeSet:
            commit = resolve_commit(repo, inp.commit, inp.repo_url)
            base = _choose_base(repo, inp, commit, released)
            files = changed_files(repo, base, commit)
            engine, graph = self.engine(repo, inp, commit)
            try:
                affected, reasons = engine.affected(files)
            except ApplicationError as e:
                if inp.engine != "auto" or engine is graph:
                    raise
                log.warning("bazel failed on %s, using the path graph instead: %s", commit[:12], e.message)
                affected, reasons = graph.affected(files)
            info = repo.commit(commit)
            author = info.author  # for the four-eyes rule at gates
            return ChangeSet(
                base_commit=base,
                commit=commit,
                changed_files=files,
                affected=affected,
                reasons=reasons,
                author_name=author.name or "",
                author_email=author.email or "",
                committed_at=info.committed_datetime.astimezone(UTC).isoformat(),
            )

        return await self.workspace.run(inp.repo_url, analyze, what="analyze changes")
