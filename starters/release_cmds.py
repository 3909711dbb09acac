"""`ferry release start`, `status`, `approve`, `reject`, `list` and `retry`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import uuid
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common.config import FerryConfig
from common.plan import build_plan
from starters.commits import require_commits
from starters.common import (
    FAILED,
    OK,
    SHA,
    CommandError,
    check_branch,
    check_decision_text,
    client_for,
    existing_handle,
    print_json,
    release_id_for,
    workflow_id_for,
)
from starters.identity import who_decides
from starters.render import render_status
from workflows import search
from workflows.coordinator import BranchCoordinator, coordinator_workflow_id
from workflows.release import ReleaseWorkflow, release_workflow_id
from workflows.types import (
    CommitSignal,
    CoordinatorInput,
    CoordinatorStatus,
    Decision,
    GateStatus,
    ReleaseInput,
    ReleaseStatus,
    RolloutPromoteRequest,
)

FINAL_OK = ("succeeded", "nothing_to_release")


def ui_link(cfg: FerryConfig, workflow_id: str) -> str:
    """Link to the workflow in the Temporal UI, when the UI URL is known."""
    if not cfg.temporal.ui_url:
        return ""
    from urllib.parse import quote

    return f"{cfg.temporal.ui_url}/namespaces/{cfg.temporal.namespace}/workflows/{quote(workflow_id, safe='')}"


def release_input_from_args(cfg: FerryConfig, args: argparse.Namespace) -> ReleaseInput:
    """Validate what `release start` was given (or read from Buildkite) into a ReleaseInput."""
    if args.from_buildkite:
        env = os.environ
        commit = env.get("BUILDKITE_COMMIT", "")
        branch = env.get("BUILDKITE_BRANCH", "")
        message = env.get("BUILDKITE_MESSAGE", "")
        build_url = env.get("BUILDKITE_BUILD_URL", "")
        author = env.get("BUILDKITE_BUILD_AUTHOR_EMAIL") or env.get("BUILDKITE_BUILD_AUTHOR", "")
        if not commit:
            raise CommandError("--from-buildkite: BUILDKITE_COMMIT is not set; run this inside a Buildkite step")
    else:
        commit, branch = args.commit or "", args.branch or ""
        message, build_url, author = args.message or "", "", os.environ.get("USER", "")
        if not commit or not branch:
            raise CommandError("release start needs --commit SHA and --branch NAME (or --from-buildkite)")
    if args.repo and args.repo not in (cfg.repos.app.short_name, cfg.repos.app.url):
        raise CommandError(
            f"--repo '{args.repo}' is not configured; ferry.yaml repos.app is '{cfg.repos.app.short_name}'"
        )
    commit = commit.strip().lower()
    if not SHA.match(commit):
        source = "BUILDKITE_COMMIT" if args.from_buildkite else "--commit"
        raise CommandError(f"{source} '{commit}' is not a full 40-character hexadecimal SHA")
    check_branch(branch, "BUILDKITE_BRANCH" if args.from_buildkite else "--branch")
    if args.base and not SHA.match(args.base.lower()):
        raise CommandError(f"--base '{args.base}' is not a full 40-character hexadecimal SHA")
    services = list(args.service or [])
    unknown = [s for s in services if s not in cfg.services]
    if unknown:
        raise CommandError(
            f"unknown service(s) {', '.join(unknown)}; ferry.yaml defines {', '.join(sorted(cfg.services))}"
        )
    libraries = [s for s in services if cfg.services[s].kind == "library"]
    if libraries:
        raise CommandError(f"{', '.join(libraries)} is a library, not a deployable service")
    return ReleaseInput(
        release_id=release_id_for(cfg, commit),
        commit=commit,
        branch=branch,
        plan=build_plan(cfg),
        base_commit=args.base.lower() if args.base else None,
        only_services=services,
        message=message,
        author=author,
        build_url=build_url,
    )


async def submit_commit(client: Client, inp: ReleaseInput) -> str:
    """Hand a commit to its branch's coordinator (signal-with-start); returns the coordinator's workflow id."""
    coordinator_id = coordinator_workflow_id(inp.plan.app_repo, inp.branch)
    await client.start_workflow(
        BranchCoordinator.run,
        CoordinatorInput(repo=inp.plan.app_repo, branch=inp.branch, plan=inp.plan),
        id=coordinator_id,
        task_queue=inp.plan.onprem_queue,
        start_signal="commit",
        start_signal_args=[
            CommitSignal(
                commit=inp.commit,
                branch=inp.branch,
                message=inp.message,
                author=inp.author,
                build_url=inp.build_url,
                base_commit=inp.base_commit,
                only_services=inp.only_services,
                plan=dataclasses.asdict(inp.plan),
            )
        ],
    )
    return coordinator_id


async def start(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Hand a commit to its branch coordinator (or, with --direct, start its release); --wait follows it."""
    inp = release_input_from_args(cfg, args)
    shas = {"BUILDKITE_COMMIT" if args.from_buildkite else "--commit": inp.commit}
    if inp.base_commit:
        shas["--base"] = inp.base_commit
    # An unknown SHA would start a coordinator and a release that can only fail in CI: refused here.
    await asyncio.to_thread(require_commits, cfg.repos.app, shas)
    client = await client_for(cfg)
    if not getattr(args, "direct", False):
        return await _start_coordinated(cfg, client, inp, args)
    wf_id = release_workflow_id(inp.plan.app_repo, inp.commit)
    attrs = TypedSearchAttributes(
        [SearchAttributePair(search.COMMIT_SHA, inp.commit), SearchAttributePair(search.BRANCH, inp.branch)]
    )
    started = True
    try:
        handle = await client.start_workflow(
            ReleaseWorkflow.run,
            inp,
            id=wf_id,
            task_queue=inp.plan.onprem_queue,
            search_attributes=attrs,
            # A commit released successfully is not released again; a failed one may be started anew.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )
    except WorkflowAlreadyStartedError:
        started = False
        handle = client.get_workflow_handle_for(ReleaseWorkflow.run, wf_id)
    link = ui_link(cfg, wf_id)
    if args.json and not args.wait:
        print_json({"release_id": inp.release_id, "workflow_id": wf_id, "started": started, "ui": link})
    elif not args.json:
        verb = "started" if started else "already exists (running or released); following it"
        print(f"release {inp.release_id} {verb}\n  workflow {wf_id}\n  ui       {link}")
    until = getattr(args, "until", None)
    if not (args.wait or until):
        return OK
    return await follow(handle, cfg, args.json, until=until)


async def _start_coordinated(cfg: FerryConfig, client: Client, inp: ReleaseInput, args: argparse.Namespace) -> int:
    coordinator_id = await submit_commit(client, inp)
    wf_id = release_workflow_id(inp.plan.app_repo, inp.commit)
    if args.json and not (args.wait or args.until):
        print_json({"release_id": inp.release_id, "workflow_id": wf_id, "coordinator": coordinator_id})
    elif not args.json:
        print(
            f"commit {inp.commit[:12]} handed to {coordinator_id}\n  release  {wf_id}\n  ui       {ui_link(cfg, wf_id)}"
        )
    if not (args.wait or args.until):
        return OK
    # The coordinator starts the release when no other one of the branch is in CI, or skips it for a newer one.
    coordinator = client.get_workflow_handle_for(BranchCoordinator.run, coordinator_id)
    while True:
        try:
            await client.get_workflow_handle(wf_id).describe()
            break
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
        queue: CoordinatorStatus = await coordinator.query(BranchCoordinator.status)
        skipped = next((e for e in queue.recent if e.commit == inp.commit and e.state == "skipped"), None)
        if skipped is not None:
            print(f"  skipped: superseded by {skipped.by[:12]} before its release started")
            return OK
        await asyncio.sleep(1.0)
    return await follow(client.get_workflow_handle_for(ReleaseWorkflow.run, wf_id), cfg, args.json, until=args.until)


async def queue(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """A branch coordinator's queue: pending commit, active releases, recent outcomes."""
    check_branch(args.branch, "--branch")
    client = await client_for(cfg)
    handle = await existing_handle(client, coordinator_workflow_id(cfg.repos.app.short_name, args.branch))
    result: CoordinatorStatus = await handle.query(BranchCoordinator.status)
    if args.json:
        print_json(result)
        return OK
    pending = result.pending[:12] or "-"
    print(f"branch {result.branch}: pending {pending}  (run {result.runs}, {result.history_length} events)")
    for e in result.active:
        by = f" (superseded by {e.by[:12]})" if e.by else ""
        print(f"  active  {e.release_id:<22} {e.state}{by}")
    for e in reversed(result.recent[-10:]):
        by = f" by {e.by[:12]}" if e.by else ""
        print(f"  {e.state:<7} {e.release_id:<22} {e.outcome}{by}")
    print("  counts  " + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())))
    return OK


async def follow(
    handle: WorkflowHandle, cfg: FerryConfig, as_json: bool, poll: float = 1.0, until: str | None = None
) -> int:
    """Print each stage as the release reaches it; exit OK on success (or on reaching `until`), FAILED otherwise."""
    last = ""
    while True:
        desc = await handle.describe()
        status: ReleaseStatus = await handle.query(ReleaseWorkflow.status)
        if status.stage != last and not as_json:
            print(f"  -> {status.stage}", flush=True)
            if status.stage.startswith("gate:"):
                stage = status.stage.split(":", 1)[1]
                print(
                    f"     waiting: ferry approve {status.release_id} --stage {stage} --as USER --comment '...'",
                    flush=True,
                )
            last = status.stage
        if desc.status != WorkflowExecutionStatus.RUNNING:
            break
        if until and status.stage == until:
            if as_json:
                print_json(status)
            return OK
        await asyncio.sleep(poll)
    if as_json:
        print_json(status)
    else:
        print(render_status(status, ui_link(cfg, handle.id)))
    return OK if status.outcome in FINAL_OK else FAILED


async def status(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Print a release's status (human or --json)."""
    wf_id = workflow_id_for(cfg, args.release)
    client = await client_for(cfg)
    handle = await existing_handle(client, wf_id)
    result: ReleaseStatus = await handle.query(ReleaseWorkflow.status)
    if args.json:
        print_json(result)
    else:
        print(render_status(result, ui_link(cfg, wf_id)))
    return OK


def decision_from_args(cfg: FerryConfig, args: argparse.Namespace, approve: bool, workflow_id: str) -> Decision:
    """The decision on `workflow_id`, with the proof of who decides (starters.identity) for the workers."""
    comment = args.comment or ""
    override = getattr(args, "override_freeze", False)
    if override and not comment.strip():
        raise CommandError("--override-freeze needs --comment saying why the freeze is overridden")
    who = who_decides(
        cfg,
        args,
        workflow_id=workflow_id,
        action="approve" if approve else "reject",
        stage=args.stage,
        comment=comment,
        override_freeze=override,
    )
    return Decision(
        stage=args.stage,
        user=who.user,
        comment=comment,
        approve=approve,
        channel=who.channel,
        override_freeze=override,
        proof=who.proof,
    )


async def run_update(handle: WorkflowHandle, update: Any, arg: Any, when_ended: str) -> Any:
    """Execute a validated Update; a refusal (validator) or an ended workflow exits FAILED with the reason."""
    try:
        return await handle.execute_update(update, arg)
    except WorkflowUpdateFailedError as e:
        reason = e.cause.message if hasattr(e.cause, "message") else str(e.cause)
        raise CommandError(f"refused: {reason}", FAILED) from None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CommandError(f"{handle.id} has ended; {when_ended} (see ferry status)", FAILED) from None
        raise


async def decide(cfg: FerryConfig, args: argparse.Namespace, approve: bool) -> int:
    """Approve or reject a gate through its Update; a refusal exits FAILED with the reason."""
    check_decision_text(args)
    ref = args.release or (os.environ.get("BUILDKITE_COMMIT", "") if getattr(args, "from_buildkite", False) else "")
    if not ref:
        raise CommandError("which release? give RELEASE (or run with --from-buildkite inside the build)")
    wf_id = workflow_id_for(cfg, ref)
    decision = decision_from_args(cfg, args, approve, wf_id)
    client = await client_for(cfg)
    handle = await existing_handle(client, wf_id)
    update = ReleaseWorkflow.approve if approve else ReleaseWorkflow.reject
    gate = await run_update(handle, update, decision, "no gate to decide")
    if args.json:
        print_json(gate)
        return OK
    approver = gate.approvals[-1] if approve and gate.approvals else gate.decided_by or decision.user
    if gate.state == "waiting":
        print(f"{gate.stage}: approved by {approver}; {len(gate.approvals)} of {gate.required} approvals")
    else:
        who = ", ".join(gate.approvals) if gate.state == "approved" and gate.approvals else gate.decided_by
        line = f"{gate.stage}: {gate.state} by {who}" + (f' "{gate.comment}"' if gate.comment else "")
        if gate.frozen_until and not gate.freeze_overridden_by:
            line += f"; frozen until {gate.frozen_until} ({gate.freeze_reason}), the move waits"
        print(line)
    print(f"  identity: {verification_line(gate)}")
    return OK


def verification_line(gate: GateStatus) -> str:
    """How the workers established who decided the gate, and under which policy version."""
    if not gate.policy_version:
        return "as sent (a release started before verified decisions)"
    how = gate.verified_by[-1] if gate.verified_by else "-"
    warning = "UNVERIFIED (approvals.trust_unverified, sandbox only); " if gate.unverified else ""
    return f"{warning}verified by the workers: {how}; gate policy {gate.policy_version} (the workers' ferry.yaml)"


async def promote(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Promote the paused Argo Rollout step of an environment whose promotion policy is `approval`."""
    check_decision_text(args)
    wf_id = workflow_id_for(cfg, args.release)
    comment = args.comment or ""
    who = who_decides(cfg, args, workflow_id=wf_id, action="promote", stage=args.stage, comment=comment)
    request = RolloutPromoteRequest(
        environment=args.stage, user=who.user, comment=comment, channel=who.channel, proof=who.proof
    )
    client = await client_for(cfg)
    handle = await existing_handle(client, wf_id)
    answer = await run_update(handle, ReleaseWorkflow.promote, request, "nothing to promote")
    if args.json:
        print_json({"release": wf_id, "environment": args.stage, "promoted_by": who.user, "answer": answer})
    else:
        print(f"{args.stage}: {answer} (by {who.user}; {who.how})")
    return OK


async def audit(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Every decision on a release: who, when, gate, channel, comment, and refusals with the reason."""
    wf_id = workflow_id_for(cfg, args.release)
    client = await client_for(cfg)
    handle = await existing_handle(client, wf_id)
    result: ReleaseStatus = await handle.query(ReleaseWorkflow.status)
    if args.json:
        print_json({"release_id": result.release_id, "audit": result.audit, "gates": result.gates})
        return OK
    if not result.audit:
        print(f"{result.release_id}: no decisions yet")
    for a in result.audit:
        extra = f' "{a.comment}"' if a.comment else ""
        extra += f" -- refused: {a.reason}" if a.reason else ""
        extra += f" [{a.method}]" if a.method else ""
        extra += f" policy {a.policy_version}" if a.policy_version else ""
        print(f"{a.at}  {a.stage:<11} {a.action:<24} {a.user:<24} via {a.channel}{extra}")
    return OK


async def list_releases(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Recent releases, and for those waiting at a gate, who may decide it."""
    client = await client_for(cfg)
    rows = []
    async for wf in client.list_workflows("WorkflowType='Release'", limit=args.limit):
        row = {
            "workflow_id": wf.id,
            "status": wf.status.name if wf.status else "",
            "started": wf.start_time.isoformat() if wf.start_time else "",
            "stage": "",
            "waiting_for": "",
        }
        stage = wf.typed_search_attributes.get(search.RELEASE_STAGE)
        row["stage"] = stage or ""
        if wf.status == WorkflowExecutionStatus.RUNNING and stage and stage.startswith("gate:"):
            env = stage.split(":", 1)[1]
            gate = cfg.environments[env].gate if env in cfg.environments else None
            if gate and gate in cfg.gates:
                members = sorted({m for g in cfg.gates[gate].groups for m in cfg.groups.get(g, [])})
                row["waiting_for"] = f"{'/'.join(cfg.gates[gate].groups)} ({', '.join(members)})"
        rows.append(row)
    if args.json:
        print_json(rows)
        return OK
    if not rows:
        print("no releases yet")
        return OK
    print(f"{'RELEASE':<34} {'STATUS':<11} {'STAGE':<20} {'STARTED':<26} WAITING FOR")
    for r in rows:
        print(f"{r['workflow_id']:<34} {r['status']:<11} {r['stage']:<20} {r['started'][:25]:<26} {r['waiting_for']}")
    return OK


FAILURE_EVENTS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT,
}


def reset_point(events: list) -> int:
    """The WorkflowTaskCompleted event that scheduled the step that failed.

    Resetting there keeps every completed stage (CI, earlier GitOps moves, approvals) in the new run's
    history, and runs the failed step again: the same as picking that event for Reset in the Temporal UI.
    """
    by_id = {e.event_id: e for e in events}
    for event in reversed(events):
        if event.event_type not in FAILURE_EVENTS:
            continue
        if event.HasField("activity_task_failed_event_attributes"):
            scheduled = by_id[event.activity_task_failed_event_attributes.scheduled_event_id]
        elif event.HasField("activity_task_timed_out_event_attributes"):
            scheduled = by_id[event.activity_task_timed_out_event_attributes.scheduled_event_id]
        elif event.HasField("child_workflow_execution_failed_event_attributes"):
            scheduled = by_id[event.child_workflow_execution_failed_event_attributes.initiated_event_id]
        else:
            scheduled = by_id[event.child_workflow_execution_timed_out_event_attributes.initiated_event_id]
        attrs = (
            scheduled.activity_task_scheduled_event_attributes
            if scheduled.HasField("activity_task_scheduled_event_attributes")
            else scheduled.start_child_workflow_execution_initiated_event_attributes
        )
        return attrs.workflow_task_completed_event_id
    raise CommandError("the release has no failed step to retry from; see `ferry status`")


async def retry(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Reset a failed release to just before its failed step; completed stages are not run again."""
    wf_id = workflow_id_for(cfg, args.release)
    client = await client_for(cfg)
    handle = await existing_handle(client, wf_id)
    desc = await handle.describe()
    if desc.status == WorkflowExecutionStatus.RUNNING:
        raise CommandError(f"{wf_id} is still running; nothing to retry (ferry status {args.release})", FAILED)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        raise CommandError(f"{wf_id} completed; nothing to retry", FAILED)
    history = await handle.fetch_history()
    event_id = reset_point(list(history.events))
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=wf_id, run_id=desc.run_id),
            reason=f"ferry retry by {os.environ.get('USER', 'unknown')}",
            workflow_task_finish_event_id=event_id,
            request_id=str(uuid.uuid4()),
        )
    )
    if args.json:
        print_json({"workflow_id": wf_id, "run_id": response.run_id, "reset_to_event": event_id})
    else:
        print(f"{wf_id}: reset to event {event_id}; new run {response.run_id}")
    if args.wait:
        return await follow(
            client.get_workflow_handle_for(ReleaseWorkflow.run, wf_id, run_id=response.run_id), cfg, args.json
        )
    return OK


async def wait_for_stage(client: Client, wf_id: str, stage: str, timeout: float = 120.0) -> ReleaseStatus:
    """Poll until the release reaches `stage` (used by the demo); CommandError on timeout or failure.

    A release handed to the branch coordinator starts a moment later: until then it is not found, and waited for.
    """
    handle = client.get_workflow_handle_for(ReleaseWorkflow.run, wf_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status: ReleaseStatus = await handle.query(ReleaseWorkflow.status)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        if status.stage == stage:
            return status
        if status.outcome not in ("running",):
            raise CommandError(f"release ended as {status.outcome} before {stage}: {status.error}", FAILED)
        if asyncio.get_running_loop().time() > deadline:
            raise CommandError(f"release did not reach {stage} within {timedelta(seconds=timeout)}", FAILED)
        await asyncio.sleep(0.5)
