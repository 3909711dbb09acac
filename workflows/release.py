"""The Release workflow: one commit from CI on-prem to production in the cloud.

CI (child) -> for each environment in order: [gate] -> [replicate to the environment's Harbor] -> GitOps
move -> Argo CD sync at that exact revision -> [follow its Argo Rollouts step by step] -> [E2E]. A failed
verification (Degraded, an aborted Rollout, failed E2E) reverts that environment's GitOps commit, syncs,
waits healthy on the previous images and ends the release `rolled_back` (with an issue in the app's
tracker for production). Every step is an activity on the task queue of the site that can reach the
system; the workflow holds the decisions, the gates and the audit, and answers `status`. It does no I/O
and reads time only through `workflow.now()`. When it ends it leaves a ReleaseRecord in its memo for
`ferry report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import datetime, timedelta
from typing import NoReturn
from urllib.parse import quote

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from workflows import (
        approval_types,  # noqa: F401 - decoded here (GatePolicy, Identity): the sandbox must see it
        lock_types,  # noqa: F401 - decoded here (LockLease): likewise
        search,
        telemetry,
    )
    from workflows.ci import CIWorkflow, failure_message
    from workflows.environments import argocd_apps, image_pins
    from workflows.envlock import LockHolderMixin
    from workflows.freeze import active_freeze
    from workflows.gates import DECISION_REFUSED, PATCH_VERIFIED, PLAINTEXT_REFUSED, GateHandlers, Gates, read_decision
    from workflows.identity import check_size, identify, load_plan, load_policy
    from workflows.options import activity_options
    from workflows.progressive import (
        ROLLOUT_FAILED,
        abort_rollouts,
        app_images,
        follow_rollout,
        restore,
        rollout_refs,
        service_images,
        sync_apps,
    )
    from workflows.record import release_record
    from workflows.types import (
        RELEASE_RECORD_MEMO,
        ArtifactRef,
        AuditEntry,
        CIInput,
        CIResult,
        Decision,
        E2EInput,
        E2EResult,
        EnvironmentRecord,
        EnvironmentSpec,
        EnvironmentStatus,
        FeedbackIssueInput,
        FeedbackIssueResult,
        GitOpsMoveInput,
        GitOpsMoveResult,
        GitOpsRevertInput,
        GitOpsRevertResult,
        ImagePin,
        Notification,
        PolicyCheckInput,
        PolicyCheckResult,
        ReleaseEvent,
        ReleaseInput,
        ReleaseStatus,
        ReplicationInput,
        ReplicationResult,
        RolloutProgress,
        RolloutPromoteRequest,
        RolloutState,
        SignInput,
        SignResult,
        Supersede,
    )

RELEASE_FAILED = "ReleaseFailed"
# Everything added with gate policy (deadlines, freeze windows, supply-chain checks, notifications) runs
# only in releases that started with it: histories recorded before it replay along the old path.
PATCH_GATE_POLICY = "gate-policy-v1"
# Progressive delivery, automatic rollback, feedback issues and the report memo: only in releases that
# started with them, so histories recorded before replay along the old path.
PATCH_PROGRESSIVE = "progressive-v1"
# Each move-sync-verify of an environment holds that environment's EnvironmentLock (workflows/envlock.py),
# a move refused because the environment already runs a newer commit ends the release superseded, and so
# does a supersede order that arrives while an approved move waits out a freeze window.
PATCH_ENV_LOCK = "env-lock-v1"
NON_MONOTONIC_MOVE = "NonMonotonicMove"  # activities/errors.py: gitops.move refused a step back in app commits
# Verification failures that revert the environment's GitOps commit. Anything else (a system that stays
# unreachable, a bad request) fails the release for `ferry retry`: reverting would not fix it.
VERIFICATION_FAILURES = frozenset({"ApplicationDegraded", "SyncFailed", "E2EFailed", ROLLOUT_FAILED})


class _RolledBack(Exception):
    """Internal: the environment was reverted after a failed verification; the release ends rolled_back."""


class _Overtaken(Exception):
    """Internal: the environment already runs a newer commit (a descendant of ours); the release ends superseded."""

    def __init__(self, environment: str, commit: str) -> None:
        super().__init__(environment, commit)
        self.environment = environment
        self.commit = commit


def release_workflow_id(repo: str, commit: str) -> str:
    """`release/{repo}/{sha12}`: one release per commit, found by id in the UI and the CLI."""
    return f"release/{repo}/{commit[:12]}"


def ci_workflow_id(repo: str, commit: str) -> str:
    """`ci/{repo}/{sha12}`: the CI child of a release."""
    return f"ci/{repo}/{commit[:12]}"


@workflow.defn(name="Release")
class ReleaseWorkflow(GateHandlers, LockHolderMixin):
    """Promotes one commit through every environment, waiting on gates, auditable at each step."""

    @workflow.init
    def __init__(self, inp: ReleaseInput) -> None:
        self._policy = False  # set at the start of run(): whether this run has the gate policy
        self._progressive = False  # likewise: progressive delivery, automatic rollback, report memo
        self._records: dict[str, EnvironmentRecord] = {}
        self._failure_type = ""
        self._promotions: dict[str, list[RolloutPromoteRequest]] = {}  # environment -> accepted promotions
        self._promotion_waiting = ""  # the environment whose paused Rollout waits for `ferry promote`
        self._current_env = ""  # the environment the release is at, for the outcome metric
        self._notices = 0
        self._superseded: Supersede | None = None
        self._verified = False  # set at the start of run(): plan, policies and identities from the workers
        self._locking = False  # set at the start of run(): environments are held while moved (env-lock-v1)
        self._status = ReleaseStatus(release_id=inp.release_id, commit=inp.commit, branch=inp.branch, stage="starting")
        self._adopt(inp)

    def _adopt(self, inp: ReleaseInput) -> None:
        """Take `inp` (and its plan) as this release's: its gates and environments."""
        self._inp = inp
        gated = [e.name for e in inp.plan.environments if e.gate]
        self._gates = Gates(
            inp.plan.gates,
            gated,
            author=(inp.author, inp.author),
            freeze_overriders=inp.plan.freeze_override_members,
        )
        for env in inp.plan.environments:
            if env.gate:
                self._gates.bind(env.name, env.gate)
        self._status.environments = [EnvironmentStatus(name=e.name) for e in inp.plan.environments]

    def _decision_commit(self) -> str:
        return self._inp.commit

    # --- queries, updates, signals ---

    @workflow.query
    def status(self) -> ReleaseStatus:
        """Stage, services, digests, gates with decisions, environments, timings and the audit."""
        return dataclasses.replace(self._status, gates=list(self._gates.status.values()), audit=list(self._gates.audit))

    @workflow.signal
    def supersede(self, order: Supersede) -> None:
        """From the branch coordinator: a newer commit replaces this release (in CI, or waiting at a gate)."""
        if self._superseded is None:
            self._superseded = order

    @workflow.update
    async def promote(self, raw: RawValue) -> str:
        """Promote the paused Rollout step of an environment whose promotion policy is `approval`.

        Verified runs: who promotes is what a worker verified, allowed by the policy the workers load now
        (the environment's gate groups and release managers); every refusal is audited.
        """
        request, plaintext = read_decision(raw, RolloutPromoteRequest)
        if not self._verified:
            return self._accept_promotion(request, "")
        if plaintext:
            self._refuse_promotion(request, PLAINTEXT_REFUSED, "")
        env = next((e for e in self._inp.plan.environments if e.name == request.environment), None)
        if env is None or self._promotion_waiting != env.name:
            reason = (
                f"no environment '{request.environment}' in this release"
                if env is None
                else f"no Rollout of {env.name} waits for a promotion now (stage: {self._status.stage})"
            )
            self._refuse_promotion(request, reason, "")
        assert env is not None
        policy = self._gates.policy(env.name) or await load_policy(env.gate or "", env.name)
        identity = await identify(
            action="promote",
            stage=env.name,
            user=request.user,
            comment=request.comment,
            proof=request.proof,
            commit=self._inp.commit,
            policy=policy,
            seen=self._gates.nonces,
            full=request.full,
        )
        reason = identity.reason if not identity.verified else ""
        if not reason:
            members = set(policy.freeze_override_members)
            if policy.gate is not None:
                members.update(m for group in policy.gate.groups for m in policy.gate.members.get(group, []))
            if not set(identity.aliases or [identity.user, identity.email]) & members:
                reason = (
                    f"{identity.user} may not promote {env.name}: not a member of its gate's groups or a "
                    "release manager"
                )
            elif self._promotion_waiting != env.name:
                reason = f"no Rollout of {env.name} waits for a promotion now (stage: {self._status.stage})"
        if reason:
            self._refuse_promotion(request, reason, identity.method)
        if identity.nonce:
            self._gates.nonces.add(identity.nonce)
        trusted = dataclasses.replace(request, user=identity.user, email=identity.email, proof=None)
        return self._accept_promotion(trusted, identity.method, policy.version)

    def _refuse_promotion(self, request: RolloutPromoteRequest, reason: str, method: str) -> NoReturn:
        """Audit the refused promotion and fail the Update with the reason."""
        self._gates.refuse(
            Decision(
                stage=f"rollout:{request.environment}",
                user=request.user,
                comment=request.comment,
                channel=request.channel,
            ),
            reason,
            workflow.now(),
            method,
        )
        raise ApplicationError(reason, type=DECISION_REFUSED, non_retryable=True)

    def _accept_promotion(self, request: RolloutPromoteRequest, method: str, version: str = "") -> str:
        self._promotions.setdefault(request.environment, []).append(request)
        self._gates.audit.append(
            AuditEntry(
                stage=f"rollout:{request.environment}",
                user=request.user,
                action="promoted",
                channel=request.channel,
                at=workflow.now().isoformat(),
                comment=request.comment,
                method=method,
                policy_version=version,
            )
        )
        return f"promotion of {request.environment} accepted"

    @promote.validator
    def _validate_promote(self, raw: RawValue) -> None:
        try:
            request = read_decision(raw, RolloutPromoteRequest)[0]
        except ApplicationError as e:
            raise ValueError(e.message) from None
        if self._verified:
            # Everything else is checked, and a refusal audited, in the handler.
            if reason := check_size(request.user, request.comment, request.environment, request.proof):
                raise ValueError(reason)
            return
        env = next((e for e in self._inp.plan.environments if e.name == request.environment), None)
        if env is None:
            raise ValueError(f"no environment '{request.environment}' in this release")
        if not request.user.strip():
            raise ValueError("who promotes? an identity is required (--as USER or --from-buildkite)")
        if self._promotion_waiting != env.name:
            raise ValueError(f"no Rollout of {env.name} waits for a promotion now (stage: {self._status.stage})")
        ids = {request.user, request.email} - {""}
        members = set(self._inp.plan.freeze_override_members)
        for gate in self._inp.plan.gates:
            if gate.name == env.gate:
                members.update(m for group in gate.groups for m in gate.members.get(group, []))
        if not ids & members:
            raise ValueError(
                f"{request.user} may not promote {env.name}: not a member of its gate's groups or a release manager"
            )

    # --- the run ---

    @workflow.run
    async def run(self, inp: ReleaseInput) -> ReleaseStatus:
        """Run the release; fails with ReleaseFailed (message names stage and cause) on any failure."""
        # Not try/finally: a workflow evicted from the worker's cache must not run workflow code on the way out.
        try:
            status = await self._run(inp)
        except Exception:
            self._ended()
            await self._tell_coordinator("ended")
            raise
        except asyncio.CancelledError:
            await self._tell_coordinator("ended")
            raise
        self._ended()
        await self._tell_coordinator("ended")
        # A decision still being verified (another one decided the gate meanwhile) gets its answer first.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return status

    async def _run(self, inp: ReleaseInput) -> ReleaseStatus:
        self._policy = workflow.patched(PATCH_GATE_POLICY)
        self._progressive = workflow.patched(PATCH_PROGRESSIVE)
        if workflow.patched(PATCH_VERIFIED):
            # The plan (environments, gates, supply-chain policy, queues) is the workers', never the starter's.
            # Replaced in place: the caller's plan must not stay referenced (1,000 parked releases hold 1,000).
            inp.plan = await load_plan()
            self._adopt(inp)
            self._verified = True
        self._locking = workflow.patched(PATCH_ENV_LOCK)
        workflow.upsert_search_attributes(
            [search.COMMIT_SHA.value_set(inp.commit), search.BRANCH.value_set(inp.branch)]
        )
        try:
            ci = await self._ci(inp)
            if ci is None:
                return self._stop_superseded()
            if ci.nothing_to_release:
                self._status.outcome = "nothing_to_release"
                self._enter("done", "nothing to release: no deployable service changed")
                return self.status()
            if ci.author_email or ci.author_name:
                self._gates.set_author(ci.author_name, ci.author_email)
            for env in inp.plan.environments:
                self._current_env = env.name
                if self._superseded is not None:
                    return self._stop_superseded()  # a newer commit passed CI: never move an env backwards
                if env.gate:
                    state = await self._gate(env)
                    if state == "superseded":
                        return self._stop_superseded()
                    if state != "approved":
                        return await self._stop_at_gate(env, state)
                    if self._policy:
                        await self._wait_for_freeze(env)
                        if self._locking and self._superseded is not None:
                            return self._stop_superseded()  # the window ended on an older commit: not moved
                await self._deploy(inp, env, ci)
        except _RolledBack:
            return self.status()
        except _Overtaken as e:
            newer = f"{inp.plan.app_repo}-{e.commit[:12]}"  # the release id of the commit the environment runs
            self._superseded = Supersede(by_commit=e.commit, by_release=newer)  # its environment says "superseded"
            return self._stop_superseded()
        except (ActivityError, ChildWorkflowError, ApplicationError) as e:
            stage = self._status.stage
            self._failure_type = _failure_type(e)
            self._status.outcome = "failed"
            self._status.error = f"{stage}: {failure_message(e)}"
            self._finish_timing(stage)
            workflow.set_current_details(f"FAILED at {stage}: {failure_message(e)}")
            self._upsert_stage(f"failed:{stage}")
            await self._notify("failed", f"Release {inp.release_id} failed at {stage}: {failure_message(e)}", stage)
            raise ApplicationError(self._status.error, type=RELEASE_FAILED, non_retryable=True) from e
        self._status.outcome = "succeeded"
        self._enter("done", "released to " + ", ".join(e.name for e in inp.plan.environments))
        return self.status()

    async def _ci(self, inp: ReleaseInput) -> CIResult | None:
        """Run CI as a child; None when a newer commit superseded this release first (CI is cancelled)."""
        self._enter("ci", f"CI of {inp.commit[:12]}")
        child = await workflow.start_child_workflow(
            CIWorkflow.run,
            CIInput(
                release_id=inp.release_id,
                commit=inp.commit,
                branch=inp.branch,
                plan=inp.plan,
                base_commit=inp.base_commit,
                only_services=inp.only_services,
            ),
            id=ci_workflow_id(inp.plan.app_repo, inp.commit),
            task_queue=inp.plan.onprem_queue,
        )
        await workflow.wait_condition(lambda: child.done() or self._superseded is not None)
        if not child.done():
            child.cancel()  # the CI workflow cancels its Tekton runs before it ends
            with contextlib.suppress(ChildWorkflowError, asyncio.CancelledError):
                await child
            self._finish_timing("ci")
            return None
        ci: CIResult = child.result()
        self._status.ci = ci
        self._status.services = ci.affected
        self._status.digests = {a.service: a.digest for a in ci.artifacts}
        if ci.affected:
            workflow.upsert_search_attributes([search.SERVICES.value_set(ci.affected)])
        self._finish_timing("ci")
        await self._tell_coordinator("ci_passed")
        return ci

    def _stop_superseded(self) -> ReleaseStatus:
        """End quietly: a newer commit took this release's place; status says which."""
        assert self._superseded is not None
        self._status.outcome = "superseded"
        self._status.superseded_by = self._superseded.by_commit
        self._enter("superseded", f"superseded by {self._superseded.by_release} ({self._superseded.by_commit[:12]})")
        return self.status()

    async def _tell_coordinator(self, event: str) -> None:
        """Report to the branch coordinator that started this release (if one did)."""
        if not self._inp.coordinator_id:
            return
        coordinator = workflow.get_external_workflow_handle(self._inp.coordinator_id)
        with contextlib.suppress(FailureError):  # a coordinator that is gone has nobody to tell
            await coordinator.signal(
                "release_event",
                ReleaseEvent(
                    release_id=self._inp.release_id,
                    commit=self._inp.commit,
                    event=event,
                    outcome=self._status.outcome if event == "ended" else "",
                ),
            )

    async def _gate(self, env: EnvironmentSpec) -> str:
        """Wait for the gate's decision (or, with the gate policy, its deadline); returns the gate's state."""
        stage = f"gate:{env.name}"
        if self._verified:
            # The policy as the workers' ferry.yaml says when the gate opens: an edit reaches the next gate.
            # Loaded before the stage says `gate:`, so whoever sees that stage can decide at once.
            self._gates.load(env.name, await load_policy(env.gate or "", env.name))
        self._enter(stage, f"waiting for approval of {env.name} (gate {env.gate})")
        self._gates.open(env.name, workflow.now())
        gate = self._gates.status[env.name]
        if not self._policy:
            await workflow.wait_condition(lambda: self._gates.decided(env.name) or self._superseded is not None)
        else:
            deadline = timedelta(seconds=self._gates.deadline_seconds(env.name))
            gate.deadline = (workflow.now() + deadline).isoformat()
            await self._notify(
                "gate_waiting",
                f"Release {self._inp.release_id} waits for approval of {env.name} until {gate.deadline}",
                env.name,
                {"approve with": f"ferry approve {self._inp.release_id} --stage {env.name}"},
            )
            try:
                await workflow.wait_condition(
                    lambda: self._gates.decided(env.name) or self._superseded is not None, timeout=deadline
                )
            except TimeoutError:
                self._gates.expire(env.name, workflow.now())
            if gate.state not in ("expired", "waiting"):
                await self._notify(
                    "gate_decided",
                    f"Gate {env.name} of release {self._inp.release_id} {gate.state} by "
                    f"{', '.join(gate.approvals) or gate.decided_by}" + (f": {gate.comment}" if gate.comment else ""),
                    env.name,
                )
        telemetry.gate_waited(env.name, self._finish_timing(stage))
        if self._superseded is not None and not self._gates.decided(env.name):
            gate.state = "superseded"
            self._gates.waiting = None
            return "superseded"
        return gate.state

    async def _stop_at_gate(self, env: EnvironmentSpec, state: str) -> ReleaseStatus:
        """End the release at a gate that was rejected or expired; the environment is left as it was."""
        gate = self._gates.status[env.name]
        self._status.outcome = state
        if state == "expired":
            text = f"Release {self._inp.release_id} expired at gate {env.name}: nobody decided by {gate.deadline}"
            self._enter("expired", text)
            await self._notify("gate_expired", text, env.name)
        else:
            self._enter("rejected", f"rejected at {env.name} by {gate.decided_by}: {gate.comment}")
        return self.status()

    async def _wait_for_freeze(self, env: EnvironmentSpec) -> None:
        """An approved move waits while a freeze window covers the environment, unless overridden."""
        gate = self._gates.status[env.name]
        while not gate.freeze_overridden_by and not (self._locking and self._superseded is not None):
            loaded = self._gates.policy(env.name)
            windows = loaded.freeze_windows if loaded is not None else self._inp.plan.freeze_windows
            freeze = active_freeze(windows, env.name, workflow.now())
            if freeze is None:
                break
            gate.frozen_until, gate.freeze_reason = freeze.until.isoformat(), freeze.reason
            self._enter(
                f"frozen:{env.name}",
                f"{env.name} is frozen until {gate.frozen_until} ({freeze.reason}); approved, waiting "
                "(a release manager may approve again with --override-freeze --comment)",
            )
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: bool(gate.freeze_overridden_by) or (self._locking and self._superseded is not None),
                    timeout=freeze.until - workflow.now(),
                )
            self._finish_timing(f"frozen:{env.name}")
        gate.frozen_until = ""

    async def _notify(self, event: str, text: str, stage: str = "", fields: dict[str, str] | None = None) -> None:
        """Send a webhook notification if configured; a notification that cannot be delivered never stops
        a release (the activity retries first), it is only noted in the status."""
        if not (self._policy and self._inp.plan.notify):
            return
        self._notices += 1
        note = Notification(
            key=f"{workflow.info().workflow_id}/{workflow.info().run_id}/{self._notices}",
            event=event,
            release_id=self._inp.release_id,
            text=text,
            stage=stage,
            fields=fields or {},
        )
        try:
            await workflow.execute_activity(
                "notify.webhook",
                note,
                result_type=str,
                **activity_options(self._inp.plan.activities, self._inp.plan.onprem_queue),
            )
        except ActivityError as e:
            self._status.notices_failed.append(f"{event}: {failure_message(e)}")

    async def _deploy(self, inp: ReleaseInput, env: EnvironmentSpec, ci: CIResult) -> None:
        plan = inp.plan
        onprem_waits = activity_options(plan.activities, plan.onprem_queue, waits=True)
        env_status = next(s for s in self._status.environments if s.name == env.name)

        if env.site != "onprem" and not self._replicated(env.site):
            self._enter(f"replicate:{env.site}", f"replicating {len(ci.artifacts)} image(s) to {env.site}")
            await workflow.execute_activity(
                "harbor.replicate",
                ReplicationInput(
                    instance="onprem",
                    policy_id=plan.replication_policies[env.site],
                    release_id=inp.release_id,
                    # What the execution must copy: a rerun after a Reset finds the one that already did.
                    artifacts=[
                        ArtifactRef("onprem", plan.onprem_project, a.repository, a.digest) for a in ci.artifacts
                    ],
                ),
                result_type=ReplicationResult,
                **onprem_waits,
            )
            for art in ci.artifacts:
                await workflow.execute_activity(
                    "harbor.confirm",
                    ArtifactRef(
                        instance=env.site,
                        project=env.harbor_project,
                        repository=art.repository,
                        digest=art.digest,
                    ),
                    result_type=ArtifactRef,
                    **activity_options(plan.activities, env.task_queue),
                )
            self._finish_timing(f"replicate:{env.site}")

        self._enter(f"deploy:{env.name}", f"moving {env.name} to {inp.commit[:12]}")
        if self._policy:
            await self._supply_chain(inp, env, ci)
        if not self._locking:
            await self._move(inp, env, ci, env_status)
            return
        env_status.state = "queued"
        workflow.set_current_details(f"{env.name}: waiting to hold the environment (another move is under way)")
        lease = await self._hold(plan, env, f"release {inp.release_id} moves {env.name} to {inp.commit[:12]}")
        env_status.waited_for, env_status.waited_seconds = lease.waited_for, lease.waited_seconds
        workflow.set_current_details(f"moving {env.name} to {inp.commit[:12]}")
        # Not try/finally: a workflow evicted from the cache must not run workflow code on the way out.
        try:
            await self._move(inp, env, ci, env_status)
        except (Exception, asyncio.CancelledError):
            await self._give_back(lease)
            raise
        await self._give_back(lease)

    async def _move(self, inp: ReleaseInput, env: EnvironmentSpec, ci: CIResult, env_status: EnvironmentStatus) -> None:
        """Move `env` to this release's images, then verify it there (or roll back): the part under the lock."""
        plan = inp.plan
        onprem = activity_options(plan.activities, plan.onprem_queue)
        env_status.state = "moving"
        pins = image_pins(env, ci.artifacts)
        try:
            move: GitOpsMoveResult = await workflow.execute_activity(
                "gitops.move",
                GitOpsMoveInput(
                    repo_url=plan.gitops_repo_url,
                    branch=plan.gitops_branch,
                    environment=env.name,
                    path=env.path,
                    images=pins,
                    release_id=inp.release_id,
                    app_commit=inp.commit,
                    app_repo_url=plan.app_repo_url,  # refuse a move back to an ancestor (replay-safe: input data)
                ),
                result_type=GitOpsMoveResult,
                **onprem,
            )
        except ActivityError as e:
            if self._locking and _failure_type(e) == NON_MONOTONIC_MOVE:
                env_status.state = "superseded"
                raise _Overtaken(env.name, _detail(e, "running_commit")) from e
            raise
        env_status.gitops_commit = move.commit
        record = self._records.setdefault(env.name, EnvironmentRecord())
        record.moved_at = workflow.now().isoformat()
        record.digests = {a.service: a.digest for a in ci.artifacts}
        refs = rollout_refs(env, [a.service for a in ci.artifacts]) if self._progressive else {}
        try:
            await self._verify(inp, env, ci, move, pins, refs, env_status)
        except (ActivityError, ApplicationError) as e:
            if not (self._progressive and env.auto_rollback and _failure_type(e) in VERIFICATION_FAILURES):
                raise
            await self._roll_back(inp, env, ci, move, pins, refs, e)
        env_status.state = "deployed"
        record.deployed_at = workflow.now().isoformat()
        self._finish_timing(f"deploy:{env.name}")

    async def _verify(
        self,
        inp: ReleaseInput,
        env: EnvironmentSpec,
        ci: CIResult,
        move: GitOpsMoveResult,
        pins: list[ImagePin],
        refs: dict,
        env_status: EnvironmentStatus,
    ) -> None:
        """Sync at the move's commit, follow the Rollouts, run E2E: raises on a failed verification."""
        plan = inp.plan
        onprem_waits = activity_options(plan.activities, plan.onprem_queue, waits=True)
        env_status.state = "syncing"
        apps = argocd_apps(plan, env, ci.artifacts)
        workflow.set_current_details(f"{env.name}: syncing {', '.join(apps)} at {move.commit[:12]}")
        await sync_apps(
            plan,
            env,
            move.commit,
            apps,
            env_status.apps,
            rollouts=bool(refs),
            images=app_images(plan, env, ci.artifacts, pins) if self._locking else None,
        )

        if refs:
            env_status.state = "rolling_out"
            self._enter(f"rollout:{env.name}", f"{env.name}: following {', '.join(r.name for r in refs.values())}")
            images = service_images(env, ci.artifacts, pins)
            for service, ref in refs.items():
                progress = env_status.rollouts.setdefault(service, RolloutProgress(name=ref.name))
                await follow_rollout(plan, env, ref, images[service], progress, lambda s, e=env: self._decide(e, s))
            self._finish_timing(f"rollout:{env.name}")

        if env.e2e:
            env_status.state = "verifying"
            self._enter(f"e2e:{env.name}", f"E2E on {env.name}")
            try:
                e2e: E2EResult = await workflow.execute_activity(
                    "buildkite.e2e",
                    E2EInput(
                        release_id=inp.release_id,
                        commit=inp.commit,
                        branch=inp.branch,
                        environment=env.name,
                        message=inp.message,
                    ),
                    result_type=E2EResult,
                    **onprem_waits,
                )
            except ActivityError as e:
                self._status.e2e_url = _detail(e, "web_url")
                env_status.state = "failed"
                raise
            self._status.e2e_url = e2e.web_url
            self._finish_timing(f"e2e:{env.name}")

    async def _decide(self, env: EnvironmentSpec, state: RolloutState) -> str:
        """Wait as the environment's promotion policy says; returns who (or what) promotes the paused step."""
        if env.promotion == "approval":
            seen = len(self._promotions.get(env.name, []))
            self._promotion_waiting = env.name
            workflow.set_current_details(
                f"{env.name}: Rollout {state.name} paused at {state.step_kind or state.strategy}; "
                f"promote with: ferry promote {self._inp.release_id} --stage {env.name}"
            )
            await workflow.wait_condition(lambda: len(self._promotions.get(env.name, [])) > seen)
            self._promotion_waiting = ""
            return self._promotions[env.name][-1].user
        if env.soak_seconds > 0:
            workflow.set_current_details(
                f"{env.name}: Rollout {state.name} paused at {state.step_kind or state.strategy}; "
                f"soaking {env.soak_seconds:g}s before promoting"
            )
            await workflow.sleep(timedelta(seconds=env.soak_seconds))
        return f"soak {env.soak_seconds:g}s"

    async def _roll_back(
        self,
        inp: ReleaseInput,
        env: EnvironmentSpec,
        ci: CIResult,
        move: GitOpsMoveResult,
        pins: list[ImagePin],
        refs: dict,
        failure: BaseException,
    ) -> None:
        """Revert this release's GitOps commit of `env`, restore the previous images, end `rolled_back`.

        Raises _RolledBack when the environment is back on its previous images; ApplicationError when it
        could not be (the revert was refused because a newer commit moved on, or a step failed).
        """
        plan = inp.plan
        cause = f"{self._status.stage}: {failure_message(failure)}"
        env_status = next(s for s in self._status.environments if s.name == env.name)
        record = self._records[env.name]
        record.failed_at = workflow.now().isoformat()
        self._failure_type = _failure_type(failure)
        self._finish_timing(self._status.stage)
        self._enter(f"rollback:{env.name}", f"{env.name} failed verification, reverting: {failure_message(failure)}")
        await self._notify(
            "rolling_back", f"Release {inp.release_id} failed in {env.name}; reverting: {cause}", env.name
        )
        if refs:
            await abort_rollouts(plan, env, refs)
        # Only this release's own move is reverted. A result without `own_commit` (recorded before it existed)
        # made its commit when it changed something; a move that found the pins in place by someone else's
        # commit has nothing of this release's to revert.
        own = move.own_commit or (move.commit if move.changed else "")
        if not own:
            raise ApplicationError(
                f"{cause}; not rolled back: {env.name} already pinned these images before this release's move "
                f"(GitOps {move.commit[:12]} is not this release's commit), and someone else's commit is never "
                "reverted; fix forward or `ferry rollback` to an earlier release",
                type=self._failure_type,
            )
        reverted: GitOpsRevertResult = await workflow.execute_activity(
            "gitops.revert",
            GitOpsRevertInput(
                repo_url=plan.gitops_repo_url,
                branch=plan.gitops_branch,
                environment=env.name,
                path=env.path,
                commit=own,
                images=pins,
                release_id=inp.release_id,
                reason=cause,
            ),
            result_type=GitOpsRevertResult,
            **activity_options(plan.activities, plan.onprem_queue),
        )
        if reverted.skipped:
            raise ApplicationError(f"{cause}; not rolled back: {reverted.skipped}", type=self._failure_type)
        env_status.revert_commit = reverted.commit
        images = service_images(env, ci.artifacts, reverted.images)
        await restore(
            plan,
            env,
            reverted.commit,
            argocd_apps(plan, env, ci.artifacts),
            {svc: (ref, images[svc]) for svc, ref in refs.items()},
            env_status.apps,
        )
        env_status.state = "rolled_back"
        record.rolled_back = True
        record.restored_at = workflow.now().isoformat()
        self._finish_timing(f"rollback:{env.name}")
        self._status.outcome = "rolled_back"
        telemetry.rolled_back(env.name)
        self._status.rollback_cause = cause
        self._status.error = cause
        self._enter("rolled_back", f"ROLLED BACK in {env.name} ({reverted.commit[:12]}): {cause}")
        await self._notify("rolled_back", f"Release {inp.release_id} rolled back in {env.name}: {cause}", env.name)
        if env.name == plan.environments[-1].name and plan.feedback_queue:
            await self._open_issue(inp, env, ci, reverted.commit, cause)
        raise _RolledBack()

    async def _open_issue(self, inp: ReleaseInput, env: EnvironmentSpec, ci: CIResult, revert: str, cause: str) -> None:
        """Feedback: an issue in the app repo's tracker; one that cannot be opened is noted, not fatal."""
        plan = inp.plan
        links = {}
        if plan.ui_url:
            info = workflow.info()
            links["Temporal"] = (
                f"{plan.ui_url.rstrip('/')}/namespaces/{plan.temporal_namespace}/workflows/"
                f"{quote(info.workflow_id, safe='')}/{info.run_id}/history"
            )
        if self._status.e2e_url:
            links["E2E build"] = self._status.e2e_url
        try:
            issue: FeedbackIssueResult = await workflow.execute_activity(
                "tracker.open_issue",
                FeedbackIssueInput(
                    release_id=inp.release_id,
                    environment=env.name,
                    commit=inp.commit,
                    cause=cause,
                    digests={a.service: a.digest for a in ci.artifacts},
                    links=links,
                    revert_commit=revert,
                ),
                result_type=FeedbackIssueResult,
                **activity_options(plan.activities, plan.feedback_queue),
            )
        except ActivityError as e:
            self._status.notices_failed.append(f"feedback issue: {failure_message(e)}")
            return
        self._status.feedback_issue = issue.url

    async def _supply_chain(self, inp: ReleaseInput, env: EnvironmentSpec, ci: CIResult) -> None:
        """The environment's vulnerability policy and, where required, a verified cosign signature."""
        opts = activity_options(inp.plan.activities, env.task_queue)
        today = workflow.now().date().isoformat()
        for art in ci.artifacts:
            ref = ArtifactRef(
                instance=env.site, project=env.harbor_project, repository=art.repository, digest=art.digest
            )
            checked: PolicyCheckResult = await workflow.execute_activity(
                "policy.check_image",
                PolicyCheckInput(
                    artifact=ref,
                    environment=env.name,
                    block_severity=env.block_severity or inp.plan.block_severity,
                    allow_cves=env.allow_cves,
                    today=today,
                ),
                result_type=PolicyCheckResult,
                **opts,
            )
            if checked.allowed:
                self._status.allowed_findings[f"{env.name}/{art.service}"] = checked.allowed
            if env.require_signature:
                await workflow.execute_activity(
                    "cosign.verify",
                    SignInput(
                        image=f"{env.harbor_registry}/{env.harbor_project}/{art.repository}",
                        digest=art.digest,
                        instance=env.site,
                    ),
                    result_type=SignResult,
                    **opts,
                )

    # --- bookkeeping ---

    def _replicated(self, site: str) -> bool:
        return f"replicate:{site}" in self._status.timings

    def _enter(self, stage: str, details: str) -> None:
        self._status.stage = stage
        self._status.timings.setdefault(stage, {})["started"] = workflow.now().isoformat()
        workflow.set_current_details(details)
        self._upsert_stage(stage)
        telemetry.log("stage entered", stage=stage, details=details)

    def _finish_timing(self, stage: str) -> float:
        """Mark `stage` ended now and record its duration metric; returns the seconds it took."""
        timing = self._status.timings.setdefault(stage, {})
        now = workflow.now()
        timing["ended"] = now.isoformat()
        seconds = (now - datetime.fromisoformat(timing["started"])).total_seconds() if "started" in timing else 0.0
        kind, _, place = stage.partition(":")
        telemetry.stage_finished(kind, seconds, place)
        return seconds

    def _ended(self) -> None:
        """The release's last words: the outcome metric, one log line and the report memo."""
        telemetry.release_ended(self._status.outcome, self._current_env)
        telemetry.log("release ended", stage=self._status.stage, outcome=self._status.outcome, error=self._status.error)
        self._leave_record()

    def _upsert_stage(self, stage: str) -> None:
        workflow.upsert_search_attributes([search.RELEASE_STAGE.value_set(stage)])

    def _leave_record(self) -> None:
        """The ReleaseRecord in the memo, for `ferry report` (visibility only, no replays)."""
        if not self._progressive:
            return
        record = release_record(
            self._status,
            self._records,
            started_at=workflow.info().start_time.isoformat(),
            ended_at=workflow.now().isoformat(),
            error_type=self._failure_type,
        )
        workflow.upsert_memo({RELEASE_RECORD_MEMO: record})


def _failure_type(err: BaseException) -> str:
    """The type of the innermost ApplicationError (e.g. E2EFailed, UpstreamUnavailable), "Timeout" when the
    innermost failure is a Temporal timeout, or ''. The report tells infrastructure failures apart by it."""
    cause: BaseException | None = err
    found = ""
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type:
            found = cause.type
        elif isinstance(cause, TemporalTimeoutError):
            found = "Timeout"
        cause = cause.__cause__
    return found


def _detail(err: BaseException, key: str) -> str:
    """A named detail (e.g. web_url) of the innermost ApplicationError, or ''."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.details:
            first = cause.details[0]
            if isinstance(first, dict) and key in first:
                return str(first[key])
        cause = cause.__cause__
    return ""
