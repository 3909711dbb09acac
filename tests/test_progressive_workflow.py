"""Progressive production and automatic rollback in the Release workflow (time-skipping server, fakes)."""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fakes import PREVIOUS_DIGEST, Fakes, worker_plan
from sample import sample_config
from signing import signed, signed_rollback
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common.config import parse_config
from starters import release_cmds
from starters.cli import build_parser
from starters.common import FAILED, OK, CommandError
from workflows.ci import CIWorkflow
from workflows.release import ReleaseWorkflow
from workflows.rollback import RollbackWorkflow
from workflows.types import (
    RELEASE_RECORD_MEMO,
    Artifact,
    Decision,
    ReleaseInput,
    ReleaseStatus,
    RollbackInput,
)

COMMIT = "b1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0"
HISTORIES = Path(__file__).parent / "histories"


async def keep_history(handle: WorkflowHandle, name: str) -> None:
    """FERRY_RECORD_HISTORIES=1 saves the history for the replay tests (after a deliberate workflow change)."""
    if os.environ.get("FERRY_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text((await handle.fetch_history()).to_json())


@pytest.fixture(scope="module")
async def env(time_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_env


@asynccontextmanager
async def running(env: WorkflowEnvironment, fakes: Fakes) -> AsyncIterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    onprem, cloud = f"onprem-{suffix}", f"cloud-{suffix}"
    async with (
        Worker(
            env.client,
            task_queue=onprem,
            workflows=[ReleaseWorkflow, CIWorkflow, RollbackWorkflow],
            activities=fakes.onprem(),
        ),
        Worker(env.client, task_queue=cloud, activities=fakes.cloud()),
    ):
        yield onprem, cloud


async def start(
    env: WorkflowEnvironment, onprem: str, cloud: str, *, promotion: str = "auto", auto_rollback: bool = True
) -> WorkflowHandle:
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": onprem, "cloud": cloud}
    # The workers' ferry.yaml, which the release loads (ferry.plan): only api is a Rollout, soaked 300 s.
    cfg["services"]["web"].pop("rollouts", None)
    cfg["environments"]["production"]["rollout"] = {
        "namespace": "shop-production",
        "promotion": promotion,
        "soak_minutes": 5,
    }
    cfg["environments"]["production"]["auto_rollback"] = auto_rollback
    cfg["temporal"]["ui_url"] = "http://temporal-ui.test"
    cfg["feedback"] = {
        "tracker": "github",
        "url": "http://tracker.test",
        "project": "acme/shop",
        "token": {"env": "FERRY_TEST_TRACKER"},
        "site": "onprem",
    }
    plan = worker_plan(cfg)
    inp = ReleaseInput(release_id=f"rel-{uuid.uuid4().hex[:6]}", commit=COMMIT, branch="main", plan=plan)
    return await env.client.start_workflow(
        ReleaseWorkflow.run, inp, id=f"release/test/{inp.release_id}", task_queue=onprem
    )


async def until(handle: WorkflowHandle, check, what: str) -> ReleaseStatus:
    for _ in range(400):
        status = await handle.query(ReleaseWorkflow.status)
        if check(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"release never reached {what}; at {status.stage}")


async def approve_gates(handle: WorkflowHandle) -> None:
    await until(handle, lambda s: s.stage == "gate:staging", "gate:staging")
    await handle.execute_update(
        ReleaseWorkflow.approve, signed(Decision(stage="staging", user="quinn"), handle.id, "approve")
    )
    await until(handle, lambda s: s.stage == "gate:production", "gate:production")
    await handle.execute_update(
        ReleaseWorkflow.approve, signed(Decision(stage="production", user="rita"), handle.id, "approve")
    )


async def test_canary_steps_are_promoted_after_the_soak_and_production_is_healthy(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"], canary_steps=3)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await approve_gates(handle)
        result = await handle.result()
        await keep_history(handle, "release-canary")

    assert result.outcome == "succeeded"
    production = result.environments[-1]
    progress = production.rollouts["api"]
    assert (progress.phase, progress.step, progress.steps) == ("Healthy", 3, 3)
    assert [p.split(" promoted by ")[0] for p in progress.promoted_steps] == [
        "step 0 (pause)",
        "step 1 (pause)",
        "step 2 (pause)",
    ]
    assert all(" promoted by soak 300s at " in p for p in progress.promoted_steps)
    assert [(q, a.step) for q, a in fakes.names("rollouts.promote")] == [(cloud, 0), (cloud, 1), (cloud, 2)]
    # Production's sync does not wait for Healthy (a paused canary is Suspended); the others do.
    assert [(a.app, a.wait_healthy) for _, a in fakes.names("argocd.sync")] == [
        ("shop-testbed", True),
        ("shop-staging", True),
        ("shop-production", False),
    ]
    assert "rollout:production" in result.timings
    memo = (await (await handle.describe()).memo())[RELEASE_RECORD_MEMO]
    assert memo["outcome"] == "succeeded" and memo["services"] == ["api"]
    assert memo["environments"]["production"]["deployed_at"] >= memo["environments"]["production"]["moved_at"]
    assert memo["stages"]["rollout:production"] >= 3 * 300  # three soaks of 300 s on the workflow clock


async def test_approval_promotion_waits_for_ferry_promote_by_a_member_of_the_gate(
    env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def client_for(_cfg: object) -> object:
        return env.client

    monkeypatch.setattr(release_cmds, "client_for", client_for)
    cfg = parse_config(sample_config())
    fakes = Fakes(affected=["api"], canary_steps=2)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud, promotion="approval")
        await approve_gates(handle)

        def promote(user: str) -> argparse.Namespace:
            return build_parser().parse_args(
                ["promote", handle.id, "--stage", "production", "--as", user, "--comment", "canary looks fine"]
            )

        for step in range(2):
            await until(
                handle,
                lambda s, step=step: (
                    "api" in s.environments[-1].rollouts
                    and s.environments[-1].rollouts["api"].phase == "Paused"
                    and s.environments[-1].rollouts["api"].step == step
                ),
                f"pause {step}",
            )
            with pytest.raises(CommandError) as refused:
                await release_cmds.promote(cfg, promote("mallory"))
            assert refused.value.code == FAILED and "mallory may not promote production" in str(refused.value)
            assert await release_cmds.promote(cfg, promote("rita")) == OK
            assert "production: promotion of production accepted (by rita; signed by rita" in capsys.readouterr().out
        result = await handle.result()
    assert result.outcome == "succeeded"
    promoted = [a for a in result.audit if a.action == "promoted"]
    assert [(a.stage, a.user, a.comment) for a in promoted] == [("rollout:production", "rita", "canary looks fine")] * 2
    assert all("promoted by rita" in p for p in result.environments[-1].rollouts["api"].promoted_steps)


async def test_failing_canary_is_aborted_reverted_restored_and_reported(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"], canary_steps=3, canary_fails_at=1)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await approve_gates(handle)
        result = await handle.result()
        await keep_history(handle, "release-canary-rolled-back")

    assert result.outcome == "rolled_back" and result.stage == "rolled_back"
    assert result.rollback_cause.startswith("rollout:production:")
    assert "aborted after step 0/3 (pause)" in result.rollback_cause and "error-rate" in result.rollback_cause
    production = result.environments[-1]
    assert production.state == "rolled_back" and production.revert_commit
    assert [a.name for _, a in fakes.names("rollouts.abort")] == ["api"]
    ((_, revert),) = fakes.names("gitops.revert")
    assert (revert.environment, revert.commit) == ("production", production.gitops_commit)
    assert revert.reason == result.rollback_cause
    # Restored: synced at the revert commit, then the Rollout waited Healthy on the previous digest.
    assert fakes.names("argocd.sync")[-1][1].revision == production.revert_commit
    last_wait = fakes.names("rollouts.wait")[-1][1]
    assert all(PREVIOUS_DIGEST in image for image in last_wait.images)
    ((_, issue),) = fakes.names("tracker.open_issue")
    assert issue.release_id == result.release_id and issue.revert_commit == production.revert_commit
    assert issue.digests == result.digests and issue.cause == result.rollback_cause
    assert issue.links["Temporal"].startswith(
        "http://temporal-ui.test/namespaces/default/workflows/release%2Ftest%2Frel-"
    )
    assert result.feedback_issue == "http://tracker.test/acme/shop/issues/1"
    memo = (await (await handle.describe()).memo())[RELEASE_RECORD_MEMO]
    record = memo["environments"]["production"]
    assert memo["outcome"] == "rolled_back" and memo["error_type"] == "RolloutFailed"
    assert record["rolled_back"] and record["failed_at"] <= record["restored_at"] and not record["deployed_at"]


async def test_a_newer_commit_is_not_reverted_and_the_release_fails_saying_so(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"], canary_fails_at=0, newer_commit=True)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud)
        await approve_gates(handle)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query(ReleaseWorkflow.status)
    assert status.outcome == "failed"
    assert "not rolled back" in status.error and "newer commit" in status.error
    assert not fakes.names("tracker.open_issue")


async def test_without_auto_rollback_a_failed_verification_fails_the_release(env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"], canary_fails_at=0)
    async with running(env, fakes) as (onprem, cloud):
        handle = await start(env, onprem, cloud, auto_rollback=False)
        await approve_gates(handle)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query(ReleaseWorkflow.status)
    assert status.outcome == "failed" and status.error.startswith("rollout:production:")
    assert not fakes.names("gitops.revert")


async def test_manual_rollback_of_production_restores_the_rollout_the_same_way(env: WorkflowEnvironment) -> None:
    """`ferry rollback production`: sync without waiting for Healthy, then the Rollout promoted in full to the
    target images (an older revision is not canaried again) and seen Healthy on them."""
    fakes = Fakes(affected=["api"])
    async with running(env, fakes) as (onprem, cloud):
        cfg = sample_config()
        cfg["temporal"]["task_queues"] = {"onprem": onprem, "cloud": cloud}
        plan = worker_plan(cfg)
        production = plan.environments[-1]
        target = "sha256:" + "7" * 64
        inp = RollbackInput(
            environment="production",
            target_release_id="shop-0a0a0a0a0a0a",
            target_commit="0a" * 20,
            artifacts=[Artifact(service="api", repository="api", digest=target)],
            comment="error budget burnt since the last release",
            requested_by="rita",
            plan=plan,
        )
        wf_id = f"rollback/test/{uuid.uuid4().hex[:8]}"
        result = await env.client.execute_workflow(
            RollbackWorkflow.run, signed_rollback(inp, wf_id), id=wf_id, task_queue=onprem
        )

    assert result.outcome == "succeeded"
    image = f"{production.harbor_registry}/{production.harbor_project}/api@{target}"
    assert [(a.app, a.wait_healthy) for _, a in fakes.names("argocd.sync")] == [("shop-production", False)]
    assert [(a.rollout.name, a.full, a.images) for _, a in fakes.names("rollouts.promote")] == [("api", True, [image])]
    waits = [a.images for _, a in fakes.names("rollouts.wait")]
    assert waits == [[image], [image]]  # paused on the target, promoted in full, then Healthy on it
