"""buildkite.e2e against a small fake of the Buildkite REST builds API (httpx.MockTransport)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
import pytest
from httpfakes import credential_fixture, failing_reads, heartbeat_recorder, site_activities
from temporalio.exceptions import ApplicationError

from activities import errors, http
from activities.buildkite import BuildkiteActivities
from common.config import BuildkiteEndpoint, parse_config
from workflows.types import E2EInput

TOKEN = "bkua_buildkite_secret_0f3e"
ENV = "FERRY_TEST_BUILDKITE_TOKEN_UNIT"
COMMIT = "0123456789ab" + "f" * 28
BUILDS = "/v2/organizations/acme/pipelines/e2e/builds"


class FakeBuildkite:
    """Builds of one pipeline that go scheduled -> running -> `outcome` over a few reads."""

    def __init__(self) -> None:
        self.builds: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.fail: list[int] = []
        self.polls = 2
        self.outcome = "passed"
        self.honours_meta_data_filter = True
        self.blocked_polls = 0

    def posts(self) -> int:
        return sum(1 for m, _ in self.requests if m == "POST")

    def add(self, **fields: Any) -> dict[str, Any]:
        number = len(self.builds) + 1
        build = {
            "id": f"uuid-{number}",
            "number": number,
            "state": "scheduled",
            "blocked": False,
            "web_url": f"https://buildkite.test/acme/e2e/builds/{number}",
            "commit": COMMIT,
            "branch": "main",
            "meta_data": {},
            "env": {},
            "_reads": 0,
            **fields,
        }
        self.builds.insert(0, build)  # the API lists newest first
        return build

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"message": "Authentication required"})
        if self.fail:
            return httpx.Response(self.fail.pop(0), json={"message": "injected"})
        if path == BUILDS and request.method == "POST":
            body = json.loads(request.content)
            build = self.add(**{k: body[k] for k in ("commit", "branch", "message", "env", "meta_data")})
            return httpx.Response(201, json=self.public(build))
        if path == BUILDS:
            params = request.url.params
            found = [b for b in self.builds if b["commit"] == params["commit"] and b["branch"] == params["branch"]]
            if self.honours_meta_data_filter:
                for key, value in params.items():
                    if key.startswith("meta_data["):
                        found = [b for b in found if b["meta_data"].get(key[10:-1]) == value]
            return httpx.Response(200, json=[self.public(b) for b in found])
        number = int(path.removeprefix(BUILDS + "/"))
        build = next((b for b in self.builds if b["number"] == number), None)
        if build is None:
            return httpx.Response(404, json={"message": "Not Found"})
        build["_reads"] += 1
        if build["state"] in ("scheduled", "running"):
            build["state"] = "running" if build["_reads"] < self.polls else self.outcome
            if build["state"] == "passed" and self.blocked_polls:
                build["blocked"] = True
        elif build["blocked"]:
            self.blocked_polls -= 1
            build["blocked"] = self.blocked_polls > 0
        return httpx.Response(200, json=self.public(build))

    @staticmethod
    def public(build: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in build.items() if not k.startswith("_")}


token = credential_fixture(ENV, TOKEN)


def activities(fake: FakeBuildkite, handler: Any = None) -> BuildkiteActivities:
    endpoint = BuildkiteEndpoint(
        url="https://api.buildkite.test", credential={"env": ENV}, organization="acme", e2e_pipeline="e2e"
    )
    return site_activities(BuildkiteActivities, endpoint, handler or fake.handler)


def e2e_input(release: str = "shop/0123456789ab", environment: str = "testbed") -> E2EInput:
    return E2EInput(release_id=release, commit=COMMIT, branch="main", environment=environment, message="E2E")


async def test_creates_the_build_with_release_env_and_meta_data_then_waits() -> None:
    fake = FakeBuildkite()
    env, beats = heartbeat_recorder()
    result = await env.run(activities(fake).e2e, e2e_input())
    assert (result.number, result.state) == (1, "passed")
    assert result.web_url == "https://buildkite.test/acme/e2e/builds/1"
    (build,) = fake.builds
    assert build["env"] == {"FERRY_RELEASE": "shop/0123456789ab", "FERRY_ENVIRONMENT": "testbed"}
    assert build["meta_data"] == {"ferry-release": "shop/0123456789ab", "ferry-environment": "testbed"}
    assert (build["commit"], build["branch"], build["message"]) == (COMMIT, "main", "E2E")
    assert beats[0]["build"] == 1


async def test_twice_finds_the_existing_build() -> None:
    fake = FakeBuildkite()
    acts = activities(fake)
    first = await acts.e2e(e2e_input())
    second = await acts.e2e(e2e_input())
    assert first == second
    assert fake.posts() == 1


async def test_retry_resumes_the_heartbeated_build() -> None:
    fake = FakeBuildkite()
    fake.polls = 3
    # Reads of the build fail (not the listing), so the attempt ends after it heartbeated the build number.
    flaky = failing_reads(fake.handler, when=lambda r: r.url.path != BUILDS)
    env, beats = heartbeat_recorder()
    with pytest.raises(ApplicationError) as info:
        await env.run(activities(fake, flaky).e2e, e2e_input())
    assert not info.value.non_retryable
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[beats[-1]])
    reads_before = len(fake.requests)
    result = await env.run(activities(fake).e2e, e2e_input())
    assert result.number == beats[0]["build"] and result.state == "passed"
    assert fake.posts() == 1
    # Resumed from the heartbeat: went straight to the build, no listing.
    assert ("GET", BUILDS) not in fake.requests[reads_before:]


async def test_other_releases_builds_of_the_same_commit_are_not_ours() -> None:
    fake = FakeBuildkite()
    fake.honours_meta_data_filter = False  # matching must not depend on the server's filter
    fake.add(state="failed", meta_data={"ferry-release": "shop/other", "ferry-environment": "testbed"})
    fake.add(state="failed", meta_data={"ferry-release": "shop/0123456789ab", "ferry-environment": "staging"})
    result = await activities(fake).e2e(e2e_input())
    assert result.state == "passed" and result.number == 3
    assert fake.posts() == 1


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
async def test_unsuccessful_build_is_fatal_with_web_url(outcome: str) -> None:
    fake = FakeBuildkite()
    fake.outcome = outcome
    with pytest.raises(ApplicationError) as info:
        await activities(fake).e2e(e2e_input())
    err = info.value
    url = "https://buildkite.test/acme/e2e/builds/1"
    assert err.type == errors.E2E_FAILED and err.non_retryable
    assert url in err.message and outcome in err.message
    assert err.details == ({"web_url": url},)
    assert TOKEN not in err.message


async def test_blocked_passed_build_is_not_final_until_unblocked() -> None:
    fake = FakeBuildkite()
    fake.blocked_polls = 3
    result = await activities(fake).e2e(e2e_input())
    assert result.state == "passed"
    assert fake.builds[0]["_reads"] >= fake.polls + 3


async def test_5xx_retryable_401_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBuildkite()
    fake.fail = [502] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await activities(fake).e2e(e2e_input())
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    monkeypatch.setenv(ENV, "bkua_revoked")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).e2e(e2e_input())
    assert info.value.type == errors.AUTH_FAILED and info.value.non_retryable
    assert "bkua_revoked" not in info.value.message and TOKEN not in info.value.message
    assert fake.builds == []


async def test_not_configured_and_from_config() -> None:
    from sample import sample_config

    cfg = parse_config(sample_config())
    with pytest.raises(ApplicationError) as info:
        await BuildkiteActivities.from_config(cfg, "cloud").e2e(e2e_input())
    assert info.value.type == errors.NOT_CONFIGURED and "onprem" in info.value.message
    onprem = BuildkiteActivities.from_config(cfg, "onprem")
    assert onprem.clients["onprem"].builds_path == BUILDS
    await onprem.aclose()
