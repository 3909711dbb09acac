"""Long waits inside activities: poll an external system, heartbeat while waiting, resume after a retry.

Modeled on PostHog's Heartbeater: the heartbeat carries progress details so a retried attempt can pick up
where the last one stopped (e.g. the id of a build it already created) instead of starting over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from temporalio import activity

T = TypeVar("T")


def in_activity() -> bool:
    """True when running inside a Temporal activity (False in plain unit tests)."""
    try:
        activity.info()
    except RuntimeError:
        return False
    return True


def heartbeat(*details: Any) -> None:
    """Heartbeat when inside an activity; a no-op otherwise, so clients stay testable without Temporal."""
    if in_activity():
        activity.heartbeat(*details)


def last_heartbeat() -> Any | None:
    """The first detail of the previous attempt's last heartbeat, if any."""
    if not in_activity():
        return None
    details = activity.info().heartbeat_details
    return details[0] if details else None


@contextlib.asynccontextmanager
async def heartbeating(*details: Any, every: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat in the background while a long call (e.g. a CLI) runs."""

    async def beat() -> None:
        while True:
            heartbeat(*details)
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def poll(
    check: Callable[[], Awaitable[T | None]],
    *,
    interval: float,
    progress: Callable[[], Any] = lambda: None,
) -> T:
    """Call `check` until it returns a value (not None), heartbeating `progress()` between calls.

    `check` raises to fail (non-retryable errors for final bad states); cancellation of the activity
    arrives as asyncio.CancelledError during the sleep.
    """
    while True:
        result = await check()
        if result is not None:
            return result
        heartbeat(progress())
        await asyncio.sleep(interval)
