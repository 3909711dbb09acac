"""The workers' own word on plans, policies and identities: `ferry.plan`, `approvals.policy`, `approvals.verify`.

Anyone who can reach the Temporal namespace can start a workflow or send an Update with any payload, so a
workflow takes neither its plan, its gate policy nor anyone's identity from its caller. These activities
answer from the worker's own ferry.yaml (re-read at each call, so an edit applies to the next gate that
opens without a restart) and from systems the worker itself asks: an SSH signature checked against the
configured allowed_signers file, or the Buildkite API's record of who unblocked a block step. Their results
are recorded in the history, so a replay sees what decided.

A refusal is an answer, not an error: `approvals.verify` returns `Identity(verified=False, reason=...)`,
so the workflow audits it and the person gets the reason at once. Only an unreachable Buildkite retries.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.buildkite import BuildkiteClient
from activities.buildkite_unblock import read_unblock
from activities.errors import retryable
from common import signatures
from common.config import ConfigError, FerryConfig
from common.plan import build_gate_policy, build_plan
from workflows.approval_types import GatePolicy, Identity, PolicyRequest, VerifyInput
from workflows.types import ReleasePlan

CONFIG_INVALID = "WorkerConfigInvalid"
# A claim may be dated a little ahead of the worker's clock (clock skew between laptop and worker).
CLOCK_SKEW = timedelta(seconds=120)


class ApprovalActivities:
    """Plans, gate policies and identity checks, from the worker's own configuration."""

    def __init__(self, config: Callable[[], FerryConfig], transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._config = config
        self._transport = transport
        self._buildkite: BuildkiteClient | None = None

    @classmethod
    def from_config(
        cls, cfg: FerryConfig, path: Path | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> ApprovalActivities:
        """Re-read `path` at every call when given (an edit applies without a restart); else always `cfg`."""
        if path is None:
            return cls(lambda: cfg, transport)

        def load() -> FerryConfig:
            from common.config import load_config

            try:
                return load_config(path)
            except ConfigError as e:
                # Retried within the call's budget; then the workflow fails naming this (ready for `ferry retry`),
                # rather than deciding under rules nobody wrote.
                raise retryable(f"the worker's ferry.yaml is invalid, fix it: {e}", CONFIG_INVALID) from None

        return cls(load, transport)

    async def _client(self, cfg: FerryConfig) -> BuildkiteClient | None:
        """The Buildkite client of the configuration read now (a new one, the old closed, if it changed)."""
        endpoint = cfg.sites["onprem"].buildkite if "onprem" in cfg.sites else None
        if self._buildkite is not None and self._buildkite.endpoint != endpoint:
            await self._buildkite.aclose()
            self._buildkite = None
        if endpoint is not None and self._buildkite is None:
            self._buildkite = BuildkiteClient(endpoint, self._transport)
        return self._buildkite

    @activity.defn(name="ferry.plan")
    async def plan(self, _: PolicyRequest) -> ReleasePlan:
        """The release plan of the worker's ferry.yaml: services, environments, gates, queues."""
        return build_plan(self._config())

    @activity.defn(name="approvals.policy")
    async def policy(self, inp: PolicyRequest) -> GatePolicy:
        """The policy of one gate as configured on this worker now, with its version hash."""
        cfg = self._config()
        if inp.environment == "provisioning":
            gate = cfg.provisioning.gate or ""
        else:
            # An environment's gate is the one this worker's config gives it, whatever the workflow asks for.
            env = cfg.environments.get(inp.environment)
            gate = (env.gate or "") if env is not None else (inp.gate if inp.gate in cfg.gates else "")
        return build_gate_policy(cfg, gate)

    @activity.defn(name="approvals.verify")
    async def verify(self, inp: VerifyInput) -> Identity:
        """Who sent this decision, as a signature or Buildkite proves it; `verified=False` with the reason if not."""
        cfg = self._config()
        kind = inp.proof.kind
        if kind == "ssh":
            # ssh-keygen runs in a thread: a few milliseconds each, never on the worker's event loop.
            return await asyncio.to_thread(self._verify_ssh, cfg, inp)
        if kind == "buildkite":
            return await self._verify_buildkite(cfg, inp)
        return Identity(verified=False, reason=f"unknown proof kind '{kind}' (ssh or buildkite)")

    def _verify_ssh(self, cfg: FerryConfig, inp: VerifyInput) -> Identity:
        sigs = cfg.approvals.signatures
        if sigs is None:
            return Identity(
                verified=False, reason="this Ferry accepts no signed decisions (approvals.signatures is not configured)"
            )
        try:
            claim = signatures.Claim.parse(inp.proof.claim)
        except signatures.SignatureError as e:
            return Identity(verified=False, reason=str(e))
        expected = {
            "workflow_id": inp.workflow_id,
            "action": inp.action,
            "stage": inp.stage,
            "principal": inp.user,
            "override_freeze": inp.override_freeze,
            "full": inp.full,
            "target": inp.target,
        }
        for key, want in expected.items():
            got = getattr(claim, key)
            if got != want:
                return Identity(
                    verified=False, reason=f"the signed decision is for {key} '{got}', not '{want}': a replay?"
                )
        if not hmac.compare_digest(claim.comment_sha256, signatures.comment_digest(inp.comment)):
            return Identity(verified=False, reason="the comment is not the one that was signed")
        try:
            issued = datetime.fromisoformat(claim.issued_at)
        except ValueError:
            return Identity(verified=False, reason=f"issued_at '{claim.issued_at}' is not a time")
        if issued.tzinfo is None:
            return Identity(verified=False, reason="issued_at has no timezone")
        now = datetime.now(UTC)
        if issued > now + CLOCK_SKEW:
            return Identity(verified=False, reason=f"the signed decision is dated in the future ({claim.issued_at})")
        if now - issued > timedelta(seconds=sigs.max_age_seconds):
            return Identity(
                verified=False,
                reason=f"the signed decision expired: signed at {claim.issued_at}, valid for "
                f"{sigs.max_age_seconds:g}s (approvals.signatures.max_age_seconds); sign it again",
            )
        if not claim.nonce or len(claim.nonce) > 100:
            return Identity(verified=False, reason="the signed decision has no usable nonce")
        try:
            fingerprint = signatures.verify(
                inp.proof.claim, inp.proof.signature, claim.principal, Path(sigs.allowed_signers)
            )
        except signatures.SignatureError as e:
            return Identity(verified=False, reason=str(e))
        activity.logger.info("verified signed decision of %s (%s)", claim.principal, fingerprint)
        return Identity(
            verified=True,
            user=claim.principal,
            method=f"ssh signature {fingerprint}",
            nonce=f"ssh:{claim.nonce}",
            aliases=signatures.principals_of(Path(sigs.allowed_signers), claim.principal),
        )

    async def _verify_buildkite(self, cfg: FerryConfig, inp: VerifyInput) -> Identity:
        client = await self._client(cfg)
        if client is None:
            return Identity(verified=False, reason="sites.onprem.buildkite is not configured on this worker")
        proof = inp.proof
        allowed = cfg.approvals.buildkite_pipelines
        if allowed and proof.pipeline not in allowed:
            return Identity(
                verified=False,
                reason=f"pipeline '{proof.pipeline}' may not decide gates (approvals.buildkite_pipelines: "
                f"{', '.join(allowed)})",
            )
        want_step = cfg.approvals.block_step(inp.action, inp.stage)
        if proof.step_key != want_step:
            return Identity(
                verified=False,
                reason=f"block step '{proof.step_key}' does not decide {inp.stage}; its block step is '{want_step}'",
            )
        try:
            unblock = await read_unblock(
                client,
                proof.pipeline,
                proof.build_number,
                step_key=proof.step_key,
                with_teams=cfg.approvals.trust_buildkite_teams,
            )
        except ApplicationError as e:
            if e.non_retryable:  # Buildkite answered, and does not vouch for it: that is the answer
                return Identity(verified=False, reason=e.message)
            raise  # unreachable or 5xx: retried
        if inp.commit and unblock.commit != inp.commit:
            return Identity(
                verified=False,
                reason=f"build {proof.pipeline} #{proof.build_number} is of commit {unblock.commit[:12]}, "
                f"not of this release's {inp.commit[:12]}",
            )
        user = unblock.email or unblock.name
        sigs = cfg.approvals.signatures
        # Buildkite vouches for the email (display names are anyone's to choose), and allowed_signers says
        # which other names that person signs as.
        aliases = signatures.principals_of(Path(sigs.allowed_signers), user) if sigs and unblock.email else [user]
        return Identity(
            verified=True,
            user=user,
            aliases=aliases,
            email=unblock.email,
            teams=list(unblock.teams),
            method=f"buildkite {proof.pipeline} #{proof.build_number} {proof.step_key} unblocked by {unblock.name}",
            nonce=f"buildkite:{unblock.job_id}",
        )

    async def aclose(self) -> None:
        """Close the Buildkite connection pool."""
        if self._buildkite is not None:
            await self._buildkite.aclose()
