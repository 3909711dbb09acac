"""Harbor activities against a small stateful fake of Harbor's API v2.0 (httpx.MockTransport)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from httpfakes import credential_fixture, failing_reads, heartbeat_recorder, site_activities
from temporalio.exceptions import ApplicationError

from activities import errors, http
from activities.harbor import HarborActivities
from common.config import HarborEndpoint, parse_config
from workflows.types import ArtifactRef, ReplicationInput, ScanGateInput

TOKEN = "harbor-robot-secret-6d1f"
ENV = "FERRY_TEST_HARBOR_TOKEN_UNIT"
DIGEST = "sha256:" + "ab" * 32


class FakeHarbor:
    """Artifacts with scan reports, and replication executions that finish after a few polls."""

    def __init__(self) -> None:
        self.artifacts: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.executions: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: list[int] = []  # status codes to answer next, one per request
        self.scan_polls = 2  # GETs a scan stays Running
        self.replication_polls = 2
        self.replication_outcome = "Succeed"
        self.replicate_to: dict[str, Any] | None = None
        self.scans = 0
        self.stale_polls = 0  # GETs after a scan request that still show the previous report

    def add(self, repo: str = "api", *, project: str = "ferry", scanned: dict[str, Any] | None = None) -> None:
        self.artifacts[(project, repo, DIGEST)] = {"report": scanned, "outcome": None, "polls": 0}

    def posts(self, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == "POST" and p.endswith(suffix))

    def handler(self, request: httpx.Request) -> httpx.Response:
        raw = request.url.raw_path.decode().split("?")[0]
        self.requests.append((request.method, raw))
        expected = "Basic " + base64.b64encode(f"robot$ferry:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED", "message": "unauthorized"}]})
        if self.fail:
            return httpx.Response(self.fail.pop(0), text="injected")
        parts = raw.removeprefix("/api/v2.0/").split("/")
        if parts[0] == "projects" and parts[2] == "repositories" and parts[4] == "artifacts":
            key = (parts[1], unquote(unquote(parts[3])), unquote(parts[5]))
            return self._artifact(request, key, parts[6:])
        if parts[:2] == ["replication", "executions"]:
            return self._replication(request, parts[2:])
        return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND"}]})

    def _artifact(self, request: httpx.Request, key: tuple[str, str, str], rest: list[str]) -> httpx.Response:
        art = self.artifacts.get(key)
        if art is None:
            return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND", "message": "artifact not found"}]})
        if rest == ["scan"] and request.method == "POST":
            self.scans += 1
            art["next"] = {"scan_status": "Pending", "report_id": f"report-{self.scans}"}
            art["stale"] = self.stale_polls
            art["polls"] = 0
            return httpx.Response(202)
        body: dict[str, Any] = {"digest": key[2], "repository_name": f"{key[0]}/{key[1]}"}
        if art.get("stale"):
            art["stale"] -= 1  # the old report is still what Harbor shows
        elif art.get("next"):
            art["report"] = art.pop("next")
        report = art["report"]
        if report is not None and report.get("scan_status") in ("Pending", "Running"):
            art["polls"] += 1
            if art["polls"] > self.scan_polls:
                outcome = art["outcome"] or {"scan_status": "Success", "severity": "None"}
                report = art["report"] = {**outcome, "report_id": report.get("report_id")}
            else:
                report["scan_status"] = "Running"
        if request.url.params.get("with_scan_overview") == "true" and report is not None:
            body["scan_overview"] = {"application/vnd.security.vulnerability.report; version=1.1": report}
        return httpx.Response(200, json=body)

    def _replication(self, request: httpx.Request, rest: list[str]) -> httpx.Response:
        if not rest and request.method == "POST":
            policy = json.loads(request.content)["policy_id"]
            new_id = len(self.executions) + 40
            self.executions[new_id] = {"id": new_id, "policy_id": policy, "status": "InProgress", "polls": 0}
            return httpx.Response(201, headers={"Location": f"/api/v2.0/replication/executions/{new_id}"})
        if len(rest) == 1 and request.method == "GET":
            ex = self.executions.get(int(rest[0]))
            if ex is None:
                return httpx.Response(404, json={"errors": [{"code": "NOT_FOUND"}]})
            ex["polls"] += 1
            if ex["status"] == "InProgress" and ex["polls"] > self.replication_polls:
                ex["status"] = self.replication_outcome
                if self.replicate_to is not None and ex["status"] == "Succeed":
                    self.replicate_to.update(self.artifacts)
            out = {k: v for k, v in ex.items() if k != "polls"}
            return httpx.Response(200, json={**out, "total": 1, "failed": int(ex["status"] != "Succeed")})
        return httpx.Response(405)


token = credential_fixture(ENV, TOKEN)


def endpoint(url: str = "http://harbor-onprem.test") -> HarborEndpoint:
    return HarborEndpoint(url=url, username="robot$ferry", credential={"env": ENV})


def activities(fake: FakeHarbor, instance: str = "onprem") -> HarborActivities:
    return site_activities(HarborActivities, endpoint(), fake.handler, instance)


def ref(repo: str = "api", instance: str = "onprem") -> ArtifactRef:
    return ArtifactRef(instance=instance, project="ferry", repository=repo, digest=DIGEST)


def assert_no_secret(err: BaseException) -> None:
    assert TOKEN not in str(err)
    assert base64.b64encode(f"robot$ferry:{TOKEN}".encode()).decode() not in str(err)


# --- scan gate ---


async def test_scan_gate_scans_an_unscanned_image_then_passes_below_the_threshold() -> None:
    fake = FakeHarbor()
    fake.add("team/api")
    acts = activities(fake)
    fake.artifacts[("ferry", "team/api", DIGEST)]["outcome"] = {
        "scan_status": "Success",
        "severity": "High",
        "summary": {"total": 3, "fixable": 1, "summary": {"High": 1, "Low": 2}},
    }
    result = await acts.scan_gate(ScanGateInput(artifact=ref("team/api"), block_severity="Critical"))
    assert result.severity == "High"
    assert result.summary == {"High": 1, "Low": 2}
    assert fake.posts("/scan") == 1
    # The swagger's double encoding of a slash in a repository name.
    assert all("team%252Fapi" in path for _, path in fake.requests)


async def test_scan_gate_twice_scans_once() -> None:
    fake = FakeHarbor()
    fake.add()
    acts = activities(fake)
    first = await acts.scan_gate(ScanGateInput(artifact=ref()))
    second = await acts.scan_gate(ScanGateInput(artifact=ref()))
    assert first == second
    assert first.severity == "None"
    assert fake.posts("/scan") == 1


async def test_scan_gate_does_not_rescan_an_image_already_scanning() -> None:
    fake = FakeHarbor()
    fake.add(scanned={"scan_status": "Running"})
    await activities(fake).scan_gate(ScanGateInput(artifact=ref()))
    assert fake.posts("/scan") == 0


async def test_scan_gate_blocks_critical_with_image_rule_and_counts() -> None:
    fake = FakeHarbor()
    fake.add(
        scanned={
            "scan_status": "Success",
            "severity": "Critical",
            "summary": {"total": 7, "fixable": 2, "summary": {"Critical": 2, "High": 5}},
        }
    )
    with pytest.raises(ApplicationError) as info:
        await activities(fake).scan_gate(ScanGateInput(artifact=ref(), block_severity="Critical"))
    err = info.value
    assert err.type == errors.VULNERABILITY_POLICY and err.non_retryable
    assert f"ferry/api@{DIGEST}" in err.message
    assert "Critical blocks" in err.message
    assert "Critical 2" in err.message and "High 5" in err.message
    assert_no_secret(err)


async def test_scan_gate_threshold_is_at_or_above() -> None:
    fake = FakeHarbor()
    fake.add(scanned={"scan_status": "Success", "severity": "High", "summary": {"summary": {"High": 1}}})
    acts = activities(fake)
    with pytest.raises(ApplicationError) as info:
        await acts.scan_gate(ScanGateInput(artifact=ref(), block_severity="High"))
    assert info.value.type == errors.VULNERABILITY_POLICY
    assert "High or higher blocks" in info.value.message
    # "None" in the policy blocks nothing: the result is still reported.
    assert (await acts.scan_gate(ScanGateInput(artifact=ref(), block_severity="None"))).severity == "High"


async def test_scan_gate_missing_artifact_is_fatal_and_names_the_image() -> None:
    fake = FakeHarbor()
    with pytest.raises(ApplicationError) as info:
        await activities(fake).scan_gate(ScanGateInput(artifact=ref("web")))
    assert info.value.type == errors.ARTIFACT_MISSING and info.value.non_retryable
    assert f"ferry/web@{DIGEST}" in info.value.message


async def test_scan_gate_scan_error_is_retryable_and_the_retry_rescans() -> None:
    fake = FakeHarbor()
    fake.add()
    acts = activities(fake)
    fake.artifacts[("ferry", "api", DIGEST)]["outcome"] = {"scan_status": "Error"}
    with pytest.raises(ApplicationError) as info:
        await acts.scan_gate(ScanGateInput(artifact=ref()))
    assert not info.value.non_retryable
    fake.artifacts[("ferry", "api", DIGEST)]["outcome"] = None
    assert (await acts.scan_gate(ScanGateInput(artifact=ref()))).severity == "None"
    assert fake.posts("/scan") == 2


async def test_scan_gate_does_not_take_the_previous_failed_report_for_its_own() -> None:
    fake = FakeHarbor()
    fake.add(scanned={"scan_status": "Error", "report_id": "report-old"})
    fake.stale_polls = 2
    result = await activities(fake).scan_gate(ScanGateInput(artifact=ref()))
    assert result.severity == "None"
    assert fake.posts("/scan") == 1


async def test_scan_gate_5xx_retryable_401_fatal_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHarbor()
    fake.add()
    acts = activities(fake)
    fake.fail = [503] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await acts.scan_gate(ScanGateInput(artifact=ref()))
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    monkeypatch.setenv(ENV, "wrong-" + TOKEN)
    with pytest.raises(ApplicationError) as info:
        await acts.scan_gate(ScanGateInput(artifact=ref()))
    assert info.value.type == errors.AUTH_FAILED and info.value.non_retryable
    assert "wrong-" not in info.value.message
    assert_no_secret(info.value)


async def test_unknown_instance_is_not_configured() -> None:
    with pytest.raises(ApplicationError) as info:
        await activities(FakeHarbor()).scan_gate(ScanGateInput(artifact=ref(instance="cloud")))
    assert info.value.type == errors.NOT_CONFIGURED and "'cloud'" in info.value.message


# --- replication ---


async def test_replicate_starts_one_execution_and_waits_for_it() -> None:
    fake = FakeHarbor()
    env, beats = heartbeat_recorder()
    result = await env.run(activities(fake).replicate, ReplicationInput("onprem", 3, "shop/abc"))
    assert result.status == "Succeed"
    assert fake.executions[result.execution_id]["policy_id"] == 3
    assert beats[0]["execution_id"] == result.execution_id


async def test_replicate_retry_resumes_the_heartbeated_execution() -> None:
    fake = FakeHarbor()
    fake.replication_polls = 3
    acts = activities(fake)
    env, beats = heartbeat_recorder()
    # First attempt: the execution starts, then Harbor answers 503 to every try of the first poll.
    inp = ReplicationInput("onprem", 3, "shop/abc")
    flaky_acts = site_activities(HarborActivities, endpoint(), failing_reads(fake.handler))
    with pytest.raises(ApplicationError) as info:
        await env.run(flaky_acts.replicate, inp)
    assert not info.value.non_retryable
    assert fake.posts("/replication/executions") == 1
    # Second attempt, as Temporal would run it: same activity, last heartbeat details available.
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[beats[-1]])
    result = await env.run(acts.replicate, inp)
    assert result.status == "Succeed"
    assert result.execution_id == beats[0]["execution_id"]
    assert fake.posts("/replication/executions") == 1


async def test_replicate_failed_execution_is_fatal_with_its_id() -> None:
    fake = FakeHarbor()
    fake.replication_outcome = "Failed"
    with pytest.raises(ApplicationError) as info:
        await activities(fake).replicate(ReplicationInput("onprem", 3, "shop/abc"))
    err = info.value
    assert err.type == errors.REPLICATION_FAILED and err.non_retryable
    (execution_id,) = fake.executions
    assert f"execution {execution_id}" in err.message and "Failed" in err.message
    assert err.details[0]["execution_id"] == execution_id
    assert_no_secret(err)


async def test_replicate_5xx_retryable_401_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHarbor()
    fake.fail = [500]  # the POST that starts an execution: a write, so not retried in place
    with pytest.raises(ApplicationError) as info:
        await activities(fake).replicate(ReplicationInput("onprem", 3, "r"))
    assert not info.value.non_retryable
    monkeypatch.setenv(ENV, "nope")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).replicate(ReplicationInput("onprem", 3, "r"))
    assert info.value.type == errors.AUTH_FAILED and info.value.non_retryable
    assert_no_secret(info.value)
    assert fake.executions == {}


# --- confirm ---


async def test_confirm_missing_is_retryable_then_present_after_replication() -> None:
    onprem, cloud = FakeHarbor(), FakeHarbor()
    onprem.add()
    onprem.replicate_to = cloud.artifacts
    acts = activities(cloud, "cloud")
    with pytest.raises(ApplicationError) as info:
        await acts.confirm(ref(instance="cloud"))
    err = info.value
    assert err.type == errors.ARTIFACT_MISSING and not err.non_retryable
    assert f"ferry/api@{DIGEST}" in err.message and "cloud" in err.message
    await activities(onprem).replicate(ReplicationInput("onprem", 1, "r"))
    assert await acts.confirm(ref(instance="cloud")) == ref(instance="cloud")
    # Twice: same answer, and confirm never writes.
    assert await acts.confirm(ref(instance="cloud")) == ref(instance="cloud")
    assert all(m == "GET" for m, _ in cloud.requests)


async def test_confirm_5xx_retryable_401_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHarbor()
    fake.add()
    fake.fail = [502] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await activities(fake).confirm(ref())
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    monkeypatch.setenv(ENV, "bad")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).confirm(ref())
    assert info.value.type == errors.AUTH_FAILED
    assert_no_secret(info.value)


async def test_from_config_builds_the_sites_harbor_only() -> None:
    from sample import sample_config

    cfg = parse_config(sample_config())
    acts = HarborActivities.from_config(cfg, "cloud")
    assert list(acts.clients) == ["cloud"]
    assert acts.clients["cloud"].endpoint.url == cfg.sites["cloud"].harbor.url
    assert acts.poll_seconds == cfg.timeouts.poll_seconds
    await acts.aclose()


# --- replication after a Reset: the sandbox stand-in over ASGI ---
#
# `ferry retry` is a Temporal Reset: the activity runs again as a first attempt, without the heartbeat that
# named the execution. It must find the execution that already covers the release's images, not start another.


class SteppingClock:
    """The stand-in world's clock: every reading moves it on by `step` seconds, so polls see time pass."""

    def __init__(self, step: float = 0.05) -> None:
        self.t = 1_780_000_000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class Standin:
    """The Harbor stand-ins (on-prem with the seeded policy 1 to the cloud) and activities wired to on-prem."""

    def __init__(self, tmp_path: Any, *, step: float = 0.05) -> None:
        from sandbox.standins import World, build_apps

        self.scenario = tmp_path / "scenario.yaml"
        self.clock = SteppingClock(step)
        self.world = World(self.scenario, tokens={"harbor-onprem": TOKEN, "harbor-cloud": TOKEN}, clock=self.clock)
        self.app = build_apps(self.world)["harbor-onprem"]
        self.onprem = self.world.harbor["onprem"]
        self.cloud = self.world.harbor["cloud"]

    def activities(self, transport: httpx.AsyncBaseTransport | None = None) -> HarborActivities:
        from activities.harbor import HarborClient

        client = HarborClient(endpoint(), transport or httpx.ASGITransport(app=self.app), instance="onprem")
        return HarborActivities({"onprem": client}, poll_seconds=0.001)

    def push(self, repo: str = "api", digest: str = DIGEST) -> ArtifactRef:
        self.onprem.push("ferry", repo, "v1", digest)
        return ArtifactRef(instance="onprem", project="ferry", repository=repo, digest=digest)

    def set_scenario(self, text: str) -> None:
        self.scenario.write_text(text)
        st = self.scenario.stat()
        os.utime(self.scenario, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    def started(self) -> list[tuple[int, str]]:
        """Every execution the stand-in has, oldest first, with its status as of now."""
        self.world.tick()
        return [(e.id, e.status) for e in sorted(self.onprem.executions.values(), key=lambda e: e.id)]


class ReadsFail(httpx.AsyncBaseTransport):
    """The stand-in, except that GETs of one execution answer 503 (enough to exhaust ApiClient's retries)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.rstrip("/").split("/")[-1].isdigit() and "/executions/" in path:
            return httpx.Response(503, json={"errors": [{"code": "UNAVAILABLE", "message": "injected"}]})
        return await self.inner.handle_async_request(request)


def reset_env() -> Any:
    """A fresh activity environment: attempt 1, no heartbeat details (what a Reset gives the activity)."""
    env, _ = heartbeat_recorder()
    assert not env.info.heartbeat_details and env.info.attempt == 1
    return env


async def test_reset_rerun_accepts_the_execution_that_already_copied_the_images(tmp_path: Any) -> None:
    box = Standin(tmp_path)
    image = box.push()
    inp = ReplicationInput("onprem", 1, "release/shop/abc", artifacts=[image])
    first = await reset_env().run(box.activities().replicate, inp)
    assert first.status == "Succeed"
    assert box.cloud.has_image("ferry", "api", DIGEST)
    again = await reset_env().run(box.activities().replicate, inp)
    assert again == first
    assert box.started() == [(first.execution_id, "Succeed")]  # exactly one execution started


async def test_reset_rerun_resumes_the_execution_still_in_progress(tmp_path: Any) -> None:
    box = Standin(tmp_path)
    inp = ReplicationInput("onprem", 1, "release/shop/abc", artifacts=[box.push()])
    # The first run starts the execution, then loses Harbor while polling it; the run ends (e.g. its
    # attempts ran out), and an operator resets the release once Harbor is back.
    box.clock.step = 0.0  # nothing progresses while the first run fails
    with pytest.raises(ApplicationError) as info:
        await reset_env().run(box.activities(ReadsFail(box.app)).replicate, inp)
    assert not info.value.non_retryable
    ((execution_id, status),) = box.started()
    assert status == "InProgress"
    box.clock.step = 0.05
    env, beats = heartbeat_recorder()
    result = await env.run(box.activities().replicate, inp)
    assert result.execution_id == execution_id and result.status == "Succeed"
    assert beats[0]["execution_id"] == execution_id
    assert box.started() == [(execution_id, "Succeed")]


async def test_reset_rerun_after_a_failed_execution_starts_a_new_one(tmp_path: Any) -> None:
    box = Standin(tmp_path)
    inp = ReplicationInput("onprem", 1, "release/shop/abc", artifacts=[box.push()])
    box.set_scenario("replication: {result: Failed}\n")
    with pytest.raises(ApplicationError) as info:
        await reset_env().run(box.activities().replicate, inp)
    assert info.value.type == errors.REPLICATION_FAILED and info.value.non_retryable
    ((failed_id, _),) = box.started()
    box.set_scenario("{}\n")  # the operator fixed the target registry, then ran `ferry retry`
    result = await reset_env().run(box.activities().replicate, inp)
    assert result.status == "Succeed" and result.execution_id != failed_id
    assert box.started() == [(failed_id, "Failed"), (result.execution_id, "Succeed")]
    assert box.cloud.has_image("ferry", "api", DIGEST)
    # And a further rerun takes the one that succeeded.
    assert (await reset_env().run(box.activities().replicate, inp)).execution_id == result.execution_id
    assert len(box.started()) == 2


async def test_executions_from_before_the_push_or_of_one_pushed_artifact_do_not_count(tmp_path: Any) -> None:
    box = Standin(tmp_path)
    older = box.push("web", "sha256:" + "01" * 32)
    earlier = await reset_env().run(
        box.activities().replicate, ReplicationInput("onprem", 1, "release/shop/old", artifacts=[older])
    )
    box.clock.t += 60
    image = box.push()  # this release's image, pushed after that execution started
    # A push-triggered (event_based) execution copies only the artifact that fired it, here another one.
    other = box.onprem.push("ferry", "billing", "v1", "sha256:" + "02" * 32)
    box.onprem.start_replication(1, trigger="event_based", only=[other])
    box.clock.t += 60
    assert [status for _, status in box.started()] == ["Succeed", "Succeed"]
    assert not box.cloud.has_image("ferry", "api", DIGEST)
    result = await reset_env().run(
        box.activities().replicate, ReplicationInput("onprem", 1, "release/shop/new", artifacts=[image])
    )
    assert result.execution_id not in (earlier.execution_id, earlier.execution_id + 1)
    assert len(box.started()) == 3 and box.cloud.has_image("ferry", "api", DIGEST)


async def test_not_before_alone_bounds_the_search(tmp_path: Any) -> None:
    from sandbox.standins.world import iso_ms

    box = Standin(tmp_path)
    box.push()
    await reset_env().run(box.activities().replicate, ReplicationInput("onprem", 1, "release/shop/old"))
    box.clock.t += 60
    inp = ReplicationInput("onprem", 1, "release/shop/abc", not_before=iso_ms(box.clock.t))
    first = await reset_env().run(box.activities().replicate, inp)
    second = await reset_env().run(box.activities().replicate, inp)
    assert first == second and len(box.started()) == 2
    with pytest.raises(ApplicationError) as info:
        await box.activities().replicate(ReplicationInput("onprem", 1, "r", not_before="yesterday"))
    assert info.value.type == errors.BAD_REQUEST and info.value.non_retryable


async def test_replicate_an_image_missing_on_the_source_is_fatal_before_any_execution(tmp_path: Any) -> None:
    box = Standin(tmp_path)
    missing = ArtifactRef(instance="onprem", project="ferry", repository="api", digest=DIGEST)
    with pytest.raises(ApplicationError) as info:
        await box.activities().replicate(ReplicationInput("onprem", 1, "r", artifacts=[missing]))
    assert info.value.type == errors.ARTIFACT_MISSING and info.value.non_retryable
    assert f"ferry/api@{DIGEST}" in info.value.message and "onprem" in info.value.message
    assert box.started() == []


async def test_the_standin_lists_executions_and_tasks_as_harbor_does(tmp_path: Any) -> None:
    box = Standin(tmp_path, step=0.0)
    box.onprem.push("ferry", "api", "v1", DIGEST)
    box.onprem.push("ferry", "api", "v2", "sha256:" + "03" * 32)
    box.onprem.push("ferry", "team/tool", "", "sha256:" + "04" * 32)
    box.onprem.push("tools", "lint", "v1", "sha256:" + "05" * 32)  # not selected by ferry/**
    first = box.onprem.start_replication(1)
    box.clock.t += 0.5
    second = box.onprem.start_replication(1)
    auth = ("robot$ferry", TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=box.app), base_url="http://h", auth=auth) as c:
        listed = (await c.get("/api/v2.0/replication/executions", params={"policy_id": 1})).json()
        assert [e["id"] for e in listed] == [second.id, first.id]  # newest start_time first by default
        oldest = (await c.get("/api/v2.0/replication/executions", params={"sort": "start_time"})).json()
        assert [e["id"] for e in oldest] == [first.id, second.id]
        assert [e["trigger"] for e in listed] == ["manual", "manual"]
        assert (await c.get("/api/v2.0/replication/executions", params={"policy_id": 2})).json() == []

        tasks = (await c.get(f"/api/v2.0/replication/executions/{second.id}/tasks")).json()
        assert sorted(t["src_resource"] for t in tasks) == [
            "ferry/api [2 item(s) in total]",  # one task per repository, its references counted
            "ferry/team/tool [1 item(s) in total]",  # an untagged artifact counts by its digest
        ]
        # Just started: the tasks wait for the job service; the first execution's already run.
        assert {(t["status"], t["resource_type"], t["operation"]) for t in tasks} == {("Pending", "artifact", "copy")}
        assert (await c.get(f"/api/v2.0/replication/executions/{second.id}")).json()["in_progress"] == 2
        running = await c.get(f"/api/v2.0/replication/executions/{first.id}/tasks", params={"status": "Running"})
        assert len(running.json()) == 2 and {t["status"] for t in running.json()} == {"InProgress"}
        pending = await c.get(f"/api/v2.0/replication/executions/{first.id}/tasks", params={"status": "Pending"})
        assert pending.json() == []
        box.clock.t += 0.6
        done = (await c.get("/api/v2.0/replication/executions", params={"status": "Succeed"})).json()
        assert [e["id"] for e in done] == [first.id]  # the second is still in progress
        raw = (await c.get("/api/v2.0/replication/executions", params={"status": "Running"})).json()
        assert [e["id"] for e in raw] == [second.id]  # a job status filters as its API string does
        assert (await c.get("/api/v2.0/replication/executions/999/tasks")).status_code == 404
