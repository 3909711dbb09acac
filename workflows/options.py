"""Activity call options derived from the release plan: bounded retries, timeouts and heartbeats.

Bounded attempts matter: a system that stays down must fail the release (ready for `ferry retry`) rather
than retry forever with nobody looking.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from workflows.types import ActivitySettings


def activity_options(settings: ActivitySettings, task_queue: str, *, waits: bool = False) -> dict[str, Any]:
    """Keyword arguments for `workflow.execute_activity`; `waits` adds a heartbeat timeout for long polls."""
    opts: dict[str, Any] = {
        "task_queue": task_queue,
        "start_to_close_timeout": timedelta(seconds=settings.start_to_close_seconds),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=settings.retry_initial_seconds),
            maximum_interval=timedelta(seconds=settings.retry_max_seconds),
            backoff_coefficient=2.0,
            maximum_attempts=settings.attempts,
        ),
    }
    if waits:
        opts["heartbeat_timeout"] = timedelta(seconds=settings.heartbeat_seconds)
    return opts
