"""Payloads of verified decisions: the proof a caller sends, and what the workers say of it and of the policy.

A caller can send anything to a workflow, so nothing here is believed because it arrived: a `Proof` is only
checked by a worker (`approvals.verify`), and the `GatePolicy` comes from the workers' own ferry.yaml
(`approvals.policy`), recorded in the history so every replay sees the policy that decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workflows.types import FreezeWindowSpec, GateSpec, Proof

# Metadata the encryption codec adds to a payload that reached it unencrypted (common/codec.py): where
# payloads are encrypted, a decision that arrives in plaintext was not sent by a Ferry client.
PLAINTEXT_MARK = "ferry-plaintext"
# Bounds on what a person's free text can add to workflow state (and to every status query's answer).
MAX_COMMENT = 2000
MAX_NAME = 200


@dataclass
class VerifyInput:
    """Ask the worker to verify a decision's proof against what the workflow itself knows.

    Everything but `proof`, `user` and `comment` comes from the workflow (its id, the stage, the action the
    Update or Signal means), never from the caller's payload.
    """

    workflow_id: str
    action: str  # approve | reject | promote | rollback
    stage: str
    user: str
    comment: str
    proof: Proof
    commit: str = ""  # the release's commit: a Buildkite proof must come from a build of it
    override_freeze: bool = False
    full: bool = False
    target: str = ""


@dataclass
class Identity:
    """Who the worker verified (or why it could not)."""

    verified: bool
    user: str = ""
    email: str = ""
    teams: list[str] = field(default_factory=list)
    method: str = ""  # e.g. "ssh ED25519 SHA256:...", "buildkite acme/shop #12 approve-production"
    nonce: str = ""  # seen once per workflow: a replayed proof is refused
    reason: str = ""
    # Every name the person is known by (user, email, their allowed_signers principals): four-eyes and
    # "the same person twice counts once" compare people, not spellings.
    aliases: list[str] = field(default_factory=list)
    unverified: bool = False  # counted without proof because the sandbox's policy says trust_unverified


@dataclass
class PolicyRequest:
    """Which gate's policy to load (`gate` is the gate's name in ferry.yaml; '' for none)."""

    gate: str = ""
    environment: str = ""


@dataclass
class GatePolicy:
    """The approval policy of one gate as the workers' ferry.yaml says now, with its version (a hash)."""

    version: str
    gate: GateSpec | None = None
    freeze_windows: list[FreezeWindowSpec] = field(default_factory=list)
    freeze_override_members: list[str] = field(default_factory=list)
    trust_unverified: bool = False  # sandbox only: a decision without proof counts, with a warning
