"""argocd.sync against a small stateful fake of the Argo CD Applications API (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pytest
from httpfakes import credential_fixture, site_activities
from temporalio.exceptions import ApplicationError

from activities import errors, http
from activities.argocd import ArgoCDActivities
from common.config import Endpoint, parse_config
from workflows.types import ArgoSyncInput

TOKEN = "argocd-jwt-secret-93ab"
ENV = "FERRY_TEST_ARGOCD_TOKEN_UNIT"
REV = "c0ffee" + "0" * 34
OLD = "dead" + "0" * 36


class FakeArgo:
    """Applications whose sync operations run for a few polls, then settle as `outcome` says."""

    def __init__(self) -> None:
        self.apps: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.fail: list[int] = []
        self.op_polls = 2
        self.outcome: dict[str, str] = {"phase": "Succeeded", "health": "Healthy", "message": "", "why": ""}

    def add(self, name: str, *, revision: str = OLD, sync: str = "Synced", health: str = "Healthy") -> None:
        self.apps[name] = {
            "sync": sync,
            "revision": revision,
            "health": health,
            "health_message": "",
            "operation": None,
            "polls_left": 0,
            "state": {},
            "progressing": 0,
        }

    def sync_posts(self, accepted_only: bool = True) -> int:
        return sum(1 for m, p, a in self.requests if m == "POST" and (a == "accepted" or not accepted_only))

    def start_operation(self, name: str, revision: str) -> None:
        app = self.apps[name]
        app["operation"] = {"sync": {"revision": revision}}
        app["polls_left"] = self.op_polls

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.requests.append((request.method, path, "denied"))
            return httpx.Response(401, json={"error": "invalid session", "code": 16, "message": "invalid session"})
        if self.fail:
            self.requests.append((request.method, path, "failed"))
            return httpx.Response(self.fail.pop(0), json={"error": "injected", "code": 14})
        parts = path.removeprefix("/api/v1/applications/").split("/")
        app = self.apps.get(parts[0])
        if app is None:
            self.requests.append((request.method, path, "missing"))
            return httpx.Response(404, json={"error": "not found", "code": 5, "message": "not found"})
        if request.method == "POST" and parts[1:] == ["sync"]:
            if app["operation"] is not None:
                self.requests.append((request.method, path, "refused"))
                msg = "another operation is already in progress"
                return httpx.Response(400, json={"error": msg, "code": 9, "message": msg})
            self.requests.append((request.method, path, "accepted"))
            self.start_operation(parts[0], json.loads(request.content)["revision"])
            return httpx.Response(200, json=self.render(app))
        self.requests.append((request.method, path + "?" + request.url.query.decode(), "read"))
        self.advance(app)
        return httpx.Response(200, json=self.render(app))

    def advance(self, app: dict[str, Any]) -> None:
        if app["progressing"]:
            app["progressing"] -= 1
            if not app["progressing"]:
                app["health"] = self.outcome["health"]
                app["health_message"] = self.outcome["why"]
            return
        if app["operation"] is None:
            return
        app["polls_left"] -= 1
        revision = app["operation"]["sync"]["revision"]
        if app["polls_left"] > 0:
            app["state"] = {"phase": "Running", "operation": app["operation"]}
            return
        app["operation"] = None
        app["state"] = {
            "phase": self.outcome["phase"],
            "message": self.outcome["message"],
            "syncResult": {"revision": revision},
        }
        if self.outcome["phase"] == "Succeeded":
            app.update(sync="Synced", revision=revision, health="Progressing", progressing=1)

    @staticmethod
    def render(app: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "metadata": {"name": "app"},
            "status": {
                "sync": {"status": app["sync"], "revision": app["revision"]},
                "health": {"status": app["health"], "message": app["health_message"]},
                "operationState": app["state"],
                "summary": {"images": [f"harbor.test/ferry/api@sha256:{app['revision'][:8]}"]},
            },
        }
        if app["operation"] is not None:
            body["operation"] = app["operation"]
        return body


token = credential_fixture(ENV, TOKEN)


def endpoint() -> Endpoint:
    return Endpoint(url="http://argocd.test", credential={"env": ENV})


def activities(fake: FakeArgo, instance: str = "cloud") -> ArgoCDActivities:
    return site_activities(ArgoCDActivities, endpoint(), fake.handler, instance)


def sync_input(app: str = "shop-staging", revision: str = REV) -> ArgoSyncInput:
    return ArgoSyncInput(instance="cloud", app=app, revision=revision)


async def test_sync_reaches_synced_and_healthy_at_the_revision() -> None:
    fake = FakeArgo()
    fake.add("shop-staging")
    result = await activities(fake).sync(sync_input())
    assert (result.sync_status, result.revision, result.health) == ("Synced", REV, "Healthy")
    assert result.images == [f"harbor.test/ferry/api@sha256:{REV[:8]}"]
    assert fake.sync_posts() == 1
    first_read = next(p for m, p, _ in fake.requests if m == "GET")
    assert "refresh=normal" in first_read


async def test_sync_twice_syncs_once() -> None:
    fake = FakeArgo()
    fake.add("shop-staging")
    acts = activities(fake)
    first = await acts.sync(sync_input())
    second = await acts.sync(sync_input())
    assert first == second
    assert fake.sync_posts(accepted_only=False) == 1


async def test_already_synced_and_healthy_needs_no_sync() -> None:
    fake = FakeArgo()
    fake.add("shop-staging", revision=REV)
    result = await activities(fake).sync(sync_input())
    assert result.revision == REV and result.health == "Healthy"
    assert fake.sync_posts(accepted_only=False) == 0


async def test_operation_in_progress_waits_then_syncs_our_revision() -> None:
    fake = FakeArgo()
    fake.add("shop-staging", sync="OutOfSync")
    fake.start_operation("shop-staging", OLD)  # someone else's sync is running
    fake.apps["shop-staging"]["polls_left"] = 4
    result = await activities(fake).sync(sync_input())
    assert result.revision == REV and result.health == "Healthy"
    assert fake.sync_posts() == 1


async def test_answer_operation_in_progress_means_wait() -> None:
    fake = FakeArgo()
    fake.add("shop-staging", sync="OutOfSync")
    refusals = [True]

    def busy_once(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and refusals:
            refusals.pop()
            fake.requests.append(("POST", request.url.path, "refused"))
            msg = "another operation is already in progress"
            return httpx.Response(400, json={"error": msg, "code": 9, "message": msg})
        return fake.handler(request)

    result = await site_activities(ArgoCDActivities, endpoint(), busy_once, "cloud").sync(sync_input())
    assert result.revision == REV
    assert fake.sync_posts(accepted_only=False) == 2 and fake.sync_posts() == 1


async def test_stale_failed_operation_at_our_revision_does_not_fail_a_new_sync() -> None:
    fake = FakeArgo()
    fake.add("shop-staging", sync="OutOfSync")
    fake.apps["shop-staging"]["state"] = {"phase": "Failed", "message": "old", "syncResult": {"revision": REV}}
    result = await activities(fake).sync(sync_input())
    assert result.revision == REV and fake.sync_posts() == 1


async def test_degraded_after_sync_is_fatal_with_app_revision_and_message() -> None:
    fake = FakeArgo()
    fake.add("shop-staging")
    fake.outcome.update(health="Degraded", why="Deployment api: ProgressDeadlineExceeded")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).sync(sync_input())
    err = info.value
    assert err.type == errors.APPLICATION_DEGRADED and err.non_retryable
    assert "shop-staging" in err.message and REV in err.message
    assert "ProgressDeadlineExceeded" in err.message
    assert TOKEN not in err.message


async def test_failed_operation_is_fatal_with_its_message() -> None:
    fake = FakeArgo()
    fake.add("shop-staging")
    fake.outcome.update(phase="Failed", message="one or more objects failed to apply: admission webhook denied")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).sync(sync_input())
    err = info.value
    assert err.type == errors.SYNC_FAILED and err.non_retryable
    assert "admission webhook denied" in err.message and "shop-staging" in err.message


async def test_5xx_retryable_401_fatal_missing_app_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeArgo()
    fake.add("shop-staging")
    fake.fail = [503] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await activities(fake).sync(sync_input())
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    with pytest.raises(ApplicationError) as info:
        await activities(fake).sync(sync_input(app="nope"))
    assert info.value.type == errors.NOT_FOUND and "'nope'" in info.value.message
    monkeypatch.setenv(ENV, "stale-token")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).sync(sync_input())
    assert info.value.type == errors.AUTH_FAILED and info.value.non_retryable
    assert "stale-token" not in info.value.message and TOKEN not in info.value.message
    assert fake.sync_posts(accepted_only=False) == 0


async def test_instance_without_client_is_not_configured() -> None:
    with pytest.raises(ApplicationError) as info:
        await activities(FakeArgo(), instance="onprem").sync(sync_input())
    assert info.value.type == errors.NOT_CONFIGURED and "'cloud'" in info.value.message


async def test_from_config() -> None:
    from sample import sample_config

    cfg = parse_config(sample_config())
    acts = ArgoCDActivities.from_config(cfg, "onprem")
    assert list(acts.clients) == ["onprem"]
    assert acts.clients["onprem"].endpoint.url == cfg.sites["onprem"].argocd.url
    await acts.aclose()


async def test_without_wait_healthy_synced_and_succeeded_is_enough_but_not_missing_or_degraded() -> None:
    fake = FakeArgo()
    fake.add("shop-production")
    fake.outcome.update(health="Suspended", why="Rollout api: CanaryPauseStep")  # a Rollout paused at a step
    acts = activities(fake)
    inp = dataclasses.replace(sync_input("shop-production"), wait_healthy=False)
    with pytest.raises(TimeoutError):  # waiting for Healthy never ends while the Rollout is paused
        await asyncio.wait_for(acts.sync(sync_input("shop-production")), 0.3)
    result = await acts.sync(inp)
    assert (result.sync_status, result.revision) == ("Synced", REV)
    assert result.health in ("Progressing", "Suspended")
    again = await acts.sync(inp)  # twice: still one sync request
    assert again.revision == REV and again.health == "Suspended"
    assert fake.sync_posts(accepted_only=False) == 1

    # Synced there with the operation Succeeded, but Missing: the resources are not there yet, keep waiting.
    missing = FakeArgo()
    missing.add("shop-production", revision=REV, health="Missing")
    missing.apps["shop-production"]["state"] = {"phase": "Succeeded", "syncResult": {"revision": REV}}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(activities(missing).sync(inp), 0.3)

    # Degraded fails as with wait_healthy.
    degraded = FakeArgo()
    degraded.add("shop-production", revision=REV, health="Degraded")
    degraded.apps["shop-production"]["state"] = {"phase": "Succeeded", "syncResult": {"revision": REV}}
    degraded.apps["shop-production"]["health_message"] = "Rollout api: RolloutAborted"
    with pytest.raises(ApplicationError) as info:
        await activities(degraded).sync(inp)
    assert info.value.type == errors.APPLICATION_DEGRADED and "RolloutAborted" in info.value.message
    assert missing.sync_posts(accepted_only=False) == degraded.sync_posts(accepted_only=False) == 0


async def test_a_later_revision_that_keeps_our_images_is_ours_deployed_and_one_that_does_not_is_synced() -> None:
    # The fake runs `harbor.test/ferry/api@sha256:<first 8 of the revision>`: NEWER keeps the image REV put in.
    newer = REV[:8] + "1" * 32
    ours = [f"harbor.test/ferry/api@sha256:{REV[:8]}"]
    fake = FakeArgo()
    fake.add("shop-staging", revision=newer)
    result = await activities(fake).sync(dataclasses.replace(sync_input(), images=ours))
    assert result.revision == newer and result.health == "Healthy"
    assert fake.sync_posts(accepted_only=False) == 0  # not synced back to REV
    # Without our images there (another release's pins), the app is synced to our revision as before.
    other = FakeArgo()
    other.add("shop-staging", revision=OLD)
    result = await activities(other).sync(dataclasses.replace(sync_input(), images=ours))
    assert result.revision == REV and other.sync_posts() == 1
