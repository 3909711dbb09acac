"""The environment lock on the real dev server: one holder at a time, in order, freed when a holder dies.

The movers here are small workflows that do what a Release does around a move (hold, work, give back),
with the real EnvironmentLock workflow and the real `envlock.*` activities on one worker.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from fakes import worker_plan
from sample import sample_config
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.envlock import LockActivities
from workflows.envlock import EnvironmentLock, LockHolderMixin, lock_workflow_id
from workflows.lock_types import AcquireInput, LockHolder, LockLease, LockState, ReleaseOrder
from workflows.types import ReleasePlan


@dataclass
class MoverInput:
    """A mover: the plan whose first environment it holds, and how long it works there."""

    plan: ReleasePlan
    name: str
    work_seconds: float


INTERVALS: dict[str, list[tuple[float, float]]] = {}  # test id -> (start, end) of each mover's work


@activity.defn(name="test.work")
async def work(args: list) -> None:
    """The part under the lock: records when it ran, on the test's own clock."""
    test, seconds = args
    start = time.monotonic()
    await asyncio.sleep(seconds)
    INTERVALS.setdefault(test, []).append((start, time.monotonic()))


@workflow.defn(name="TestMover", sandboxed=False)  # test-only; the lock itself runs sandboxed
class Mover(LockHolderMixin):
    """Holds the environment, works, gives it back: what a Release does around gitops.move and its checks."""

    @workflow.run
    async def run(self, inp: MoverInput) -> LockLease:
        env = inp.plan.environments[0]
        lease = await self._hold(inp.plan, env, f"{inp.name} works")
        try:
            await workflow.execute_activity(
                "test.work", [inp.plan.onprem_queue, inp.work_seconds], start_to_close_timeout=timedelta(seconds=60)
            )
        except (Exception, asyncio.CancelledError):
            await self._give_back(lease)
            raise
        await self._give_back(lease)
        return lease


@pytest_asyncio.fixture(scope="module")
async def dev_env(temporal_cli: str) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli, ui=False)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def queue() -> str:
    return f"onprem-lock-{uuid.uuid4().hex[:8]}"


def plan_on(queue: str) -> ReleasePlan:
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": queue, "cloud": queue + "-cloud"}
    # A unique GitOps path per test: each test gets its own lock workflow.
    plan = worker_plan(cfg)
    plan.environments[0].path = f"envs/{queue}"
    return plan


def worker(client: Client, queue: str, *, check_seconds: float = 0.2) -> Worker:
    locks = LockActivities(queue, check_seconds=check_seconds)
    return Worker(client, task_queue=queue, workflows=[EnvironmentLock, Mover], activities=[*locks.functions, work])


async def start_mover(client: Client, plan: ReleasePlan, name: str, seconds: float) -> WorkflowHandle:
    return await client.start_workflow(
        Mover.run,
        MoverInput(plan, name, seconds),
        id=f"mover-{name}-{uuid.uuid4().hex[:6]}",
        task_queue=plan.onprem_queue,
    )


async def lock_state(client: Client, plan: ReleasePlan) -> LockState:
    return await client.get_workflow_handle(lock_workflow_id(plan, plan.environments[0])).query(EnvironmentLock.state)


async def wait_for(check, what: str, timeout: float = 30) -> None:  # noqa: ANN001 - an async predicate
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_movers_hold_one_at_a_time_in_the_order_they_asked(dev_env: WorkflowEnvironment, queue: str) -> None:
    client, plan = dev_env.client, plan_on(queue)
    async with worker(client, queue):
        handles = []
        for i in range(4):
            handles.append(await start_mover(client, plan, f"m{i}", 0.4))
            # Each asks once the one before it is in the lock's books, so the order they asked is known.
            await wait_for(lambda n=i + 1: _known(client, plan, n), f"mover {i} queued")
        leases = [await h.result() for h in handles]
        state = await lock_state(client, plan)
        if os.environ.get("FERRY_RECORD_HISTORIES"):  # for test_replay, after a deliberate change of the lock
            lock = client.get_workflow_handle(lock_workflow_id(plan, plan.environments[0]))
            (Path(__file__).parent / "histories" / "envlock-fifo.json").write_text(
                (await lock.fetch_history()).to_json()
            )
    spans = sorted(INTERVALS[queue])
    assert len(spans) == 4
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two movers worked at once: {spans}"
    # FIFO: each later mover waited for every one before it.
    assert [len(lease.waited_for) for lease in leases] == [0, 1, 2, 3]
    assert leases[3].waited_for == [h.id for h in handles[:3]]
    assert state.holder is None and state.queue == [] and state.grants == 4


async def _known(client: Client, plan: ReleasePlan, n: int) -> bool:
    try:
        state = await lock_state(client, plan)
    except Exception:  # noqa: BLE001 - not started yet
        return False
    return (1 if state.holder else 0) + len(state.queue) >= n


async def test_a_holder_that_dies_holding_is_freed_for_the_next(dev_env: WorkflowEnvironment, queue: str) -> None:
    client, plan = dev_env.client, plan_on(queue)
    async with worker(client, queue):
        doomed = await start_mover(client, plan, "doomed", 30)
        await wait_for(lambda: _holds(client, plan, doomed.id), "the doomed mover holding")
        nxt = await start_mover(client, plan, "next", 0.1)
        await wait_for(lambda: _known(client, plan, 2), "the next mover queued")
        await doomed.terminate("killed while holding")  # no workflow code runs: nothing gives the lock back
        lease = await asyncio.wait_for(nxt.result(), 30)
        state = await lock_state(client, plan)
    assert lease.waited_for == [doomed.id]
    assert any(doomed.id in note and "ended without releasing" in note for note in state.freed), state.freed


async def _holds(client: Client, plan: ReleasePlan, workflow_id: str) -> bool:
    try:
        state = await lock_state(client, plan)
    except Exception:  # noqa: BLE001 - not started yet
        return False
    return state.holder is not None and state.holder.workflow_id == workflow_id


async def test_a_cancelled_waiter_leaves_the_queue(dev_env: WorkflowEnvironment, queue: str) -> None:
    client, plan = dev_env.client, plan_on(queue)
    async with worker(client, queue):
        first = await start_mover(client, plan, "first", 3)
        await wait_for(lambda: _holds(client, plan, first.id), "first holding")
        quitter = await start_mover(client, plan, "quitter", 0.1)
        await wait_for(lambda: _known(client, plan, 2), "quitter queued")
        await quitter.cancel()
        with pytest.raises(Exception) as err:
            await quitter.result()
        await wait_for(lambda: _queue_empty(client, plan), "the quitter gone from the queue")
        await first.result()
        state = await lock_state(client, plan)
    assert isinstance(err.value.__cause__, CancelledError)
    assert state.holder is None and state.grants == 1  # the quitter was never granted


async def _queue_empty(client: Client, plan: ReleasePlan) -> bool:
    return (await lock_state(client, plan)).queue == []


async def test_a_repeated_request_keeps_one_place_and_a_repeated_release_is_harmless(
    dev_env: WorkflowEnvironment, queue: str
) -> None:
    client, plan = dev_env.client, plan_on(queue)
    env = plan.environments[0]
    locks = LockActivities(queue)
    async with worker(client, queue):
        first = await start_mover(client, plan, "first", 2)
        await wait_for(lambda: _holds(client, plan, first.id), "first holding")
        waiter = LockHolder("wf-twice", "run-1", "twice")
        inp = AcquireInput(lock_id=lock_workflow_id(plan, env), environment=env.name, holder=waiter)
        acts = ActivityEnvironment(client=client)
        await acts.run(locks.request, inp)
        await acts.run(locks.request, inp)  # a retry after a lost completion: still one place in the queue
        state = await lock_state(client, plan)
        assert [q.workflow_id for q in state.queue] == ["wf-twice"]
        lock = client.get_workflow_handle(lock_workflow_id(plan, env))
        for _ in range(2):  # withdrawn twice: the second changes nothing
            await lock.signal(EnvironmentLock.release, ReleaseOrder(holder=waiter))
        await first.result()
        after = await lock_state(client, plan)
    assert after.queue == [] and after.holder is None and after.grants == 1


async def test_a_waiter_that_ended_before_its_turn_is_skipped(dev_env: WorkflowEnvironment, queue: str) -> None:
    client, plan = dev_env.client, plan_on(queue)
    async with worker(client, queue):
        first = await start_mover(client, plan, "first", 1.5)
        await wait_for(lambda: _holds(client, plan, first.id), "first holding")
        gone = await start_mover(client, plan, "gone", 0.1)
        await wait_for(lambda: _known(client, plan, 2), "gone queued")
        last = await start_mover(client, plan, "last", 0.1)
        await wait_for(lambda: _known(client, plan, 3), "last queued")
        await gone.terminate("gone before its turn")  # its run cannot take the grant
        lease = await asyncio.wait_for(last.result(), 30)
        state = await lock_state(client, plan)
    assert lease.waited_for == [first.id, gone.id]  # who was ahead of it when it asked
    assert any(gone.id in note and "before its turn" in note for note in state.freed), state.freed
    assert state.grants == 2  # first and last
