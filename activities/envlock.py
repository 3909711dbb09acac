"""The `envlock.*` activities: ask an EnvironmentLock for an environment, wait for it, give it back.

The waiting happens here, not in the mover's workflow: the activity polls the lock's `state` query and
heartbeats, so a release that waits an hour behind another adds three events to its history, not one per
change of the queue. While waiting, it also frees a holder whose run has ended without releasing (see
workflows/envlock.py); that check needs the Temporal client, which is why these activities hold one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows.envlock import EnvironmentLock
from workflows.lock_types import AcquireInput, LockHolder, LockInput, LockLease, LockState, ReleaseOrder


def _same(a: LockHolder | None, b: LockHolder) -> bool:
    return a is not None and a.workflow_id == b.workflow_id and a.run_id == b.run_id


class LockActivities:
    """Environment lock activities of the onprem worker (the lock workflows run on its task queue)."""

    def __init__(self, client: Client, task_queue: str, poll_seconds: float = 2.0, check_seconds: float = 10.0) -> None:
        self.client = client
        self.task_queue = task_queue
        self.poll_seconds = poll_seconds
        self.check_seconds = check_seconds  # how often a waiter checks that the holder's run still runs

    @property
    def functions(self) -> list:
        """What a worker registers."""
        return [self.acquire, self.release]

    async def _request(self, inp: AcquireInput) -> None:
        await self.client.start_workflow(
            EnvironmentLock.run,
            LockInput(environment=inp.environment, idle_seconds=inp.idle_seconds),
            id=inp.lock_id,
            task_queue=self.task_queue,
            start_signal="request",
            start_signal_args=[inp.holder],
        )

    async def _ended(self, holder: LockHolder) -> str:
        """How the holder's run ended ('' while it runs, or when the server cannot say)."""
        try:
            described = await self.client.get_workflow_handle(holder.workflow_id, run_id=holder.run_id).describe()
        except RPCError as e:
            return "gone" if e.status == RPCStatusCode.NOT_FOUND else ""
        status = described.status
        if status in (None, WorkflowExecutionStatus.RUNNING):
            return ""
        return status.name.lower()

    @activity.defn(name="envlock.acquire")
    async def acquire(self, inp: AcquireInput) -> LockLease:
        """Wait until `inp.holder` holds the environment; idempotent (a retry keeps the place in the queue)."""
        started = time.monotonic()
        handle = self.client.get_workflow_handle(inp.lock_id)
        await self._request(inp)
        waited_for: list[str] = []
        checked = 0.0
        try:
            while True:
                try:
                    state: LockState = await handle.query(EnvironmentLock.state)
                except RPCError as e:
                    if e.status != RPCStatusCode.NOT_FOUND:
                        raise
                    state = LockState()
                if _same(state.holder, inp.holder):
                    return LockLease(
                        lock_id=inp.lock_id,
                        environment=inp.environment,
                        holder=state.holder or inp.holder,
                        waited_seconds=round(time.monotonic() - started, 3),
                        waited_for=waited_for,
                    )
                if not any(_same(q, inp.holder) for q in state.queue):
                    # The run that had our request ended (idle, just before it arrived) or a forged release
                    # dropped us: ask again, at the end of the queue.
                    await self._request(inp)
                holder = state.holder
                if holder is not None:
                    if holder.workflow_id not in waited_for:
                        waited_for.append(holder.workflow_id)
                    if time.monotonic() - checked >= self.check_seconds:
                        checked = time.monotonic()
                        if ended := await self._ended(holder):
                            activity.logger.warning(
                                "envlock %s: holder %s (run %s) %s without releasing; freeing it",
                                inp.environment,
                                holder.workflow_id,
                                holder.run_id,
                                ended,
                            )
                            await handle.signal(
                                EnvironmentLock.release,
                                ReleaseOrder(holder=holder, reason=f"ended ({ended}) without releasing"),
                            )
                            continue
                activity.heartbeat(
                    {
                        "environment": inp.environment,
                        "held_by": holder.workflow_id if holder else "",
                        "purpose": holder.purpose if holder else "",
                        "ahead": next((i for i, q in enumerate(state.queue) if _same(q, inp.holder)), 0)
                        + (1 if holder else 0),
                    }
                )
                await asyncio.sleep(self.poll_seconds)
        except asyncio.CancelledError:
            # The mover stopped waiting (cancelled, superseded, timed out): leave the queue, then say so.
            with contextlib.suppress(Exception):
                await handle.signal(EnvironmentLock.release, ReleaseOrder(holder=inp.holder, reason="stopped waiting"))
            raise

    @activity.defn(name="envlock.release")
    async def release(self, lease: LockLease) -> None:
        """Give the environment back; a lock that has ended (nobody holds it) is already released."""
        try:
            await self.client.get_workflow_handle(lease.lock_id).signal(
                EnvironmentLock.release, ReleaseOrder(holder=lease.holder)
            )
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
