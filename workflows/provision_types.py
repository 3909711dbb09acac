"""Payloads of the Provision and Drift workflows and of the Terraform and Rancher activities.

Plans, state and kubeconfigs never travel: payloads carry workspace names, paths on the worker, plan
checksums, resource addresses and cluster names. Terraform outputs marked sensitive are dropped before
they leave the activity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workflows.types import AuditEntry


@dataclass
class AppSpec:
    """A platform service to install on a cluster through Rancher's app catalog."""

    name: str
    chart: str
    version: str
    namespace: str
    repo: str = "rancher-charts"
    values: dict = field(default_factory=dict)


@dataclass
class WorkspaceSpec:
    """A Terraform workspace as the Provision workflow sees it (frozen from ferry.yaml at start)."""

    name: str
    site: str
    task_queue: str
    path: str
    variables: dict = field(default_factory=dict)
    var_files: list[str] = field(default_factory=list)
    cluster_outputs: str = "clusters"
    apps: list[AppSpec] = field(default_factory=list)


@dataclass
class ProvisionInput:
    """Provision one workspace: plan, gate destroys/replaces, apply that exact plan, import clusters."""

    workspace: WorkspaceSpec
    gate: str | None = None
    gate_members: dict[str, list[str]] = field(default_factory=dict)
    gate_groups: list[str] = field(default_factory=list)
    auto_approve: bool = False
    plan_only: bool = False
    requested_by: str = ""


@dataclass
class InspectResult:
    """What python-hcl2 found in the root module."""

    variables: list[str]
    missing: list[str]
    providers: list[str]
    backend: str = ""


@dataclass
class TerraformInput:
    """A Terraform step on a workspace (init, plan, apply, output, drift check)."""

    workspace: WorkspaceSpec
    plan_id: str = ""
    plan_checksum: str = ""
    notify_queue: str = ""  # drift checks: the task queue of the worker that sends webhook notifications


@dataclass
class ResourceChange:
    """One entry of `resource_changes` in `terraform show -json PLAN`."""

    address: str
    actions: list[str]


@dataclass
class PlanSummary:
    """The saved plan: where it is on the worker, its checksum, and what it would change."""

    plan_id: str
    plan_checksum: str
    adds: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    destroys: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    has_changes: bool = False

    @property
    def destructive(self) -> bool:
        """True when the plan destroys or replaces anything: that needs a person's approval."""
        return bool(self.destroys or self.replaces)


@dataclass
class ApplyResult:
    """The apply of a saved plan; `stale` means Terraform refused it because state moved on."""

    applied: bool
    stale: bool = False
    message: str = ""


@dataclass
class ClusterInfo:
    """A cluster from the workspace outputs, to import into Rancher."""

    name: str
    api_endpoint: str
    kubeconfig_path: str = ""


@dataclass
class Outputs:
    """Non-sensitive outputs, and the clusters found in `cluster_outputs`."""

    values: dict = field(default_factory=dict)
    clusters: list[ClusterInfo] = field(default_factory=list)


@dataclass
class DriftResult:
    """`plan -detailed-exitcode`: 0 no changes, 2 drift (with what would change)."""

    drifted: bool
    summary: PlanSummary | None = None
    checked_at: str = ""


@dataclass
class RancherImportInput:
    """Import a cluster into Rancher (create, registration token, apply manifest, wait active)."""

    site: str
    cluster: ClusterInfo


@dataclass
class RancherCluster:
    """A cluster as Rancher knows it."""

    id: str
    name: str
    state: str


@dataclass
class RancherAppInput:
    """Install (or upgrade to) a chart version on a cluster through Rancher's app catalog."""

    site: str
    cluster_id: str
    app: AppSpec


@dataclass
class RancherAppResult:
    """What the install did: installed, upgraded or unchanged."""

    name: str
    version: str
    action: str


@dataclass
class ProvisionStatus:
    """Answer of the Provision workflow's `status` query."""

    workspace: str
    stage: str = "starting"
    outcome: str = "running"  # running | applied | planned | no_changes | rejected | failed
    plan: PlanSummary | None = None
    plans: int = 0
    clusters: list[RancherCluster] = field(default_factory=list)
    apps: list[RancherAppResult] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    error: str = ""
    gate_state: str = ""
    decided_by: str = ""
    audit: list[AuditEntry] = field(default_factory=list)
