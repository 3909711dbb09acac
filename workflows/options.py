"""Activity call options derived from the release plan: bounded retries, timeouts and heartbeats.

Bounded retries matter: a system that stays down must fail the release (ready for `ferry retry`) rather
than retry forever with nobody looking. The bound is a time budget first (`retry_budget_seconds`: how long
an outage is ridden out, past an attempt's own start-to-close), so that a three-minute Argo CD or Harbor
outage, or an upstream that fails every other request, costs a release some minutes and nobody's night.
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
    if settings.retry_budget_seconds > 0:
        # One attempt may take its whole start-to-close; the budget is what retries get on top of it.
        budget = settings.start_to_close_seconds + settings.retry_budget_seconds
        opts["schedule_to_close_timeout"] = timedelta(seconds=budget)
    if waits:
        opts["heartbeat_timeout"] = timedelta(seconds=settings.heartbeat_seconds)
    return opts
