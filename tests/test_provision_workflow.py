"""Provision and Drift workflows on the time-skipping server with the REAL Terraform activities.

Terraform runs offline on copies of the sandbox workspaces; Rancher is faked by activities registered under
the Rancher activity names. Every test has its own task queue and workspace copy.
"""

# The sandbox fixtures come from test_terraform; pytest injects them by parameter name, which ruff reads as
# redefinitions of the imported names.
# ruff: noqa: F811

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sample import sample_config
from signing import signed
from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from test_terraform import (  # noqa: F401 - fixtures used by name
    Sandbox,
    applied,
    applied_template,
    bundle,
    clone_sandbox,
    make_sandbox,
    sandbox,
)

from activities.approvals import ApprovalActivities
from activities.terraform import TerraformActivities
from common.config import FerryConfig, parse_config
from workflows.provision import (
    DriftWorkflow,
    ProvisionWorkflow,
    drift_schedule,
    drift_schedule_id,
    provision_workflow_id,
)
from workflows.provision_types import (
    AppSpec,
    DriftResult,
    ProvisionInput,
    ProvisionStatus,
    RancherAppInput,
    RancherAppResult,
    RancherCluster,
    RancherImportInput,
    TerraformInput,
)
from workflows.types import Decision

HISTORIES = Path(__file__).parent / "histories"
APP = AppSpec(name="argo-cd", chart="argo-cd", version="7.3.0", namespace="argocd")


@pytest.fixture(scope="module")
async def env(time_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_env


class FakeRancher:
    """Rancher activities by name: record imports and installs, answer like the real ones."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def activities(self) -> list:
        @activity.defn(name="rancher.import_cluster")
        async def import_cluster(inp: RancherImportInput) -> RancherCluster:
            self.calls.append(("import", inp.cluster.name))
            return RancherCluster(id=f"c-{inp.cluster.name}", name=inp.cluster.name, state="active")

        @activity.defn(name="rancher.install_app")
        async def install_app(inp: RancherAppInput) -> RancherAppResult:
            self.calls.append(("install", f"{inp.cluster_id}/{inp.app.name}@{inp.app.version}"))
            return RancherAppResult(name=inp.app.name, version=inp.app.version, action="installed")

        return [import_cluster, install_app]


def terraform_activities(tf: TerraformActivities) -> list:
    return [tf.inspect, tf.init, tf.plan, tf.apply, tf.output, tf.drift]


def worker_config() -> FerryConfig:
    """The workers' ferry.yaml: the `infra` gate, decided by the sre group (sam), guards destructive plans."""
    cfg = sample_config()
    cfg["groups"]["sre"] = ["sam"]
    cfg["gates"]["infra"] = {"groups": ["sre"]}
    cfg["provisioning"] = {"gate": "infra"}
    return parse_config(cfg)


WORKER_CONFIG = worker_config()


def approval_activities() -> list:
    """The workers' own gate policy and identity checks (not fakes), over WORKER_CONFIG."""
    approvals = ApprovalActivities(lambda: WORKER_CONFIG)
    return [approvals.plan, approvals.policy, approvals.verify]


def make_worker(
    env: WorkflowEnvironment, tf: TerraformActivities, rancher: FakeRancher, queue: str, *, sticky: bool = True
) -> Worker:
    return Worker(
        env.client,
        task_queue=queue,
        workflows=[ProvisionWorkflow, DriftWorkflow],
        activities=terraform_activities(tf) + rancher.activities() + approval_activities(),
        # The time-skipping server never moves a sticky workflow task off a stopped worker; a real server
        # does after the sticky timeout. Tests that stop a worker turn stickiness off instead of waiting.
        max_cached_workflows=100 if sticky else 0,
    )


@asynccontextmanager
async def running(env: WorkflowEnvironment, sb: Sandbox, rancher: FakeRancher) -> AsyncIterator[str]:
    queue = f"onprem-{uuid.uuid4().hex[:8]}"
    async with make_worker(env, sb.tf, rancher, queue):
        yield queue


def provision_input(sb: Sandbox, queue: str, **kwargs: object) -> ProvisionInput:
    ws = dataclasses.replace(sb.ws, task_queue=queue, apps=[APP], variables=dict(sb.ws.variables))
    return ProvisionInput(workspace=ws, gate="infra", gate_groups=["sre"], gate_members={"sre": ["sam"]}, **kwargs)


async def start(env: WorkflowEnvironment, inp: ProvisionInput, queue: str) -> WorkflowHandle:
    wf_id = f"{provision_workflow_id(inp.workspace.name)}-{uuid.uuid4().hex[:6]}"
    return await env.client.start_workflow(ProvisionWorkflow.run, inp, id=wf_id, task_queue=queue)


async def wait_stage(handle: WorkflowHandle, stage: str) -> ProvisionStatus:
    for _ in range(600):
        status: ProvisionStatus = await handle.query(ProvisionWorkflow.status)
        if status.stage == stage:
            return status
        if status.outcome != "running":
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"provisioning never reached {stage}; at {status.stage} ({status.outcome}: {status.error})")


def record(history: WorkflowHistory, name: str) -> None:
    """FERRY_RECORD_HISTORIES=1 saves the history for the replay tests (after a deliberate workflow change)."""
    if os.environ.get("FERRY_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())


def resources(sb: Sandbox) -> dict[str, dict]:
    """Address -> resource of the state, as `terraform show -json` reports it."""
    return {r["address"]: r for r in sb.state()["values"]["root_module"]["resources"]}


def applied_marker(sb: Sandbox, plan_id: str) -> dict | None:
    marker = sb.tf.workdir / sb.ws.name / "plans" / f"{plan_id}.applied"
    return json.loads(marker.read_text()) if marker.exists() else None


async def test_add_only_plan_applies_without_a_gate_then_imports_clusters(
    env: WorkflowEnvironment, sandbox: Sandbox
) -> None:
    rancher = FakeRancher()
    async with running(env, sandbox, rancher) as queue:
        handle = await start(env, provision_input(sandbox, queue), queue)
        result: ProvisionStatus = await handle.result()
        history = await handle.fetch_history()

    assert result.outcome == "applied" and result.stage == "done"
    assert result.gate_state == "pending" and result.audit == []  # no gate opened
    assert result.plans == 1 and result.plan is not None
    assert len(result.plan.adds) == 6 and not result.plan.destructive
    assert sandbox.runs("apply") == 1
    assert applied_marker(sandbox, result.plan.plan_id)["checksum"] == result.plan.plan_checksum
    assert len(resources(sandbox)) == 6
    assert "registry_robot_secret" not in result.outputs and "clusters" in result.outputs
    assert [c.id for c in result.clusters] == ["c-onprem-ci", "c-onprem-testbed"]
    assert rancher.calls == [
        ("import", "onprem-ci"),
        ("install", "c-onprem-ci/argo-cd@7.3.0"),
        ("import", "onprem-testbed"),
        ("install", "c-onprem-testbed/argo-cd@7.3.0"),
    ]
    record(history, "provision-add-only")


async def test_replace_waits_for_approval_and_applies_exactly_the_approved_plan(
    env: WorkflowEnvironment, applied: Sandbox
) -> None:
    before = resources(applied)
    rancher = FakeRancher()
    async with running(env, applied, rancher) as queue:
        inp = provision_input(applied, queue)
        inp.workspace.variables["vm_template"] = "ubuntu-2404-cloudinit"
        handle = await start(env, inp, queue)
        waiting = await wait_stage(handle, "gate:apply")
        assert sorted(waiting.plan.replaces) == [
            'null_resource.cluster["onprem-ci"]',
            'null_resource.cluster["onprem-testbed"]',
        ]
        assert waiting.gate_state == "waiting" and applied.runs("apply") == 0
        # What the approver reviews: the saved plan as JSON (Terraform 1.0 cannot show it once applied).
        planned = json.loads(applied.terraform("show", "-json", str(applied.plan_file(waiting.plan.plan_id))))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                ProvisionWorkflow.approve, signed(Decision(stage="apply", user="mallory"), handle.id, "approve")
            )
        assert "mallory may not decide gate 'apply'" in str(refused.value.cause)
        gate = await handle.execute_update(
            ProvisionWorkflow.approve,
            signed(Decision(stage="apply", user="sam", comment="new template"), handle.id, "approve"),
        )
        assert gate.state == "approved"
        result: ProvisionStatus = await handle.result()
        record(await handle.fetch_history(), "provision-replace-approved")

    assert result.outcome == "applied" and result.plans == 1
    assert result.plan == waiting.plan  # the approved plan is the one applied
    # mallory's refused attempt is audited (the workers verified her, she is not in sre), then sam's approval.
    assert [(a.user, a.action, a.comment) for a in result.audit] == [
        ("mallory", "refused", ""),
        ("sam", "approve", "new template"),
    ]
    assert applied.runs("apply") == 1
    assert applied_marker(applied, result.plan.plan_id)["checksum"] == waiting.plan.plan_checksum
    after = resources(applied)
    for rc in planned["resource_changes"]:
        if rc["change"]["actions"] == ["no-op"]:
            assert after[rc["address"]]["values"]["id"] == before[rc["address"]]["values"]["id"]
        else:  # replaced: a new object with exactly the planned template
            assert rc["change"]["actions"] == ["delete", "create"]
            assert after[rc["address"]]["values"]["id"] != before[rc["address"]]["values"]["id"]
            assert after[rc["address"]]["values"]["triggers"]["template"] == "ubuntu-2404-cloudinit"


async def test_auto_approve_does_not_cover_a_destroy_and_a_rejection_applies_nothing(
    env: WorkflowEnvironment, applied: Sandbox
) -> None:
    async with running(env, applied, FakeRancher()) as queue:
        inp = provision_input(applied, queue, auto_approve=True)
        inp.workspace.variables["registry_projects"] = ["ferry"]
        handle = await start(env, inp, queue)
        waiting = await wait_stage(handle, "gate:apply")
        assert waiting.plan.destroys == ['null_resource.registry["platform"]']
        await handle.execute_update(
            ProvisionWorkflow.reject,
            signed(Decision(stage="apply", user="sam", comment="keep it"), handle.id, "reject"),
        )
        result: ProvisionStatus = await handle.result()
    assert result.outcome == "rejected" and result.decided_by == "sam"
    assert applied.runs("apply") == 0
    assert 'null_resource.registry["platform"]' in resources(applied)


async def test_plan_only_stops_after_the_plan(env: WorkflowEnvironment, sandbox: Sandbox) -> None:
    rancher = FakeRancher()
    async with running(env, sandbox, rancher) as queue:
        handle = await start(env, provision_input(sandbox, queue, plan_only=True), queue)
        result: ProvisionStatus = await handle.result()
    assert result.outcome == "planned" and len(result.plan.adds) == 6
    assert sandbox.runs("apply") == 0 and rancher.calls == []
    assert sandbox.plan_file(result.plan.plan_id).exists()


async def test_state_changed_while_waiting_for_approval_is_replanned_and_approved_again(
    env: WorkflowEnvironment, applied: Sandbox
) -> None:
    async with running(env, applied, FakeRancher()) as queue:
        inp = provision_input(applied, queue)
        inp.workspace.variables["vm_template"] = "ubuntu-2404-cloudinit"
        handle = await start(env, inp, queue)
        first = await wait_stage(handle, "gate:apply")
        # Someone applies by hand while the plan waits: the approved plan must not be applied over it.
        applied.terraform("apply", "-input=false", "-auto-approve", "-var", "datacenter=dc1", "-var", "vlan_id=300")
        await handle.execute_update(
            ProvisionWorkflow.approve, signed(Decision(stage="apply", user="sam"), handle.id, "approve")
        )
        for _ in range(600):
            second: ProvisionStatus = await handle.query(ProvisionWorkflow.status)
            if second.plans == 2 and second.stage == "gate:apply":
                break
            await asyncio.sleep(0.05)
        assert second.plan.plan_id != first.plan.plan_id and second.gate_state == "waiting"
        # The new plan puts the VLAN back: the network and everything on it is replaced.
        assert "null_resource.network" in second.plan.replaces
        await handle.execute_update(
            ProvisionWorkflow.approve,
            signed(Decision(stage="apply", user="sam", comment="again"), handle.id, "approve"),
        )
        result: ProvisionStatus = await handle.result()
    assert result.outcome == "applied" and result.plans == 2
    assert [a.action for a in result.audit] == ["approve", "approve"]
    assert applied_marker(applied, first.plan.plan_id) is None  # the stale plan never ran
    assert applied_marker(applied, second.plan.plan_id) is not None
    assert applied.runs("apply") == 1
    assert resources(applied)["null_resource.network"]["values"]["triggers"]["vlan_id"] == "240"


async def test_worker_stopped_during_apply_resumes_and_applies_once(
    env: WorkflowEnvironment,
    tmp_path: Path,
    bundle: tuple[str, str],
) -> None:
    sb = make_sandbox(tmp_path, bundle, apply_delay_seconds=2)
    rancher = FakeRancher()
    queue = f"onprem-{uuid.uuid4().hex[:8]}"
    first_worker = make_worker(env, sb.tf, rancher, queue, sticky=False)
    run = asyncio.create_task(first_worker.run())
    handle = await start(env, provision_input(sb, queue), queue)
    for _ in range(400):
        if sb.runs("apply"):
            break
        await asyncio.sleep(0.05)
    assert sb.runs("apply") == 1
    await asyncio.sleep(0.3)
    run.cancel()  # stop the worker while Terraform applies
    with contextlib.suppress(asyncio.CancelledError):
        await run

    # A new worker process on the same host: new activity objects, same plan files and state.
    restarted = TerraformActivities(sb.tf.binary, sb.tf.plugin_dir, sb.tf.workdir, poll_seconds=0.2, site="onprem")
    async with make_worker(env, restarted, rancher, queue):
        result: ProvisionStatus = await handle.result()

    assert result.outcome == "applied"
    assert sb.runs("apply") == 1  # Terraform applied once; the plan was never re-run
    assert applied_marker(sb, result.plan.plan_id) is not None
    state = resources(sb)
    assert len(state) == 6 and all(r.get("tainted") is not True for r in state.values())
    assert ("import", "onprem-ci") in rancher.calls


async def test_drift_workflow_reports_changes_made_behind_terraforms_back(
    env: WorkflowEnvironment, applied: Sandbox
) -> None:
    async with running(env, applied, FakeRancher()) as queue:
        ws = dataclasses.replace(applied.ws, task_queue=queue)
        clean: DriftResult = await env.client.execute_workflow(
            DriftWorkflow.run, TerraformInput(workspace=ws), id=f"drift/{uuid.uuid4().hex[:6]}", task_queue=queue
        )
        applied.terraform("state", "rm", "null_resource.artifact_store")
        drift: DriftResult = await env.client.execute_workflow(
            DriftWorkflow.run, TerraformInput(workspace=ws), id=f"drift/{uuid.uuid4().hex[:6]}", task_queue=queue
        )
    assert not clean.drifted
    assert drift.drifted and drift.summary.adds == ["null_resource.artifact_store"]
    assert applied.runs("apply") == 0
    assert "null_resource.artifact_store" not in applied.terraform("state", "list")


def test_drift_schedule_runs_the_drift_workflow_every_interval(applied_template: Sandbox) -> None:
    schedule = drift_schedule(applied_template.ws, 30, "onprem")
    assert schedule.action.workflow == "Drift"
    assert schedule.action.id == drift_schedule_id("tf-onprem") == "drift/tf-onprem"
    assert schedule.action.task_queue == "onprem"
    assert schedule.action.args[0].workspace == applied_template.ws
    assert [i.every.total_seconds() for i in schedule.spec.intervals] == [1800]


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("provision-*.json")), ids=lambda p: p.stem)
async def test_recorded_provision_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    result = await Replayer(workflows=[ProvisionWorkflow, DriftWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None


# --- the `ferry provision` commands, against the same server and worker ---


async def test_provision_commands_plan_apply_and_status(
    env: WorkflowEnvironment, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sample import sample_config

    from common.config import parse_config
    from starters import provision_cmds

    queue = f"onprem-{uuid.uuid4().hex[:8]}"
    raw = sample_config()
    raw["temporal"]["task_queues"] = {"onprem": queue, "cloud": f"cloud-{queue}"}
    raw["provisioning"] = {
        "gate": "production",
        "workspaces": {"tf-onprem": {"site": "onprem", "path": sandbox.ws.path, "variables": {"datacenter": "dc1"}}},
    }
    cfg = parse_config(raw)

    async def client_for(_: object) -> object:
        return env.client

    monkeypatch.setattr(provision_cmds, "client_for", client_for)
    Args = argparse.Namespace
    async with make_worker(env, sandbox.tf, FakeRancher(), queue):
        assert await provision_cmds.plan(cfg, Args(workspaces=["tf-onprem"], json=False)) == 0
        planned = capsys.readouterr().out
        assert "tf-onprem: planned" in planned and "+6 ~0 -0 ±0" in planned
        assert sandbox.runs("apply") == 0

        code = await provision_cmds.apply(cfg, Args(workspaces=["tf-onprem"], auto_approve=False, wait=True, json=True))
        applied = json.loads(capsys.readouterr().out)
        assert code == 0 and applied[0]["outcome"] == "applied" and sandbox.runs("apply") == 1

        assert await provision_cmds.status(cfg, Args(workspace="tf-onprem", json=True)) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown[0]["provision"]["outcome"] == "applied" and shown[0]["workflow_status"] == "COMPLETED"
        assert shown[0]["provision"]["plan"]["plan_id"] == applied[0]["plan"]["plan_id"]

    with pytest.raises(provision_cmds.CommandError) as err:
        await provision_cmds.plan(cfg, Args(workspaces=["nope"], json=False))
    assert "unknown workspace 'nope'" in str(err.value) and "tf-onprem" in str(err.value)
