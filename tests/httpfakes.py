"""What the HTTP activity tests share: a credential in the environment, activities wired to a fake, heartbeats.

Each test module keeps its own fake of one system's API (an `httpx.MockTransport` handler); these helpers only
connect such a fake to the activity class the way a worker would, without the waiting a worker needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities import http
from activities.site_clients import SiteClients
from common.config import Endpoint

Handler = Callable[[httpx.Request], httpx.Response]
A = TypeVar("A", bound=SiteClients[Any, Any])

# Waits poll this often in unit tests: the fakes advance per request, so no real time needs to pass.
POLL_SECONDS = 0.001


def credential_fixture(env: str, secret: str) -> Any:
    """An autouse fixture: the endpoint's credential variable holds `secret`, and in-place read retries don't wait.

    Assign it in a test module (`token = credential_fixture(ENV, TOKEN)`) so pytest picks it up there.
    """

    @pytest.fixture(autouse=True)
    def token(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(env, secret)
        monkeypatch.setattr(http, "READ_BACKOFF_SECONDS", 0.0)

    return token


def site_activities(cls: type[A], endpoint: Endpoint, handler: Handler, site: str = "onprem") -> A:
    """`cls` holding one client for `site`, built by the class's own hook, with HTTP answered by `handler`."""
    client = cls.build_client(endpoint, httpx.MockTransport(handler), site)
    return cls({site: client}, poll_seconds=POLL_SECONDS)


def failing_reads(handler: Handler, when: Callable[[httpx.Request], bool] = lambda r: True) -> Handler:
    """`handler`, except that the first GETs matching `when` answer 503: enough to exhaust ApiClient's retries."""
    failed: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and when(request) and len(failed) < http.READ_RETRIES:
            failed.append(503)
            return httpx.Response(503)
        return handler(request)

    return flaky


def heartbeat_recorder() -> tuple[ActivityEnvironment, list[Any]]:
    """An activity environment and the list that collects the first detail of every heartbeat it sends."""
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    return env, beats
