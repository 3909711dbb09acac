"""The Rollback workflow: put one environment back on an earlier release's images, on purpose and on record.

GitOps moves only go forward (an ancestor of the running app commit is refused by `gitops.move`); going back
is this workflow, started by `ferry rollback ENV --to RELEASE --comment TEXT`. It checks that the requester
may roll that environment back, reads what the environment runs now (the "from" of the audit), confirms the
images are still in the environment's Harbor, moves the environment with `rollback=True` (the GitOps commit
carries a `Ferry-Rollback: <who>: <comment>` trailer), syncs Argo CD at that commit and sees every Argo
Rollout Healthy on those images (`workflows.progressive.restore`: the same way back as a release's automatic
rollback). The audit entry (who, when, environment, from, to, comment) stays in the `status` query, refusals
included.

Freeze windows do not hold a rollback back: it is the incident's way out, and it is audited instead.
Deterministic: no I/O, time from `workflow.now()`.
"""

from __future__ import annotations

import dataclasses
import hashlib

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import search, telemetry
    from workflows.approval_types import GatePolicy
    from workflows.ci import failure_message
    from workflows.environments import argocd_apps, image_pins
    from workflows.gates import PATCH_VERIFIED
    from workflows.identity import check_size, identify, load_plan, load_policy
    from workflows.options import activity_options
    from workflows.progressive import restore, rollout_refs, service_images
    from workflows.types import (
        ArtifactRef,
        DeployedInput,
        DeployedRevision,
        EnvironmentSpec,
        GitOpsMoveInput,
        GitOpsMoveResult,
        RollbackAuditEntry,
        RollbackInput,
        RollbackStatus,
    )

ROLLBACK_FAILED = "RollbackFailed"


def rollback_workflow_id(repo: str, environment: str, commit: str) -> str:
    """`rollback/{repo}/{env}/{sha12}`: one rollback of an environment to a commit at a time."""
    return f"rollback/{repo}/{environment}/{commit[:12]}"


def rollback_target(inp: RollbackInput) -> str:
    """What a signed rollback request names: the target release and a digest of the exact images, so a
    signature cannot be reused to put other images in place."""
    images = "\n".join(sorted(f"{a.service}={a.repository}@{a.digest}" for a in inp.artifacts))
    return f"{inp.target_release_id} {hashlib.sha256(images.encode()).hexdigest()[:32]}"


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
class RollbackWorkflow:
    """Rolls one environment back to a release's images, after checking who asks; audited in `status`."""

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
        """Stage, outcome, from and to commits, the GitOps commit, Argo CD apps and the audit."""
        return dataclasses.replace(self._status, audit=list(self._status.audit), apps=dict(self._status.apps))

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
        self._enter("done", f"{env.name} rolled back to {inp.target_release_id} ({inp.target_commit[:12]})")
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
        onprem = activity_options(plan.activities, plan.onprem_queue)
        site = activity_options(plan.activities, env.task_queue)

        self._enter("read", f"reading what {env.name} runs")
        deployed: DeployedRevision = await workflow.execute_activity(
            "gitops.deployed",
            DeployedInput(
                repo_url=plan.gitops_repo_url, branch=plan.gitops_branch, environment=env.name, path=env.path
            ),
            result_type=DeployedRevision,
            **onprem,
        )
        self._status.from_commit = deployed.app_commit

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

        self._enter("move", f"moving {env.name} back to {inp.target_commit[:12]}")
        move: GitOpsMoveResult = await workflow.execute_activity(
            "gitops.move",
            GitOpsMoveInput(
                repo_url=plan.gitops_repo_url,
                branch=plan.gitops_branch,
                environment=env.name,
                path=env.path,
                images=image_pins(env, inp.artifacts),
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

        apps = argocd_apps(plan, env, inp.artifacts)
        self._enter("sync", f"{env.name}: syncing {', '.join(apps)} at {move.commit[:12]}")
        # The same way back as a release's automatic rollback: sync, then every Rollout Healthy on the images.
        images = service_images(env, inp.artifacts, image_pins(env, inp.artifacts))
        refs = rollout_refs(env, [a.service for a in inp.artifacts])
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
