"""The Provision workflow (one Terraform workspace, then its clusters into Rancher) and the Drift check.

Provision: inspect -> init -> plan -> [gate `apply` when the plan destroys or replaces anything] -> apply that
exact plan -> outputs -> for each cluster: Rancher import, then the workspace's platform apps. The workflow id
`provision/{workspace}` is the one-at-a-time lock: Temporal refuses a second running workflow with that id.
Every Terraform step runs on the workspace's site task queue, where the plan file stays (see
activities/terraform.py): an apply that finds its plan stale re-plans, and a destructive re-plan is approved
again. Bounded: after MAX_PLANS stale plans the run fails and says why.

Drift: one run is one `plan -detailed-exitcode` of a workspace; it reports and never applies. A Temporal
Schedule (`drift/{workspace}`) starts it every `provisioning.drift_interval_minutes`.

Deterministic: no I/O, time from `workflow.now()`, plan ids from `workflow.uuid4()`.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import approval_types  # noqa: F401 - decoded here (GatePolicy, Identity): the sandbox must see it
    from workflows.ci import failure_message
    from workflows.gates import PATCH_VERIFIED, GateHandlers, Gates
    from workflows.identity import load_policy
    from workflows.provision_types import (
        ApplyResult,
        DriftResult,
        InspectResult,
        Outputs,
        PlanSummary,
        ProvisionInput,
        ProvisionStatus,
        RancherAppInput,
        RancherAppResult,
        RancherCluster,
        RancherImportInput,
        TerraformInput,
        WorkspaceSpec,
    )
    from workflows.types import GateSpec, GateStatus, Notification

PROVISION_FAILED = "ProvisionFailed"
APPLY = "apply"  # the gate's stage name: `ferry approve provision/<ws> --stage apply`
MAX_PLANS = 3


def provision_workflow_id(workspace: str) -> str:
    """`provision/{workspace}`: one provisioning of a workspace at a time."""
    return f"provision/{workspace}"


def drift_schedule_id(workspace: str) -> str:
    """`drift/{workspace}`: the schedule (and the prefix of the workflow ids it starts)."""
    return f"drift/{workspace}"


def _terraform_options(task_queue: str, *, long: bool = False) -> dict:
    # Terraform applies of real clusters take tens of minutes; the heartbeat (every poll period while the CLI
    # runs) is what detects a dead worker. A held state lock is retried for a few minutes, then reported.
    return {
        "task_queue": task_queue,
        "start_to_close_timeout": timedelta(hours=4 if long else 1),
        "heartbeat_timeout": timedelta(minutes=2),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=2),
            maximum_interval=timedelta(seconds=60),
            backoff_coefficient=2.0,
            maximum_attempts=10,
        ),
    }


def _rancher_options(task_queue: str) -> dict:
    return {
        "task_queue": task_queue,
        "start_to_close_timeout": timedelta(minutes=45),
        "heartbeat_timeout": timedelta(minutes=2),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            maximum_interval=timedelta(seconds=30),
            backoff_coefficient=2.0,
            maximum_attempts=8,
        ),
    }


@workflow.defn(name="Provision")
class ProvisionWorkflow(GateHandlers):
    """Provisions one workspace: the plan a person approved is the plan applied, and a crash resumes."""

    @workflow.init
    def __init__(self, inp: ProvisionInput) -> None:
        specs = [GateSpec(name=inp.gate, groups=inp.gate_groups, members=inp.gate_members)] if inp.gate else []
        self._gates = Gates(specs, [APPLY])
        if inp.gate:
            self._gates.bind(APPLY, inp.gate)
        self._status = ProvisionStatus(workspace=inp.workspace.name)
        self._verified = False  # set at the start of run(): gate policy and identities from the workers

    # --- queries, updates, signals (same names and types as the Release workflow's) ---

    @workflow.query
    def status(self) -> ProvisionStatus:
        """Stage, outcome, the current plan's summary, gate state and audit, clusters and apps."""
        gate = self._gates.status[APPLY]
        return dataclasses.replace(
            self._status, gate_state=gate.state, decided_by=gate.decided_by, audit=list(self._gates.audit)
        )

    # --- the run ---

    @workflow.run
    async def run(self, inp: ProvisionInput) -> ProvisionStatus:
        """Provision the workspace; fails with ProvisionFailed naming the stage and the cause."""
        self._verified = workflow.patched(PATCH_VERIFIED)
        try:
            await self._provision(inp)
        except (ActivityError, ApplicationError) as e:
            stage = self._status.stage
            self._status.outcome = "failed"
            self._status.error = f"{stage}: {failure_message(e)}"
            workflow.set_current_details(f"FAILED at {stage}: {failure_message(e)}")
            raise ApplicationError(self._status.error, type=PROVISION_FAILED, non_retryable=True) from e
        await workflow.wait_condition(workflow.all_handlers_finished)  # a decision in verification answers first
        return self.status()

    async def _provision(self, inp: ProvisionInput) -> None:
        ws = inp.workspace
        tf = TerraformInput(workspace=ws)
        self._enter("inspect", f"inspecting {ws.name} ({ws.path})")
        await workflow.execute_activity(
            "terraform.inspect", tf, result_type=InspectResult, **_terraform_options(ws.task_queue)
        )
        attempted = False  # an apply ran in this run (perhaps reported stale after a crash half-way)
        while True:
            plan = await self._plan(ws)
            if not plan.has_changes:
                self._status.outcome = "applied" if attempted else "no_changes"
                break
            if inp.plan_only:
                self._status.outcome = "planned"
                self._enter("done", f"planned {_describe(plan)}; not applied (plan only)")
                return
            if plan.destructive and not await self._approved(inp, plan):
                gate = self._gates.status[APPLY]
                if gate.state == "expired":
                    self._status.outcome = "expired"
                    self._enter("expired", f"plan {plan.plan_id} was not decided in time; nothing applied")
                else:
                    self._status.outcome = "rejected"
                    self._enter("rejected", f"plan {plan.plan_id} rejected by {gate.decided_by}: {gate.comment}")
                return
            self._enter("apply", f"applying plan {plan.plan_id}: {_describe(plan)}")
            attempted = True
            result: ApplyResult = await workflow.execute_activity(
                "terraform.apply",
                TerraformInput(workspace=ws, plan_id=plan.plan_id, plan_checksum=plan.plan_checksum),
                result_type=ApplyResult,
                **_terraform_options(ws.task_queue, long=True),
            )
            if result.applied:
                self._status.outcome = "applied"
                break
            # Stale: state moved or the plan file is elsewhere. Plan again (and ask again if destructive).
            workflow.logger.warning("plan %s of %s is stale: %s", plan.plan_id, ws.name, result.message)
            if self._status.plans >= MAX_PLANS:
                raise ApplicationError(
                    f"{ws.name}: {MAX_PLANS} plans in a row went stale before they could be applied "
                    f"({result.message}); something else keeps changing this workspace's state: stop it, then "
                    "provision again",
                    type=PROVISION_FAILED,
                    non_retryable=True,
                )
        await self._outputs_and_clusters(ws)
        self._enter("done", f"{ws.name}: {self._status.outcome}")

    async def _plan(self, ws: WorkspaceSpec) -> PlanSummary:
        # init before every plan: a re-plan may land on another worker of the site.
        self._enter("init", f"terraform init of {ws.name}")
        await workflow.execute_activity(
            "terraform.init", TerraformInput(workspace=ws), **_terraform_options(ws.task_queue)
        )
        self._status.plans += 1
        plan_id = f"{ws.name}-{self._status.plans}-{workflow.uuid4().hex[:12]}"
        self._enter("plan", f"terraform plan of {ws.name} ({plan_id})")
        plan: PlanSummary = await workflow.execute_activity(
            "terraform.plan",
            TerraformInput(workspace=ws, plan_id=plan_id),
            result_type=PlanSummary,
            **_terraform_options(ws.task_queue, long=True),
        )
        self._status.plan = plan
        return plan

    async def _approved(self, inp: ProvisionInput, plan: PlanSummary) -> bool:
        """Wait for a person's decision on a plan that destroys or replaces; auto-approve never covers it.

        Verified runs take the gate and its policy from the workers' ferry.yaml (provisioning.gate), not
        from the input: a starter cannot name a gate of its own choosing, or none.
        """
        policy = await load_policy("", "provisioning") if self._verified else None
        gate_name = (policy.gate.name if policy and policy.gate else None) if policy else inp.gate
        if gate_name is None:
            raise ApplicationError(
                f"{inp.workspace.name}: plan {plan.plan_id} {_describe(plan)}, which needs an approval, but "
                "provisioning.gate is not set in ferry.yaml: configure a gate, then provision again",
                type=PROVISION_FAILED,
                non_retryable=True,
            )
        # A re-plan after a stale apply is a new plan: the earlier decision does not carry over.
        self._gates.status[APPLY] = GateStatus(stage=APPLY)
        self._gates.bind(APPLY, gate_name)
        if policy is not None:
            self._gates.load(APPLY, policy)
        note = " (auto-approve does not cover destroys or replacements)" if inp.auto_approve else ""
        self._enter(f"gate:{APPLY}", f"waiting for approval of plan {plan.plan_id}: {_describe(plan)}{note}")
        self._gates.open(APPLY, workflow.now())
        deadline = self._gates.deadline_seconds(APPLY)
        try:
            await workflow.wait_condition(lambda: self._gates.decided(APPLY), timeout=timedelta(seconds=deadline))
        except TimeoutError:
            self._gates.expire(APPLY, workflow.now())
        return self._gates.status[APPLY].state == "approved"

    async def _outputs_and_clusters(self, ws: WorkspaceSpec) -> None:
        self._enter("output", f"terraform output of {ws.name}")
        outputs: Outputs = await workflow.execute_activity(
            "terraform.output", TerraformInput(workspace=ws), result_type=Outputs, **_terraform_options(ws.task_queue)
        )
        self._status.outputs = outputs.values
        for cluster in outputs.clusters:
            self._enter(f"rancher:{cluster.name}", f"importing {cluster.name} into Rancher")
            imported: RancherCluster = await workflow.execute_activity(
                "rancher.import_cluster",
                RancherImportInput(site=ws.site, cluster=cluster),
                result_type=RancherCluster,
                **_rancher_options(ws.task_queue),
            )
            self._status.clusters.append(imported)
            for app in ws.apps:
                installed: RancherAppResult = await workflow.execute_activity(
                    "rancher.install_app",
                    RancherAppInput(site=ws.site, cluster_id=imported.id, app=app),
                    result_type=RancherAppResult,
                    **_rancher_options(ws.task_queue),
                )
                self._status.apps.append(installed)

    def _enter(self, stage: str, details: str) -> None:
        self._status.stage = stage
        workflow.set_current_details(details)


@workflow.defn(name="Drift")
class DriftWorkflow:
    """One drift check of one workspace: `plan -detailed-exitcode`; reports, never applies."""

    @workflow.run
    async def run(self, inp: TerraformInput) -> DriftResult:
        """Return the check's result; drift is logged as a warning and shown in the run's details."""
        ws = inp.workspace
        opts = _terraform_options(ws.task_queue)
        await workflow.execute_activity("terraform.init", TerraformInput(workspace=ws), **opts)
        result: DriftResult = await workflow.execute_activity(
            "terraform.drift", TerraformInput(workspace=ws), result_type=DriftResult, **opts
        )
        if result.drifted and result.summary is not None:
            message = f"DRIFT in {ws.name}: {_describe(result.summary)}; run `ferry provision apply {ws.name}`"
            workflow.logger.warning(message)
            workflow.set_current_details(message)
            if inp.notify_queue:
                await workflow.execute_activity(
                    "notify.webhook",
                    Notification(
                        key=f"{workflow.info().workflow_id}/{workflow.info().run_id}",
                        event="drift",
                        release_id=ws.name,
                        text=message,
                    ),
                    result_type=str,
                    task_queue=inp.notify_queue,
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_attempts=5),
                )
        else:
            workflow.set_current_details(f"{ws.name}: no drift")
        return result


def drift_schedule(
    ws: WorkspaceSpec, interval_minutes: float, workflow_task_queue: str, notify: bool = False
) -> Schedule:
    """The Schedule that runs the Drift workflow of `ws` every `interval_minutes` (overlaps skipped);
    with `notify`, drift is also announced on the webhook (sent from the workflow task queue's worker)."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            DriftWorkflow.run,
            TerraformInput(workspace=ws, notify_queue=workflow_task_queue if notify else ""),
            id=drift_schedule_id(ws.name),
            task_queue=workflow_task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=interval_minutes))]),
        policy=SchedulePolicy(),  # default overlap policy: skip a check while the previous one still runs
        state=ScheduleState(note=f"Terraform drift check of {ws.name} (ferry provision drift-schedule)"),
    )


def _describe(plan: PlanSummary) -> str:
    parts = [
        f"{label} {', '.join(items)}"
        for label, items in (
            ("destroys", plan.destroys),
            ("replaces", plan.replaces),
            ("changes", plan.changes),
            ("adds", plan.adds),
        )
        if items
    ]
    return "; ".join(parts) or "no changes"
