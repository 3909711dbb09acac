"""The BranchCoordinator on the time-skipping server, with the real Release and CI workflows over fakes."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest_asyncio
from fakes import WORKER_CONFIGS, Fakes, worker_plan
from sample import sample_config
from signing import signed
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from starters.release_cmds import submit_commit
from workflows import search
from workflows.ci import CIWorkflow
from workflows.coordinator import BranchCoordinator
from workflows.release import ReleaseWorkflow, release_workflow_id
from workflows.types import CoordinatorInput, CoordinatorStatus, Decision, ReleaseInput, ReleasePlan, ReleaseStatus


def sha(n: int, tag: str) -> str:
    return hashlib.sha1(f"{tag}-{n}".encode()).hexdigest()


@asynccontextmanager
async def running(env: WorkflowEnvironment, fakes: Fakes) -> AsyncIterator[ReleaseInput]:
    suffix = uuid.uuid4().hex[:8]
    onprem, cloud = f"onprem-{suffix}", f"cloud-{suffix}"
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": onprem, "cloud": cloud}
    cfg["repos"]["app"]["name"] = f"shop{suffix}"  # coordinator ids are per repo and branch
    template = ReleaseInput(release_id="", commit="", branch="main", plan=worker_plan(cfg))
    async with (
        Worker(
            env.client,
            task_queue=onprem,
            workflows=[ReleaseWorkflow, CIWorkflow, BranchCoordinator],
            activities=fakes.onprem(),
            max_concurrent_activities=50,
        ),
        Worker(env.client, task_queue=cloud, activities=fakes.cloud()),
    ):
        yield template


async def push(client: Client, template: ReleaseInput, commit: str) -> WorkflowHandle:
    inp = ReleaseInput(
        release_id=f"{template.plan.app_repo}-{commit[:12]}", commit=commit, branch="main", plan=template.plan
    )
    coordinator_id = await submit_commit(client, inp)
    return client.get_workflow_handle_for(BranchCoordinator.run, coordinator_id)


async def eventually(check, what: str, timeout: float = 20.0):  # noqa: ANN001 - small test helper
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - not there yet
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


def release(client: Client, template: ReleaseInput, commit: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(ReleaseWorkflow.run, release_workflow_id(template.plan.app_repo, commit))


async def stage_of(client: Client, template: ReleaseInput, commit: str) -> ReleaseStatus:
    return await release(client, template, commit).query(ReleaseWorkflow.status)


async def test_newer_commits_supersede_the_release_in_ci_and_skip_the_pending_ones(
    time_env: WorkflowEnvironment,
) -> None:
    client = time_env.client
    c = [sha(i, "storm") for i in range(4)]
    fakes = Fakes(hold={c[0][:12]: asyncio.Event(), c[1][:12]: asyncio.Event()})
    async with running(time_env, fakes) as template:
        coordinator = await push(client, template, c[0])
        await eventually(lambda: _async(bool(fakes.names("tekton.run"))), "CI of the first commit running")
        for commit in c[1:]:
            await push(client, template, commit)
        first = await release(client, template, c[0]).result()
        newest = await eventually(
            lambda: _stage_is(client, template, c[3], "gate:staging"), "newest commit waiting at staging"
        )
        queue: CoordinatorStatus = await coordinator.query(BranchCoordinator.status)

    assert (first.outcome, first.superseded_by) == ("superseded", c[1])
    assert [a.manifest["metadata"]["name"] for _, a in fakes.names("tekton.cancel")] == [f"ferry-{c[0][:12]}-api"]
    assert newest.outcome == "running"
    skipped = {e.commit: e.by for e in queue.recent if e.state == "skipped"}
    assert skipped == {c[1]: c[2], c[2]: c[3]}
    # Only two releases ever started: the superseded first one and the newest.
    started = {a.commit for _, a in fakes.names("changes.analyze")}
    assert started == {c[0], c[3]}
    assert queue.counts["received"] == 4 and queue.counts["started"] == 2


async def test_each_release_runs_on_the_workers_config_and_a_commit_signal_cannot_change_it(
    time_env: WorkflowEnvironment,
) -> None:
    """ferry.yaml changed on the workers after the coordinator started (a new release manager): the next release
    has it. A plan sent with a commit (forged: no gates, mallory a release manager) changes nothing."""
    client = time_env.client
    first, second = sha(1, "config"), sha(2, "config")
    fakes = Fakes()
    async with running(time_env, fakes) as template:
        await push(client, template, first)
        await eventually(lambda: _stage_is(client, template, first, "gate:staging"), "first release at staging")
        queue = template.plan.onprem_queue
        edited = WORKER_CONFIGS[queue].model_copy(deep=True)
        edited.groups["release-managers"].append("newbie")
        WORKER_CONFIGS[queue] = edited
        forged = dataclasses.replace(
            template.plan,
            freeze_override_members=["mallory"],
            environments=[dataclasses.replace(e, gate=None) for e in template.plan.environments],
        )
        await push(client, dataclasses.replace(template, plan=forged), second)
        # Still gated: the release runs on the workers' plan, not on the one that came with the commit.
        await eventually(lambda: _stage_is(client, template, second, "gate:staging"), "second release at staging")
        history = await release(client, template, second).fetch_history()

    [loaded] = [
        e.activity_task_completed_event_attributes.result.payloads
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ][:1]
    (plan,) = await client.data_converter.decode(loaded, [ReleasePlan])
    assert plan.freeze_override_members == ["newbie", "raj", "rita"]
    assert [e.gate for e in plan.environments] == [None, "staging", "production"]


async def test_release_at_a_gate_is_superseded_only_once_a_newer_one_passed_ci(time_env: WorkflowEnvironment) -> None:
    client = time_env.client
    c = [sha(i, "gate") for i in range(2)]
    hold = asyncio.Event()
    fakes = Fakes(hold={c[1][:12]: hold})
    async with running(time_env, fakes) as template:
        await push(client, template, c[0])
        await eventually(lambda: _stage_is(client, template, c[0], "gate:staging"), "first at staging gate")
        await push(client, template, c[1])
        await eventually(lambda: _async(len(fakes.names("tekton.run")) == 2), "second in CI")
        still = await stage_of(client, template, c[0])
        assert still.stage == "gate:staging" and still.outcome == "running"  # nothing newer has passed CI yet
        hold.set()
        first = await release(client, template, c[0]).result()
        await eventually(lambda: _stage_is(client, template, c[1], "gate:staging"), "second at staging gate")
        second = release(client, template, c[1])
        await second.execute_update(
            ReleaseWorkflow.approve, signed(Decision(stage="staging", user="quinn"), second.id, "approve")
        )
        await eventually(lambda: _stage_is(client, template, c[1], "gate:production"), "second at production")
        await second.execute_update(
            ReleaseWorkflow.approve, signed(Decision(stage="production", user="rita"), second.id, "approve")
        )
        done = await second.result()
    assert (first.outcome, first.superseded_by, first.gates[0].state) == ("superseded", c[1], "superseded")
    assert done.outcome == "succeeded"
    moves = [(a.app_commit, a.environment) for _, a in fakes.names("gitops.move")]
    assert moves == [(c[0], "testbed"), (c[1], "testbed"), (c[1], "staging"), (c[1], "production")]


@pytest_asyncio.fixture(scope="module")
async def dev_env(temporal_cli: str) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server: the time-skipping test server mishandles an activity cancel requested in the same
    workflow task that scheduled it (ACTIVITY_UNKNOWN), which a storm of supersedes does now and then."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli, search_attributes=search.ALL, dev_server_log_level="error"
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def test_history_stays_bounded_under_2000_commits(dev_env: WorkflowEnvironment) -> None:
    client = dev_env.client
    fakes = Fakes()
    async with running(dev_env, fakes) as template:
        inp = CoordinatorInput(repo=template.plan.app_repo, branch="main", plan=template.plan, max_history=1000)
        coordinator_id = f"branch/{template.plan.app_repo}/main"
        handle = await client.start_workflow(
            BranchCoordinator.run, inp, id=coordinator_id, task_queue=template.plan.onprem_queue
        )
        commits = [sha(i, "bound") for i in range(2000)]

        async def signal(commit: str) -> None:
            # As `ferry release start` pushes it, plan included: a burst of these must fit in one workflow task.
            assert (await push(client, template, commit)).id == coordinator_id

        # 50 pushes at a time (their order within a batch is the server's); the newest one comes last.
        for i in range(0, len(commits) - 1, 50):
            await asyncio.gather(*(signal(x) for x in commits[i : min(i + 50, len(commits) - 1)]))
        await signal(commits[-1])
        queue = await eventually(
            lambda: _received(client, coordinator_id, 2000), "all 2000 commits received", timeout=120
        )
        newest = await eventually(
            lambda: _stage_is(client, template, commits[-1], "gate:staging"), "the newest commit at staging", 60
        )
        queue = await client.get_workflow_handle(coordinator_id).query(BranchCoordinator.status)
        # Walk the chain of runs back from the latest (each run's first event names the one it continued).
        # (ListWorkflowExecutions would do, but the chain also proves every run belongs to this coordinator.)
        lengths = []
        run_id = (await client.get_workflow_handle(coordinator_id).describe()).run_id
        while run_id:
            history = await client.get_workflow_handle(coordinator_id, run_id=run_id).fetch_history()
            lengths.append(len(history.events))
            run_id = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        await handle.terminate("test over")
    assert queue.runs >= 2 and len(lengths) == queue.runs
    assert max(lengths) < 10_000
    assert queue.counts["started"] < 2000  # most commits were skipped for newer ones
    assert newest.outcome == "running" and queue.pending == ""
    assert [e.commit for e in queue.active if e.state == "past_ci"] == [commits[-1]]
    assert queue.counts["received"] == 2000


async def _async(value: object) -> object:
    return value


async def _stage_is(client: Client, template: ReleaseInput, commit: str, stage: str) -> ReleaseStatus | None:
    status = await stage_of(client, template, commit)
    return status if status.stage == stage else None


async def _received(client: Client, coordinator_id: str, n: int) -> CoordinatorStatus | None:
    status: CoordinatorStatus = await client.get_workflow_handle(coordinator_id).query(BranchCoordinator.status)
    return status if status.counts.get("received", 0) >= n else None
