"""What every `ferry` command shares: exit codes, errors, the Temporal client and release references."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, is_dataclass
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from common.config import FerryConfig
from common.inputs import branch_problem
from common.temporal import connect
from workflows.approval_types import MAX_COMMENT, MAX_NAME
from workflows.release import release_workflow_id

# Exit codes scripts can rely on.
OK = 0
FAILED = 1  # the release failed or was rejected, or a decision was refused
USAGE = 2  # bad input: arguments, ferry.yaml, SHA, service, unknown release
UNREACHABLE = 3  # Temporal (or the sandbox) cannot be reached

SHA = re.compile(r"^[0-9a-f]{40}$")
SHORT_SHA = re.compile(r"^[0-9a-f]{7,40}$")


class CommandError(Exception):
    """A failure to report on one line with its exit code; the message tells the user what to do."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def check_branch(branch: str, argument: str) -> str:
    """`branch` if git accepts it as a branch name; else USAGE naming the argument (or variable) that gave it.

    The branch goes into the coordinator's workflow id and into git commands: refused here, nothing starts.
    """
    problem = branch_problem(branch)
    if problem:
        raise CommandError(f"{argument}: {problem}")
    return branch


# The free text of a decision, by the argument that carries it; the workflows refuse the same limits
# (workflows/identity.py check_size), but only after the CLI has signed and sent it.
_TEXT_LIMITS = (
    ("comment", "--comment", MAX_COMMENT),
    ("as_user", "--as", MAX_NAME),
    ("stage", "--stage", MAX_NAME),
    ("environment", "ENVIRONMENT", MAX_NAME),
)


def check_decision_text(args: argparse.Namespace) -> None:
    """USAGE, before anything is signed or sent, when a decision's comment, name or stage is too long to keep."""
    for attr, argument, limit in _TEXT_LIMITS:
        value = getattr(args, attr, None) or ""
        if len(value) > limit:
            raise CommandError(
                f"{argument} has {len(value)} characters; at most {limit} are kept in the audit (shorten it); "
                "nothing was sent"
            )


async def client_for(cfg: FerryConfig) -> Client:
    """Connect to Temporal or fail with UNREACHABLE and the address tried."""
    from common.observability import interceptors_for

    try:
        # With tracing on, a release started here gets its StartWorkflow span: the workers' spans hang under it.
        return await connect(cfg.temporal, interceptors=interceptors_for(cfg))
    except RuntimeError as e:
        raise CommandError(
            f"cannot reach Temporal at {cfg.temporal.address} ({e}); is the server up? (sandbox: `ferry sandbox up`)",
            UNREACHABLE,
        ) from None


def release_id_for(cfg: FerryConfig, commit: str) -> str:
    """The human release id: `{repo}-{sha12}`."""
    return f"{cfg.repos.app.short_name}-{commit[:12]}"


def workflow_id_for(cfg: FerryConfig, ref: str) -> str:
    """Accept a workflow id, a release id (`shop-<sha12>`) or a commit SHA (12+ hex chars)."""
    ref = ref.strip()
    repo = cfg.repos.app.short_name
    if ref.startswith(("release/", "provision/", "rollback/", "branch/")):
        return ref
    if ref.startswith(f"{repo}-") and SHORT_SHA.match(ref[len(repo) + 1 :]):
        return release_workflow_id(repo, ref[len(repo) + 1 :])
    if SHORT_SHA.match(ref) and len(ref) >= 12:
        return release_workflow_id(repo, ref)
    raise CommandError(
        f"'{ref}' is not a release: give a release id ({repo}-<12 hex>), a commit SHA of 12+ hex characters, "
        "or a workflow id (release/...); `ferry list` shows recent releases"
    )


async def existing_handle(client: Client, workflow_id: str) -> WorkflowHandle:
    """A handle on the latest run of `workflow_id`, or USAGE if there is no such release."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CommandError(f"no release {workflow_id}; `ferry list` shows recent releases") from None
        raise CommandError(f"Temporal refused to describe {workflow_id}: {e.message}", UNREACHABLE) from None
    return handle


def to_jsonable(value: Any) -> Any:
    """Dataclasses (at any depth) to dicts for --json output; anything else JSON lacks becomes a string."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=to_jsonable)
    sys.stdout.write("\n")
