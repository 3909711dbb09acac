"""GitOps moves: pin an environment's images to exact digests with one commit in the GitOps repo.

Deploying is a commit: Argo CD syncs the environment's folder at that commit. Ferry touches only the
`images:` list of `<path>/kustomization.yaml` (the rest of the file, comments included, stays as people
wrote it), writes trailers that tell later releases what is deployed (`Ferry-Commit:` is the base of the
next change analysis), and pushes with a bounded rebase-and-retry when someone else pushed meanwhile.
Running a move twice makes one commit: the second run finds the pins in place and returns that commit.

Environments only move forward: given the app repo, a move to an app commit that is an ancestor of the one
the environment runs (its newest `Ferry-Commit:` trailer) is refused as NonMonotonicMove, so an older
build never lands over a newer one however the releases race. Going back is `ferry rollback`, an explicit
move that names who asked and why in a `Ferry-Rollback:` trailer.

An automatic rollback is `gitops.revert`: a `git revert` of the release's own move commit (so `git log` says
exactly what was undone and why), made only while the environment still pins that move's images: a newer
move by anyone else is never reverted.

`ferry rollback` restores a whole environment state: `gitops.state_at` reads every pin of the environment's
kustomization at the commit that deployed the target release there (found by its trailers), and the
rollback's move pins them all.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from pathlib import Path
from typing import Any

import git
import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.changes import released_commits
from activities.errors import (
    BAD_COMMIT,
    BAD_REQUEST,
    BROKEN_KUSTOMIZATION,
    NON_MONOTONIC_MOVE,
    NOT_FOUND,
    fatal,
    retryable,
)
from activities.gitrepo import (
    GIT_ENV,
    GitWorkspace,
    check_branch,
    classify_git_error,
    fetch,
    redact,
    resolve_commit,
)
from common.yamlsafe import load_yaml
from workflows.types import (
    DeployedInput,
    DeployedRevision,
    EnvironmentState,
    EnvironmentStateInput,
    GitOpsMoveInput,
    GitOpsMoveResult,
    GitOpsRevertInput,
    GitOpsRevertResult,
    ImagePin,
)

log = logging.getLogger(__name__)

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# OCI image-spec descriptor grammar (not in ../shared/specs; quoted from the image-spec's descriptor.md):
# algorithm ":" encoded, algorithm = [a-z0-9]+ ([+._-] [a-z0-9]+)*, encoded = [a-zA-Z0-9=_-]+
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
# `gitops.state_at` cannot give a state the rollback could restore (never deployed there, reverted, not the
# commit the request names, a broken file): the Rollback workflow refuses on this type (workflows/rollback.py).
UNRESTORABLE_STATE = "UnrestorableState"
_STATE_TRAILERS = ("Ferry-Release", "Ferry-Environment", "Ferry-Commit", "Ferry-Rollback", "Ferry-Reverts")
_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{40})")
_REJECTED_HINTS = ("[rejected]", "non-fast-forward", "fetch first", "stale info", "cannot lock ref", "failed to lock")


class _PushRejected(Exception):
    """The remote branch moved since our fetch: fetch, re-apply, try again."""


class _IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key (`images:\\n  - name: api`), as kustomize docs and people do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_yaml(data: Any) -> str:
    """Stable YAML: keys in their order, block style, indented lists, no line wrapping."""
    return yaml.dump(data, Dumper=_IndentedDumper, sort_keys=False, default_flow_style=False, width=4096)


# --- the edit (pure, so it is tested without git) ---


def _broken(where: str, problem: str) -> Exception:
    return fatal(
        f"{where}: {problem}; fix the file in the GitOps repo (nothing was committed), then retry the release",
        BROKEN_KUSTOMIZATION,
    )


def _pinned(entry: dict[str, Any] | None, pin: ImagePin) -> dict[str, Any]:
    # name, newName, digest first (stable); any other key the entry had stays; newTag goes, a digest wins.
    rest = {k: v for k, v in (entry or {}).items() if k not in ("name", "newName", "newTag", "digest")}
    return {"name": pin.name, "newName": pin.new_name, "digest": pin.digest, **rest}


def _images_block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the top-level `images:` key and everything that belongs to it, or None."""
    start = next((i for i, line in enumerate(lines) if re.match(r"^images\s*:(\s|$)", line)), None)
    if start is None:
        return None
    end = start + 1
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if not line.strip() or line.startswith("#"):
            continue  # part of the block only if more of the block follows
        if line[0] in " \t-":
            end = j + 1
            continue
        break
    return start, end


def _replace_images(text: str, images: list[dict[str, Any]]) -> str:
    block = dump_yaml({"images": images})
    lines = text.splitlines(keepends=True)
    span = _images_block(lines)
    if span is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{sep}{block}"
    start, end = span
    return "".join(lines[:start]) + block + "".join(lines[end:])


def pin_images(text: str, pins: list[ImagePin], where: str) -> str | None:
    """The kustomization `text` with `pins` applied to `images:`, or None when they are already there.

    Raises BROKEN_KUSTOMIZATION when the file is not a kustomization Ferry can safely edit. Only `images:`
    is rewritten; when the rest of the file cannot be kept byte for byte (exotic YAML), the whole file is
    re-dumped, which keeps every key and its order but drops comments.
    """
    try:
        data = load_yaml(text, where)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise _broken(where, f"not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise _broken(where, "must be a YAML mapping (apiVersion, kind, resources, images...)")
    if not isinstance(data.get("resources"), list):
        raise _broken(where, "has no 'resources' list, so it does not deploy anything")
    images = data.get("images")
    if images is None:
        images = []
    if not isinstance(images, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in images):
        raise _broken(where, "'images' must be a list of mappings, each with a 'name'")

    updated = copy.deepcopy(images)
    for pin in pins:
        index = next((k for k, entry in enumerate(updated) if entry["name"] == pin.name), None)
        if index is None:
            updated.append(_pinned(None, pin))
        else:
            updated[index] = _pinned(updated[index], pin)
    if updated == images:
        return None

    wanted = {**data, "images": updated}
    surgical = _replace_images(text, updated)
    try:
        if load_yaml(surgical, where) == wanted:
            return surgical
    except yaml.YAMLError:
        pass
    log.warning("%s: could not edit images: in place; rewriting the whole file", where)
    return dump_yaml(wanted)


def commit_message(inp: GitOpsMoveInput) -> str:
    """Subject, one line per image, and the trailers later releases and auditors read."""

    def one_line(value: str) -> str:
        return " ".join(value.split())  # a newline in a value must not forge a trailer

    images = "\n".join(f"{p.name}: {p.new_name}@{p.digest}" for p in sorted(inp.images, key=lambda p: p.name))
    verb = "rollback to release" if inp.rollback else "release"
    rollback = (
        f"Ferry-Rollback: {one_line(inp.requested_by)}: {one_line(inp.rollback_comment)}\n" if inp.rollback else ""
    )
    return (
        f"{one_line(inp.environment)}: {verb} {one_line(inp.release_id)}\n\n"
        f"{images or '(no images)'}\n\n"
        f"Ferry-Release: {one_line(inp.release_id)}\n"
        f"Ferry-Commit: {one_line(inp.app_commit)}\n"
        f"Ferry-Environment: {one_line(inp.environment)}\n"
        f"{rollback}"
    )


def revert_message(inp: GitOpsRevertInput, reverted: str) -> str:
    """`git revert`'s own wording (which `released_commits` reads) plus why, and the trailers Ferry reads."""

    def one_line(value: str) -> str:
        return " ".join(value.split())

    return (
        f"{one_line(inp.environment)}: revert release {one_line(inp.release_id)}\n\n"
        f"This reverts commit {reverted}.\n"
        f"Reason: {one_line(inp.reason)}\n\n"
        f"Ferry-Reverts: {reverted}\n"
        f"Ferry-Release: {one_line(inp.release_id)}\n"
        f"Ferry-Environment: {one_line(inp.environment)}\n"
        f"Ferry-Rollback: ferry: {one_line(inp.reason)}\n"
    )


def current_pins(text: str) -> dict[str, ImagePin]:
    """The `images:` pins of a kustomization text by name (entries without a digest are skipped)."""
    data = load_yaml(text, "kustomization") or {}
    images = data.get("images") if isinstance(data, dict) else None
    pins: dict[str, ImagePin] = {}
    for entry in images or []:
        if isinstance(entry, dict) and entry.get("name") and entry.get("digest"):
            pins[entry["name"]] = ImagePin(entry["name"], entry.get("newName") or entry["name"], entry["digest"])
    return pins


def state_pins(text: str, where: str, error_type: str = UNRESTORABLE_STATE) -> list[ImagePin]:
    """Every digest pin of a kustomization text, by name, validated; raises `error_type` on a broken file.

    Entries without a digest (a tag, a newName only) are not pins a rollback can restore, and are skipped.
    """

    def broken(problem: str) -> Exception:
        return fatal(f"{where}: {problem}", error_type)

    try:
        data = load_yaml(text, where)
    except yaml.YAMLError as e:
        raise broken(f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise broken("not a YAML mapping, so not a kustomization")
    images = data.get("images") or []
    if not isinstance(images, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in images):
        raise broken("'images' must be a list of mappings, each with a 'name'")
    pins: dict[str, ImagePin] = {}
    for entry in images:
        name, digest = entry["name"], entry.get("digest")
        if not digest:
            continue
        new_name = entry.get("newName") or name
        if not isinstance(digest, str) or not _DIGEST.match(digest) or not isinstance(new_name, str):
            raise broken(f"image {name}: {digest!r} is not a digest pin (newName@sha256:<hex>)")
        if name in pins:
            raise broken(f"image {name} is listed twice")
        pins[name] = ImagePin(name, new_name, digest)
    return [pins[n] for n in sorted(pins)]


def _validate_place(environment: str, branch: str, path: str) -> None:
    check_branch(branch)
    parts = Path(path).parts
    if not path.strip("/") or Path(path).is_absolute() or ".." in parts:
        raise fatal(f"environment {environment}: path {path!r} must be a folder inside the repo", BAD_REQUEST)


def _validate(inp: GitOpsMoveInput) -> None:
    _validate_place(inp.environment, inp.branch, inp.path)
    if inp.rollback:
        hint = f"ferry rollback {inp.environment} --to RELEASE --comment '...'"
        if not inp.rollback_comment.strip():
            raise fatal(
                f"rollback of {inp.environment}: a comment saying why is required ({hint}); nothing was moved",
                BAD_REQUEST,
            )
        if not inp.requested_by.strip():
            raise fatal(f"rollback of {inp.environment}: who asked for it is required ({hint})", BAD_REQUEST)
    seen: dict[str, str] = {}
    for pin in inp.images:
        if not pin.name or not pin.new_name:
            raise fatal(f"environment {inp.environment}: an image pin has an empty name or newName", BAD_REQUEST)
        if not _DIGEST.match(pin.digest):
            raise fatal(f"image {pin.name}: {pin.digest!r} is not a digest (sha256:<hex>)", BAD_REQUEST)
        if seen.setdefault(pin.name, pin.digest) != pin.digest:
            raise fatal(f"image {pin.name} is pinned twice to different digests in one move", BAD_REQUEST)


# --- monotonic environments ---


def _is_ancestor(repo: git.Repo, older: str, newer: str) -> bool:
    """`git merge-base --is-ancestor`: exit 0 yes, 1 no; anything else is a real git failure."""
    try:
        repo.git.merge_base("--is-ancestor", older, newer)
    except git.GitCommandError as e:
        if e.status == 1:
            return False
        raise
    return True


def check_forward(repo: git.Repo, inp: GitOpsMoveInput, running: str) -> None:
    """Refuse (NonMonotonicMove) when `inp.app_commit` is a strict ancestor of `running` in the app repo.

    Only a provable step back is refused. Commits on diverged lines (a hotfix branch, a release branch,
    a feature branch deployed to testbed) are not ordered by ancestry, and either may rightly replace the
    other, so they pass. A running commit the app repo no longer has (history rewritten since) cannot be
    ordered either: the move passes with a warning rather than blocking every release for good. A requested
    commit the repo lacks cannot be an ancestor of anything in it, so it passes the same way.
    """
    url = inp.app_repo_url
    try:
        current = resolve_commit(repo, running, url)
        requested = resolve_commit(repo, inp.app_commit, url)
    except ApplicationError as e:
        if e.type != BAD_COMMIT:
            raise
        log.warning(
            "gitops: %s: cannot order %s and %s in %s: %s",
            inp.environment,
            running[:12],
            inp.app_commit[:12],
            redact(url),
            e,
        )
        return
    if requested == current or not _is_ancestor(repo, requested, current):
        return
    env = inp.environment
    raise fatal(
        f"environment {env} runs app commit {current[:12]}; {requested[:12]} (release {inp.release_id}) is an "
        f"ancestor of it, so this move would deploy older code over newer: refused, nothing was committed. "
        f"To go back on purpose run `ferry rollback {env} --to {inp.release_id} --comment '<why>'`",
        NON_MONOTONIC_MOVE,
        environment=env,
        running_commit=current,
        requested_commit=requested,
    )


def _checks_ancestry(inp: GitOpsMoveInput) -> bool:
    # An explicit rollback goes back on purpose; no app repo means a release recorded before the check.
    return bool(inp.app_repo_url) and not inp.rollback


def _is_ancestor_safe(repo: git.Repo, older: str, newer: str) -> bool:
    """Like _is_ancestor, but a commit this clone does not have is simply not an ancestor."""
    try:
        return _is_ancestor(repo, older, newer)
    except git.GitCommandError:
        return False


def _running(repo: git.Repo, branch: str, path: str) -> str:
    released = released_commits(repo, branch, path)
    return released[0] if released else ""


# --- the activities ---


class GitOpsActivities:
    """Edits of the GitOps repo, through the worker's clone cache."""

    def __init__(
        self,
        workspace: GitWorkspace,
        author_name: str = "Ferry",
        author_email: str = "ferry@localhost",
        *,
        max_push_attempts: int = 5,
    ) -> None:
        self.workspace = workspace
        self.author_name = author_name
        self.author_email = author_email
        self.max_push_attempts = max_push_attempts

    @activity.defn(name="gitops.move")
    async def move(self, inp: GitOpsMoveInput) -> GitOpsMoveResult:
        """Pin `inp.images` in `<path>/kustomization.yaml` with one pushed commit; a no-op when already pinned.

        Returns the commit whose tree holds the pins: the one pushed now, or the branch head when nothing
        had to change (a retry after a push whose answer was lost lands here too). With `app_repo_url` set
        (and no `rollback`), a move to an ancestor of the app commit the environment runs is refused as
        NonMonotonicMove before anything is written.
        """
        _validate(inp)
        checked = ""  # the running app commit that check_forward has passed
        for _ in range(self.max_push_attempts):
            # The ancestry check needs the app repo's clone, which is not taken while holding the GitOps
            # clone: read what runs, check it under the app repo's lock, then move only if it still runs.
            outcome = await self.workspace.run(
                inp.repo_url, functools.partial(self._move, inp=inp, checked=checked), what=f"move {inp.environment}"
            )
            if isinstance(outcome, GitOpsMoveResult):
                return outcome
            running = outcome
            await self.workspace.run(
                inp.app_repo_url,
                lambda repo, running=running: check_forward(repo, inp, running),
                what=f"check {inp.environment} moves forward",
            )
            checked = running
        raise retryable(
            f"gitops: {inp.environment} kept moving to other app commits while this move was checked; "
            "Temporal retries the move"
        )

    @activity.defn(name="gitops.deployed")
    async def deployed(self, inp: DeployedInput) -> DeployedRevision:
        """The app commit an environment runs (newest `Ferry-Commit:` on its path) and the branch head.

        Read-only, so running it twice gives the same answer while nobody moves the environment.
        """
        _validate_place(inp.environment, inp.branch, inp.path)

        def read(repo: git.Repo) -> DeployedRevision:
            try:
                head = repo.git.rev_parse("--verify", "--quiet", f"origin/{inp.branch}^{{commit}}").strip()
            except git.GitCommandError:
                head = ""  # an empty GitOps repo: nothing deployed anywhere yet
            return DeployedRevision(
                environment=inp.environment, app_commit=_running(repo, inp.branch, inp.path), gitops_commit=head
            )

        return await self.workspace.run(inp.repo_url, read, what=f"read what {inp.environment} runs")

    @activity.defn(name="gitops.state_at")
    async def state_at(self, inp: EnvironmentStateInput) -> EnvironmentState:
        """Every image pin of the environment at the GitOps commit that deployed `inp.release_id` there.

        That commit is the newest on the branch touching the environment's path with trailers
        `Ferry-Release: <release>` and `Ferry-Environment: <env>` that is no rollback (`Ferry-Rollback:`) and
        was not reverted since; `inp.commit`, when given, must be one of those. It must pin `inp.expected`
        (the release's own images). Also returns the pins at the branch head: what the environment runs.
        Read-only. A state that cannot be restored is UnrestorableState, naming why; nothing is changed.
        """
        _validate_place(inp.environment, inp.branch, inp.path)
        if not inp.release_id.strip():
            raise fatal(f"gitops state of {inp.environment}: a release id is required", BAD_REQUEST)
        if inp.commit and not re.fullmatch(r"[0-9a-f]{40}", inp.commit):
            raise fatal(f"gitops state of {inp.environment}: {inp.commit!r} is not a full commit SHA", BAD_REQUEST)
        return await self.workspace.run(
            inp.repo_url,
            functools.partial(self._state_at, inp=inp),
            what=f"read {inp.environment}'s state at {inp.release_id}",
        )

    def _state_at(self, repo: git.Repo, inp: EnvironmentStateInput) -> EnvironmentState:
        env, rid, path = inp.environment, inp.release_id, inp.path.strip("/")
        where = f"{redact(inp.repo_url)} branch {inp.branch}"
        try:
            head = repo.git.rev_parse("--verify", "--quiet", f"origin/{inp.branch}^{{commit}}").strip()
        except git.GitCommandError:
            raise fatal(f"{where} has no commits: {rid} was never deployed to {env}", UNRESTORABLE_STATE) from None
        moves, reverted, trailers = self._moves(repo, head, inp.path, inp.release_id, inp.environment)
        live = [m for m in moves if m not in reverted]
        if not moves:
            raise fatal(
                f"no GitOps commit on {where} deployed {rid} to {env} (none touching {path}/ has the trailers "
                f"Ferry-Release: {rid} and Ferry-Environment: {env}; a release whose move found its images already "
                "pinned makes none): there is no state of it to restore; nothing was changed",
                UNRESTORABLE_STATE,
            )
        if not live:
            undone = ", ".join(f"{m[:12]} (reverted by {reverted[m][:12]})" for m in moves)
            raise fatal(
                f"{rid}'s deployment to {env} was reverted ({undone}): it never stayed deployed there, so there "
                "is no state of it to restore; nothing was changed",
                UNRESTORABLE_STATE,
            )
        if inp.commit and inp.commit not in live:
            raise fatal(
                f"the rollback request names GitOps commit {inp.commit[:12]} as {rid}'s deployment to {env}, but "
                f"the GitOps history says {', '.join(m[:12] for m in live)}; nothing was changed",
                UNRESTORABLE_STATE,
            )
        move = inp.commit or live[0]
        app_commit = trailers[move].get("Ferry-Commit", "")
        if inp.app_commit and app_commit and app_commit.lower() != inp.app_commit.lower():
            raise fatal(
                f"GitOps commit {move[:12]} deployed {rid} to {env} at app commit {app_commit[:12]}, not "
                f"{inp.app_commit[:12]}; nothing was changed",
                UNRESTORABLE_STATE,
            )
        images = state_pins(*self._kustomization_at(repo, move, path, inp.repo_url, UNRESTORABLE_STATE))
        at = {p.name: p.digest for p in images}
        differ = [
            f"{p.name} is {at.get(p.name) or 'not pinned'} there, {rid} built {p.digest}"
            for p in inp.expected
            if at.get(p.name) != p.digest
        ]
        if differ:
            raise fatal(
                f"GitOps commit {move[:12]} ({rid} in {env}) does not pin {rid}'s own images: {', '.join(differ)}; "
                "nothing was changed",
                UNRESTORABLE_STATE,
            )
        current = state_pins(*self._kustomization_at(repo, head, path, inp.repo_url, BROKEN_KUSTOMIZATION))
        return EnvironmentState(environment=env, release_id=rid, commit=move, images=images, head=head, current=current)

    @staticmethod
    def _moves(
        repo: git.Repo, head: str, path: str, release_id: str, environment: str
    ) -> tuple[list[str], dict[str, str], dict[str, dict[str, str]]]:
        """The release's moves of the environment (newest first), what reverted what, and each one's trailers.

        Like `released_commits`: a reverted revert reverts nothing, so what it had reverted counts again.
        """
        fields = "%x00".join(f"%(trailers:key={k},valueonly,separator=%x1f)" for k in _STATE_TRAILERS)
        out = repo.git.log(head, f"--format=%H%x00{fields}%x00%B%x1e", "--", path.strip("/") or ".")
        moves: list[str] = []
        reverted: dict[str, str] = {}  # reverted commit -> the commit that reverted it
        trailers: dict[str, dict[str, str]] = {}
        for record in out.split("\x1e"):
            parts = record.strip("\n").split("\x00")
            if len(parts) != len(_STATE_TRAILERS) + 2:
                continue
            sha, *values, body = parts
            # Several values of one key: the last one wins, as for Ferry-Commit elsewhere.
            found = {k: v.split("\x1f")[-1].strip() for k, v in zip(_STATE_TRAILERS, values, strict=True) if v.strip()}
            if sha not in reverted:  # a reverted revert undoes nothing
                for undone in {*_REVERTS.findall(body), *re.findall(r"[0-9a-f]{40}", values[-1])}:
                    reverted.setdefault(undone, sha)
            if (
                found.get("Ferry-Release") == release_id
                and found.get("Ferry-Environment") == environment
                and "Ferry-Rollback" not in found
            ):
                moves.append(sha)
                trailers[sha] = found
        return moves, reverted, trailers

    @staticmethod
    def _kustomization_at(
        repo: git.Repo, commit: str, path: str, repo_url: str, error_type: str
    ) -> tuple[str, str, str]:
        """(text, where, error_type) of the environment's kustomization file at `commit`, for state_pins."""
        for name in KUSTOMIZATION_NAMES:
            try:
                text = repo.git.show(f"{commit}:{path}/{name}", strip_newline_in_stdout=False)
            except git.GitCommandError:
                continue
            return text, f"{redact(repo_url)}@{commit[:12]}:{path}/{name}", error_type
        raise fatal(f"{redact(repo_url)}@{commit[:12]}: no kustomization in {path}/; nothing was changed", error_type)

    @activity.defn(name="gitops.revert")
    async def revert(self, inp: GitOpsRevertInput) -> GitOpsRevertResult:
        """Revert the move commit `inp.commit` of an environment with one pushed `git revert` commit.

        Nothing is written (`skipped` says why) when a newer commit pins other images for the move's
        services, or the revert does not apply cleanly: someone else's newer commit always wins. Running it
        twice makes one revert: the second run finds the `Ferry-Reverts:` trailer and returns that commit.
        """
        _validate_place(inp.environment, inp.branch, inp.path)
        if not re.fullmatch(r"[0-9a-f]{40}", inp.commit):
            raise fatal(f"gitops revert of {inp.environment}: {inp.commit!r} is not a full commit SHA", BAD_REQUEST)
        if not inp.reason.strip():
            raise fatal(f"gitops revert of {inp.environment}: a reason is required", BAD_REQUEST)
        return await self.workspace.run(
            inp.repo_url, functools.partial(self._revert, inp=inp), what=f"revert {inp.environment}"
        )

    def _revert(self, repo: git.Repo, inp: GitOpsRevertInput) -> GitOpsRevertResult:
        path = inp.path.strip("/")
        for attempt in range(1, self.max_push_attempts + 1):
            if attempt > 1:
                fetch(repo, inp.repo_url, self.workspace.timeout)
            head = self._reset(repo, inp.branch, inp.repo_url)
            if not _is_ancestor_safe(repo, inp.commit, head):
                raise fatal(
                    f"gitops revert of {inp.environment}: {inp.commit[:12]} is not on branch {inp.branch} of "
                    f"{redact(inp.repo_url)}; nothing was reverted",
                    BAD_COMMIT,
                )
            file = self._kustomization(repo, inp.path)
            done = repo.git.log(
                f"{inp.commit}..{head}", "--format=%H", "--fixed-strings", f"--grep=Ferry-Reverts: {inp.commit}"
            ).split()
            if done:
                return self._reverted(repo, inp, file, commit=done[0], changed=False)
            if not_ours := self._not_the_move_of(repo, inp):
                return GitOpsRevertResult(
                    commit="", changed=False, skipped=not_ours, app_commit=_running(repo, inp.branch, inp.path)
                )
            pins = current_pins(file.read_text()) if file.is_file() else {}
            moved_on = [p.name for p in inp.images if pins.get(p.name) != p]
            if moved_on:
                newer_sha, _, subject = (
                    repo.git.log("-1", "--format=%H %s", f"{inp.commit}..{head}", "--", path).strip().partition(" ")
                )
                return GitOpsRevertResult(
                    commit="",
                    changed=False,
                    skipped=f"{inp.environment} no longer pins this release's {', '.join(moved_on)}: newer commit "
                    f"{newer_sha[:12] or '(unknown)'} {subject!r} is never reverted",
                    app_commit=_running(repo, inp.branch, inp.path),
                    images=[pins[n] for n in sorted(pins) if n in {p.name for p in inp.images}],
                )
            try:
                repo.git.revert("--no-commit", inp.commit, env=GIT_ENV)
            except git.GitCommandError as e:
                repo.git.reset("-q", "--hard")
                return GitOpsRevertResult(
                    commit="",
                    changed=False,
                    skipped=f"{inp.environment}: {inp.commit[:12]} does not revert cleanly over newer commits "
                    f"({(e.stderr or '').strip().splitlines()[-1:] or ['conflict']}); nothing was reverted",
                    app_commit=_running(repo, inp.branch, inp.path),
                )
            sha = self._commit(repo, None, revert_message(inp, inp.commit))
            try:
                self._push(repo, inp.branch)
            except _PushRejected:
                log.info("gitops: %s moved under us (attempt %d); reverting on the new head", inp.branch, attempt)
                continue
            return self._reverted(repo, inp, file, commit=sha, changed=True)
        raise retryable(
            f"gitops: {inp.environment}: branch {inp.branch} of {redact(inp.repo_url)} kept moving during "
            f"{self.max_push_attempts} push attempts; Temporal retries the revert"
        )

    @staticmethod
    def _not_the_move_of(repo: git.Repo, inp: GitOpsRevertInput) -> str:
        """Why `inp.commit` is not the release's own move of the environment ('' when it is): an automatic
        rollback reverts only a commit whose trailers say `Ferry-Release: <release>` and `Ferry-Environment:
        <env>`, and no rollback, so a wrong commit id can never revert someone else's change."""
        keys = ("Ferry-Release", "Ferry-Environment", "Ferry-Rollback")
        fields = "%x00".join(f"%(trailers:key={k},valueonly,separator=%x1f)" for k in keys)
        values = repo.git.log("-1", f"--format={fields}", inp.commit).split("\x00")
        release, environment, rollback = (v.split("\x1f")[-1].strip() for v in [*values, "", ""][:3])
        if release == inp.release_id and environment == inp.environment and not rollback:
            return ""
        said = f"release {release or '(none)'}, environment {environment or '(none)'}"
        said += ", a rollback" if rollback else ""
        return (
            f"{inp.environment}: {inp.commit[:12]} is not {inp.release_id}'s move of {inp.environment} (its trailers "
            f"say {said}): someone else's commit is never reverted; nothing was reverted"
        )

    def _reverted(
        self, repo: git.Repo, inp: GitOpsRevertInput, file: Path, *, commit: str, changed: bool
    ) -> GitOpsRevertResult:
        pins = current_pins(repo.git.show(f"{commit}:{file.relative_to(repo.working_tree_dir).as_posix()}"))
        names = {p.name for p in inp.images}
        return GitOpsRevertResult(
            commit=commit,
            changed=changed,
            app_commit=_running(repo, inp.branch, inp.path),
            images=[pins[n] for n in sorted(pins) if n in names],
        )

    def _move(self, repo: git.Repo, inp: GitOpsMoveInput, checked: str) -> GitOpsMoveResult | str:
        """One move; or, when the ancestry check applies and the environment runs a commit other than
        `checked`, that commit (nothing written) for the caller to check first."""
        for attempt in range(1, self.max_push_attempts + 1):
            if attempt > 1:
                fetch(repo, inp.repo_url, self.workspace.timeout)
            head = self._reset(repo, inp.branch, inp.repo_url)
            if _checks_ancestry(inp):
                released = released_commits(repo, inp.branch, inp.path)
                running = released[0] if released else ""
                if running and running != checked and running != inp.app_commit.lower():
                    return running
            file = self._kustomization(repo, inp.path)
            where = f"{redact(inp.repo_url)}@{head[:12]}:{file.relative_to(repo.working_tree_dir).as_posix()}"
            try:
                text = file.read_text()
            except (FileNotFoundError, IsADirectoryError):
                raise _broken(where, "not found; create the environment folder with a kustomization") from None
            new_text = pin_images(text, inp.images, where)
            if new_text is None:
                # Already pinned: by this release's own earlier move (a retry after a lost push answer), or by
                # someone else's commit. Only the former is this release's to revert.
                moves, reverted, _ = self._moves(repo, head, inp.path, inp.release_id, inp.environment)
                own = "" if inp.rollback else next((m for m in moves if m not in reverted), "")
                return GitOpsMoveResult(commit=head, changed=False, own_commit=own)
            file.write_text(new_text)
            sha = self._commit(repo, file, commit_message(inp))
            try:
                self._push(repo, inp.branch)
            except _PushRejected:
                log.info("gitops: %s moved under us (attempt %d); re-applying on the new head", inp.branch, attempt)
                continue
            return GitOpsMoveResult(commit=sha, changed=True, own_commit=sha)
        raise retryable(
            f"gitops: {inp.environment}: branch {inp.branch} of {redact(inp.repo_url)} kept moving during "
            f"{self.max_push_attempts} push attempts; Temporal retries the move"
        )

    def _reset(self, repo: git.Repo, branch: str, repo_url: str) -> str:
        """A clean worktree at origin/<branch>, whatever a crashed earlier attempt left; returns its SHA."""
        remote = f"origin/{branch}"
        try:
            head = repo.git.rev_parse("--verify", "--quiet", f"{remote}^{{commit}}").strip()
        except git.GitCommandError:
            raise fatal(
                f"gitops: branch {branch} does not exist in {redact(repo_url)}; check repos.gitops.branch",
                NOT_FOUND,
            ) from None
        (Path(repo.git_dir) / "index.lock").unlink(missing_ok=True)  # we hold the lock: any lock is stale
        repo.git.reset("-q", "--hard")
        repo.git.clean("-q", "-ffdx")
        repo.git.checkout("-q", "--force", "-B", branch, head)
        return head

    def _kustomization(self, repo: git.Repo, path: str) -> Path:
        root = Path(repo.working_tree_dir or ".")
        folder = root / path.strip("/")
        for name in KUSTOMIZATION_NAMES:
            if (folder / name).is_file():
                return folder / name
        return folder / KUSTOMIZATION_NAMES[0]

    def _commit(self, repo: git.Repo, file: Path | None, message: str) -> str:
        """Commit `file` (or what is already staged, for a revert) as Ferry, without hooks or signing."""
        identity = {
            "GIT_AUTHOR_NAME": self.author_name,
            "GIT_AUTHOR_EMAIL": self.author_email,
            "GIT_COMMITTER_NAME": self.author_name,
            "GIT_COMMITTER_EMAIL": self.author_email,
        }
        if file is not None:
            repo.git.add("--", str(file))
        # No hooks and no signing from the worker's own git config: the commit must not depend on them.
        repo.git(c="commit.gpgsign=false").commit("-q", "--no-verify", "-m", message, env={**GIT_ENV, **identity})
        return repo.head.commit.hexsha

    def _push(self, repo: git.Repo, branch: str) -> None:
        """Push HEAD to the branch; a single ref update, so the remote never sees half a move."""
        try:
            repo.git.push(
                "--porcelain",
                "origin",
                f"HEAD:refs/heads/{branch}",
                env=GIT_ENV,
                kill_after_timeout=self.workspace.timeout,
            )
        except git.GitCommandError as e:
            output = f"{e.stdout or ''} {e.stderr or ''}".lower()
            if any(h in output for h in _REJECTED_HINTS):
                raise _PushRejected() from None
            raise classify_git_error(e, str(repo.remotes.origin.url), f"push {branch}") from None
