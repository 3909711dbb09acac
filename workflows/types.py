"""Payloads of workflows and activities: plain dataclasses, one argument each.

They carry SHAs, names, paths and digests only: never source code, never secrets. Both the workflow sandbox
and the activities import this module, so it must stay free of I/O and heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- the plan: the part of ferry.yaml a release needs, frozen into its input so replays see the same ---


@dataclass
class ServiceSpec:
    """A service or library as the workflows see it."""

    name: str
    paths: list[str]
    depends_on: list[str] = field(default_factory=list)
    kind: str = "service"
    image: str | None = None
    sonar_project: str | None = None
    argocd_apps: dict[str, str] = field(default_factory=dict)


@dataclass
class AllowedCveSpec:
    """A CVE accepted in an environment until `expires` (ISO date, inclusive)."""

    id: str
    expires: str
    reason: str = ""


@dataclass
class EnvironmentSpec:
    """One environment of the promotion chain, in order."""

    name: str
    site: str
    path: str
    task_queue: str
    harbor_registry: str
    harbor_project: str
    gate: str | None = None
    e2e: bool = False
    block_severity: str | None = None
    allow_cves: list[AllowedCveSpec] = field(default_factory=list)
    require_signature: bool = False
    # Progressive delivery: service -> Argo Rollout name in `rollout_namespace` of the site's cluster. A
    # service with a Rollout here is followed step by step after the sync instead of waiting for Healthy.
    rollouts: dict[str, str] = field(default_factory=dict)
    rollout_namespace: str = ""
    promotion: str = "auto"  # auto (promote after soak_seconds) | approval (promote on `ferry promote`)
    soak_seconds: float = 0.0
    # A failed verification (Degraded sync, aborted rollout, failed E2E) reverts this environment's GitOps
    # commit and ends the release `rolled_back`.
    auto_rollback: bool = True


@dataclass
class GateSpec:
    """Who may decide a gate: the groups and their members, as configured when the release started."""

    name: str
    groups: list[str]
    members: dict[str, list[str]]
    required_approvals: int = 1
    forbid_commit_author: bool = False
    forbid_previous_approvers: bool = False
    deadline_seconds: float = 72 * 3600
    trust_teams: bool = False


@dataclass
class FreezeWindowSpec:
    """A freeze: absolute `start`/`end` (ISO), or a UTC `cron` start and `duration_seconds`."""

    environments: list[str]
    reason: str
    start: str = ""
    end: str = ""
    cron: str = ""
    duration_seconds: float = 0


@dataclass
class ActivitySettings:
    """Timeouts and retries of every activity call (see common/config.py Timeouts)."""

    attempts: int = 8  # 0: no bound on the count, only retry_budget_seconds
    start_to_close_seconds: float = 1800
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    heartbeat_seconds: float = 60.0
    retry_budget_seconds: float = 0.0  # 0 (plans made before it): attempts alone bound the retries


@dataclass
class ReleasePlan:
    """Everything a release must know of ferry.yaml."""

    app_repo: str
    app_repo_url: str
    app_default_branch: str
    gitops_repo_url: str
    gitops_branch: str
    services: list[ServiceSpec]
    environments: list[EnvironmentSpec]
    gates: list[GateSpec]
    onprem_queue: str
    onprem_registry: str
    onprem_project: str
    block_severity: str = "Critical"
    replication_policies: dict[str, int] = field(default_factory=dict)
    tekton_namespace: str = "ci"
    tekton_pipeline: str = "ferry-ci"
    activities: ActivitySettings = field(default_factory=ActivitySettings)
    freeze_windows: list[FreezeWindowSpec] = field(default_factory=list)
    freeze_override_members: list[str] = field(default_factory=list)
    notify: bool = False
    sign_images: bool = False
    change_engine: str = "paths"
    global_paths: list[str] | None = None
    package_manifests: bool = False
    feedback_queue: str = ""  # task queue of the site whose worker opens tracker issues; "" = no issues
    ui_url: str = ""  # Temporal UI base URL, for links in notifications and issues
    temporal_namespace: str = "default"


# --- workflow inputs and outputs ---


@dataclass
class ReleaseInput:
    """Start a release of one commit."""

    release_id: str
    commit: str
    branch: str
    plan: ReleasePlan
    base_commit: str | None = None
    only_services: list[str] = field(default_factory=list)
    message: str = ""
    author: str = ""
    build_url: str = ""
    coordinator_id: str = ""


@dataclass
class CIInput:
    """The child CI workflow's input."""

    release_id: str
    commit: str
    branch: str
    plan: ReleasePlan
    base_commit: str | None = None
    only_services: list[str] = field(default_factory=list)


@dataclass
class Artifact:
    """An image built by CI, addressed by digest."""

    service: str
    repository: str
    digest: str
    tag: str = ""


@dataclass
class CIResult:
    """What CI produced: the affected services, the pipeline it ran, the images."""

    base_commit: str
    changed_files: int
    affected: list[str]
    reasons: dict[str, str]
    buildkite_pipeline: str
    pipelineruns: dict[str, dict]
    artifacts: list[Artifact]
    nothing_to_release: bool = False
    author_name: str = ""
    author_email: str = ""
    committed_at: str = ""


# --- activity inputs and outputs ---


@dataclass
class AnalyzeChangesInput:
    """Which services does this commit touch? base_commit None: last released commit or merge base."""

    repo_url: str
    commit: str
    branch: str
    default_branch: str
    services: list[ServiceSpec]
    base_commit: str | None = None
    gitops_repo_url: str | None = None
    gitops_branch: str = "main"
    first_env_path: str | None = None
    # Which engine maps files to services: "paths" (globs + depends_on), "bazel" (bazel query rdeps), or
    # "auto" (bazel when the commit has a Bazel workspace and the worker has bazel, else paths).
    engine: str = "paths"
    global_paths: list[str] | None = None  # files that affect every service; None: DEFAULT_GLOBAL_PATHS
    package_manifests: bool = False  # also read services.yaml and */ferry-package.yaml at the commit


@dataclass
class ChangeSet:
    """The answer of change analysis."""

    base_commit: str
    commit: str
    changed_files: list[str]
    affected: list[str]
    reasons: dict[str, str]
    author_name: str = ""
    author_email: str = ""
    committed_at: str = ""  # committer date (ISO 8601, UTC): the start of the DORA lead time


@dataclass
class RenderPipelineInput:
    """Render the minimal dynamic pipeline for the affected services."""

    release_id: str
    commit: str
    branch: str
    affected: list[str]
    services: list[ServiceSpec]
    registry: str
    project: str
    namespace: str
    pipeline: str


@dataclass
class PipelinePlan:
    """A Buildkite pipeline YAML (for `buildkite-agent pipeline upload`) and one PipelineRun per service."""

    buildkite_yaml: str
    pipelineruns: dict[str, dict]


@dataclass
class TektonRunInput:
    """Run one PipelineRun (created if absent, never twice) and wait for it."""

    service: str
    namespace: str
    manifest: dict


@dataclass
class TektonRunResult:
    """The PipelineRun's name and its results (IMAGE_DIGEST, IMAGE_URL, SONAR_CE_TASK_ID...)."""

    name: str
    results: dict[str, str]


@dataclass
class QualityGateInput:
    """Wait for SonarQube's background task, then read the quality gate of its analysis."""

    service: str
    project_key: str
    ce_task_id: str


@dataclass
class QualityGateResult:
    """OK or WARN (ERROR raises); conditions as 'metric: actual (threshold)' lines."""

    status: str
    conditions: list[str] = field(default_factory=list)


@dataclass
class ArtifactRef:
    """An image in one Harbor instance ('onprem' or 'cloud')."""

    instance: str
    project: str
    repository: str
    digest: str


@dataclass
class ScanGateInput:
    """Block the image if Trivy found anything at or above block_severity."""

    artifact: ArtifactRef
    block_severity: str = "Critical"


@dataclass
class ScanResult:
    """Highest severity found and the counts per severity."""

    severity: str
    summary: dict[str, int] = field(default_factory=dict)


@dataclass
class ReplicationInput:
    """Run a Harbor replication policy on the source instance and wait for it to finish."""

    instance: str
    policy_id: int
    release_id: str
    # The images the release needs copied, as they are on the source Harbor (`instance`). With them a rerun
    # that lost its heartbeat (a Reset, `ferry retry`) finds the execution of the policy that already covers
    # them (started after they were pushed) instead of starting a second one.
    artifacts: list[ArtifactRef] = field(default_factory=list)
    # ISO 8601 time (with zone): no execution of the policy started before it belongs to this release. Optional;
    # a workflow can give one it took from its own history (e.g. when CI finished).
    not_before: str = ""


@dataclass
class ReplicationResult:
    """The execution that ran and its final status."""

    execution_id: int
    status: str


@dataclass
class ImagePin:
    """One `images:` entry of a kustomization: name as in _base, new registry/repository, exact digest."""

    name: str
    new_name: str
    digest: str


@dataclass
class GitOpsMoveInput:
    """Pin an environment's images to exact digests with one commit (none if already there)."""

    repo_url: str
    branch: str
    environment: str
    path: str
    images: list[ImagePin]
    release_id: str
    app_commit: str
    # Monotonic environments: with the app repo given, a move to an ancestor of the app commit the environment
    # runs is refused (empty: no check, as in releases started before the check existed). An explicit rollback
    # (`ferry rollback`) skips the check and must say who asked and why; both go into the commit's trailers.
    app_repo_url: str = ""
    rollback: bool = False
    rollback_comment: str = ""
    requested_by: str = ""


@dataclass
class GitOpsMoveResult:
    """The GitOps commit that holds the pins (to sync at), and whether this call made it.

    `own_commit` is this release's own move commit of the environment, the one an automatic rollback may
    revert: `commit` when the call made it; when the pins were already in place, the release's earlier move
    (a retry after a lost push acknowledgement), or "" when someone else's commit set them (say, a rebuild
    with an identical digest), which nothing of this release may revert.
    """

    commit: str
    changed: bool
    own_commit: str = ""


@dataclass
class GitOpsRevertInput:
    """Revert one GitOps move commit of an environment (automatic rollback), never anyone's newer commit.

    `images` are the pins that move set: when the environment's file no longer pins them (a newer move
    replaced them) nothing is reverted. Running it twice makes one revert commit (`Ferry-Reverts:` trailer).
    """

    repo_url: str
    branch: str
    environment: str
    path: str
    commit: str
    images: list[ImagePin]
    release_id: str
    reason: str


@dataclass
class GitOpsRevertResult:
    """The revert commit (or the existing one), or why nothing was reverted; what the environment pins now."""

    commit: str
    changed: bool
    skipped: str = ""
    app_commit: str = ""  # the app commit the environment runs after the revert ("" if unknown)
    images: list[ImagePin] = field(default_factory=list)  # the pins of the move's images after the revert


@dataclass
class ArgoSyncInput:
    """Sync an Argo CD application to an exact revision and wait for Synced + Healthy there.

    `wait_healthy=False` returns once Synced at the revision: an app whose Rollout pauses between canary
    steps is Suspended, not Healthy, and is followed by the rollouts activities instead.
    """

    instance: str
    app: str
    revision: str
    wait_healthy: bool = True
    # The images (newName@digest) this move puts in the app. An app already synced at another revision that
    # runs every one of them is ours deployed (a later commit kept our pins): no sync back to `revision`.
    images: list[str] = field(default_factory=list)


@dataclass
class ArgoSyncResult:
    """What Argo CD reports once synced."""

    app: str
    revision: str
    sync_status: str
    health: str
    images: list[str] = field(default_factory=list)


@dataclass
class E2EInput:
    """Run the configured Buildkite E2E pipeline against an environment."""

    release_id: str
    commit: str
    branch: str
    environment: str
    message: str = ""


@dataclass
class E2EResult:
    """The finished build."""

    number: int
    state: str
    web_url: str


# --- gates ---


@dataclass
class Proof:
    """How a decision proves who sent it.

    `ssh`: `claim` (canonical JSON, see common.signatures.Claim) signed by the person's SSH key (`signature`).
    `buildkite`: the block step `step_key` of build `build_number` of `pipeline`, which the worker reads back
    from the Buildkite API to learn who unblocked it.
    """

    kind: str  # ssh | buildkite
    claim: str = ""
    signature: str = ""
    pipeline: str = ""
    build_number: int = 0
    step_key: str = ""


@dataclass
class Decision:
    """An approve or reject of a gate, by update, signal or CLI.

    `teams` are the Buildkite teams of the unblocker (trusted only when ferry.yaml says so);
    `override_freeze` asks to move now although a freeze window is open (release managers, with a comment).
    """

    stage: str
    user: str
    comment: str = ""
    approve: bool = True
    channel: str = "update"
    email: str = ""
    teams: list[str] = field(default_factory=list)
    override_freeze: bool = False
    # How the sender proves who they are; checked by a worker, never believed as sent (approvals.verify).
    proof: Proof | None = None


@dataclass
class AuditEntry:
    """One decision or refusal, kept in workflow state and shown by `status` and the audit."""

    stage: str
    user: str
    action: str
    channel: str
    at: str
    comment: str = ""
    reason: str = ""
    # How the identity was established ("ssh ED25519 SHA256:...", "buildkite ...", "unverified ...") and the
    # version of the worker-loaded policy that decided.
    method: str = ""
    policy_version: str = ""


@dataclass
class GateStatus:
    """A gate's state in `status`."""

    stage: str
    state: str = "pending"  # pending | waiting | approved | rejected | expired
    decided_by: str = ""
    comment: str = ""
    opened_at: str = ""
    decided_at: str = ""
    approvals: list[str] = field(default_factory=list)
    required: int = 1
    deadline: str = ""
    frozen_until: str = ""
    freeze_reason: str = ""
    freeze_overridden_by: str = ""
    policy_version: str = ""  # hash of the worker-loaded policy this gate was decided under
    verified_by: list[str] = field(default_factory=list)  # "user: how the workers verified them", per decision
    unverified: bool = False  # a decision counted without a verified identity (approvals.trust_unverified)


@dataclass
class RolloutProgress:
    """One service's Argo Rollout in one environment, as the `status` query shows it."""

    name: str
    strategy: str = ""
    phase: str = ""
    step: int = 0
    steps: int = 0
    weight: int = 0
    message: str = ""
    promoted_steps: list[str] = field(default_factory=list)  # "step 1 (setWeight 20) by soak at ..."


@dataclass
class EnvironmentStatus:
    """Where an environment stands for this release."""

    name: str
    # pending | queued | moving | syncing | rolling_out | verifying | deployed | failed | rolled_back | superseded
    state: str = "pending"
    gitops_commit: str = ""
    apps: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, RolloutProgress] = field(default_factory=dict)  # service -> its Rollout's progress
    revert_commit: str = ""
    # Who held the environment while this release queued for it (workflows/envlock.py), and for how long.
    waited_for: list[str] = field(default_factory=list)
    waited_seconds: float = 0.0


@dataclass
class ReleaseStatus:
    """Answer of the `status` query."""

    release_id: str
    commit: str
    branch: str
    stage: str
    # running | succeeded | failed | rejected | expired | superseded | nothing_to_release | rolled_back
    outcome: str = "running"
    services: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    gates: list[GateStatus] = field(default_factory=list)
    environments: list[EnvironmentStatus] = field(default_factory=list)
    timings: dict[str, dict[str, str]] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    error: str = ""
    e2e_url: str = ""
    ci: CIResult | None = None
    allowed_findings: dict[str, list[str]] = field(default_factory=dict)
    notices_failed: list[str] = field(default_factory=list)
    superseded_by: str = ""
    rollback_cause: str = ""  # why the release was rolled back (outcome rolled_back)
    feedback_issue: str = ""  # URL of the tracker issue opened for a production rollback


# --- supply chain and notifications ---


@dataclass
class PolicyCheckInput:
    """Check an image in an environment's Harbor against that environment's vulnerability policy.

    `today` (ISO date) comes from the workflow clock, so allow-list expiry is decided deterministically.
    """

    artifact: ArtifactRef
    environment: str
    block_severity: str
    allow_cves: list[AllowedCveSpec]
    today: str


@dataclass
class PolicyCheckResult:
    """Findings at or above the threshold, split into blocking and allowed."""

    blocking: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)


@dataclass
class SignInput:
    """Sign (CI) or verify (before a move) an image by digest with cosign."""

    image: str
    digest: str
    instance: str = "onprem"


@dataclass
class SignResult:
    """What cosign said."""

    image: str
    verified: bool
    detail: str = ""


@dataclass
class Notification:
    """A Slack-compatible webhook message about a release; `key` makes redelivery idempotent."""

    key: str
    event: str
    release_id: str
    text: str
    stage: str = ""
    fields: dict[str, str] = field(default_factory=dict)


# --- branch coordination ---


@dataclass
class CommitSignal:
    """A pushed commit handed to its branch's coordinator (signal-with-start from `ferry release start`)."""

    commit: str
    branch: str
    message: str = ""
    author: str = ""
    build_url: str = ""
    base_commit: str | None = None
    only_services: list[str] = field(default_factory=list)
    # ferry.yaml as the CLI read it when the commit was pushed (a ReleasePlan, as JSON): the release runs on it,
    # so a changed config reaches the next release without restarting the coordinator. None (older callers): the
    # coordinator's. Kept undecoded because a burst of pushes lands in one workflow task: decoding each plan
    # (~5 ms) there would trip the worker's 2 s deadlock detector; only a commit that starts a release decodes it.
    plan: dict[str, Any] | None = None


@dataclass
class ReleaseEvent:
    """What a release tells its coordinator: `ci_passed` (it may now supersede older ones), `ended`."""

    release_id: str
    commit: str
    event: str
    outcome: str = ""


@dataclass
class Supersede:
    """A coordinator's order to a release: a newer commit replaces you."""

    by_commit: str
    by_release: str


@dataclass
class QueueEntry:
    """A commit as the coordinator sees it."""

    commit: str
    release_id: str
    state: str  # pending | in_ci | past_ci | superseding | skipped | ended
    by: str = ""
    outcome: str = ""
    seq: int = 0


@dataclass
class CoordinatorState:
    """Everything the coordinator carries across continue-as-new."""

    seq: int = 0
    pending: CommitSignal | None = None
    pending_seq: int = 0
    active: list[QueueEntry] = field(default_factory=list)
    recent: list[QueueEntry] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    runs: int = 1


@dataclass
class CoordinatorInput:
    """One coordinator per repo and branch."""

    repo: str
    branch: str
    plan: ReleasePlan
    state: CoordinatorState | None = None
    max_history: int = 2000


@dataclass
class CoordinatorStatus:
    """Answer of the coordinator's `status` query: the queue, what is active, what happened lately."""

    branch: str
    pending: str = ""
    active: list[QueueEntry] = field(default_factory=list)
    recent: list[QueueEntry] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    runs: int = 1
    history_length: int = 0


# --- rollback (`ferry rollback ENV --to RELEASE`) ---


@dataclass
class DeployedInput:
    """Which app commit does an environment run? Read from the GitOps repo, not from any workflow's memory."""

    repo_url: str
    branch: str
    environment: str
    path: str


@dataclass
class DeployedRevision:
    """The app commit of the newest `Ferry-Commit:` trailer on the environment's path ('' if none yet)."""

    environment: str
    app_commit: str = ""
    gitops_commit: str = ""


@dataclass
class RollbackInput:
    """Put an environment back on an earlier release's images, deliberately and on the record.

    The CLI reads the target release's commit and artifacts from that release's `status` (a workflow cannot
    query another one) and freezes the plan, so the rollback replays against the config it started with.
    """

    environment: str
    target_release_id: str
    target_commit: str
    artifacts: list[Artifact]
    comment: str
    requested_by: str
    plan: ReleasePlan
    email: str = ""
    teams: list[str] = field(default_factory=list)
    channel: str = "cli"
    proof: Proof | None = None  # who asks, as a worker verifies it
    # The GitOps commit that deployed the target release in the environment (from that release's `status`):
    # its kustomization is the whole state the rollback restores. Part of the signed target (rollback_target),
    # and the worker restores it only if the GitOps history says it is that release's move commit there.
    target_gitops_commit: str = ""


@dataclass
class RollbackAuditEntry:
    """Who rolled which environment back from what to what, when and why (or why it was refused)."""

    environment: str
    user: str
    action: str  # rolled-back | refused | failed
    channel: str
    at: str
    from_commit: str = ""
    to_commit: str = ""
    comment: str = ""
    reason: str = ""
    method: str = ""  # how the requester's identity was verified
    policy_version: str = ""


@dataclass
class EnvironmentStateInput:
    """Every image pin of an environment at the GitOps commit that deployed a release there, and now.

    The move commit is found by its trailers (`Ferry-Release`, `Ferry-Environment`; rollbacks and reverted
    moves do not count). `expected` are the release's own pins: that commit must hold them. `commit`, when
    given, is the move commit the request names, and must be one of the release's moves there.
    """

    repo_url: str
    branch: str
    environment: str
    path: str
    release_id: str
    app_commit: str
    expected: list[ImagePin] = field(default_factory=list)
    commit: str = ""


@dataclass
class EnvironmentState:
    """The environment's pins at the release's move commit (`images`) and at the branch head (`current`)."""

    environment: str
    release_id: str
    commit: str
    images: list[ImagePin] = field(default_factory=list)
    head: str = ""
    current: list[ImagePin] = field(default_factory=list)


@dataclass
class RollbackImage:
    """One image of the environment in a whole-state rollback: what it ran, what it runs after, and why.

    Images are `newName@digest` ("" when not pinned). `after` equals `target` unless `left_behind` says why not.
    """

    name: str  # the `images:` name in the kustomization (the Harbor repository)
    service: str = ""  # the ferry.yaml service it is, "" when no service of the environment uses it
    before: str = ""
    after: str = ""
    target: str = ""  # pinned at the target release's move commit
    left_behind: str = ""


@dataclass
class RollbackStatus:
    """Answer of the Rollback workflow's `status` query."""

    environment: str
    target_release_id: str
    target_commit: str
    requested_by: str
    stage: str = "starting"
    outcome: str = "running"  # running | succeeded | refused | failed
    from_commit: str = ""
    gitops_commit: str = ""
    apps: dict[str, str] = field(default_factory=dict)
    audit: list[RollbackAuditEntry] = field(default_factory=list)
    error: str = ""
    # A whole-state rollback: the target's move commit whose pins were restored, and every image's change.
    state_commit: str = ""
    images: list[RollbackImage] = field(default_factory=list)


# --- progressive delivery (Argo Rollouts) ---


@dataclass
class RolloutRef:
    """An Argo Rollout in the cluster of a site (`instance`)."""

    instance: str
    namespace: str
    name: str


@dataclass
class RolloutState:
    """What Ferry reads of a Rollout (argoproj.io/v1alpha1), trusted only once observedGeneration caught up."""

    name: str
    phase: str  # Healthy | Progressing | Paused | Degraded
    message: str = ""
    strategy: str = "canary"  # canary | blueGreen
    step: int = 0  # status.currentStepIndex (canary); 0 for blue-green
    steps: int = 0  # number of canary steps
    step_kind: str = ""  # the current step, e.g. "setWeight 20", "pause", "analysis", "" at the end
    weight: int = 0  # traffic on the new revision, percent
    pause_reasons: list[str] = field(default_factory=list)  # CanaryPauseStep, BlueGreenPause, ...
    aborted: bool = False
    promoted: bool = False  # the new revision is the stable one (stableRS == currentPodHash)
    images: list[str] = field(default_factory=list)  # spec.template container images (name@digest)


@dataclass
class RolloutWaitInput:
    """Wait until a Rollout running `images` reaches a decision point: a pause past `after_step`,
    Healthy and fully promoted, or Degraded/aborted. Heartbeats; resumes after a worker restart."""

    rollout: RolloutRef
    images: list[str]
    after_step: int = -1


@dataclass
class RolloutPromoteInput:
    """Promote a Rollout paused at `step` (kubectl argo rollouts promote); a no-op once it moved past it."""

    rollout: RolloutRef
    step: int
    full: bool = False
    # The images the promoted revision runs: a Rollout that runs others (a newer release's revision paused at
    # the same step) is left alone. Empty: no check.
    images: list[str] = field(default_factory=list)


@dataclass
class RolloutPromoteRequest:
    """A person promotes the paused Rollouts of an environment (`ferry promote`), when promotion is `approval`."""

    environment: str
    user: str
    email: str = ""
    comment: str = ""
    full: bool = False
    channel: str = "cli"
    proof: Proof | None = None  # who promotes, as a worker verifies it


# --- feedback ---


@dataclass
class FeedbackIssueInput:
    """Open (once) an issue in the app repo's tracker about a production rollback."""

    release_id: str
    environment: str
    commit: str
    cause: str
    digests: dict[str, str]  # service -> digest that was rolled back
    links: dict[str, str] = field(default_factory=dict)  # label -> URL (Temporal UI, E2E build, Argo CD)
    revert_commit: str = ""


@dataclass
class FeedbackIssueResult:
    """The tracker issue: its web URL and number, and whether this call created it."""

    url: str
    number: int
    created: bool


# --- reporting ---

# The memo key under which a Release leaves its ReleaseRecord when it ends (read by `ferry report`).
RELEASE_RECORD_MEMO = "ferry.release"


@dataclass
class EnvironmentRecord:
    """One environment in one release, for DORA: when it moved, when it was deployed, failed, restored.

    Times are ISO 8601 (UTC) from the workflow clock; "" when it did not happen.
    """

    moved_at: str = ""  # GitOps commit made (a deployment started)
    deployed_at: str = ""  # verified: synced, rolled out, E2E passed
    failed_at: str = ""  # a verification failed (Degraded, aborted rollout, failed E2E)
    restored_at: str = ""  # back Healthy on the previous version after the automatic rollback
    rolled_back: bool = False
    digests: dict[str, str] = field(default_factory=dict)  # service -> digest moved there


@dataclass
class ReleaseRecord:
    """What a Release leaves in its memo (`ferry.release`) when it ends: enough for `ferry report` to compute
    the DORA metrics, stage times and SLOs from visibility alone, without replaying histories."""

    release_id: str
    commit: str
    branch: str
    services: list[str]
    outcome: str  # as ReleaseStatus.outcome
    committed_at: str  # "" when unknown (CI did not run)
    started_at: str
    ended_at: str
    environments: dict[str, EnvironmentRecord] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds (gate:<env> is waiting time)
    failed_stage: str = ""
    error_type: str = ""  # the ApplicationError type that failed the release, e.g. QualityGateFailed
    cause: str = ""
