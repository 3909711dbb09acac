"""Approval gates: who may decide, how many must agree, who may not, and the audit of every attempt.

A gate is plain state inside a workflow. The same decision arrives either as a validated Update (an
unauthorised approver is refused at once and nothing enters history) or as a Signal from the Temporal UI /
`temporal workflow signal` (validated in the handler; a refusal is kept in the audit list).
Policy per gate (from ferry.yaml, frozen into the workflow input): allowed groups (or trusted Buildkite
teams), the number of distinct approvers, and four-eyes rules (the commit author, and whoever approved an
earlier gate of the same release, may be forbidden). Deterministic: time comes from the caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

from workflows.types import AuditEntry, Decision, GateSpec, GateStatus


class Gates:
    """The gates of one run, their state and the audit trail."""

    def __init__(
        self,
        specs: list[GateSpec],
        stages: list[str],
        *,
        author: tuple[str, str] = ("", ""),
        freeze_overriders: list[str] | None = None,
    ) -> None:
        self._specs = {s.name: s for s in specs}
        # One status per gated stage, in promotion order; the gate's config is looked up by name.
        self.status: dict[str, GateStatus] = {stage: GateStatus(stage=stage) for stage in stages}
        self._gate_of: dict[str, str] = {}
        self.audit: list[AuditEntry] = []
        self.waiting: str | None = None
        self.author = author
        self._overriders = set(freeze_overriders or [])

    def bind(self, stage: str, gate: str) -> None:
        """Declare that `stage` waits on the gate named `gate` (from ferry.yaml)."""
        self._gate_of[stage] = gate
        spec = self._spec(stage)
        if spec is not None:
            self.status[stage].required = spec.required_approvals

    def set_author(self, name: str, email: str) -> None:
        """The commit's author, for the four-eyes rule (known once CI has read the commit)."""
        self.author = (name, email)

    def _spec(self, stage: str) -> GateSpec | None:
        return self._specs.get(self._gate_of.get(stage, stage))

    def deadline_seconds(self, stage: str) -> float:
        """How long this gate waits before the run expires."""
        spec = self._spec(stage)
        return spec.deadline_seconds if spec else 72 * 3600

    # --- deciding ---

    def refusal(self, decision: Decision, stage_now: str) -> str | None:
        """Why this decision cannot be taken now, or None if it can. Pure: used by validators."""
        stage = decision.stage
        if not decision.user.strip():
            return "an approver identity is required (--as USER or --from-buildkite)"
        if stage not in self.status:
            known = ", ".join(self.status) or "none"
            return f"stage '{stage}' has no gate here (gated stages: {known})"
        gate = self.status[stage]
        if decision.override_freeze:
            if decision.user not in self._overriders:
                return f"{decision.user} may not override a freeze (approvals.freeze_override_groups in ferry.yaml)"
            if not decision.comment.strip():
                return "--override-freeze needs --comment saying why"
            if gate.state == "approved":
                return None if gate.frozen_until else f"gate '{stage}' is not waiting for a freeze window"
        if gate.state in ("approved", "rejected", "expired"):
            who = f" by {gate.decided_by}" if gate.decided_by else ""
            return f"gate '{stage}' was already {gate.state}{who}"
        if self.waiting != stage:
            return f"gate '{stage}' is not waiting yet: the run is at stage '{stage_now}'"
        spec = self._spec(stage)
        if spec is None:
            return f"gate '{stage}' has no approver groups configured"
        ids = {decision.user, decision.email} - {""}
        member = any(ids & set(spec.members.get(group, [])) for group in spec.groups)
        by_team = spec.trust_teams and bool(set(decision.teams) & set(spec.groups))
        if not (member or by_team):
            groups = ", ".join(spec.groups)
            return f"{decision.user} may not decide gate '{stage}': not a member of {groups} (ferry.yaml groups)"
        if decision.approve:
            return self._four_eyes(decision, stage, spec)
        return None

    def _four_eyes(self, decision: Decision, stage: str, spec: GateSpec) -> str | None:
        if spec.forbid_commit_author and self._is_author(decision):
            return (
                f"four-eyes: {decision.user} is the author of the commit and may not approve gate '{stage}'; "
                f"another member of {', '.join(spec.groups)} must approve"
            )
        if spec.forbid_previous_approvers:
            for earlier, status in self.status.items():
                if earlier == stage:
                    break
                if decision.user in status.approvals:
                    return (
                        f"four-eyes: {decision.user} approved gate '{earlier}' of this release and may not "
                        f"approve gate '{stage}' too"
                    )
        return None

    def _is_author(self, decision: Decision) -> bool:
        name, email = (v.strip().lower() for v in self.author)
        ids = {decision.user.strip().lower(), decision.email.strip().lower()} - {""}
        return bool(ids & ({name, email, email.split("@")[0]} - {""}))

    def open(self, stage: str, now: datetime) -> None:
        """The run now waits on this gate."""
        self.waiting = stage
        gate = self.status[stage]
        gate.state = "waiting"
        gate.opened_at = now.isoformat()

    def apply(self, decision: Decision, now: datetime) -> GateStatus:
        """Record an accepted decision; the caller has checked `refusal()` first.

        Approvals count per distinct person: the same person approving twice counts once.
        """
        gate = self.status[decision.stage]
        action = "approve" if decision.approve else "reject"
        if not decision.approve:
            self._close(gate, "rejected", decision, now)
        elif gate.state == "approved":
            action = "override-freeze"  # an override of a gate already approved and waiting for a window
        else:
            if decision.user not in gate.approvals:
                gate.approvals.append(decision.user)
            if len(gate.approvals) >= gate.required:
                self._close(gate, "approved", decision, now)
        if decision.override_freeze:
            gate.freeze_overridden_by = decision.user
            if action == "approve":
                action = "approve+override-freeze"
        self.audit.append(
            AuditEntry(
                stage=decision.stage,
                user=decision.user,
                action=action,
                channel=decision.channel,
                at=now.isoformat(),
                comment=decision.comment,
            )
        )
        return gate

    def _close(self, gate: GateStatus, state: str, decision: Decision, now: datetime) -> None:
        gate.state = state
        gate.decided_by = decision.user
        gate.comment = decision.comment
        gate.decided_at = now.isoformat()
        self.waiting = None

    def expire(self, stage: str, now: datetime) -> None:
        """The deadline passed with the gate still open: the run ends `expired`."""
        gate = self.status[stage]
        gate.state = "expired"
        gate.decided_at = now.isoformat()
        self.waiting = None
        self.audit.append(
            AuditEntry(stage=stage, user="ferry", action="expired", channel="deadline", at=now.isoformat())
        )

    def refuse(self, decision: Decision, reason: str, now: datetime) -> None:
        """Keep a refused signal in the audit (updates are refused before they reach history)."""
        self.audit.append(
            AuditEntry(
                stage=decision.stage,
                user=decision.user,
                action="refused",
                channel=decision.channel,
                at=now.isoformat(),
                comment=decision.comment,
                reason=reason,
            )
        )

    def decided(self, stage: str) -> bool:
        """True once the gate of `stage` is approved, rejected or expired."""
        return self.status[stage].state in ("approved", "rejected", "expired")


class GateHandlers:
    """The `approve` / `reject` Updates (validated) and the `decide` Signal (refusals audited), for every
    workflow with gates: Release and Provision answer the same CLI (`ferry approve`) and Temporal UI.

    The workflow sets `self._gates` and keeps its current stage in `self._status.stage`.
    """

    _gates: Gates
    _status: Any

    @workflow.update
    def approve(self, decision: Decision) -> GateStatus:
        """Approve the gate named by `decision.stage` (validated: group, four-eyes, waiting now)."""
        decision.approve = True
        return self._gates.apply(decision, workflow.now())

    @approve.validator
    def _validate_approve(self, decision: Decision) -> None:
        if reason := self._gates.refusal(decision, self._status.stage):
            raise ValueError(reason)

    @workflow.update
    def reject(self, decision: Decision) -> GateStatus:
        """Reject the gate: the run ends as `rejected`, with who and why in its status."""
        decision.approve = False
        return self._gates.apply(decision, workflow.now())

    @reject.validator
    def _validate_reject(self, decision: Decision) -> None:
        if reason := self._gates.refusal(decision, self._status.stage):
            raise ValueError(reason)

    @workflow.signal
    def decide(self, decision: Decision) -> None:
        """The same decision as a Signal (Temporal UI, `temporal workflow signal`); refusals are audited."""
        decision.channel = "signal"
        if reason := self._gates.refusal(decision, self._status.stage):
            self._gates.refuse(decision, reason, workflow.now())
            return
        self._gates.apply(decision, workflow.now())
