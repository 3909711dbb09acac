"""sonarqube.quality_gate against a small fake of SonarQube's ce/task and qualitygates web services."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from httpfakes import credential_fixture, site_activities
from temporalio.exceptions import ApplicationError

from activities import errors, http
from activities.sonarqube import SonarQubeActivities
from common.config import Endpoint, parse_config
from workflows.types import QualityGateInput

TOKEN = "squ_sonar_secret_51c2"
ENV = "FERRY_TEST_SONAR_TOKEN_UNIT"


def condition(status: str, metric: str, comparator: str, threshold: str, actual: str) -> dict[str, str]:
    return {
        "status": status,
        "metricKey": metric,
        "comparator": comparator,
        "errorThreshold": threshold,
        "actualValue": actual,
    }


FAILED_CONDITIONS = [
    condition("ERROR", "new_coverage", "LT", "85", "82.5"),
    condition("ERROR", "new_blocker_violations", "GT", "0", "14"),
    condition("OK", "new_sqale_debt_ratio", "GT", "5", "0.6"),
]


class FakeSonar:
    """Background tasks that finish after a few polls, and the gate status of each analysis."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.gates: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: list[int] = []

    def add(self, task_id: str, *, final: str = "SUCCESS", gate: str = "OK", conditions: list | None = None) -> None:
        analysis = f"analysis-{task_id}"
        self.tasks[task_id] = {"polls": 2, "final": final, "componentKey": "shop-api", "analysisId": analysis}
        self.gates[analysis] = {"status": gate, "conditions": conditions or []}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401)
        if self.fail:
            return httpx.Response(self.fail.pop(0), json={"errors": [{"msg": "injected"}]})
        if request.url.path == "/api/ce/task":
            task = self.tasks.get(request.url.params["id"])
            if task is None:
                msg = f"No activity found for task '{request.url.params['id']}'"
                return httpx.Response(404, json={"errors": [{"msg": msg}]})
            task["polls"] -= 1
            status = task["final"] if task["polls"] <= 0 else "IN_PROGRESS"
            body = {"id": request.url.params["id"], "status": status, "componentKey": task["componentKey"]}
            if status == "SUCCESS":
                body["analysisId"] = task["analysisId"]
            if status == "FAILED":
                body["errorMessage"] = "Unsupported language plugin"
            return httpx.Response(200, json={"task": body})
        if request.url.path == "/api/qualitygates/project_status":
            gate = self.gates.get(request.url.params["analysisId"])
            if gate is None:
                return httpx.Response(404, json={"errors": [{"msg": "Analysis not found"}]})
            return httpx.Response(200, json={"projectStatus": {**gate, "ignoredConditions": False}})
        return httpx.Response(404)


token = credential_fixture(ENV, TOKEN)


def activities(fake: FakeSonar) -> SonarQubeActivities:
    endpoint = Endpoint(url="http://sonar.test", credential={"env": ENV})
    return site_activities(SonarQubeActivities, endpoint, fake.handler)


def gate_input(task: str = "AYhSC2") -> QualityGateInput:
    return QualityGateInput(service="api", project_key="shop-api", ce_task_id=task)


async def test_waits_for_the_task_then_reads_the_gate_of_its_analysis() -> None:
    fake = FakeSonar()
    warn = [condition("WARN", "new_duplicated_lines_density", "GT", "", "4.1") | {"warningThreshold": "3"}]
    fake.add("AYhSC2", gate="WARN", conditions=warn)
    result = await activities(fake).quality_gate(gate_input())
    assert result.status == "WARN"
    assert result.conditions == ["new_duplicated_lines_density 4.1 GT 3"]
    assert sum(1 for _, p in fake.requests if p == "/api/ce/task") == 2
    assert ("GET", "/api/qualitygates/project_status") in fake.requests


async def test_twice_same_result_and_nothing_written() -> None:
    fake = FakeSonar()
    fake.add("AYhSC2")
    acts = activities(fake)
    assert await acts.quality_gate(gate_input()) == await acts.quality_gate(gate_input())
    assert all(m == "GET" for m, _ in fake.requests)


async def test_gate_error_names_service_project_and_failed_conditions() -> None:
    fake = FakeSonar()
    fake.add("AYhSC2", gate="ERROR", conditions=FAILED_CONDITIONS)
    with pytest.raises(ApplicationError) as info:
        await activities(fake).quality_gate(gate_input())
    err = info.value
    assert err.type == errors.QUALITY_GATE_FAILED and err.non_retryable
    assert "service api" in err.message and "shop-api" in err.message
    assert "new_coverage 82.5 LT 85" in err.message and "new_blocker_violations 14 GT 0" in err.message
    assert "new_sqale_debt_ratio" not in err.message
    assert TOKEN not in err.message


async def test_failed_task_is_fatal_with_task_id() -> None:
    fake = FakeSonar()
    fake.add("AYhSC3", final="FAILED")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).quality_gate(gate_input("AYhSC3"))
    assert info.value.non_retryable and "AYhSC3" in info.value.message and "FAILED" in info.value.message
    assert "Unsupported language plugin" in info.value.message
    assert not any(p == "/api/qualitygates/project_status" for _, p in fake.requests)


async def test_task_of_another_project_is_refused() -> None:
    fake = FakeSonar()
    fake.add("AYhSC2")
    fake.tasks["AYhSC2"]["componentKey"] = "shop-web"
    with pytest.raises(ApplicationError) as info:
        await activities(fake).quality_gate(gate_input())
    assert info.value.non_retryable and "shop-web" in info.value.message


async def test_unknown_task_is_fatal_not_found() -> None:
    with pytest.raises(ApplicationError) as info:
        await activities(FakeSonar()).quality_gate(gate_input("nope"))
    assert info.value.type == errors.NOT_FOUND and "'nope'" in info.value.message


async def test_5xx_retryable_401_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSonar()
    fake.add("AYhSC2")
    fake.fail = [503] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await activities(fake).quality_gate(gate_input())
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    monkeypatch.setenv(ENV, "squ_wrong")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).quality_gate(gate_input())
    assert info.value.type == errors.AUTH_FAILED and info.value.non_retryable
    assert "squ_wrong" not in info.value.message and TOKEN not in info.value.message


async def test_not_configured_and_from_config() -> None:
    from sample import sample_config

    cfg = parse_config(sample_config())
    cloud = SonarQubeActivities.from_config(cfg, "cloud")
    with pytest.raises(ApplicationError) as info:
        await cloud.quality_gate(gate_input())
    assert info.value.type == errors.NOT_CONFIGURED and "onprem" in info.value.message
    onprem = SonarQubeActivities.from_config(cfg, "onprem")
    assert onprem.clients["onprem"].endpoint.url == cfg.sites["onprem"].sonarqube.url
    await onprem.aclose()
