"""The part of ferry.yaml a release needs (`ReleasePlan`), and the approval policy of one gate (`GatePolicy`).

Both are built on a worker from the worker's own ferry.yaml (`ferry.plan`, `approvals.policy`) and recorded
in the history, so a release replays against the configuration it ran with, and no caller can widen them.
The CLI builds a plan too, only to know where to send things (the app repo's name, the onprem queue).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from common.config import FerryConfig
from workflows.approval_types import GatePolicy
from workflows.types import (
    ActivitySettings,
    AllowedCveSpec,
    EnvironmentSpec,
    FreezeWindowSpec,
    GateSpec,
    ReleasePlan,
    ServiceSpec,
)


def build_plan(cfg: FerryConfig) -> ReleasePlan:
    """The ReleasePlan of this configuration; holds names, URLs and groups, never a secret."""
    onprem_harbor = cfg.sites["onprem"].harbor
    tekton = cfg.sites["onprem"].tekton
    assert onprem_harbor is not None and tekton is not None  # guaranteed by config validation
    environments = []
    for name, env in cfg.environments.items():
        harbor = cfg.site(env.site).harbor
        assert harbor is not None
        environments.append(
            EnvironmentSpec(
                name=name,
                site=env.site,
                path=env.path,
                task_queue=cfg.task_queue(env.site),
                harbor_registry=harbor.registry_host,
                harbor_project=harbor.project,
                gate=env.gate,
                e2e=env.e2e,
                block_severity=env.policy.block_severity,
                allow_cves=[
                    AllowedCveSpec(id=c.id, expires=c.expires.isoformat(), reason=c.reason)
                    for c in env.policy.allow_cves
                ],
                require_signature=env.policy.require_signature,
                rollouts={svc: r for svc, s in cfg.services.items() if (r := s.rollouts.get(name))},
                rollout_namespace=env.rollout.namespace or "",
                promotion=env.rollout.promotion,
                soak_seconds=env.rollout.soak_minutes * 60,
                auto_rollback=env.auto_rollback,
            )
        )
    t = cfg.timeouts
    return ReleasePlan(
        app_repo=cfg.repos.app.short_name,
        app_repo_url=cfg.repos.app.url,
        app_default_branch=cfg.repos.app.branch,
        gitops_repo_url=cfg.repos.gitops.url,
        gitops_branch=cfg.repos.gitops.branch,
        services=[
            ServiceSpec(
                name=name,
                paths=list(s.paths),
                depends_on=list(s.depends_on),
                kind=s.kind,
                image=s.image,
                sonar_project=s.sonar_project,
                argocd_apps=dict(s.argocd_apps),
            )
            for name, s in cfg.services.items()
        ],
        environments=environments,
        gates=[gate_spec(cfg, g) for g in cfg.gates],
        freeze_windows=freeze_windows(cfg),
        freeze_override_members=freeze_override_members(cfg),
        notify=cfg.notifications.webhook_url is not None,
        sign_images=cfg.signing.key is not None,
        change_engine=cfg.change_analysis.engine,
        global_paths=cfg.change_analysis.global_paths,
        package_manifests=cfg.change_analysis.package_manifests,
        onprem_queue=cfg.task_queue("onprem"),
        onprem_registry=onprem_harbor.registry_host,
        onprem_project=onprem_harbor.project,
        block_severity=cfg.policy.block_severity,
        replication_policies=dict(onprem_harbor.replication_policies),
        tekton_namespace=tekton.namespace,
        tekton_pipeline=tekton.pipeline,
        feedback_queue=cfg.task_queue(cfg.feedback.site) if cfg.feedback.tracker != "none" else "",
        ui_url=cfg.temporal.ui_url or "",
        # As the CLI connects (common/temporal.py): links must name the namespace the release really runs in.
        temporal_namespace=os.environ.get("TEMPORAL_NAMESPACE") or cfg.temporal.namespace,
        activities=ActivitySettings(
            attempts=t.activity_attempts,
            start_to_close_seconds=t.activity_start_to_close_seconds,
            retry_initial_seconds=t.retry_initial_seconds,
            retry_max_seconds=t.retry_max_seconds,
            heartbeat_seconds=t.heartbeat_seconds,
            retry_budget_seconds=t.retry_budget_seconds,
        ),
    )


def gate_spec(cfg: FerryConfig, name: str) -> GateSpec:
    """Who may decide the gate `name`, with its groups' members as configured now."""
    gate = cfg.gates[name]
    return GateSpec(
        name=name,
        groups=list(gate.groups),
        members={grp: list(cfg.groups[grp]) for grp in gate.groups},
        required_approvals=gate.required_approvals,
        forbid_commit_author=gate.forbid_commit_author,
        forbid_previous_approvers=gate.forbid_previous_approvers,
        deadline_seconds=(gate.deadline_hours or cfg.approvals.deadline_hours) * 3600,
        trust_teams=cfg.approvals.trust_buildkite_teams,
    )


def freeze_windows(cfg: FerryConfig) -> list[FreezeWindowSpec]:
    """The configured freeze windows."""
    return [
        FreezeWindowSpec(
            environments=list(w.environments),
            reason=w.reason,
            start=w.start.isoformat() if w.start else "",
            end=w.end.isoformat() if w.end else "",
            cron=w.cron or "",
            duration_seconds=(w.duration_hours or 0) * 3600,
        )
        for w in cfg.freeze_windows
    ]


def freeze_override_members(cfg: FerryConfig) -> list[str]:
    """Release managers: the members of approvals.freeze_override_groups."""
    return sorted({m for grp in cfg.approvals.freeze_override_groups for m in cfg.groups.get(grp, [])})


def build_gate_policy(cfg: FerryConfig, gate: str) -> GatePolicy:
    """The policy of gate `gate` ('' for none: release managers and freezes only), versioned by its hash.

    The version is the sha256 of the policy's canonical JSON, so the same rules give the same version on every
    worker and `ferry status` can say which rules decided a gate.
    """
    policy = GatePolicy(
        version="",
        gate=gate_spec(cfg, gate) if gate else None,
        freeze_windows=freeze_windows(cfg),
        freeze_override_members=freeze_override_members(cfg),
        trust_unverified=cfg.approvals.trust_unverified,
    )
    canonical = json.dumps(dataclasses.asdict(policy), sort_keys=True, separators=(",", ":"))
    policy.version = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return policy
