"""Fault injection: the scenario's `faults` turned into latency and error answers, per stand-in.

Faults exercise the retry paths of the real clients (5xx and 429 are retryable, Retry-After honoured), so
they are applied before authentication, the way a failing load balancer answers before the service sees a
request. Errors are drawn from the world's seedable `random.Random`, so a test can rely on "some, not all".
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from sandbox.standins.world import World


class FaultInjector:
    """ASGI middleware: delay by `latency_ms`, answer every request with 503 when `down`, and answer a
    random `error_rate` share of requests with `status` (503 by default)."""

    def __init__(self, app: ASGIApp, name: str, world: World) -> None:
        self.app = app
        self.name = name
        self.world = world

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = self.world.scenario.fault_for(self.name)
        if not fault.active:
            await self.app(scope, receive, send)
            return
        if fault.latency_ms > 0:
            # Real milliseconds: latency exists to test client timeouts, so `speed` does not scale it.
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.down:
            await self._answer(
                send, 503, f"sandbox fault: {self.name} is down (scenario faults.{self.name}.down)", fault.retry_after
            )
            return
        if fault.error_rate > 0 and self.world.rng.random() < fault.error_rate:
            await self._answer(
                send,
                fault.status,
                f"sandbox fault: injected HTTP {fault.status} (error_rate {fault.error_rate})",
                fault.retry_after,
            )
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(send: Send, status: int, text: str, retry_after: float | None) -> None:
        body = text.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        if retry_after is not None:
            headers.append(
                (b"retry-after", str(int(retry_after) if retry_after == int(retry_after) else retry_after).encode())
            )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
