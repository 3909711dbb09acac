"""`ferry rollback ENV --to RELEASE --comment TEXT [--as USER | --from-buildkite] [--wait] [--json]`.

Environments only move forward on their own; this is the deliberate way back. The CLI reads the target
release's commit, images and the GitOps commit that deployed it in the environment from that release's
`status` (a workflow cannot query another workflow), then starts the Rollback workflow, which decides whether
the requester may do it (a refusal is audited there, so every attempt leaves a trace), reads the environment's
whole state at that GitOps commit and performs the GitOps move and the Argo CD sync.

The output lists every image: from which image to which it went, and what was left behind and why (a service
added after the target release keeps its image: a rollback does not remove a service).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common.config import FerryConfig
from common.plan import build_plan
from starters.common import (
    FAILED,
    OK,
    CommandError,
    check_decision_text,
    client_for,
    existing_handle,
    print_json,
    workflow_id_for,
)
from starters.identity import who_decides
from workflows.release import ReleaseWorkflow
from workflows.rollback import RollbackWorkflow, rollback_target, rollback_workflow_id
from workflows.types import Artifact, ReleaseStatus, RollbackInput, RollbackStatus

# How long the CLI waits, without --wait, for the workflow to accept or refuse the rollback.
DECISION_SECONDS = 30.0


def artifacts_of(cfg: FerryConfig, status: ReleaseStatus) -> list[Artifact]:
    """The images a release built: its CI result, or (if absent) its digests mapped to configured images."""
    if status.ci is not None and status.ci.artifacts:
        return list(status.ci.artifacts)
    return [
        Artifact(service=s, repository=cfg.services[s].image or s, digest=d)
        for s, d in sorted(status.digests.items())
        if s in cfg.services
    ]


def check_arguments(cfg: FerryConfig, args: argparse.Namespace) -> str:
    """The environment, the comment (stripped) and the target reference checked; USAGE before Temporal is asked."""
    check_decision_text(args)
    env = args.environment
    if env not in cfg.environments:
        raise CommandError(f"unknown environment '{env}'; ferry.yaml defines {', '.join(cfg.environments)}")
    comment = (args.comment or "").strip()
    if not comment:
        raise CommandError("a rollback needs --comment saying why; it is kept in the audit and the GitOps commit")
    workflow_id_for(cfg, args.to)
    return comment


async def rollback_input(cfg: FerryConfig, client: Client, args: argparse.Namespace) -> RollbackInput:
    """Validate the arguments and read the target release into a RollbackInput."""
    env = args.environment
    comment = check_arguments(cfg, args)
    target_id = workflow_id_for(cfg, args.to)
    handle = await existing_handle(client, target_id)
    target: ReleaseStatus = await handle.query(ReleaseWorkflow.status)
    ran = next((e for e in target.environments if e.name == env), None)
    if ran is None or ran.state != "deployed":
        state = ran.state if ran else "not part of it"
        raise CommandError(
            f"release {target.release_id} never completed a deployment to {env} ({env}: {state}); a rollback "
            f"returns {env} to a release it ran. `ferry list` shows recent releases"
        )
    artifacts = artifacts_of(cfg, target)
    if not artifacts:
        raise CommandError(f"release {target.release_id} built no images; nothing to roll {env} back to")
    inp = RollbackInput(
        environment=env,
        target_release_id=target.release_id,
        target_commit=target.commit,
        artifacts=artifacts,
        comment=comment,
        requested_by="",
        plan=build_plan(cfg),
        target_gitops_commit=ran.gitops_commit,  # its kustomization there is the state restored (and signed)
    )
    who = who_decides(
        cfg,
        args,
        workflow_id=rollback_workflow_id(inp.plan.app_repo, env, target.commit),
        action="rollback",
        stage=env,
        comment=comment,
        target=rollback_target(inp),
    )
    return dataclasses.replace(inp, requested_by=who.user, channel=who.channel, proof=who.proof)


async def rollback(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Start (or find the running) rollback; report its refusal at once; with --wait follow it to the end."""
    check_arguments(cfg, args)  # bad input exits 2 before Temporal is reached
    client = await client_for(cfg)
    inp = await rollback_input(cfg, client, args)
    wf_id = rollback_workflow_id(inp.plan.app_repo, inp.environment, inp.target_commit)
    started = True
    try:
        handle = await client.start_workflow(RollbackWorkflow.run, inp, id=wf_id, task_queue=inp.plan.onprem_queue)
    except WorkflowAlreadyStartedError:
        started = False
        handle = client.get_workflow_handle_for(RollbackWorkflow.run, wf_id)
    if not args.json:
        verb = "started" if started else "is already running; following it"
        print(f"rollback of {inp.environment} to {inp.target_release_id} ({inp.target_commit[:12]}) {verb}")
        if inp.target_gitops_commit:
            print(f"  restoring every service's pin of gitops commit {inp.target_gitops_commit[:12]}")
        print(f"  workflow {wf_id}")
    status = await follow(handle, until_decided=not args.wait, verbose=not args.json)
    if args.json:
        print_json({"workflow_id": wf_id, "started": started, "status": status})
    else:
        print(render(status))
    if status.outcome in ("refused", "failed"):
        return FAILED
    return OK


async def follow(
    handle: WorkflowHandle, *, until_decided: bool, verbose: bool, poll: float = 0.5, timeout: float | None = None
) -> RollbackStatus:
    """Poll `status`: until the workflow has accepted or refused (`until_decided`), or until it ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout if timeout is not None else DECISION_SECONDS if until_decided else 1e9)
    last = ""
    while True:
        desc = await handle.describe()
        try:
            status: RollbackStatus = await handle.query(RollbackWorkflow.status)
        except RPCError as e:
            # A query before the workflow's first task completed is refused by some servers: ask again.
            if e.status != RPCStatusCode.FAILED_PRECONDITION or loop.time() > deadline:
                raise
            await asyncio.sleep(poll)
            continue
        if verbose and status.stage != last and status.stage != "starting":
            print(f"  -> {status.stage}", flush=True)
            last = status.stage
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return status
        if until_decided and status.stage != "starting":
            return status
        if loop.time() > deadline:
            raise CommandError(f"{handle.id} has not started; is the onprem worker running? (ferry status)", FAILED)
        await asyncio.sleep(poll)


def short_image(image: str) -> str:
    """`newName@sha256:<12 hex>`, or "(not pinned)"."""
    if not image:
        return "(not pinned)"
    name, _, digest = image.rpartition("@")
    algorithm, _, encoded = digest.partition(":")
    return f"{name}@{algorithm}:{encoded[:12]}"


def render_images(status: RollbackStatus) -> list[str]:
    """One line per image: restored from -> to, unchanged, or left behind with the reason."""
    lines: list[str] = []
    restored = [i for i in status.images if not i.left_behind]
    left = [i for i in status.images if i.left_behind]
    if status.state_commit:
        lines.append(
            f"  every service's pin as {status.target_release_id} left it (gitops {status.state_commit[:12]}):"
        )
    for i in restored:
        who = i.service or i.name
        if i.before == i.after:
            lines.append(f"    {who}: unchanged, {short_image(i.after)}")
        else:
            lines.append(f"    {who}: {short_image(i.before)} -> {short_image(i.after)}")
    if left:
        lines.append(f"  left behind ({len(left)}), not as {status.target_release_id} left them:")
        for i in left:
            lines.append(f"    {i.service or i.name}: stays {short_image(i.after)}: {i.left_behind}")
    return lines


def render(status: RollbackStatus) -> str:
    """Human summary: outcome, from and to, each image's change and what was left behind, who and why, the
    GitOps commit and the apps."""
    to = f"{status.target_release_id} ({status.target_commit[:12]})"
    if status.outcome == "refused":
        return f"refused: {status.error}"
    if status.outcome == "failed":
        return "\n".join([f"rollback of {status.environment} to {to} FAILED: {status.error}", *render_images(status)])
    lines = []
    if status.outcome == "running":
        lines.append(f"rollback of {status.environment} to {to} accepted; at stage {status.stage}")
    else:
        lines.append(f"{status.environment} rolled back to {to}")
    lines += render_images(status)
    for a in status.audit:
        origin = a.from_commit[:12] or "(nothing recorded)"
        lines.append(f"  {a.at}  {a.action} by {a.user} via {a.channel}: from {origin} to {a.to_commit[:12]}")
        lines.append(f'    "{a.comment}"')
    if status.gitops_commit:
        lines.append(f"  gitops commit {status.gitops_commit[:12]}")
    for app, state in sorted(status.apps.items()):
        lines.append(f"  {app}: {state}")
    return "\n".join(lines)
