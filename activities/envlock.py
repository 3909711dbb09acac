"""The `envlock.request` activity: ask an EnvironmentLock for an environment, starting the lock if need be.

Only this needs an activity: a workflow can signal a workflow that exists, but not start one that may not
(signal-with-start is a client call). The answer comes back as the lock's `envlock_granted` Signal to the
asking run, so nothing here waits (see workflows/envlock.py).
"""

from __future__ import annotations

from temporalio import activity

from workflows.envlock import EnvironmentLock
from workflows.lock_types import AcquireInput, LockInput


class LockActivities:
    """Environment lock activities of the onprem worker (the lock workflows run on its task queue)."""

    def __init__(self, task_queue: str, *, check_seconds: float = 60.0, idle_seconds: float = 3600.0) -> None:
        self.task_queue = task_queue
        self.check_seconds = check_seconds
        self.idle_seconds = idle_seconds

    @property
    def functions(self) -> list:
        """What a worker registers."""
        return [self.request]

    @activity.defn(name="envlock.request")
    async def request(self, inp: AcquireInput) -> None:
        """Queue `inp.holder` for the environment (signal-with-start). Idempotent: a repeated request keeps the
        place in the queue, and a holder that asks again is told again that it holds it."""
        await activity.client().start_workflow(
            EnvironmentLock.run,
            LockInput(environment=inp.environment, idle_seconds=self.idle_seconds, check_seconds=self.check_seconds),
            id=inp.lock_id,
            task_queue=self.task_queue,
            start_signal="request",
            start_signal_args=[inp.holder],
        )
