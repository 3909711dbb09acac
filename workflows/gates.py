"""Approval gates: who may decide, how many must agree, who may not, and the audit of every attempt.

A gate is plain state inside a workflow. The same decision arrives either as an Update (`approve`,
`reject`: the caller gets the answer, or the refusal's reason, at once) or as the Signal `decide` (Temporal
UI, `temporal workflow signal`). Nothing a caller sends is believed: the gate's policy (groups and members,
distinct approvals, four-eyes rules, deadline, freeze windows and overrides) is loaded from the workers'
ferry.yaml when the gate opens (`approvals.policy`, recorded with its version hash), and the identity of
the person deciding is what a worker verified (`approvals.verify`: an SSH signature, or Buildkite's record
of who unblocked the block step). Every refusal on either channel is audited with the channel, the name
claimed and the reason. Deterministic: time comes from the caller.

Releases that started before verified decisions (PATCH_VERIFIED) replay along the old path, where the
policy came from the workflow input and the identity from the decision itself.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from workflows.approval_types import MAX_COMMENT, MAX_NAME, PLAINTEXT_MARK, GatePolicy, Identity
from workflows.identity import check_size, identify
from workflows.types import AuditEntry, Decision, GateSpec, GateStatus

# Decisions are verified by a worker and the gate policy is the workers' (see the module docstring).
PATCH_VERIFIED = "verified-approvals-v1"
DECISION_REFUSED = "DecisionRefused"
MALFORMED_DECISION = "MalformedDecision"
MAX_REFUSALS = 200  # refused attempts kept in the audit; later ones are counted, so spam cannot grow state
PLAINTEXT_REFUSED = (
    "the decision arrived unencrypted although this namespace's payloads are encrypted: only a client "
    "without Ferry's keys sends one; use `ferry approve`"
)
T = TypeVar("T")


def read_decision(raw: RawValue, kind: type[T]) -> tuple[T, bool]:
    """The decision in `raw`, and whether it arrived in plaintext where payloads are encrypted.

    Ferry's encryption codec marks the payloads it passed through unencrypted (common/codec.py); without
    encryption nothing is marked. The handlers take the raw payload because the mark is metadata, which the
    converters drop. A payload that is no `kind` raises MalformedDecision (an ApplicationError): never an
    error that would fail the workflow task and stall the run.
    """
    try:
        decision = workflow.payload_converter().from_payload(raw.payload, kind)
    except Exception as e:  # noqa: BLE001 - anything a caller sends must end as a refusal, not a task failure
        raise ApplicationError(
            f"not a {kind.__name__}: {str(e)[:200]}", type=MALFORMED_DECISION, non_retryable=True
        ) from None
    return decision, PLAINTEXT_MARK in raw.payload.metadata


def _readable(raw: RawValue) -> Decision:
    """A validator's view of the Update's Decision: one that cannot be read is refused at the door."""
    try:
        return read_decision(raw, Decision)[0]
    except ApplicationError as e:
        raise ValueError(e.message) from None


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
        self.policies: dict[str, GatePolicy] = {}  # stage -> the worker-loaded policy it opened under
        self.nonces: set[str] = set()  # proofs already used: a replayed signature or unblock counts once
        self.refusals_dropped = 0
        self._ids: dict[str, list[str]] = {}  # approver -> every name they were verified as (four-eyes)

    def bind(self, stage: str, gate: str) -> None:
        """Declare that `stage` waits on the gate named `gate` (from ferry.yaml)."""
        self._gate_of[stage] = gate
        spec = self._spec(stage)
        if spec is not None:
            self.status[stage].required = spec.required_approvals

    def set_author(self, name: str, email: str) -> None:
        """The commit's author, for the four-eyes rule (known once CI has read the commit)."""
        self.author = (name, email)

    def load(self, stage: str, policy: GatePolicy) -> None:
        """The policy the workers loaded as the gate opens: it, not the workflow input, decides the gate."""
        self.policies[stage] = policy
        status = self.status[stage]
        status.policy_version = policy.version
        if policy.gate is not None:
            status.required = policy.gate.required_approvals

    def policy(self, stage: str) -> GatePolicy | None:
        """The worker-loaded policy of `stage`, once its gate opened."""
        return self.policies.get(stage)

    def _spec(self, stage: str) -> GateSpec | None:
        if stage in self.policies:
            return self.policies[stage].gate
        return self._specs.get(self._gate_of.get(stage, stage))

    def _overriders_of(self, stage: str) -> set[str]:
        if stage in self.policies:
            return set(self.policies[stage].freeze_override_members)
        return self._overriders

    def deadline_seconds(self, stage: str) -> float:
        """How long this gate waits before the run expires."""
        spec = self._spec(stage)
        return spec.deadline_seconds if spec else 72 * 3600

    # --- deciding ---

    def refusal(
        self, decision: Decision, stage_now: str, ids: list[str] | None = None, *, identity_known: bool = True
    ) -> str | None:
        """Why this decision cannot be taken now, or None if it can. Pure: used by validators and handlers.

        `decision.approve` must say what will be recorded. `ids` are every name the decider was verified as
        (default: the decision's user and email). With `identity_known=False` only what does not depend on
        who decides is checked (a validator, before the worker verified anyone).
        """
        stage = decision.stage
        if not decision.user.strip():
            return "an approver identity is required (--as USER or --from-buildkite)"
        if stage not in self.status:
            known = ", ".join(self.status) or "none"
            return f"stage '{stage}' has no gate here (gated stages: {known})"
        gate = self.status[stage]
        ids_set = set(ids if ids is not None else [decision.user, decision.email]) - {""}
        if decision.override_freeze:
            if identity_known and not ids_set & self._overriders_of(stage):
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
        if not identity_known:
            return None
        spec = self._spec(stage)
        if spec is None:
            return f"gate '{stage}' has no approver groups configured"
        member = any(ids_set & set(spec.members.get(group, [])) for group in spec.groups)
        by_team = spec.trust_teams and bool(set(decision.teams) & set(spec.groups))
        if not (member or by_team):
            groups = ", ".join(spec.groups)
            return f"{decision.user} may not decide gate '{stage}': not a member of {groups} (ferry.yaml groups)"
        if decision.approve:
            return self._four_eyes(decision, stage, spec, ids_set)
        return None

    def _four_eyes(self, decision: Decision, stage: str, spec: GateSpec, ids: set[str]) -> str | None:
        if spec.forbid_commit_author and self._is_author(ids):
            return (
                f"four-eyes: {decision.user} is the author of the commit and may not approve gate '{stage}'; "
                f"another member of {', '.join(spec.groups)} must approve"
            )
        if spec.forbid_previous_approvers:
            for earlier, status in self.status.items():
                if earlier == stage:
                    break
                if any(ids & self._person(user) for user in status.approvals):
                    return (
                        f"four-eyes: {decision.user} approved gate '{earlier}' of this release and may not "
                        f"approve gate '{stage}' too"
                    )
        return None

    def _person(self, user: str) -> set[str]:
        """Every name an approver was verified as (their user name, email, allowed_signers aliases)."""
        return set(self._ids.get(user, [user])) - {""}

    def _is_author(self, ids: set[str]) -> bool:
        name, email = (v.strip().lower() for v in self.author)
        lowered = {i.strip().lower() for i in ids} - {""}
        return bool(lowered & ({name, email, email.split("@")[0]} - {""}))

    def open(self, stage: str, now: datetime) -> None:
        """The run now waits on this gate."""
        self.waiting = stage
        gate = self.status[stage]
        gate.state = "waiting"
        gate.opened_at = now.isoformat()

    def apply(
        self, decision: Decision, now: datetime, identity: Identity | None = None, ids: list[str] | None = None
    ) -> GateStatus:
        """Record an accepted decision; the caller has checked `refusal()` first.

        Approvals count per distinct person: the same person approving twice (under any of the names they
        were verified as) counts once. `identity` says how the worker verified the decider.
        """
        gate = self.status[decision.stage]
        person = set(ids or [decision.user]) - {""}
        action = "approve" if decision.approve else "reject"
        if identity is not None and identity.nonce:
            self.nonces.add(identity.nonce)
        if identity is not None and identity.unverified:
            gate.unverified = True
        if identity is not None:
            gate.verified_by.append(f"{decision.user}: {identity.method}")
        if not decision.approve:
            self._close(gate, "rejected", decision, now)
        elif gate.state == "approved":
            action = "override-freeze"  # an override of a gate already approved and waiting for a window
        else:
            if not any(person & self._person(user) for user in gate.approvals):
                gate.approvals.append(decision.user)
                if ids:
                    self._ids[decision.user] = sorted(person)
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
                method=identity.method if identity else "",
                policy_version=gate.policy_version,
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

    def refuse(self, decision: Decision, reason: str, now: datetime, method: str = "") -> None:
        """Keep a refused attempt in the audit, with the name it claimed (bounded: see MAX_REFUSALS)."""
        if sum(1 for a in self.audit if a.action == "refused") >= MAX_REFUSALS:
            self.refusals_dropped += 1
            return
        self.audit.append(
            AuditEntry(
                stage=decision.stage[:MAX_NAME],
                user=decision.user[:MAX_NAME],
                action="refused",
                channel=decision.channel[:MAX_NAME],
                at=now.isoformat(),
                comment=decision.comment[:MAX_COMMENT],
                reason=reason,
                method=method,
                policy_version=self.status[decision.stage].policy_version if decision.stage in self.status else "",
            )
        )

    def decided(self, stage: str) -> bool:
        """True once the gate of `stage` is approved, rejected or expired."""
        return self.status[stage].state in ("approved", "rejected", "expired")


class GateHandlers:
    """The `approve` / `reject` Updates and the `decide` Signal, for every workflow with gates: Release and
    Provision answer the same CLI (`ferry approve`) and Temporal UI.

    The workflow sets `self._gates`, keeps its current stage in `self._status.stage`, sets `self._verified`
    (PATCH_VERIFIED) at the start of its run, and says in `_decision_commit()` which commit a Buildkite proof
    must come from.
    """

    _gates: Gates
    _status: Any
    _verified: bool = False

    def _decision_commit(self) -> str:
        return ""

    # Handlers take the raw payload (a Decision) to see whether it arrived encrypted; see `read_decision`.

    @workflow.update
    async def approve(self, raw: RawValue) -> GateStatus:
        """Approve the gate named by the Decision's stage: the decider's identity verified, then the policy."""
        decision, plaintext = read_decision(raw, Decision)
        return await self._take(dataclasses.replace(decision, approve=True), update=True, plaintext=plaintext)

    @approve.validator
    def _validate_approve(self, raw: RawValue) -> None:
        self._validate(dataclasses.replace(_readable(raw), approve=True))

    @workflow.update
    async def reject(self, raw: RawValue) -> GateStatus:
        """Reject the gate (a Decision): the run ends as `rejected`, with who and why in its status."""
        decision, plaintext = read_decision(raw, Decision)
        return await self._take(dataclasses.replace(decision, approve=False), update=True, plaintext=plaintext)

    @reject.validator
    def _validate_reject(self, raw: RawValue) -> None:
        self._validate(dataclasses.replace(_readable(raw), approve=False))

    @workflow.signal
    async def decide(self, raw: RawValue) -> None:
        """The same Decision as a Signal (Temporal UI, `temporal workflow signal`); refusals are audited."""
        try:
            decision, plaintext = read_decision(raw, Decision)
        except ApplicationError as e:
            if self._verified:  # older runs dropped what they could not read, before it reached the handler
                self._gates.refuse(Decision(stage="?", user="?", channel="signal"), e.message, workflow.now())
            return
        decision.channel = "signal"
        await self._take(decision, update=False, plaintext=plaintext)

    def _validate(self, decision: Decision) -> None:
        """Refuse at the door what must not enter history. Verified runs check who decides in the handler,
        where the refusal is audited; older runs check everything here, as they always did."""
        if self._verified:
            # Only what must not enter history is refused here; every other refusal happens in the handler,
            # where it is audited with the channel and the name claimed.
            if reason := check_size(decision.user, decision.comment, decision.stage, decision.proof):
                raise ValueError(reason)
            return
        if reason := self._gates.refusal(decision, self._status.stage):
            raise ValueError(reason)

    async def _take(self, decision: Decision, *, update: bool, plaintext: bool = False) -> GateStatus:
        gates, now = self._gates, workflow.now
        if not self._verified:
            if not update and (reason := gates.refusal(decision, self._status.stage)):
                gates.refuse(decision, reason, now())
                return gates.status.get(decision.stage) or GateStatus(stage=decision.stage)
            return gates.apply(decision, now())

        def refused(reason: str, method: str = "") -> GateStatus:
            gates.refuse(decision, reason, now(), method)
            if update:
                raise ApplicationError(reason, type=DECISION_REFUSED, non_retryable=True)
            return gates.status.get(decision.stage) or GateStatus(stage=decision.stage)

        if not update and (reason := check_size(decision.user, decision.comment, decision.stage, decision.proof)):
            return refused(reason)
        if plaintext:
            return refused(PLAINTEXT_REFUSED)
        if reason := gates.refusal(decision, self._status.stage, identity_known=False):
            return refused(reason)
        policy = gates.policy(decision.stage)
        if policy is None:  # a waiting gate of a verified run always opened with its policy loaded
            return refused(f"gate '{decision.stage}' has no policy loaded; try again once it waits")
        identity = await identify(
            action="approve" if decision.approve else "reject",
            stage=decision.stage,
            user=decision.user,
            comment=decision.comment,
            proof=decision.proof,
            commit=self._decision_commit(),
            policy=policy,
            seen=gates.nonces,
            override_freeze=decision.override_freeze,
        )
        if not identity.verified:
            return refused(identity.reason, identity.method)
        trusted = dataclasses.replace(
            decision, user=identity.user, email=identity.email, teams=list(identity.teams), proof=None
        )
        # Checked again after the await: another decision may have closed the gate meanwhile.
        if reason := gates.refusal(trusted, self._status.stage, identity.aliases):
            return refused(reason, identity.method)
        return gates.apply(trusted, now(), identity, identity.aliases)
