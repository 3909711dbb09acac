"""The one HTTP client factory and request helper every system client uses.

A client is built once per worker from an `Endpoint` of ferry.yaml; its credential is read when a request
is made (so a rotated token is picked up), never stored in a payload or logged.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import httpx

from activities.errors import classify_response, classify_transport
from common.config import Endpoint

# Reads are retried a few times in place: a poll loop of many GETs must not lose its activity attempt to one
# transient 5xx. Writes are left to Temporal's retry policy, which re-runs the (idempotent) activity.
READ_RETRIES = 3
READ_BACKOFF_SECONDS = 0.2
MAX_RETRY_AFTER_SECONDS = 5.0


class ApiClient:
    """A small typed wrapper around httpx.AsyncClient for one system's API.

    `auth` is "bearer" or "basic"; `transport` lets tests pass httpx.MockTransport or ASGITransport.
    """

    def __init__(
        self,
        system: str,
        endpoint: Endpoint,
        *,
        auth: str = "bearer",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.system = system
        self.endpoint = endpoint
        self._auth = auth
        self._client = httpx.AsyncClient(
            base_url=endpoint.url,
            timeout=httpx.Timeout(endpoint.timeout_seconds),
            verify=endpoint.verify_tls,
            transport=transport,
        )

    def _headers(self) -> dict[str, str]:
        cred = self.endpoint.credential
        if cred is None:
            return {}
        secret = cred.read()
        if self._auth == "basic":
            token = base64.b64encode(f"{self.endpoint.username or ''}:{secret}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {"Authorization": f"Bearer {secret}"}

    async def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        ok: Callable[[httpx.Response], bool] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request; raise a classified ApplicationError unless the response is ok.

        `ok` decides which responses the caller handles itself (e.g. 404 meaning "absent", 409 meaning
        "already exists"); by default any 2xx is ok.
        """
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        tries = READ_RETRIES if method.upper() == "GET" else 1
        for attempt in range(1, tries + 1):
            try:
                response = await self._client.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as e:
                error = classify_transport(self.system, e, what)
            else:
                if ok(response) if ok is not None else response.is_success:
                    return response
                error = classify_response(self.system, response, what)
            if error.non_retryable or attempt == tries:
                raise error
            delay = error.next_retry_delay.total_seconds() if error.next_retry_delay else 0.0
            await asyncio.sleep(min(MAX_RETRY_AFTER_SECONDS, max(delay, READ_BACKOFF_SECONDS * 2 ** (attempt - 1))))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the connection pool (worker shutdown)."""
        await self._client.aclose()
