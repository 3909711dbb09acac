"""Payloads of workflows and activities: plain dataclasses, one argument each.

They carry SHAs, names, paths and digests only: never source code, never secrets. Both the workflow sandbox
and the activities import this module, so it must stay free of I/O and heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Timeouts and retries of every activity call."""

    attempts: int = 8
    start_to_close_seconds: float = 1800
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    heartbeat_seconds: float = 60.0


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
    """The GitOps commit that holds the pins, and whether this call made it."""

    commit: str
    changed: bool


@dataclass
class ArgoSyncInput:
    """Sync an Argo CD application to an exact revision and wait for Synced + Healthy there."""

    instance: str
    app: str
    revision: str


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


@dataclass
class EnvironmentStatus:
    """Where an environment stands for this release."""

    name: str
    state: str = "pending"  # pending | moving | syncing | verifying | deployed | failed
    gitops_commit: str = ""
    apps: dict[str, str] = field(default_factory=dict)


@dataclass
class ReleaseStatus:
    """Answer of the `status` query."""

    release_id: str
    commit: str
    branch: str
    stage: str
    outcome: str = "running"  # running | succeeded | failed | rejected | expired | superseded | nothing_to_release
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
