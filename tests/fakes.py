"""Fake activities, registered by name, for workflow tests on the time-skipping server.

They record every call (with the task queue that ran it) and can be told to fail the way the real ones do,
with the same non-retryable error types, so the workflow's branching is tested without any I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from temporalio import activity

from activities import errors
from activities.approvals import ApprovalActivities
from common.config import FerryConfig, parse_config
from common.plan import build_plan
from workflows.lock_types import AcquireInput, LockGrant
from workflows.types import (
    AnalyzeChangesInput,
    ArgoSyncInput,
    ArgoSyncResult,
    ArtifactRef,
    ChangeSet,
    DeployedInput,
    DeployedRevision,
    E2EInput,
    E2EResult,
    EnvironmentState,
    EnvironmentStateInput,
    FeedbackIssueInput,
    FeedbackIssueResult,
    GitOpsMoveInput,
    GitOpsMoveResult,
    GitOpsRevertInput,
    GitOpsRevertResult,
    ImagePin,
    Notification,
    PipelinePlan,
    PolicyCheckInput,
    PolicyCheckResult,
    QualityGateInput,
    QualityGateResult,
    ReleasePlan,
    RenderPipelineInput,
    ReplicationInput,
    ReplicationResult,
    RolloutPromoteInput,
    RolloutRef,
    RolloutState,
    RolloutWaitInput,
    ScanGateInput,
    ScanResult,
    SignInput,
    SignResult,
    TektonRunInput,
    TektonRunResult,
)

PREVIOUS_DIGEST = "sha256:" + "0" * 64  # what environments ran before the release (after a revert)

# The ferry.yaml each fake onprem worker holds, by its task queue: its plan and gate policies come from here,
# never from a workflow's input, just as a real worker's come from its own file.
WORKER_CONFIGS: dict[str, FerryConfig] = {}


def worker_plan(cfg: dict | FerryConfig) -> ReleasePlan:
    """The plan of `cfg`, which is also what the fake onprem worker of its queue loads (`ferry.plan`)."""
    parsed = cfg if isinstance(cfg, FerryConfig) else parse_config(cfg)
    WORKER_CONFIGS[parsed.task_queue("onprem")] = parsed
    return build_plan(parsed)


def worker_config() -> FerryConfig:
    """The config of the worker running the current activity (set by `worker_plan`)."""
    queue = activity.info().task_queue
    if queue not in WORKER_CONFIGS:
        raise RuntimeError(f"no worker config for task queue {queue}: build the plan with tests.fakes.worker_plan")
    return WORKER_CONFIGS[queue]


@dataclass
class Fakes:
    """Configurable fake systems and the log of what the workflow asked of them."""

    affected: list[str] = field(default_factory=lambda: ["api"])
    failing_gate: set[str] = field(default_factory=set)
    critical: set[str] = field(default_factory=set)
    e2e_fails: bool = False
    overtaken_by: str = ""  # gitops.move refuses: the environment already runs this (newer) app commit
    pinned_by_others: bool = False  # gitops.move finds its pins already set by someone else's commit
    degraded: set[str] = field(default_factory=set)
    high: set[str] = field(default_factory=set)  # repositories with CVE-2026-1000 (High)
    unsigned: set[str] = field(default_factory=set)
    author: tuple[str, str] = ("Dev", "dev@example.com")
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # sha12 -> CI blocks until set or cancelled
    calls: list[tuple[str, str, object]] = field(default_factory=list)
    canary_steps: int = 3  # pauses a fake Rollout makes before it is Healthy
    canary_fails_at: int | None = None  # the step whose analysis fails (the controller aborts)
    newer_commit: bool = False  # a newer GitOps commit replaced the release's pins before the revert
    reverted: set[str] = field(default_factory=set)  # revert commits made (Argo CD is healthy there)
    promoted_full: set[str] = field(default_factory=set)  # Rollouts promoted in full (Healthy on their images)
    running: str = "0" * 40  # the app commit `gitops.deployed` says every environment runs

    def _log(self, name: str, arg: object) -> None:
        self.calls.append((name, activity.info().task_queue, arg))

    def names(self, name: str) -> list[tuple[str, object]]:
        """(task queue, argument) of every call of one activity."""
        return [(q, a) for n, q, a in self.calls if n == name]

    def onprem(self, *, notify: bool = True) -> list:
        """The fakes the onprem worker registers (`notify=False`: the test registers the real webhook)."""

        @activity.defn(name="changes.analyze")
        async def analyze(inp: AnalyzeChangesInput) -> ChangeSet:
            self._log("changes.analyze", inp)
            return ChangeSet(
                base_commit="0" * 40,
                commit=inp.commit,
                changed_files=[f"services/{s}/main.py" for s in self.affected],
                affected=list(self.affected),
                reasons={s: f"changed: services/{s}/main.py" for s in self.affected},
                author_name=self.author[0],
                author_email=self.author[1],
            )

        @activity.defn(name="pipeline.render")
        async def render(inp: RenderPipelineInput) -> PipelinePlan:
            self._log("pipeline.render", inp)
            return PipelinePlan(
                buildkite_yaml="steps: []\n",
                pipelineruns={s: {"metadata": {"name": f"ferry-{inp.commit[:12]}-{s}"}} for s in inp.affected},
            )

        @activity.defn(name="tekton.run")
        async def tekton(inp: TektonRunInput) -> TektonRunResult:
            self._log("tekton.run", inp)
            held = next((e for sha, e in self.hold.items() if sha in inp.manifest["metadata"]["name"]), None)
            while held is not None and not held.is_set():
                activity.heartbeat()  # delivers a cancellation when the release is superseded
                await asyncio.sleep(0.05)
            digest = "sha256:" + hashlib.sha256(inp.manifest["metadata"]["name"].encode()).hexdigest()
            return TektonRunResult(
                name=inp.manifest["metadata"]["name"],
                results={"IMAGE_DIGEST": digest, "SONAR_CE_TASK_ID": f"task-{inp.service}"},
            )

        @activity.defn(name="sonarqube.quality_gate")
        async def quality(inp: QualityGateInput) -> QualityGateResult:
            self._log("sonarqube.quality_gate", inp)
            if inp.service in self.failing_gate:
                raise errors.fatal(
                    f"SonarQube quality gate ERROR for service {inp.service}", errors.QUALITY_GATE_FAILED
                )
            return QualityGateResult(status="OK")

        @activity.defn(name="harbor.scan_gate")
        async def scan(inp: ScanGateInput) -> ScanResult:
            self._log("harbor.scan_gate", inp)
            if inp.artifact.repository in self.critical:
                raise errors.fatal(f"{inp.artifact.repository}: Critical blocks", errors.VULNERABILITY_POLICY)
            return ScanResult(severity="None")

        @activity.defn(name="harbor.replicate")
        async def replicate(inp: ReplicationInput) -> ReplicationResult:
            self._log("harbor.replicate", inp)
            return ReplicationResult(execution_id=7, status="Succeed")

        @activity.defn(name="gitops.move")
        async def move(inp: GitOpsMoveInput) -> GitOpsMoveResult:
            self._log("gitops.move", inp)
            if self.overtaken_by:
                raise errors.fatal(
                    f"environment {inp.environment} runs app commit {self.overtaken_by[:12]}",
                    errors.NON_MONOTONIC_MOVE,
                    environment=inp.environment,
                    running_commit=self.overtaken_by,
                    requested_commit=inp.app_commit,
                )
            sha = hashlib.sha1(inp.environment.encode()).hexdigest()
            if self.pinned_by_others:
                return GitOpsMoveResult(commit=sha, changed=False, own_commit="")
            return GitOpsMoveResult(commit=sha, changed=True, own_commit=sha)

        @activity.defn(name="gitops.revert")
        async def revert(inp: GitOpsRevertInput) -> GitOpsRevertResult:
            self._log("gitops.revert", inp)
            if self.newer_commit:
                return GitOpsRevertResult(commit="", changed=False, skipped="newer commit 0badc0ffee00 moved on")
            sha = hashlib.sha1(f"revert {inp.commit}".encode()).hexdigest()
            self.reverted.add(sha)
            previous = [ImagePin(p.name, p.new_name, PREVIOUS_DIGEST) for p in inp.images]
            return GitOpsRevertResult(commit=sha, changed=True, app_commit="0" * 40, images=previous)

        @activity.defn(name="envlock.request")
        async def request(inp: AcquireInput) -> None:
            # Granted at once, as an EnvironmentLock nobody else holds would (tests/test_envlock.py has the real one).
            self._log("envlock.request", inp)
            holder = activity.client().get_workflow_handle(inp.holder.workflow_id, run_id=inp.holder.run_id)
            await holder.signal("envlock_granted", LockGrant(inp.lock_id, inp.holder))

        @activity.defn(name="gitops.deployed")
        async def deployed(inp: DeployedInput) -> DeployedRevision:
            self._log("gitops.deployed", inp)
            return DeployedRevision(environment=inp.environment, app_commit=self.running, gitops_commit="9" * 40)

        @activity.defn(name="gitops.state_at")
        async def state_at(inp: EnvironmentStateInput) -> EnvironmentState:
            # The target's move commit pins exactly its own images; the environment runs the previous digests.
            self._log("gitops.state_at", inp)
            commit = inp.commit or hashlib.sha1(f"{inp.environment} {inp.release_id}".encode()).hexdigest()
            return EnvironmentState(
                environment=inp.environment,
                release_id=inp.release_id,
                commit=commit,
                images=list(inp.expected),
                head="9" * 40,
                current=[ImagePin(p.name, p.new_name, PREVIOUS_DIGEST) for p in inp.expected],
            )

        @activity.defn(name="tracker.open_issue")
        async def issue(inp: FeedbackIssueInput) -> FeedbackIssueResult:
            self._log("tracker.open_issue", inp)
            return FeedbackIssueResult(url="http://tracker.test/acme/shop/issues/1", number=1, created=True)

        @activity.defn(name="buildkite.e2e")
        async def e2e(inp: E2EInput) -> E2EResult:
            self._log("buildkite.e2e", inp)
            url = "http://buildkite.test/acme/e2e/builds/1"
            if self.e2e_fails:
                raise errors.fatal(f"E2E build failed: {url}", errors.E2E_FAILED, web_url=url)
            return E2EResult(number=1, state="passed", web_url=url)

        @activity.defn(name="tekton.cancel")
        async def cancel(inp: TektonRunInput) -> str:
            self._log("tekton.cancel", inp)
            return "cancelling"

        @activity.defn(name="cosign.sign")
        async def sign(inp: SignInput) -> SignResult:
            self._log("cosign.sign", inp)
            return SignResult(image=inp.image, verified=True)

        @activity.defn(name="notify.webhook")
        async def notify_fake(inp: Notification) -> str:
            self._log("notify.webhook", inp)
            return "200"

        fakes = [analyze, render, tekton, cancel, quality, scan, replicate, move, revert, deployed, issue, e2e, sign]
        fakes.append(state_at)
        fakes.append(request)
        fakes += self._both()
        # Not fakes: the workers' own plan, policy and signature checks, over the queue's worker config.
        approvals = ApprovalActivities(worker_config)
        fakes += [approvals.plan, approvals.policy, approvals.verify]
        return [*fakes, notify_fake] if notify else fakes

    def cloud(self) -> list:
        """The fakes the cloud worker registers."""

        @activity.defn(name="harbor.confirm")
        async def confirm(inp: ArtifactRef) -> ArtifactRef:
            self._log("harbor.confirm", inp)
            return inp

        return [confirm, *self._both()]

    def _both(self) -> list:
        """Activities both workers register (each against its own site's systems)."""

        @activity.defn(name="policy.check_image")
        async def policy(inp: PolicyCheckInput) -> PolicyCheckResult:
            self._log("policy.check_image", inp)
            if inp.artifact.repository not in self.high or inp.block_severity not in ("High", "Medium", "Low"):
                return PolicyCheckResult()
            allowed = [a for a in inp.allow_cves if a.id == "CVE-2026-1000" and inp.today <= a.expires]
            if allowed:
                return PolicyCheckResult(allowed=["CVE-2026-1000 (High)"])
            raise errors.fatal(
                f"{inp.environment}: image {inp.artifact.repository}@{inp.artifact.digest} violates "
                f"'{inp.block_severity} or worse blocks': CVE-2026-1000 (High)",
                "SupplyChainPolicyViolation",
            )

        @activity.defn(name="cosign.verify")
        async def verify(inp: SignInput) -> SignResult:
            self._log("cosign.verify", inp)
            if inp.image.rsplit("/", 1)[-1] in self.unsigned:
                raise errors.fatal(f"image {inp.image}@{inp.digest}: no signature", "SignatureMissing")
            return SignResult(image=inp.image, verified=True)

        return [policy, verify, self._argocd(), *self._rollouts()]

    def _rollouts(self) -> list:
        """A fake canary: Paused at steps 0..canary_steps-1, then Healthy; or aborted at canary_fails_at."""

        def state(ref: RolloutRef, images: list[str], step: int, **kw: object) -> RolloutState:
            return RolloutState(
                name=ref.name, steps=self.canary_steps, step=step, step_kind="pause", images=images, **kw
            )

        @activity.defn(name="rollouts.wait")
        async def wait(inp: RolloutWaitInput) -> RolloutState:
            self._log("rollouts.wait", inp)
            if all(PREVIOUS_DIGEST in i for i in inp.images) or inp.rollout.name in self.promoted_full:
                return state(inp.rollout, inp.images, self.canary_steps, phase="Healthy", promoted=True)
            step = inp.after_step + 1
            if self.canary_fails_at is not None and step >= self.canary_fails_at:
                return state(
                    inp.rollout,
                    inp.images,
                    self.canary_fails_at,
                    phase="Degraded",
                    aborted=True,
                    message='RolloutAborted: Metric "error-rate" assessed Failed',
                )
            if step < self.canary_steps:
                return state(inp.rollout, inp.images, step, phase="Paused", pause_reasons=["CanaryPauseStep"])
            return state(inp.rollout, inp.images, self.canary_steps, phase="Healthy", promoted=True)

        @activity.defn(name="rollouts.promote")
        async def promote(inp: RolloutPromoteInput) -> RolloutState:
            self._log("rollouts.promote", inp)
            if inp.full:
                self.promoted_full.add(inp.rollout.name)
            return state(inp.rollout, [], inp.step + 1, phase="Progressing")

        @activity.defn(name="rollouts.abort")
        async def abort(inp: RolloutRef) -> RolloutState:
            self._log("rollouts.abort", inp)
            return state(inp, [], 0, phase="Degraded", aborted=True)

        return [wait, promote, abort]

    def _argocd(self):
        @activity.defn(name="argocd.sync")
        async def sync(inp: ArgoSyncInput) -> ArgoSyncResult:
            self._log("argocd.sync", inp)
            if inp.app in self.degraded and inp.revision not in self.reverted:
                raise errors.fatal(f"Argo CD application {inp.app} is Degraded", errors.APPLICATION_DEGRADED)
            return ArgoSyncResult(app=inp.app, revision=inp.revision, sync_status="Synced", health="Healthy")

        return sync
