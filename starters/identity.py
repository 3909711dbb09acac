"""Who is deciding, and the proof that goes with it: one way for every `ferry` command that decides.

`ferry approve/reject/promote/rollback` send a proof the workers check, never a bare name:
- `--as USER` (or $FERRY_USER, else $USER) signs the decision with USER's SSH key (`--key`, $FERRY_SIGNING_KEY,
  `approvals.signatures.key_dir/USER` where configured, else ~/.ssh/id_ed25519). The workers verify it
  against their allowed_signers file; nobody can sign for someone else without their key.
- `--from-buildkite` names the block step of this build (BUILDKITE_PIPELINE_SLUG, BUILDKITE_BUILD_NUMBER and
  the step key `approvals.buildkite_block_step`); the workers ask the Buildkite API who unblocked it. The
  BUILDKITE_UNBLOCKER* variables are only the name claimed: any laptop can set them.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common import signatures
from common.config import FerryConfig
from starters.common import CommandError
from workflows.types import Proof


@dataclass
class Who:
    """The claimed decider, the proof for the workers, and the channel it travels by."""

    user: str
    proof: Proof | None
    channel: str
    how: str  # for the person: "signed with KEY" / "Buildkite block step ..." / "UNVERIFIED"


def add_identity_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--as`, `--key`, `--from-buildkite`, `--block-step`: how a deciding command says who decides."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--as",
        dest="as_user",
        metavar="USER",
        help=f"who {what}: the decision is signed with USER's SSH key and verified by the workers "
        "(approvals.signatures.allowed_signers); default $FERRY_USER, else $USER",
    )
    group.add_argument(
        "--from-buildkite",
        action="store_true",
        help="in a step after a block step: the workers ask the Buildkite API who unblocked it",
    )
    parser.add_argument(
        "--key", metavar="PATH", help="SSH private key to sign with (default $FERRY_SIGNING_KEY, ~/.ssh/id_ed25519)"
    )
    parser.add_argument(
        "--block-step",
        metavar="KEY",
        help="with --from-buildkite: the block step's key (default approvals.buildkite_block_step)",
    )


def _key_for(cfg: FerryConfig, args: argparse.Namespace, user: str) -> Path:
    if getattr(args, "key", None):
        return Path(args.key).expanduser()
    if os.environ.get("FERRY_SIGNING_KEY"):
        return Path(os.environ["FERRY_SIGNING_KEY"]).expanduser()
    sigs = cfg.approvals.signatures
    if sigs is not None and sigs.key_dir:
        return Path(sigs.key_dir).expanduser() / user
    return Path("~/.ssh/id_ed25519").expanduser()


def who_decides(
    cfg: FerryConfig,
    args: argparse.Namespace,
    *,
    workflow_id: str,
    action: str,
    stage: str,
    comment: str,
    override_freeze: bool = False,
    full: bool = False,
    target: str = "",
) -> Who:
    """The decider and their proof for one decision on `workflow_id`; CommandError when none can be made."""
    if getattr(args, "from_buildkite", False):
        env = os.environ
        pipeline, number = env.get("BUILDKITE_PIPELINE_SLUG", ""), env.get("BUILDKITE_BUILD_NUMBER", "")
        if not pipeline or not number.isdigit():
            raise CommandError(
                "--from-buildkite: BUILDKITE_PIPELINE_SLUG and BUILDKITE_BUILD_NUMBER are not set; run this in a "
                "Buildkite step after the block step"
            )
        step = getattr(args, "block_step", None) or cfg.approvals.block_step(action, stage)
        claimed = env.get("BUILDKITE_UNBLOCKER_EMAIL") or env.get("BUILDKITE_UNBLOCKER") or "buildkite"
        return Who(
            user=claimed,
            proof=Proof(kind="buildkite", pipeline=pipeline, build_number=int(number), step_key=step),
            channel="buildkite",
            how=f"Buildkite block step {step} of {pipeline} #{number} (the workers ask Buildkite who unblocked it)",
        )
    user = getattr(args, "as_user", None) or os.environ.get("FERRY_USER") or os.environ.get("USER", "")
    if not user:
        raise CommandError("who is deciding? pass --as USER (or set FERRY_USER)")
    key = _key_for(cfg, args, user)
    if not key.is_file():
        if cfg.approvals.trust_unverified:
            print(f"ferry: warning: no signing key for {user} ({key}); sending an UNVERIFIED decision", file=sys.stderr)
            return Who(user=user, proof=None, channel="cli", how="UNVERIFIED (approvals.trust_unverified, sandbox)")
        raise CommandError(
            f"no signing key for {user} at {key}: pass --key PATH (an SSH key whose public half is in the workers' "
            "allowed_signers file), or use --from-buildkite after a block step"
        )
    claim = signatures.claim_for(
        workflow_id, action, stage, user, comment, override_freeze=override_freeze, full=full, target=target
    )
    try:
        signature = signatures.sign(claim, key)
    except signatures.SignatureError as e:
        raise CommandError(str(e)) from None
    return Who(
        user=user,
        proof=Proof(kind="ssh", claim=claim.canonical(), signature=signature),
        channel="cli",
        how=f"signed by {user} with {key}",
    )
