"""The Rollback workflow: put one environment back on the whole state it had under an earlier release.

GitOps moves only go forward (an ancestor of the running app commit is refused by `gitops.move`); going back
is this workflow, started by `ferry rollback ENV --to RELEASE --comment TEXT`. It checks that the requester
may roll that environment back, reads what the environment runs now (the "from" of the audit), reads the
environment's whole state when the release was deployed there (`gitops.state_at`: every pin of its
kustomization at the release's move commit, the GitOps repo being the source of truth), confirms the images
that change are still in the environment's Harbor, moves the environment to all of those pins with
`rollback=True` (the GitOps commit carries a `Ferry-Rollback: <who>: <comment>` trailer), syncs Argo CD at
that commit and sees every Argo Rollout Healthy on its image (`workflows.progressive.restore`: the same way
back as a release's automatic rollback). The audit entry (who, when, environment, from, to, comment) and
each image's change (from, to, or why it was left behind) stay in the `status` query, refusals included.

What a whole-state rollback restores: the pin of every service of the environment (in the workers'
ferry.yaml) as it was at the target's move commit, services the target did not build included. What it
cannot restore it leaves and lists, never silently: a service added after the target (the target's state has
no pin for it, and a rollback does not remove a service), a pin of the target's state that no service of
the environment uses any more (removed since, or pinned outside Ferry), other images pinned outside Ferry.
It refuses, changing nothing, when there is no such state (the target never stayed deployed there, its move
commit is gone or is not the one the request names) or an image that would change is gone from Harbor.
Runs started before this (no `rollback-whole-state-v1` marker) pin the target's own images only.

The environment is held (workflows/envlock.py) from the first read to the last Rollout Healthy, so no
release moves it in between. Freeze windows do not hold a rollback back: it is the incident's way out, and
it is audited instead.
Deterministic: no I/O, time from `workflow.now()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import (
        lock_types,  # noqa: F401 - decoded here (LockLease): the sandbox must see it
        search,
        telemetry,
    )
    from workflows.approval_types import GatePolicy
    from workflows.ci import failure_message
    from workflows.environments import argocd_apps, image_pins
    from workflows.envlock import LockHolderMixin
    from workflows.gates import PATCH_VERIFIED
    from workflows.identity import check_size, identify, load_plan, load_policy
    from workflows.options import activity_options
    from workflows.progressive import image_of, restore, rollout_refs, service_images
    from workflows.types import (
        Artifact,
        ArtifactRef,
        DeployedInput,
        DeployedRevision,
        EnvironmentSpec,
        EnvironmentState,
        EnvironmentStateInput,
        GitOpsMoveInput,
        GitOpsMoveResult,
        ImagePin,
        ReleasePlan,
        RollbackAuditEntry,
        RollbackImage,
        RollbackInput,
        RollbackStatus,
    )

ROLLBACK_FAILED = "RollbackFailed"
# Restore the target's whole environment state (every service's pin at its move commit), not only its images.
PATCH_WHOLE_STATE = "rollback-whole-state-v1"
# Error types the whole-state path refuses on (nothing changed): activities.gitops.UNRESTORABLE_STATE and
# activities.errors.ARTIFACT_MISSING (harbor.confirm), spelled here to keep the workflow free of their imports.
UNRESTORABLE = "UnrestorableState"
ARTIFACT_MISSING = "ArtifactMissing"


def rollback_workflow_id(repo: str, environment: str, commit: str) -> str:
    """`rollback/{repo}/{env}/{sha12}`: one rollback of an environment to a commit at a time."""
    return f"rollback/{repo}/{environment}/{commit[:12]}"


def rollback_target(inp: RollbackInput) -> str:
    """What a signed rollback request names: the target release and a digest of its exact images and of the
    GitOps commit whose whole state is restored, so a signature cannot be reused to put other images in place.

    The commit binds every pin restored: git names a commit by its content, and the worker restores the pins
    of that commit only (after checking it is the target's move commit there). The CLI and the worker both
    compute this from the request; a request without the commit (older CLIs) binds the release's images, and
    the worker reads the state of that release from the GitOps history.
    """
    lines = sorted(f"{a.service}={a.repository}@{a.digest}" for a in inp.artifacts)
    if inp.target_gitops_commit:
        lines.append(f"gitops={inp.target_gitops_commit}")
    images = "\n".join(lines)
    return f"{inp.target_release_id} {hashlib.sha256(images.encode()).hexdigest()[:32]}"


def restoration(
    plan: ReleasePlan, env: EnvironmentSpec, state: EnvironmentState
) -> tuple[list[ImagePin], list[RollbackImage]]:
    """What restoring `state` pins (every service's pin at the target's move commit) and what each image does.

    Pure: (the pins of the move, one RollbackImage per image pinned then or now, by name). A service is a
    ferry.yaml service with an Argo CD application in `env`, known by its image name (`image`, or its name).
    """
    rid = state.release_id
    services = {(s.image or s.name): s.name for s in plan.services if env.name in s.argocd_apps}
    then = {p.name: p for p in state.images}
    now = {p.name: p for p in state.current}
    pins: list[ImagePin] = []
    images: list[RollbackImage] = []
    for name in sorted(then.keys() | now.keys()):
        service = services.get(name, "")
        before = image_of(now[name]) if name in now else ""
        target = image_of(then[name]) if name in then else ""
        if name in then and service:
            pins.append(then[name])
            images.append(RollbackImage(name, service, before, target, target))
            continue
        if name in then:
            why = (
                f"pinned in {rid}'s state, but no service of ferry.yaml uses it in {env.name} now (removed since "
                f"{rid}, or pinned outside Ferry): not restored"
            )
        elif service:
            why = f"added after {rid}: {rid}'s state has no pin for it, and a rollback does not remove a service"
        else:
            why = f"not in {rid}'s state and no service of ferry.yaml in {env.name}: pinned outside Ferry, left as is"
        images.append(RollbackImage(name, service, before, before, target, "" if before == target else why))
    return pins, images


def may_roll_back(
    inp: RollbackInput, env: EnvironmentSpec, policy: GatePolicy | None = None, aliases: list[str] | None = None
) -> bool:
    """Who may put `env` back: whoever may decide its gate, and release managers everywhere.

    Release managers are the members of `approvals.freeze_override_groups` (the plan's
    `freeze_override_members`): the people already trusted to move an environment against the calendar.
    An ungated environment (testbed) has no group of its own, so any member of any gate group may.
    `policy` (verified runs) is the workers' policy of the environment's gate and `aliases` every name the
    requester was verified as.
    """
    plan = inp.plan
    ids = set(aliases or [inp.requested_by, inp.email]) - {""}
    overriders = policy.freeze_override_members if policy is not None else plan.freeze_override_members
    if ids & set(overriders):
        return True
    if policy is not None and env.gate:
        relevant = [policy.gate] if policy.gate is not None else []
    else:
        relevant = [g for g in plan.gates if g.name == env.gate] if env.gate else plan.gates
    for gate in relevant:
        if any(ids & set(gate.members.get(group, [])) for group in gate.groups):
            return True
        if gate.trust_teams and set(inp.teams) & set(gate.groups):
            return True
    return False


def refusal(inp: RollbackInput, policy: GatePolicy | None = None, aliases: list[str] | None = None) -> str | None:
    """Why this rollback must not run, or None. Pure, so the CLI and tests can ask it too."""
    env = next((e for e in inp.plan.environments if e.name == inp.environment), None)
    if env is None:
        known = ", ".join(e.name for e in inp.plan.environments)
        return f"no environment '{inp.environment}' in ferry.yaml (environments: {known})"
    if not inp.requested_by.strip():
        return "who is rolling back? an identity is required (--as USER or --from-buildkite)"
    if not inp.comment.strip():
        return "a rollback needs --comment saying why; it is kept in the audit and the GitOps commit"
    if env.gate and env.gate not in {g.name for g in inp.plan.gates}:
        return f"environment '{env.name}' waits on gate '{env.gate}', which ferry.yaml does not define"
    if not may_roll_back(inp, env, policy, aliases):
        who = f"the {env.gate} gate's groups" if env.gate else "a gate group"
        return f"{inp.requested_by} may not roll back {env.name}: not a member of {who} or a release manager"
    if not inp.artifacts:
        return f"release {inp.target_release_id} built no images; there is nothing to roll {env.name} back to"
    specs = {s.name: s for s in inp.plan.services}
    missing = [a.service for a in inp.artifacts if env.name not in getattr(specs.get(a.service), "argocd_apps", {})]
    if missing:
        return f"service(s) {', '.join(missing)} have no Argo CD application for {env.name} in ferry.yaml"
    return None


@workflow.defn(name="Rollback")
class RollbackWorkflow(LockHolderMixin):
    """Rolls one environment back to its whole state under a release, after checking who asks; audited in
    `status`, with each image's change."""

    @workflow.init
    def __init__(self, inp: RollbackInput) -> None:
        self._inp = inp
        self._method = ""
        self._policy_version = ""
        self._status = RollbackStatus(
            environment=inp.environment,
            target_release_id=inp.target_release_id,
            target_commit=inp.target_commit,
            requested_by=inp.requested_by,
        )

    @workflow.query
    def status(self) -> RollbackStatus:
        """Stage, outcome, from and to commits, the GitOps commits, each image's change, Argo CD apps, audit."""
        return dataclasses.replace(
            self._status, audit=list(self._status.audit), apps=dict(self._status.apps), images=list(self._status.images)
        )

    @workflow.run
    async def run(self, inp: RollbackInput) -> RollbackStatus:
        """Roll back, or end `refused` with the reason audited; fails with RollbackFailed if a step fails."""
        workflow.upsert_search_attributes([search.COMMIT_SHA.value_set(inp.target_commit)])
        policy, aliases = None, None
        if workflow.patched(PATCH_VERIFIED):
            inp, policy, aliases, reason = await self._verify(inp)
            if reason:
                return self._refuse(inp, reason)
        if reason := refusal(inp, policy, aliases):
            return self._refuse(inp, reason)
        env = next(e for e in inp.plan.environments if e.name == inp.environment)
        try:
            if workflow.patched(PATCH_WHOLE_STATE):
                if reason := await self._held(inp, env):
                    return self._refuse(inp, reason)
            else:
                await self._roll_back(inp, env)
        except (ActivityError, ApplicationError) as e:
            stage = self._status.stage
            self._status.outcome = "failed"
            self._status.error = f"{stage}: {failure_message(e)}"
            if not any(a.action == "rolled-back" for a in self._status.audit):
                self._audit("failed", reason=self._status.error)
            self._enter(f"failed:{stage}", f"FAILED at {stage}: {failure_message(e)}")
            raise ApplicationError(self._status.error, type=ROLLBACK_FAILED, non_retryable=True) from e
        self._status.outcome = "succeeded"
        telemetry.rolled_back(env.name)
        left = [i.name for i in self._status.images if i.left_behind]
        behind = f"; left behind: {', '.join(left)}" if left else ""
        self._enter("done", f"{env.name} rolled back to {inp.target_release_id} ({inp.target_commit[:12]}){behind}")
        return self.status()

    async def _verify(self, inp: RollbackInput) -> tuple[RollbackInput, GatePolicy | None, list[str] | None, str]:
        """The workers' plan and policy, and who really asks: (trusted input, policy, aliases, refusal or '')."""
        inp = dataclasses.replace(inp, plan=await load_plan())
        self._inp = inp
        if reason := check_size(inp.requested_by, inp.comment, inp.environment, inp.proof):
            return inp, None, None, reason
        env = next((e for e in inp.plan.environments if e.name == inp.environment), None)
        if env is None:
            return inp, None, None, ""  # refusal() names the environments
        policy = await load_policy(env.gate or "", env.name)
        self._policy_version = policy.version
        identity = await identify(
            action="rollback",
            stage=env.name,
            user=inp.requested_by,
            comment=inp.comment,
            proof=inp.proof,
            commit=inp.target_commit,  # a Buildkite proof: the rollback-<env> step of a build of the target
            policy=policy,
            seen=set(),
            target=rollback_target(inp),
        )
        self._method = identity.method
        if not identity.verified:
            return inp, policy, None, identity.reason
        inp = dataclasses.replace(
            inp, requested_by=identity.user, email=identity.email, teams=list(identity.teams), proof=None
        )
        self._inp = inp
        self._status.requested_by = identity.user
        return inp, policy, identity.aliases, ""

    def _refuse(self, inp: RollbackInput, reason: str) -> RollbackStatus:
        self._audit("refused", reason=reason)
        self._status.outcome = "refused"
        self._status.error = reason
        self._enter("refused", f"rollback of {inp.environment} refused: {reason}")
        return self.status()

    async def _roll_back(self, inp: RollbackInput, env: EnvironmentSpec) -> None:
        plan = inp.plan
        site = activity_options(plan.activities, env.task_queue)

        await self._read_deployed(plan, env)

        if env.site != "onprem":
            # The target's images were replicated when it was released; a registry clean-up may have removed
            # them since. Better to stop here than to move GitOps to images the cluster cannot pull.
            self._enter("confirm", f"confirming {len(inp.artifacts)} image(s) in {env.site} Harbor")
            for art in inp.artifacts:
                await workflow.execute_activity(
                    "harbor.confirm",
                    ArtifactRef(
                        instance=env.site, project=env.harbor_project, repository=art.repository, digest=art.digest
                    ),
                    result_type=ArtifactRef,
                    **site,
                )

        await self._move_sync_verify(inp, env, image_pins(env, inp.artifacts), inp.artifacts)

    async def _read_deployed(self, plan: ReleasePlan, env: EnvironmentSpec) -> None:
        """What the environment runs now (its app commit), for the status's `from`."""
        self._enter("read", f"reading what {env.name} runs")
        deployed: DeployedRevision = await workflow.execute_activity(
            "gitops.deployed",
            DeployedInput(
                repo_url=plan.gitops_repo_url, branch=plan.gitops_branch, environment=env.name, path=env.path
            ),
            result_type=DeployedRevision,
            **activity_options(plan.activities, plan.onprem_queue),
        )
        self._status.from_commit = deployed.app_commit

    async def _held(self, inp: RollbackInput, env: EnvironmentSpec) -> str:
        """`_whole_state` while holding the environment (workflows/envlock.py): from the first read of what it
        runs to the last Rollout Healthy, no release moves it, so what the rollback reports is what it did."""
        self._enter("queued", f"waiting to hold {env.name} (another move may be under way)")
        lease = await self._hold(inp.plan, env, f"rollback of {env.name} to {inp.target_release_id}")
        # Not try/finally: a workflow evicted from the cache must not run workflow code on the way out.
        try:
            reason = await self._whole_state(inp, env)
        except (Exception, asyncio.CancelledError):
            await self._give_back(lease)
            raise
        await self._give_back(lease)
        return reason

    async def _whole_state(self, inp: RollbackInput, env: EnvironmentSpec) -> str:
        """Restore the target's whole state in `env`; returns why it cannot be restored ('' when it was)."""
        plan = inp.plan
        onprem = activity_options(plan.activities, plan.onprem_queue)
        rid = inp.target_release_id

        await self._read_deployed(plan, env)

        self._enter("state", f"reading {env.name}'s state when {rid} was deployed there")
        try:
            state: EnvironmentState = await workflow.execute_activity(
                "gitops.state_at",
                EnvironmentStateInput(
                    repo_url=plan.gitops_repo_url,
                    branch=plan.gitops_branch,
                    environment=env.name,
                    path=env.path,
                    release_id=rid,
                    app_commit=inp.target_commit,
                    expected=image_pins(env, inp.artifacts),
                    commit=inp.target_gitops_commit,
                ),
                result_type=EnvironmentState,
                **onprem,
            )
        except ActivityError as e:
            if _cause_type(e) == UNRESTORABLE:
                return f"cannot restore {env.name} to {rid}: {failure_message(e)}"
            raise
        self._status.state_commit = state.commit
        pins, images = restoration(plan, env, state)

        changing = [i for i in images if i.after != i.before]
        if env.site != "onprem" and changing:
            # Images replicated when the target was released may have been cleaned up since: all of them are
            # checked (a missing one will not come back by waiting), and any missing refuses the rollback.
            self._enter("confirm", f"confirming {len(changing)} image(s) in {env.site} Harbor")
            site = activity_options(plan.activities, env.task_queue)
            site["retry_policy"] = dataclasses.replace(
                site["retry_policy"], non_retryable_error_types=[ARTIFACT_MISSING]
            )
            by_name = {p.name: p for p in pins}
            checks = [
                workflow.execute_activity(
                    "harbor.confirm",
                    ArtifactRef(
                        instance=env.site,
                        project=env.harbor_project,
                        repository=i.name,
                        digest=by_name[i.name].digest,
                    ),
                    result_type=ArtifactRef,
                    **site,
                )
                for i in changing
            ]
            answers = await asyncio.gather(*checks, return_exceptions=True)
            missing = []
            for image, answer in zip(changing, answers, strict=True):
                if isinstance(answer, ActivityError) and _cause_type(answer) == ARTIFACT_MISSING:
                    missing.append(f"{image.service} ({image.after})")
                elif isinstance(answer, BaseException):
                    raise answer
            if missing:
                return (
                    f"cannot restore {env.name} to {rid}: {', '.join(missing)} no longer in {env.site} Harbor "
                    f"(project {env.harbor_project}); nothing was changed. Restore the image(s) in Harbor, or roll "
                    "back to another release"
                )

        self._status.images = images
        service_of = {i.name: i.service for i in images}
        restored = [Artifact(service=service_of[p.name], repository=p.name, digest=p.digest) for p in pins]
        await self._move_sync_verify(inp, env, pins, restored)
        return ""

    async def _move_sync_verify(
        self, inp: RollbackInput, env: EnvironmentSpec, pins: list[ImagePin], artifacts: list[Artifact]
    ) -> None:
        """The part that changes the environment: one GitOps move to `pins`, Argo CD synced at that commit,
        and every Rollout of `artifacts`' services Healthy on its image. Everything before this only reads."""
        plan = inp.plan
        onprem = activity_options(plan.activities, plan.onprem_queue)
        self._enter("move", f"moving {env.name} back to {inp.target_commit[:12]}")
        move: GitOpsMoveResult = await workflow.execute_activity(
            "gitops.move",
            GitOpsMoveInput(
                repo_url=plan.gitops_repo_url,
                branch=plan.gitops_branch,
                environment=env.name,
                path=env.path,
                images=pins,
                release_id=inp.target_release_id,
                app_commit=inp.target_commit,
                app_repo_url=plan.app_repo_url,
                rollback=True,
                rollback_comment=inp.comment,
                requested_by=inp.requested_by,
            ),
            result_type=GitOpsMoveResult,
            **onprem,
        )
        self._status.gitops_commit = move.commit
        self._audit("rolled-back")

        apps = argocd_apps(plan, env, artifacts)
        self._enter("sync", f"{env.name}: syncing {', '.join(apps)} at {move.commit[:12]}")
        # The same way back as a release's automatic rollback: sync, then every Rollout Healthy on the images.
        images = service_images(env, artifacts, pins)
        refs = rollout_refs(env, [a.service for a in artifacts])
        await restore(
            plan, env, move.commit, apps, {svc: (ref, images[svc]) for svc, ref in refs.items()}, self._status.apps
        )

    # --- bookkeeping ---

    def _audit(self, action: str, reason: str = "") -> None:
        inp = self._inp
        self._status.audit.append(
            RollbackAuditEntry(
                environment=inp.environment,
                user=inp.requested_by,
                action=action,
                channel=inp.channel,
                at=workflow.now().isoformat(),
                from_commit=self._status.from_commit,
                to_commit=inp.target_commit,
                comment=inp.comment[:2000],
                reason=reason,
                method=self._method,
                policy_version=self._policy_version,
            )
        )

    def _enter(self, stage: str, details: str) -> None:
        self._status.stage = stage
        workflow.set_current_details(details)
        workflow.upsert_search_attributes([search.RELEASE_STAGE.value_set(f"rollback:{stage}")])
        telemetry.log("stage entered", stage=f"rollback:{stage}", details=details)


def _cause_type(err: BaseException) -> str:
    """The type of the innermost ApplicationError of an activity failure ('' if none)."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type:
            return cause.type
        cause = cause.__cause__
    return ""
