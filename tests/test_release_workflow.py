"""Release and CI workflows on the time-skipping server, with fake activities registered by name."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fakes import Fakes, worker_plan
from sample import sample_config
from signing import signed
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from workflows.ci import CIWorkflow
from workflows.release import ReleaseWorkflow
from workflows.types import Decision, ReleaseInput, ReleaseStatus

COMMIT = "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0"


@pytest.fixture(scope="module")
async def env(time_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_env


@asynccontextmanager
async def running(env: WorkflowEnvironment, fakes: Fakes) -> AsyncIterator[tuple[str, str]]:
    """Both workers, on per-test task queues so tests never share a queue."""
    suffix = uuid.uuid4().hex[:8]
    onprem, cloud = f"onprem-{suffix}", f"cloud-{suffix}"
    async with (
        Worker(
            env.client,
            task_queue=onprem,
            workflows=[ReleaseWorkflow, CIWorkflow],
            activities=fakes.onprem(),
        ),
        Worker(env.client, task_queue=cloud, activities=fakes.cloud()),
    ):
        yield onprem, cloud


def release_input(onprem: str, cloud: str) -> ReleaseInput:
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": onprem, "cloud": cloud}
    plan = worker_plan(cfg)
    return ReleaseInput(release_id=f"rel-{uuid.uuid4().hex[:6]}", commit=COMMIT, branch="main", plan=plan)


async def start(env: WorkflowEnvironment, onprem: str, cloud: str) -> WorkflowHandle:
    inp = release_input(onprem, cloud)
    return await env.client.start_workflow(
        ReleaseWorkflow.run, inp, id=f"release/test/{inp.release_id}", task_queue=onprem
    )


async def wait_stage(handle: WorkflowHandle, stage: str) -> ReleaseStatus:
    for _ in range(200):
        status = await handle.query(ReleaseWorkflow.status)
        if status.stage == stage:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"release never reached {stage}; at {status.stage}")


async def test_happy_path_moves_every_environment_in_order(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api", "worker"])
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await wait_stage(handle, "gate:staging")
        await handle.execute_update(
            ReleaseWorkflow.approve,
            signed(Decision(stage="staging", user="quinn", comment="QA ok"), handle.id, "approve"),
        )
        await wait_stage(handle, "gate:production")
        await handle.execute_update(
            ReleaseWorkflow.approve, signed(Decision(stage="production", user="rita"), handle.id, "approve")
        )
        result = await handle.result()

    assert result.outcome == "succeeded"
    assert result.services == ["api", "worker"]
    moves = [a.environment for _, a in fakes.names("gitops.move")]
    assert moves == ["testbed", "staging", "production"]
    # The exact CI digest is pinned in every environment, with the environment's own registry.
    staging_move = fakes.names("gitops.move")[1][1]
    assert {p.digest for p in staging_move.images} == set(result.digests.values())
    assert all(p.new_name.startswith("127.0.0.1:18102/ferry/") for p in staging_move.images)
    # Testbed syncs on-prem, staging and production in the cloud; replication once, confirmed in the cloud.
    assert [(q, a.instance) for q, a in fakes.names("argocd.sync")] == [
        (onprem, "onprem"),
        (cloud, "cloud"),
        (cloud, "cloud"),
    ]
    assert len(fakes.names("harbor.replicate")) == 1
    assert {q for q, _ in fakes.names("harbor.confirm")} == {cloud}
    assert [(g.stage, g.state, g.decided_by) for g in result.gates] == [
        ("staging", "approved", "quinn"),
        ("production", "approved", "rita"),
    ]
    assert result.audit[0].comment == "QA ok" and result.audit[0].channel == "update"
    assert {"ci", "deploy:testbed", "gate:staging", "deploy:production"} <= set(result.timings)


async def test_unauthorised_approver_is_refused_and_release_keeps_waiting(env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await wait_stage(handle, "gate:staging")
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(
                ReleaseWorkflow.approve, signed(Decision(stage="staging", user="mallory"), handle.id, "approve")
            )
        assert "mallory may not decide gate 'staging'" in str(err.value.cause)
        # The release manager is not QA either: groups are per gate.
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                ReleaseWorkflow.approve, signed(Decision(stage="staging", user="rita"), handle.id, "approve")
            )
        # Approving a gate that is not waiting yet is refused too.
        with pytest.raises(WorkflowUpdateFailedError) as early:
            await handle.execute_update(
                ReleaseWorkflow.approve, signed(Decision(stage="production", user="rita"), handle.id, "approve")
            )
        assert "not waiting yet" in str(early.value.cause)
        status = await handle.query(ReleaseWorkflow.status)
        assert status.stage == "gate:staging" and status.gates[0].state == "waiting"
        await handle.terminate("test over")


async def test_reject_ends_release_as_rejected_with_who_and_why(env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await wait_stage(handle, "gate:staging")
        await handle.execute_update(
            ReleaseWorkflow.reject,
            signed(Decision(stage="staging", user="quinn", comment="login broken on testbed"), handle.id, "reject"),
        )
        result = await handle.result()
    assert result.outcome == "rejected"
    gate = result.gates[0]
    assert (gate.state, gate.decided_by, gate.comment) == ("rejected", "quinn", "login broken on testbed")
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed"]


async def test_signal_decisions_are_validated_and_refusals_audited(env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await wait_stage(handle, "gate:staging")
        await handle.signal(
            ReleaseWorkflow.decide, signed(Decision(stage="staging", user="mallory"), handle.id, "approve")
        )
        # Each Signal's handler verifies its sender through an activity, so two in flight may finish in either
        # order; the second is sent once the first is audited, to pin the order the audit is checked in.
        for _ in range(200):
            if (await handle.query(ReleaseWorkflow.status)).audit:
                break
            await asyncio.sleep(0.05)
        await handle.signal(
            ReleaseWorkflow.decide,
            signed(Decision(stage="staging", user="quinn", comment="via UI"), handle.id, "approve"),
        )
        await wait_stage(handle, "gate:production")
        status = await handle.query(ReleaseWorkflow.status)
        await handle.terminate("test over")
    assert [(a.user, a.action, a.channel) for a in status.audit] == [
        ("mallory", "refused", "signal"),
        ("quinn", "approve", "signal"),
    ]
    assert "not a member of qa" in status.audit[0].reason


async def test_nothing_deployable_changed_ends_without_error(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=[])
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        result = await handle.result()
    assert result.outcome == "nothing_to_release"
    assert fakes.names("tekton.run") == [] and fakes.names("gitops.move") == []


async def test_failing_quality_gate_stops_before_testbed_naming_service(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api", "web"], failing_gate={"web"})
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        status = await handle.query(ReleaseWorkflow.status)
    assert "quality gate" in str(err.value.cause) and "web" in str(err.value.cause)
    assert status.outcome == "failed" and status.error.startswith("ci:")
    assert fakes.names("gitops.move") == []


async def test_critical_cve_blocks_before_testbed(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"], critical={"api"})
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query(ReleaseWorkflow.status)
    assert "Critical" in status.error
    assert fakes.names("gitops.move") == []


async def test_failed_e2e_reverts_testbed_and_stops_before_staging_gate(env: WorkflowEnvironment) -> None:
    fakes = Fakes(e2e_fails=True)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        result = await handle.result()
    assert result.outcome == "rolled_back" and result.stage == "rolled_back"
    assert result.e2e_url == "http://buildkite.test/acme/e2e/builds/1"
    assert result.rollback_cause.startswith("e2e:testbed:") and "E2E build failed" in result.rollback_cause
    assert result.gates[0].state == "pending"
    ((_, revert),) = fakes.names("gitops.revert")
    moved = result.environments[0].gitops_commit
    assert (revert.environment, revert.commit) == ("testbed", moved)
    assert result.environments[0].state == "rolled_back" and result.environments[0].revert_commit
    assert not fakes.names("tracker.open_issue")  # issues are for production rollbacks


async def test_degraded_application_is_reverted_in_that_environment(env: WorkflowEnvironment) -> None:
    fakes = Fakes(degraded={"shop-testbed"})
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        result = await handle.result()
    assert result.outcome == "rolled_back"
    assert result.rollback_cause.startswith("deploy:testbed:") and "Degraded" in result.rollback_cause
    # Synced at the move, then at the revert commit (healthy there): the environment runs the old images.
    syncs = [a.revision for _, a in fakes.names("argocd.sync")]
    assert syncs == [result.environments[0].gitops_commit, result.environments[0].revert_commit]


async def test_a_failed_verification_never_reverts_a_commit_the_release_did_not_make(env: WorkflowEnvironment) -> None:
    # The pins were already in place by someone else's commit (a rebuild with an identical digest): the
    # automatic rollback must not revert that commit.
    fakes = Fakes(degraded={"shop-testbed"}, pinned_by_others=True)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    assert "not rolled back" in str(err.value.cause) and "never reverted" in str(err.value.cause)
    assert fakes.names("gitops.revert") == []


async def test_an_environment_already_on_a_newer_commit_ends_the_release_superseded(env: WorkflowEnvironment) -> None:
    newer = "b" * 40
    fakes = Fakes(overtaken_by=newer)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        result = await handle.result()
    assert result.outcome == "superseded" and result.superseded_by == newer
    testbed = next(e for e in result.environments if e.name == "testbed")
    assert testbed.state == "superseded"
    assert fakes.names("buildkite.e2e") == [] and fakes.names("argocd.sync") == []
    # It held testbed to try the move: asked for the lock once, for testbed only.
    assert [i.environment for _, i in fakes.names("envlock.request")] == ["testbed"]
