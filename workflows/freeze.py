"""Freeze windows: is an environment frozen at a given instant, and until when?

Pure functions of the window list and an instant, so the workflow can call them with `workflow.now()` and
replay identically. Recurring windows are a UTC cron expression for each start plus a duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from workflows.types import FreezeWindowSpec


@dataclass
class Freeze:
    """An active freeze: when it ends and why it exists."""

    until: datetime
    reason: str


def active_freeze(windows: list[FreezeWindowSpec], environment: str, now: datetime) -> Freeze | None:
    """The freeze in force for `environment` at `now` that ends last, or None."""
    found: Freeze | None = None
    for window in windows:
        if environment not in window.environments:
            continue
        if window.cron:
            # The latest start at or before now; croniter's get_prev is strict, so look from just after now.
            start = croniter(window.cron, now + timedelta(microseconds=1)).get_prev(datetime)
            end = start + timedelta(seconds=window.duration_seconds)
        else:
            start, end = datetime.fromisoformat(window.start), datetime.fromisoformat(window.end)
        if start <= now < end and (found is None or end > found.until):
            found = Freeze(until=end, reason=window.reason)
    return found
