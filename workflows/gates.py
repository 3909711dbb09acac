"""Approval gates: who may decide, what a decision does, and the audit of every attempt.

A gate is plain state inside the Release workflow. The same decision arrives either as a validated Update
(an unauthorised approver is refused at once and nothing enters history) or as a Signal from the Temporal
UI / `temporal workflow signal` (validated in the handler; a refusal is kept in the audit list).
Deterministic: time comes from `workflow.now()` passed in by the caller.
"""

from __future__ import annotations

from datetime import datetime

from workflows.types import AuditEntry, Decision, GateSpec, GateStatus


class Gates:
    """The gates of one release, their state and the audit trail."""

    def __init__(self, specs: list[GateSpec], stages: list[str]) -> None:
        self._specs = {s.name: s for s in specs}
        # One status per gated stage, in promotion order; the gate's config is looked up by name.
        self.status: dict[str, GateStatus] = {stage: GateStatus(stage=stage) for stage in stages}
        self._gate_of: dict[str, str] = {}
        self.audit: list[AuditEntry] = []
        self.waiting: str | None = None

    def bind(self, stage: str, gate: str) -> None:
        """Declare that `stage` waits on the gate named `gate` (from ferry.yaml)."""
        self._gate_of[stage] = gate

    def refusal(self, decision: Decision, stage_now: str) -> str | None:
        """Why this decision cannot be taken now, or None if it can. Pure: used by validators."""
        stage = decision.stage
        if not decision.user.strip():
            return "an approver identity is required (--as USER)"
        if stage not in self.status:
            known = ", ".join(self.status) or "none"
            return f"stage '{stage}' has no gate in this release (gated stages: {known})"
        gate = self.status[stage]
        if gate.state in ("approved", "rejected"):
            return f"gate '{stage}' was already {gate.state} by {gate.decided_by}"
        if self.waiting != stage:
            return f"gate '{stage}' is not waiting yet: the release is at stage '{stage_now}'"
        spec = self._specs.get(self._gate_of.get(stage, stage))
        if spec is None:
            return f"gate '{stage}' has no approver groups configured"
        if not any(decision.user in spec.members.get(group, []) for group in spec.groups):
            groups = ", ".join(spec.groups)
            return f"{decision.user} may not decide gate '{stage}': not a member of {groups} (ferry.yaml groups)"
        return None

    def open(self, stage: str, now: datetime) -> None:
        """The release now waits on this gate."""
        self.waiting = stage
        self.status[stage].state = "waiting"
        self.status[stage].opened_at = now.isoformat()

    def apply(self, decision: Decision, now: datetime) -> GateStatus:
        """Record an accepted decision; the caller has checked `refusal()` first."""
        gate = self.status[decision.stage]
        gate.state = "approved" if decision.approve else "rejected"
        gate.decided_by = decision.user
        gate.comment = decision.comment
        gate.decided_at = now.isoformat()
        self.waiting = None
        self.audit.append(
            AuditEntry(
                stage=decision.stage,
                user=decision.user,
                action="approve" if decision.approve else "reject",
                channel=decision.channel,
                at=now.isoformat(),
                comment=decision.comment,
            )
        )
        return gate

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
        """True once the gate of `stage` is approved or rejected."""
        return self.status[stage].state in ("approved", "rejected")
