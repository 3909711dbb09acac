"""Signed decisions for tests: an SSH key per person, made on first use, and one allowed_signers file.

Workers in tests verify decisions exactly as in production (`approvals.verify` runs `ssh-keygen -Y verify`
against `ALLOWED_SIGNERS`); these helpers sign the way `ferry approve --as USER` does.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from common import signatures
from workflows.types import Decision, Proof, RollbackInput, RolloutPromoteRequest

ROOT = Path(tempfile.mkdtemp(prefix="ferry-test-signers-"))
ALLOWED_SIGNERS = ROOT / "allowed_signers"
ALLOWED_SIGNERS.touch()
KEY_DIR = (
    ROOT / "keys"
)  # approvals.signatures.key_dir of the tests' ferry.yaml: `ferry approve --as USER` finds keys here


def key_of(user: str) -> Path:
    """`user`'s private key, listed in ALLOWED_SIGNERS as `user` and `user@example.com` (made once)."""
    key = ROOT / "keys" / user
    if not key.exists():
        public = signatures.generate_key(key, user)
        line = signatures.allowed_signers_line(f"{user},{user}@example.com", public)
        with ALLOWED_SIGNERS.open("a") as f:
            f.write(line + "\n")
    return key


def rogue_key(user: str) -> Path:
    """A key that is nobody's in ALLOWED_SIGNERS: what someone forging `user`'s signature would hold."""
    key = ROOT / "rogue" / user
    if not key.exists():
        signatures.generate_key(key, f"not-{user}")
    return key


def proof(
    workflow_id: str,
    action: str,
    stage: str,
    user: str,
    comment: str = "",
    *,
    key: Path | None = None,
    issued_at: str | None = None,
    nonce: str | None = None,
    override_freeze: bool = False,
    full: bool = False,
    target: str = "",
) -> Proof:
    """The proof `ferry approve --as user` would send (optionally with another key, time or nonce)."""
    claim = signatures.claim_for(
        workflow_id,
        action,
        stage,
        user,
        comment,
        override_freeze=override_freeze,
        full=full,
        target=target,
        issued_at=issued_at,
        nonce=nonce,
    )
    signature = signatures.sign(claim, key or key_of(user))
    return Proof(kind="ssh", claim=claim.canonical(), signature=signature)


def signed(decision: Decision, workflow_id: str, action: str | None = None) -> Decision:
    """`decision` with the proof its user would sign for it on `workflow_id`."""
    act = action or ("approve" if decision.approve else "reject")
    return dataclasses.replace(
        decision,
        proof=proof(
            workflow_id,
            act,
            decision.stage,
            decision.user,
            decision.comment,
            override_freeze=decision.override_freeze,
        ),
    )


def signed_promotion(request: RolloutPromoteRequest, workflow_id: str) -> RolloutPromoteRequest:
    """`request` with the proof its user would sign for it on `workflow_id`."""
    return dataclasses.replace(
        request,
        proof=proof(workflow_id, "promote", request.environment, request.user, request.comment, full=request.full),
    )


def signed_rollback(inp: RollbackInput, workflow_id: str) -> RollbackInput:
    """`inp` with the proof its requester would sign for it (`ferry rollback ... --as USER`)."""
    from workflows.rollback import rollback_target

    return dataclasses.replace(
        inp,
        proof=proof(
            workflow_id, "rollback", inp.environment, inp.requested_by, inp.comment, target=rollback_target(inp)
        ),
    )


for _person in ("quinn", "quentin", "rita", "raj", "rosa", "mallory", "sam", "dev"):
    key_of(_person)  # ready for the CLI, which finds keys in KEY_DIR but never makes them
