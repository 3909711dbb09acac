"""`ferry provision plan|apply|status|drift-schedule`: Terraform workspaces as Provision workflows.

Approval of a plan that destroys or replaces goes through the same `ferry approve` as releases:
`ferry approve provision/<workspace> --stage apply --as USER`.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from common.config import FerryConfig
from starters.common import FAILED, OK, CommandError, client_for, print_json, to_jsonable
from workflows.provision import (
    ProvisionWorkflow,
    drift_schedule,
    drift_schedule_id,
    provision_workflow_id,
)
from workflows.provision_types import AppSpec, DriftResult, PlanSummary, ProvisionInput, ProvisionStatus, WorkspaceSpec

FINAL_OK = ("applied", "no_changes", "planned")
# Workflows run where Release does (the on-prem worker); their Terraform steps run on the workspace's site.
WORKFLOW_SITE = "onprem"


def workspace_spec(cfg: FerryConfig, name: str) -> WorkspaceSpec:
    """Freeze a workspace of ferry.yaml into the workflow input; USAGE error naming the known ones."""
    ws = cfg.provisioning.workspaces.get(name)
    if ws is None:
        known = ", ".join(sorted(cfg.provisioning.workspaces)) or "none (add provisioning.workspaces to ferry.yaml)"
        raise CommandError(f"unknown workspace '{name}'; ferry.yaml defines: {known}")
    return WorkspaceSpec(
        name=name,
        site=ws.site,
        task_queue=cfg.task_queue(ws.site),
        path=ws.path,
        variables=dict(ws.variables),
        var_files=list(ws.var_files),
        cluster_outputs=ws.cluster_outputs,
        apps=[
            AppSpec(
                name=app, chart=a.chart, version=a.version, namespace=a.namespace, repo=a.repo, values=dict(a.values)
            )
            for app, a in sorted(ws.apps.items())
        ],
    )


def provision_input(cfg: FerryConfig, name: str, *, plan_only: bool, auto_approve: bool = False) -> ProvisionInput:
    """The Provision workflow's input: workspace, gate with its members as configured now, the requester."""
    gate = cfg.provisioning.gate
    groups = list(cfg.gates[gate].groups) if gate else []
    return ProvisionInput(
        workspace=workspace_spec(cfg, name),
        gate=gate,
        gate_members={g: list(cfg.groups.get(g, [])) for g in groups},
        gate_groups=groups,
        auto_approve=auto_approve,
        plan_only=plan_only,
        requested_by=os.environ.get("FERRY_USER") or os.environ.get("USER", ""),
    )


async def _start(client: Client, cfg: FerryConfig, inp: ProvisionInput) -> tuple[WorkflowHandle, bool]:
    """Start `provision/<ws>`; if one is running, return it (the workflow id is the one-at-a-time lock)."""
    wf_id = provision_workflow_id(inp.workspace.name)
    try:
        handle = await client.start_workflow(
            ProvisionWorkflow.run,
            inp,
            id=wf_id,
            task_queue=cfg.task_queue(WORKFLOW_SITE),
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
        return handle, True
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle_for(ProvisionWorkflow.run, wf_id), False


async def plan(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """`ferry provision plan WORKSPACE... [--json]`: plan each workspace, print what would change, apply nothing.

    Reads args.workspaces (list of names) and args.json.
    """
    inputs = [provision_input(cfg, name, plan_only=True) for name in args.workspaces]
    client = await client_for(cfg)
    results: list[ProvisionStatus] = []
    for inp in inputs:
        handle, started = await _start(client, cfg, inp)
        if not started:
            status: ProvisionStatus = await handle.query(ProvisionWorkflow.status)
            raise CommandError(
                f"{handle.id} is already running (stage {status.stage}); see `ferry provision status "
                f"{inp.workspace.name}`",
                FAILED,
            )
        results.append(await _result(handle))
    if args.json:
        print_json([to_jsonable(r) for r in results])
    else:
        for status in results:
            print(render_provision(status))
    return OK if all(s.outcome in FINAL_OK for s in results) else FAILED


async def apply(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """`ferry provision apply WORKSPACE... [--auto-approve] [--wait] [--json]`.

    Reads args.workspaces, args.auto_approve, args.wait and args.json. A provisioning already running for a
    workspace is followed, not started twice. With --wait, exit FAILED if any ends failed or rejected.
    """
    inputs = [provision_input(cfg, name, plan_only=False, auto_approve=args.auto_approve) for name in args.workspaces]
    client = await client_for(cfg)
    handles = []
    for inp in inputs:
        handle, started = await _start(client, cfg, inp)
        handles.append(handle)
        if args.json and not args.wait:
            print_json({"workspace": inp.workspace.name, "workflow_id": handle.id, "started": started})
        elif not args.json:
            verb = "started" if started else "already running; following it"
            print(f"{inp.workspace.name}: provisioning {verb} ({handle.id})", flush=True)
    if not args.wait:
        return OK
    results = await asyncio.gather(*(follow(h, quiet=args.json) for h in handles))
    if args.json:
        print_json([to_jsonable(r) for r in results])
    else:
        for status in results:
            print(render_provision(status))
    return OK if all(s.outcome in FINAL_OK for s in results) else FAILED


async def follow(handle: WorkflowHandle, *, quiet: bool = False, poll: float = 1.0) -> ProvisionStatus:
    """Print each stage as the provisioning reaches it (with the approve command at the gate); final status."""
    last = ""
    while True:
        desc = await handle.describe()
        status: ProvisionStatus = await handle.query(ProvisionWorkflow.status)
        if status.stage != last and not quiet:
            print(f"  {status.workspace} -> {status.stage}", flush=True)
            if status.stage.startswith("gate:") and status.plan is not None:
                print(f"     plan {status.plan.plan_id}: {describe_plan(status.plan)}", flush=True)
                print(f"     waiting: ferry approve {handle.id} --stage apply --as USER --comment '...'", flush=True)
            last = status.stage
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return status
        await asyncio.sleep(poll)


async def status(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """`ferry provision status [WORKSPACE] [--json]`: last provisioning and last drift check per workspace.

    Reads args.workspace (optional: default every configured workspace) and args.json.
    """
    names = [args.workspace] if args.workspace else sorted(cfg.provisioning.workspaces)
    for name in names:
        workspace_spec(cfg, name)  # validates the name
    client = await client_for(cfg)
    rows = []
    for name in names:
        row: dict = {"workspace": name, "provision": None, "workflow_status": "", "drift": None}
        handle = client.get_workflow_handle(provision_workflow_id(name))
        try:
            desc = await handle.describe()
            row["workflow_status"] = desc.status.name if desc.status else ""
            row["provision"] = await handle.query(ProvisionWorkflow.status, result_type=ProvisionStatus)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise CommandError(f"Temporal refused to describe provision/{name}: {e.message}", FAILED) from None
        row["drift"] = await last_drift(client, name)
        rows.append(row)
    if args.json:
        print_json([{**r, "provision": to_jsonable(r["provision"]), "drift": to_jsonable(r["drift"])} for r in rows])
        return OK
    for r in rows:
        p: ProvisionStatus | None = r["provision"]
        line = f"{r['workspace']}: " + (
            f"{p.outcome} at {p.stage} ({r['workflow_status'].lower()})" if p else "never provisioned"
        )
        print(line)
        if p is not None:
            print("  " + render_provision(p).replace("\n", "\n  "))
        d: DriftResult | None = r["drift"]
        if d is not None:
            what = describe_plan(d.summary) if d.drifted and d.summary else "no drift"
            print(f"  drift check {d.checked_at}: {'DRIFT: ' if d.drifted else ''}{what}")
    return OK


async def last_drift(client: Client, workspace: str) -> DriftResult | None:
    """The result of the newest finished drift check started by the workspace's schedule, if any."""
    try:
        desc = await client.get_schedule_handle(drift_schedule_id(workspace)).describe()
    except RPCError as e:
        # No schedule yet (`ferry provision drift-schedule` not run), or a server without schedules.
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.UNIMPLEMENTED):
            return None
        raise
    for action in reversed(desc.info.recent_actions):
        run = getattr(action.action, "workflow_id", None)
        if run is None:
            continue
        handle = client.get_workflow_handle(run, run_id=action.action.first_execution_run_id, result_type=DriftResult)
        try:
            return await handle.result()
        except (WorkflowFailureError, RPCError):
            continue
    return None


async def schedule_drift(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """`ferry provision drift-schedule [--json]`: create or update `drift/<ws>` for every workspace.

    Reads args.json. Interval: provisioning.drift_interval_minutes.
    """
    names = sorted(cfg.provisioning.workspaces)
    if not names:
        raise CommandError("no provisioning.workspaces in ferry.yaml: nothing to check for drift")
    client = await client_for(cfg)
    minutes = cfg.provisioning.drift_interval_minutes
    done = []
    for name in names:
        notify = cfg.notifications.webhook_url is not None
        verb = await ensure_drift_schedule(
            client, workspace_spec(cfg, name), minutes, cfg.task_queue(WORKFLOW_SITE), notify
        )
        done.append(
            {"workspace": name, "schedule_id": drift_schedule_id(name), "every_minutes": minutes, "action": verb}
        )
    if args.json:
        print_json(done)
    else:
        for d in done:
            print(f"{d['schedule_id']}: {d['action']} (every {d['every_minutes']:g} min)")
    return OK


async def ensure_drift_schedule(
    client: Client, ws: WorkspaceSpec, minutes: float, task_queue: str, notify: bool = False
) -> str:
    """Create the workspace's drift schedule, or update it to today's config; 'created' or 'updated'."""
    from temporalio.client import ScheduleAlreadyRunningError, ScheduleUpdate

    schedule = drift_schedule(ws, minutes, task_queue, notify)
    try:
        await client.create_schedule(drift_schedule_id(ws.name), schedule)
        return "created"
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(drift_schedule_id(ws.name)).update(lambda _: ScheduleUpdate(schedule=schedule))
        return "updated"


async def _result(handle: WorkflowHandle) -> ProvisionStatus:
    try:
        return await handle.result()
    except WorkflowFailureError:
        return await handle.query(ProvisionWorkflow.status)


def describe_plan(plan: PlanSummary) -> str:
    """'+2 ~1 -0 ±1' followed by the destroyed and replaced addresses (what a reviewer must look at)."""
    counts = f"+{len(plan.adds)} ~{len(plan.changes)} -{len(plan.destroys)} ±{len(plan.replaces)}"
    risky = [f"destroys {a}" for a in plan.destroys] + [f"replaces {a}" for a in plan.replaces]
    return counts + (": " + ", ".join(risky) if risky else "")


def render_provision(s: ProvisionStatus) -> str:
    """A few readable lines of a ProvisionStatus."""
    lines = [f"{s.workspace}: {s.outcome} (stage {s.stage}, {s.plans} plan(s))"]
    if s.plan is not None:
        lines.append(f"  plan {s.plan.plan_id}: {describe_plan(s.plan)}")
    if s.gate_state not in ("", "pending"):
        lines.append(f"  gate apply: {s.gate_state}" + (f" by {s.decided_by}" if s.decided_by else ""))
    for c in s.clusters:
        lines.append(f"  cluster {c.name}: {c.state} ({c.id})")
    for a in s.apps:
        lines.append(f"  app {a.name} {a.version}: {a.action}")
    if s.error:
        lines.append(f"  error: {s.error}")
    return "\n".join(lines)
