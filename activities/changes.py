"""Change analysis: which services does a commit touch, compared to what is already released?

A monorepo release should build and deploy only what changed. The base of the comparison is the app
commit last released to the first environment (read from the `Ferry-Commit:` trailer that `gitops.move`
writes), so a release picks up everything that changed since the last one even if several commits landed
in between; without such a release the base is the branch point or the parent commit.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from functools import lru_cache

import git
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import BAD_COMMIT
from activities.gitrepo import EMPTY_TREE, GitWorkspace, check_branch, resolve_commit
from workflows.types import AnalyzeChangesInput, ChangeSet, ServiceSpec

log = logging.getLogger(__name__)

TRAILER = "Ferry-Commit"
# How far back the GitOps history is searched for a release whose app commit still exists.
MAX_RELEASES_SCANNED = 50
_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{40})")


# --- path globs ---


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    pat = pattern.strip().removeprefix("./").lstrip("/")
    if pat.endswith("/"):
        pat += "**"
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if pat.startswith("**", i):
            before_ok = i == 0 or pat[i - 1] == "/"
            after = pat[i + 2 : i + 3]
            if before_ok and after == "/":
                out.append("(?:[^/]*/)*")  # `**/`: zero or more whole directories
                i += 3
                continue
            if before_ok and after == "":
                out.append(".*")  # trailing `**`: everything below
                i += 2
                continue
            out.append("[^/]*")  # `a**b`: just a star, as in gitignore
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pat.find("]", i + 2)) != -1:
            body = pat[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


def glob_match(pattern: str, path: str) -> bool:
    """Does repo-relative `path` fall under `pattern`?

    Semantics (gitignore-like, but always anchored at the repository root): `*` and `?` never cross `/`;
    `**/` matches zero or more directories, a trailing `/**` everything below, `[abc]`/`[!abc]` classes;
    a trailing `/` means "this directory". A pattern that matches a parent directory owns everything in it,
    so `services/api` and `services/api/**` are the same. Unlike gitignore, `*.md` matches top-level files
    only: ownership globs should say where they apply. PurePosixPath.match is not used because before
    Python 3.13 it has no `**` and matches from the right.
    """
    rx = _glob_regex(pattern)
    parts = path.strip("/").split("/")
    return any(rx.fullmatch("/".join(parts[:k])) for k in range(len(parts), 0, -1))


# --- ownership ---


def _summary(files: list[str]) -> str:
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    return f"changed: {files[0]}{more}"


def affected_services(services: list[ServiceSpec], changed: list[str]) -> tuple[list[str], dict[str, str]]:
    """The deployable services affected by `changed` files, sorted, and a human reason for each.

    A service or library is affected when one of its globs matches a changed file; then every service that
    depends on an affected one, transitively. Libraries propagate but are not deployable, so only
    kind == "service" names are returned.
    """
    by_name = {s.name: s for s in services}
    reason: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s.name):
        owned = [f for f in changed if any(glob_match(p, f) for p in svc.paths)]
        if owned:
            reason[svc.name] = _summary(owned)
    # Breadth-first over "who depends on me": the reason names the shortest chain back to a real change.
    dependents: dict[str, list[str]] = {}
    for svc in services:
        for dep in svc.depends_on:
            dependents.setdefault(dep, []).append(svc.name)
    queue = deque(sorted(reason))
    origin = {name: (name, reason[name]) for name in reason}  # name -> (root changed, its reason)
    chain: dict[str, list[str]] = {name: [] for name in reason}
    while queue:
        current = queue.popleft()
        for dependent in sorted(dependents.get(current, [])):
            if dependent in chain or dependent not in by_name:
                continue
            chain[dependent] = [current, *chain[current]]
            origin[dependent] = origin[current]
            root, root_reason = origin[current]
            reason[dependent] = f"depends on {' -> '.join(chain[dependent])} ({root_reason})"
            queue.append(dependent)
    affected = sorted(n for n in reason if by_name[n].kind == "service")
    return affected, {n: reason[n] for n in affected}


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


class ChangeActivities:
    """Change analysis over the worker's clone cache."""

    def __init__(self, workspace: GitWorkspace) -> None:
        self.workspace = workspace

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
            affected, reasons = affected_services(inp.services, files)
            author = repo.commit(commit).author  # for the four-eyes rule at gates
            return ChangeSet(
                base_commit=base,
                commit=commit,
                changed_files=files,
                affected=affected,
                reasons=reasons,
                author_name=author.name or "",
                author_email=author.email or "",
            )

        return await self.workspace.run(inp.repo_url, analyze, what="analyze changes")
