"""tekton.run / tekton.cancel against a small fake of the Kubernetes API for tekton.dev/v1 PipelineRuns."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
from httpfakes import credential_fixture, site_activities
from temporalio.exceptions import ApplicationError

from activities import errors, http
from activities.tekton import TektonActivities
from common.config import TektonEndpoint, parse_config
from workflows.types import TektonRunInput

TOKEN = "k8s-sa-token-secret-77e0"
ENV = "FERRY_TEST_K8S_TOKEN_UNIT"
NS = "ci"
BASE = f"/apis/tekton.dev/v1/namespaces/{NS}/pipelineruns"


def manifest(name: str = "ferry-0123456789ab-api") -> dict[str, Any]:
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": NS, "labels": {"ferry/service": "api"}},
        "spec": {"pipelineRef": {"name": "ferry-ci"}, "params": [{"name": "service", "value": "api"}]},
    }


class FakeKube:
    """PipelineRuns that run for a few polls and end as `outcome` says."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: list[int] = []
        self.polls = 2
        self.outcome: dict[str, Any] = {"status": "True", "reason": "Succeeded", "message": "Tasks Completed: 6"}
        self.results: list[dict[str, Any]] = [
            {"name": "IMAGE_DIGEST", "value": "sha256:" + "cd" * 32},
            {"name": "SONAR_CE_TASK_ID", "value": "AYhSC2"},
            {"name": "TAGS", "value": ["1.0", "latest"]},
        ]
        self.create_behind_our_back = False

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.requests if m == method)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        run = copy.deepcopy(body)
        run["status"] = {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Started"}]}
        run["_polls"] = 0
        self.runs[body["metadata"]["name"]] = run
        return run

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"kind": "Status", "reason": "Unauthorized", "code": 401})
        if self.fail:
            return httpx.Response(self.fail.pop(0), json={"kind": "Status", "message": "injected"})
        if path == BASE and request.method == "POST":
            body = json.loads(request.content)
            name = body["metadata"]["name"]
            if name in self.runs:
                msg = f'pipelineruns.tekton.dev "{name}" already exists'
                return httpx.Response(409, json={"kind": "Status", "reason": "AlreadyExists", "message": msg})
            return httpx.Response(201, json=self.public(self.create(body)))
        name = path.removeprefix(BASE + "/")
        run = self.runs.get(name)
        if run is None:
            if request.method == "GET" and self.create_behind_our_back:
                self.create_behind_our_back = False
                self.create(manifest(name))  # another worker creates it right after our look
            return httpx.Response(404, json={"kind": "Status", "reason": "NotFound", "code": 404})
        if request.method == "PATCH":
            assert request.headers["Content-Type"] == "application/merge-patch+json"
            run.setdefault("spec", {}).update(json.loads(request.content)["spec"])
            return httpx.Response(200, json=self.public(run))
        cond = run["status"]["conditions"][0]
        if cond["status"] == "Unknown" and not run.get("spec", {}).get("status"):
            run["_polls"] += 1
            if run["_polls"] > self.polls:
                cond.update(self.outcome)
                if self.outcome["status"] == "True":
                    run["status"]["results"] = self.results
            else:
                cond["reason"] = "Running"
        return httpx.Response(200, json=self.public(run))

    @staticmethod
    def public(run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run.items() if not k.startswith("_")}


token = credential_fixture(ENV, TOKEN)


def activities(fake: FakeKube) -> TektonActivities:
    endpoint = TektonEndpoint(url="https://k8s.test:6443", credential={"env": ENV})
    return site_activities(TektonActivities, endpoint, fake.handler)


def run_input(name: str = "ferry-0123456789ab-api") -> TektonRunInput:
    return TektonRunInput(service="api", namespace=NS, manifest=manifest(name))


async def test_run_creates_the_pipelinerun_and_returns_its_results() -> None:
    fake = FakeKube()
    result = await activities(fake).run(run_input())
    assert result.name == "ferry-0123456789ab-api"
    assert result.results["IMAGE_DIGEST"] == "sha256:" + "cd" * 32
    assert result.results["SONAR_CE_TASK_ID"] == "AYhSC2"
    assert json.loads(result.results["TAGS"]) == ["1.0", "latest"]
    assert fake.count("POST") == 1
    assert fake.runs["ferry-0123456789ab-api"]["spec"]["pipelineRef"] == {"name": "ferry-ci"}


async def test_run_twice_creates_one_pipelinerun() -> None:
    fake = FakeKube()
    acts = activities(fake)
    first = await acts.run(run_input())
    second = await acts.run(run_input())
    assert first == second
    assert fake.count("POST") == 1 and len(fake.runs) == 1


async def test_run_attaches_to_a_run_created_concurrently() -> None:
    fake = FakeKube()
    fake.create_behind_our_back = True  # our GET says 404, our POST then gets 409 AlreadyExists
    result = await activities(fake).run(run_input())
    assert result.results["SONAR_CE_TASK_ID"] == "AYhSC2"
    assert fake.count("POST") == 1 and len(fake.runs) == 1


async def test_failed_run_is_fatal_and_names_service_run_reason_message() -> None:
    fake = FakeKube()
    fake.outcome = {"status": "False", "reason": "Failed", "message": "Tasks Completed: 3 (Failed: 1, Cancelled 0)"}
    with pytest.raises(ApplicationError) as info:
        await activities(fake).run(run_input())
    err = info.value
    assert err.type == errors.PIPELINE_RUN_FAILED and err.non_retryable
    assert "service api" in err.message and "ferry-0123456789ab-api" in err.message
    assert "Failed" in err.message and "(Failed: 1, Cancelled 0)" in err.message
    assert TOKEN not in err.message
    # A retry of a failed run waits on the same run again and fails the same way: never a second run.
    with pytest.raises(ApplicationError):
        await activities(fake).run(run_input())
    assert fake.count("POST") == 1


async def test_manifest_without_name_is_refused() -> None:
    fake = FakeKube()
    inp = run_input()
    inp.manifest["metadata"] = {"generateName": "ferry-"}
    with pytest.raises(ApplicationError) as info:
        await activities(fake).run(inp)
    assert info.value.type == errors.BAD_REQUEST and fake.requests == []


async def test_5xx_retryable_401_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKube()
    fake.fail = [500] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await activities(fake).run(run_input())
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    monkeypatch.setenv(ENV, "expired-token")
    with pytest.raises(ApplicationError) as info:
        await activities(fake).run(run_input())
    assert info.value.type == errors.AUTH_FAILED and info.value.non_retryable
    assert "expired-token" not in info.value.message and TOKEN not in info.value.message
    assert fake.runs == {}


async def test_cancel_patches_once_and_reports_state() -> None:
    fake = FakeKube()
    acts = activities(fake)
    assert await acts.cancel(run_input()) == "absent"
    fake.create(manifest())
    assert await acts.cancel(run_input()) == "cancelling"
    assert await acts.cancel(run_input()) == "cancelling"
    assert fake.count("PATCH") == 1
    assert fake.runs["ferry-0123456789ab-api"]["spec"]["status"] == "Cancelled"


async def test_cancel_leaves_a_finished_run_alone() -> None:
    fake = FakeKube()
    acts = activities(fake)
    await acts.run(run_input())
    assert await acts.cancel(run_input()) == "finished"
    assert fake.count("PATCH") == 0


async def test_cancel_5xx_retryable() -> None:
    fake = FakeKube()
    fake.create(manifest())
    fake.fail = [502] * http.READ_RETRIES
    with pytest.raises(ApplicationError) as info:
        await activities(fake).cancel(run_input())
    assert not info.value.non_retryable


async def test_not_configured_and_from_config() -> None:
    from sample import sample_config

    cfg = parse_config(sample_config())
    with pytest.raises(ApplicationError) as info:
        await TektonActivities.from_config(cfg, "cloud").run(run_input())
    assert info.value.type == errors.NOT_CONFIGURED
    onprem = TektonActivities.from_config(cfg, "onprem")
    assert onprem.clients["onprem"].endpoint.namespace == cfg.sites["onprem"].tekton.namespace
    await onprem.aclose()
