"""Harbor activities against a small stateful fake of Harbor's API v2.0 (httpx.MockTransport)."""

from __future__ import annotations

import base64
import dataclasses
import json
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
