"""Who decides, as the workers say: load the policy, verify a proof, refuse replays. Shared by every decision.

Gates (approve, reject, decide), Rollout promotions and rollbacks all ask the same two questions of a worker
before anything counts: what does the policy say now (`approvals.policy`), and who really sent this
(`approvals.verify`). Both run as activities on the workflow's own task queue (the onprem worker, which
holds ferry.yaml and reaches Buildkite), so their answers are in the history and replays see them.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.approval_types import (
        MAX_COMMENT,
        MAX_NAME,
        GatePolicy,
        Identity,
        PolicyRequest,
        VerifyInput,
    )
    from workflows.errors import failure_message
    from workflows.types import Proof, ReleasePlan

MAX_PROOF = 16_000  # an SSH signature and its claim are well under 2 KB
# A person waits on the answer (the Update returns it): fail fast rather than retry for half an hour.
_OPTIONS = {
    "start_to_close_timeout": timedelta(seconds=30),
    "schedule_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)),
}
UNVERIFIED = (
    "unverified: the decision carries no proof of who sent it; sign it (`ferry approve --as USER`, with your "
    "key in approvals.signatures.allowed_signers) or send it with --from-buildkite after the block step"
)


def check_size(user: str, comment: str, stage: str, proof: Proof | None) -> str | None:
    """Why this free text must not enter workflow state, or None: every status query returns it."""
    if len(comment) > MAX_COMMENT:
        return f"the comment has {len(comment)} characters; at most {MAX_COMMENT} are kept (shorten it)"
    if len(user) > MAX_NAME or len(stage) > MAX_NAME:
        return f"a name or stage longer than {MAX_NAME} characters is not a name"
    if proof is not None and len(proof.claim) + len(proof.signature) + len(proof.pipeline) > MAX_PROOF:
        return f"the proof is larger than {MAX_PROOF} bytes; a signed decision is far smaller"
    return None


async def load_plan() -> ReleasePlan:
    """The release plan of the workers' own ferry.yaml (not the one the starter sent)."""
    return await workflow.execute_activity(
        "ferry.plan", PolicyRequest(), result_type=ReleasePlan, task_queue=workflow.info().task_queue, **_OPTIONS
    )


async def load_policy(gate: str, environment: str = "") -> GatePolicy:
    """The policy of gate `gate` ('' for none) as the workers' ferry.yaml says now."""
    return await workflow.execute_activity(
        "approvals.policy",
        PolicyRequest(gate=gate, environment=environment),
        result_type=GatePolicy,
        task_queue=workflow.info().task_queue,
        **_OPTIONS,
    )


async def identify(
    *,
    action: str,
    stage: str,
    user: str,
    comment: str,
    proof: Proof | None,
    commit: str,
    policy: GatePolicy,
    seen: set[str],
    override_freeze: bool = False,
    full: bool = False,
    target: str = "",
) -> Identity:
    """Who sent this decision, verified by a worker; `verified=False` with the reason when nobody could be."""
    if proof is None:
        if policy.trust_unverified:
            return Identity(
                verified=True,
                user=user,
                aliases=[user],
                method="UNVERIFIED (approvals.trust_unverified, sandbox only)",
                unverified=True,
            )
        return Identity(verified=False, method="unverified", reason=UNVERIFIED)
    try:
        identity: Identity = await workflow.execute_activity(
            "approvals.verify",
            VerifyInput(
                workflow_id=workflow.info().workflow_id,
                action=action,
                stage=stage,
                user=user,
                comment=comment,
                proof=proof,
                commit=commit,
                override_freeze=override_freeze,
                full=full,
                target=target,
            ),
            result_type=Identity,
            task_queue=workflow.info().task_queue,
            **_OPTIONS,
        )
    except ActivityError as e:
        return Identity(verified=False, method=proof.kind, reason=f"could not verify who decides: {failure_message(e)}")
    if identity.verified and identity.nonce in seen:
        return Identity(
            verified=False,
            method=identity.method,
            reason="this proof was already used for a decision of this workflow (a replay); make a new decision",
        )
    if not identity.verified and not identity.method:
        identity.method = proof.kind
    return identity
