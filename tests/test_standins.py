"""The sandbox stand-ins: real APIs, real shared state, real failures, in-process and over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from sandbox.standins import NAMES, ScenarioError, World, build_apps, serve
from sandbox.standins.harbor import MIME_HARBOR, MIME_V11

ROOT = Path(__file__).resolve().parent.parent
SPEED = 0.02  # a whole PipelineRun takes ~20 ms
ONPREM = "127.0.0.1:18101"
CLOUD = "127.0.0.1:18102"
T = TypeVar("T")


class Box:
    """A world, its apps and in-process clients, with the scenario file in a temporary directory."""

    def __init__(self, tmp: Path, scenario: dict | None = None, **kw: Any) -> None:
        self.scenario_path = tmp / "scenario.yaml"
        if scenario is not None:
            self.scenario_path.write_text(yaml.safe_dump(scenario))
        self.world = World(self.scenario_path, speed=kw.pop("speed", SPEED), seed=kw.pop("seed", 7), **kw)
        self.world.set_registry_host("onprem", ONPREM)
        self.world.set_registry_host("cloud", CLOUD)
        self.apps = build_apps(self.world)

    def client(self, name: str, **kw: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.apps[name])
        return httpx.AsyncClient(transport=transport, base_url=f"http://{name}.test", **kw)

    def set_scenario(self, data: dict) -> None:
        self.scenario_path.write_text(yaml.safe_dump(data))
        st = self.scenario_path.stat()
        # Make sure the change is seen even on a file system with coarse mtimes.
        os.utime(self.scenario_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 5.0) -> T:
    """Poll `check` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def pipelinerun(name: str, service: str, commit: str, registry: str = ONPREM) -> dict:
    params = {
        "service": service,
        "commit": commit,
        "branch": "main",
        "image": f"{registry}/ferry/{service}",
        "tag": commit[:12],
        "sonar-project": f"shop-{service}",
    }
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": name, "labels": {"ferry.dev/service": service, "ferry.dev/commit": commit[:12]}},
        "spec": {"pipelineRef": {"name": "ferry-ci"}, "params": [{"name": k, "value": v} for k, v in params.items()]},
    }


def succeeded(run: dict) -> dict | None:
    for cond in run.get("status", {}).get("conditions", []):
        if cond["type"] == "Succeeded" and cond["status"] != "Unknown":
            return cond
    return None


async def finished_run(tekton: httpx.AsyncClient, name: str) -> dict:
    async def check() -> dict | None:
        run = (await tekton.get(f"/apis/tekton.dev/v1/namespaces/ci/pipelineruns/{name}")).json()
        return run if succeeded(run) else None

    return await eventually(check)


RUNS = "/apis/tekton.dev/v1/namespaces/ci/pipelineruns"
ARTIFACT = "/api/v2.0/projects/{p}/repositories/{r}/artifacts/{ref}"


# --- Tekton -> Harbor-OnPrem + SonarQube ---


async def test_pipelinerun_pushes_deterministic_digest_and_submits_a_passing_analysis(tmp_path: Path) -> None:
    box = Box(tmp_path)
    commit = "a" * 40
    async with box.client("tekton") as tekton, box.client("harbor-onprem") as onprem, box.client("sonarqube") as sq:
        created = await tekton.post(RUNS, json=pipelinerun("ferry-aaaa-api", "api", commit))
        assert created.status_code == 201
        assert created.json()["metadata"]["namespace"] == "ci" and created.json()["status"] == {}

        run = await finished_run(tekton, "ferry-aaaa-api")
        assert succeeded(run)["reason"] == "Succeeded"
        expected = "sha256:" + hashlib.sha256(f"{ONPREM}/ferry/api@{commit}".encode()).hexdigest()
        results = {r["name"]: r["value"] for r in run["status"]["results"]}
        assert results["IMAGE_DIGEST"] == expected
        assert results["IMAGE_URL"] == f"{ONPREM}/ferry/api@{expected}"
        assert [c["pipelineTaskName"] for c in run["status"]["childReferences"]] == [
            "lint",
            "unit-tests",
            "bazel-build",
            "image-build",
        ]
        assert run["status"]["startTime"] <= run["status"]["completionTime"]

        # The image is in Harbor-OnPrem by digest and by tag, and nowhere else.
        by_digest = await onprem.get(ARTIFACT.format(p="ferry", r="api", ref=expected))
        assert by_digest.status_code == 200 and by_digest.json()["digest"] == expected
        by_tag = await onprem.get(ARTIFACT.format(p="ferry", r="api", ref=commit[:12]))
        assert by_tag.json()["digest"] == expected
        async with box.client("harbor-cloud") as cloud:
            assert (await cloud.get(ARTIFACT.format(p="ferry", r="api", ref=expected))).status_code == 404

        # The lint task's analysis: CE task PENDING -> IN_PROGRESS -> SUCCESS, then the gate of that analysis.
        async def task_done() -> dict | None:
            task = (await sq.get("/api/ce/task", params={"id": results["SONAR_CE_TASK_ID"]})).json()["task"]
            return task if task["status"] == "SUCCESS" else None

        task = await task_done()
        assert task["componentKey"] == "shop-api" and task["analysisId"]
        gate = (await sq.get("/api/qualitygates/project_status", params={"analysisId": task["analysisId"]})).json()
        assert gate["projectStatus"]["status"] == "OK"
        assert all(c["status"] == "OK" for c in gate["projectStatus"]["conditions"])

        # Same commit, another run name: same digest, still one artifact (a second push only re-tags).
        await tekton.post(RUNS, json=pipelinerun("ferry-aaaa-api-again", "api", commit))
        again = await finished_run(tekton, "ferry-aaaa-api-again")
        assert {r["name"]: r["value"] for r in again["status"]["results"]}["IMAGE_DIGEST"] == expected
        listed = await onprem.get("/api/v2.0/projects/ferry/repositories/api/artifacts")
        assert listed.headers["X-Total-Count"] == "1" and len(listed.json()) == 1


async def test_duplicate_pipelinerun_is_409_already_exists_and_never_runs_twice(tmp_path: Path) -> None:
    box = Box(tmp_path)
    async with box.client("tekton") as tekton:
        first = await tekton.post(RUNS, json=pipelinerun("ferry-bbbb-web", "web", "b" * 40))
        second = await tekton.post(RUNS, json=pipelinerun("ferry-bbbb-web", "web", "b" * 40))
        assert first.status_code == 201
        assert second.status_code == 409
        status = second.json()
        assert (status["kind"], status["reason"], status["code"]) == ("Status", "AlreadyExists", 409)
        assert status["details"] == {"name": "ferry-bbbb-web", "group": "tekton.dev", "kind": "pipelineruns"}
        assert box.world.tekton.created_count("ferry-bbbb-web") == 1

        missing = await tekton.get(f"{RUNS}/nope")
        assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"

        await tekton.post(RUNS, json=pipelinerun("ferry-cccc-api", "api", "c" * 40))
        listed = await tekton.get(RUNS, params={"labelSelector": "ferry.dev/service=web"})
        assert listed.json()["kind"] == "PipelineRunList"
        assert [r["metadata"]["name"] for r in listed.json()["items"]] == ["ferry-bbbb-web"]


async def test_scenario_fails_a_service_pipeline_and_a_cancel_patch_cancels(tmp_path: Path) -> None:
    box = Box(tmp_path, {"pipeline_failures": ["web"]})
    async with box.client("tekton") as tekton, box.client("harbor-onprem") as onprem:
        await tekton.post(RUNS, json=pipelinerun("ferry-dddd-web", "web", "d" * 40))
        cond = succeeded(await finished_run(tekton, "ferry-dddd-web"))
        assert (cond["status"], cond["reason"]) == ("False", "Failed")
        assert "unit-tests" in cond["message"]
        assert (await onprem.post("/api/v2.0/projects", json={"project_name": "ferry"})).status_code == 201
        assert (await onprem.post("/api/v2.0/projects", json={"project_name": "ferry"})).status_code == 409
        assert (await onprem.get("/api/v2.0/projects/ferry/repositories/web/artifacts")).json() == []

    (tmp_path / "slow").mkdir()
    slow = Box(tmp_path / "slow", speed=1.0)  # the run takes a second: the cancel lands mid-run
    async with slow.client("tekton") as tekton:
        await tekton.post(RUNS, json=pipelinerun("ferry-eeee-api", "api", "e" * 40))
        wrong_type = await tekton.patch(f"{RUNS}/ferry-eeee-api", json={"spec": {"status": "Cancelled"}})
        assert wrong_type.status_code == 415
        patched = await tekton.patch(
            f"{RUNS}/ferry-eeee-api",
            content=b'{"spec":{"status":"Cancelled"}}',
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert patched.status_code == 200
        cond = succeeded(patched.json())
        assert (cond["status"], cond["reason"]) == ("False", "Cancelled")
        assert patched.json()["spec"]["status"] == "Cancelled"


async def test_missing_params_fail_the_run_with_parameter_missing(tmp_path: Path) -> None:
    box = Box(tmp_path)
    manifest = pipelinerun("ferry-ffff-api", "api", "f" * 40)
    manifest["spec"]["params"] = [p for p in manifest["spec"]["params"] if p["name"] != "tag"]
    async with box.client("tekton") as tekton:
        assert (await tekton.post(RUNS, json=manifest)).status_code == 201
        cond = succeeded(await finished_run(tekton, "ferry-ffff-api"))
        assert cond["reason"] == "ParameterMissing" and "[tag]" in cond["message"]


# --- SonarQube ---


async def test_quality_gate_error_comes_from_the_scenario(tmp_path: Path) -> None:
    box = Box(tmp_path, {"quality_gate": {"api": "ERROR"}})
    failing = box.world.sonar.submit("shop-api")
    passing = box.world.sonar.submit("shop-web")
    async with box.client("sonarqube") as sq:
        pending = (await sq.get("/api/ce/task", params={"id": failing})).json()["task"]
        assert pending["status"] in ("PENDING", "IN_PROGRESS") and "analysisId" not in pending

        async def analysis(task_id: str) -> str | None:
            return (await sq.get("/api/ce/task", params={"id": task_id})).json()["task"].get("analysisId")

        bad = (
            await sq.get(
                "/api/qualitygates/project_status", params={"analysisId": await eventually(lambda: analysis(failing))}
            )
        ).json()
        assert bad["projectStatus"]["status"] == "ERROR"
        assert {c["metricKey"] for c in bad["projectStatus"]["conditions"] if c["status"] == "ERROR"} == {
            "new_coverage",
            "new_blocker_violations",
        }
        good = (
            await sq.get(
                "/api/qualitygates/project_status", params={"analysisId": await eventually(lambda: analysis(passing))}
            )
        ).json()
        assert good["projectStatus"]["status"] == "OK"
        by_key = (await sq.get("/api/qualitygates/project_status", params={"projectKey": "shop-api"})).json()
        assert by_key["projectStatus"]["status"] == "ERROR"

        neither = await sq.get("/api/qualitygates/project_status")
        assert neither.status_code == 400 and "analysisId" in neither.json()["errors"][0]["msg"]
        assert (await sq.get("/api/ce/task", params={"id": "nope"})).status_code == 404
        assert (await sq.get("/api/qualitygates/project_status", params={"analysisId": "nope"})).status_code == 404


# --- Harbor: scans and replication ---


async def test_scan_overview_reports_the_scenario_vulnerabilities(tmp_path: Path) -> None:
    box = Box(tmp_path, {"vulnerabilities": {"api": {"Critical": 1, "High": 2}}})
    api = box.world.harbor["onprem"].push("ferry", "api", "v1", "sha256:" + "1" * 64)
    web = box.world.harbor["onprem"].push("ferry", "web", "v1", "sha256:" + "2" * 64)
    nested = box.world.harbor["onprem"].push("ferry", "team/tool", "v1", "sha256:" + "3" * 64)
    async with box.client("harbor-onprem") as onprem:

        async def report(repo: str, digest: str, **headers: str) -> dict | None:
            url = ARTIFACT.format(p="ferry", r=repo, ref=digest)
            body = (await onprem.get(url, params={"with_scan_overview": "true"}, headers=headers)).json()
            overview = body.get("scan_overview") or {}
            (mime, summary), *_ = overview.items() if overview else [(None, {})]
            return {"mime": mime, **summary} if summary.get("scan_status") == "Success" else None

        critical = await eventually(lambda: report("api", api.digest))
        assert critical["mime"] == MIME_V11
        assert critical["severity"] == "Critical"
        assert critical["summary"] == {"total": 3, "fixable": 3, "summary": {"Critical": 1, "High": 2}}
        clean = await eventually(lambda: report("web", web.digest, **{"X-Accept-Vulnerabilities": MIME_HARBOR}))
        assert clean["mime"] == MIME_HARBOR and clean["severity"] == "None" and clean["summary"]["total"] == 0

        # A slash in the repository name is encoded twice, as the swagger says.
        nested_url = ARTIFACT.format(p="ferry", r="team%252Ftool", ref=nested.digest)
        assert (await onprem.get(nested_url)).json()["repository_name"] == "ferry/team/tool"
        plain = (await onprem.get(ARTIFACT.format(p="ferry", r="web", ref=web.digest))).json()
        assert "scan_overview" not in plain

        rescan = await onprem.post(ARTIFACT.format(p="ferry", r="api", ref=api.digest) + "/scan")
        assert rescan.status_code == 202
        missing = await onprem.post(ARTIFACT.format(p="ferry", r="api", ref="sha256:" + "9" * 64) + "/scan")
        assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "NOT_FOUND"
        assert (await onprem.get("/api/v2.0/ping")).text == "Pong"


async def test_replication_copies_only_matching_artifacts_to_the_cloud(tmp_path: Path) -> None:
    box = Box(tmp_path, {"vulnerabilities": {"api": {"High": 1}}})
    onprem_state = box.world.harbor["onprem"]
    api = onprem_state.push("ferry", "api", "v1", "sha256:" + "a" * 64)
    web = onprem_state.push("ferry", "web", "v1", "sha256:" + "b" * 64)
    other = onprem_state.push("tools", "lint", "v1", "sha256:" + "c" * 64)
    async with box.client("harbor-onprem") as onprem, box.client("harbor-cloud") as cloud:
        for art in (api, web, other):
            url = ARTIFACT.format(p=art.project, r=art.repository, ref=art.digest)
            assert (await cloud.get(url)).status_code == 404

        registry = await onprem.post("/api/v2.0/registries", json={"name": "cloud", "url": f"http://{CLOUD}"})
        assert registry.status_code == 201
        registry_id = int(registry.headers["Location"].rsplit("/", 1)[1])
        policy = await onprem.post(
            "/api/v2.0/replication/policies",
            json={
                "name": "to-cloud",
                "dest_registry": {"id": registry_id},
                "filters": [{"type": "name", "value": "ferry/**"}],
            },
        )
        assert policy.status_code == 201
        policy_id = int(policy.headers["Location"].rsplit("/", 1)[1])
        duplicate = await onprem.post(
            "/api/v2.0/replication/policies", json={"name": "to-cloud", "dest_registry": {"id": registry_id}}
        )
        assert duplicate.status_code == 409

        async def run_once() -> dict:
            started = await onprem.post("/api/v2.0/replication/executions", json={"policy_id": policy_id})
            assert started.status_code == 201 and started.content == b""
            location = started.headers["Location"]
            assert location.startswith("/api/v2.0/replication/executions/")
            first = (await onprem.get(location)).json()
            assert first["status"] == "InProgress"

            async def final() -> dict | None:
                execution = (await onprem.get(location)).json()
                return execution if execution["status"] != "InProgress" else None

            return await eventually(final)

        done = await run_once()
        assert (done["status"], done["total"], done["succeed"], done["failed"]) == ("Succeed", 2, 2, 0)
        for art in (api, web):
            copied = await cloud.get(
                ARTIFACT.format(p="ferry", r=art.repository, ref=art.digest), params={"with_scan_overview": "true"}
            )
            assert copied.status_code == 200
        overview = copied.json().get("scan_overview")  # web: scanned clean on-prem, overview kept
        assert overview is not None
        assert (await cloud.get(ARTIFACT.format(p="tools", r="lint", ref=other.digest))).status_code == 404

        # Replicating again succeeds and duplicates nothing.
        again = await run_once()
        assert again["status"] == "Succeed"
        listed = await cloud.get("/api/v2.0/projects/ferry/repositories/api/artifacts")
        assert len(listed.json()) == 1

        # With the cloud Harbor down, the execution fails and says why.
        box.set_scenario({"faults": {"harbor-cloud": {"down": True}}})
        failed = await run_once()
        assert failed["status"] == "Failed" and "harbor-cloud" in failed["status_text"]
        assert (await onprem.post("/api/v2.0/replication/executions", json={"policy_id": 999})).status_code == 404


# --- Argo CD reading a real GitOps repo ---


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class GitOps:
    """A bare GitOps repo plus a work tree to commit into it."""

    def __init__(self, tmp: Path) -> None:
        self.bare = tmp / "gitops.git"
        self.work = tmp / "gitops-work"
        git(tmp, "init", "--bare", "-b", "main", str(self.bare))
        git(tmp, "clone", str(self.bare), str(self.work))
        self.write("_base/api/kustomization.yaml", "resources: [deployment.yaml]\n")
        self.write(
            "_base/api/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api}\n"
            "spec: {template: {spec: {containers: [{name: api, image: api}]}}}\n",
        )

    def write(self, path: str, text: str) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def pin(self, env: str, registry: str, digest: str) -> str:
        kustomization = {
            "resources": ["../_base/api"],
            "images": [{"name": "api", "newName": f"{registry}/ferry/api", "digest": digest}],
        }
        return self.commit({f"{env}/kustomization.yaml": yaml.safe_dump(kustomization)})

    def commit(self, files: dict[str, str]) -> str:
        for path, text in files.items():
            self.write(path, text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-m", "change")
        git(self.work, "push", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")


async def create_app(argo: httpx.AsyncClient, name: str, repo: Path, env: str) -> httpx.Response:
    return await argo.post(
        "/api/v1/applications",
        json={
            "metadata": {"name": name},
            "spec": {
                "project": "default",
                "source": {"repoURL": str(repo), "path": env, "targetRevision": "main"},
                "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
            },
        },
    )


async def sync_and_settle(argo: httpx.AsyncClient, app: str, revision: str) -> dict:
    started = await argo.post(f"/api/v1/applications/{app}/sync", json={"revision": revision})
    assert started.status_code == 200, started.text
    assert started.json()["status"]["operationState"]["phase"] == "Running"

    async def settled() -> dict | None:
        body = (await argo.get(f"/api/v1/applications/{app}", params={"refresh": "normal"})).json()
        phase = body["status"]["operationState"]["phase"]
        health = body["status"]["health"]["status"]
        return body if phase != "Running" and health != "Progressing" else None

    return await eventually(settled)


async def test_argocd_sync_reads_the_repo_at_the_requested_revision(tmp_path: Path) -> None:
    box = Box(tmp_path, speed=0.2)  # slow enough that a second sync request lands while the first runs
    repo = GitOps(tmp_path)
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    c1 = repo.pin("testbed", ONPREM, d1)
    c2 = repo.pin("testbed", ONPREM, d2)
    box.world.harbor["onprem"].push("ferry", "api", "", d1)
    box.world.harbor["onprem"].push("ferry", "api", "", d2)
    async with box.client("argocd-onprem") as argo:
        created = await create_app(argo, "shop-testbed", repo.bare, "testbed")
        assert created.status_code == 200
        assert created.json()["status"]["health"]["status"] == "Missing"
        assert (await create_app(argo, "shop-testbed", repo.bare, "testbed")).status_code == 200  # same spec: no-op

        # The older revision, although main is at c2: Argo CD reads exactly what it was asked for.
        app = await sync_and_settle(argo, "shop-testbed", c1)
        assert app["status"]["operationState"]["phase"] == "Succeeded"
        assert (app["status"]["sync"]["status"], app["status"]["sync"]["revision"]) == ("Synced", c1)
        assert app["status"]["health"]["status"] == "Healthy"
        assert app["status"]["summary"]["images"] == [f"{ONPREM}/ferry/api@{d1}"]

        started = await argo.post("/api/v1/applications/shop-testbed/sync", json={"revision": c2})
        busy = await argo.post("/api/v1/applications/shop-testbed/sync", json={"revision": c2})
        assert started.status_code == 200
        assert busy.status_code == 400 and busy.json()["message"] == "another operation is already in progress"
        assert busy.json()["code"] == 9  # FailedPrecondition

        async def at_c2() -> dict | None:
            body = (await argo.get("/api/v1/applications/shop-testbed")).json()
            return (
                body
                if body["status"]["health"]["status"] == "Healthy" and body["status"]["sync"]["revision"] == c2
                else None
            )

        app = await eventually(at_c2)
        assert app["status"]["summary"]["images"] == [f"{ONPREM}/ferry/api@{d2}"]
        assert [h["revision"] for h in app["status"]["history"]] == [c1, c2]
        assert (await argo.get("/api/v1/applications/nope")).status_code == 404


async def test_image_missing_from_the_sites_harbor_degrades_the_app(tmp_path: Path) -> None:
    box = Box(tmp_path, {"health": {"shop-production": "Degraded"}})
    repo = GitOps(tmp_path)
    digest = "sha256:" + "4" * 64
    box.world.harbor["onprem"].push("ferry", "api", "", digest)  # on-prem only: not replicated yet
    staging = repo.pin("staging", CLOUD, digest)
    async with box.client("argocd-cloud") as argo:
        await create_app(argo, "shop-staging", repo.bare, "staging")
        app = await sync_and_settle(argo, "shop-staging", staging)
        assert app["status"]["sync"]["status"] == "Synced"
        health = app["status"]["health"]
        assert health["status"] == "Degraded"
        assert health["message"] == f"ImagePullBackOff: {CLOUD}/ferry/api@{digest} not found in harbor-cloud"

        # Once replication put the image into Harbor-Cloud, the pods pull it and the app turns Healthy.
        box.world.harbor["cloud"].receive_copy(box.world.harbor["onprem"].find("ferry", "api", digest), 0)
        fixed = (await argo.get("/api/v1/applications/shop-staging")).json()
        assert fixed["status"]["health"]["status"] == "Healthy"

        # The scenario can force an app Degraded even when every image is there.
        production = repo.pin("production", CLOUD, digest)
        await create_app(argo, "shop-production", repo.bare, "production")
        forced = await sync_and_settle(argo, "shop-production", production)
        assert forced["status"]["health"]["status"] == "Degraded"


async def test_broken_kustomization_or_unknown_revision_fails_the_operation(tmp_path: Path) -> None:
    box = Box(tmp_path)
    repo = GitOps(tmp_path)
    broken = repo.commit({"testbed/kustomization.yaml": "resources: [../_base/api\nimages: {{{\n"})
    missing = repo.commit({"testbed/kustomization.yaml": "resources: [../_base/nope]\n"})
    async with box.client("argocd-onprem") as argo:
        await create_app(argo, "shop-testbed", repo.bare, "testbed")
        app = await sync_and_settle(argo, "shop-testbed", broken)
        state = app["status"]["operationState"]
        assert state["phase"] == "Failed" and "kustomize build testbed failed" in state["message"]
        assert app["status"]["sync"]["status"] == "OutOfSync"  # nothing was applied

        app = await sync_and_settle(argo, "shop-testbed", missing)
        assert "'../_base/nope' does not exist" in app["status"]["operationState"]["message"]

        app = await sync_and_settle(argo, "shop-testbed", "0" * 40)
        assert app["status"]["operationState"]["phase"] == "Failed"
        assert "unable to resolve" in app["status"]["operationState"]["message"]


# --- Buildkite ---


BUILDS = "/v2/organizations/acme/pipelines/e2e/builds"


async def test_buildkite_build_passes_or_fails_per_scenario(tmp_path: Path) -> None:
    box = Box(tmp_path)
    body = {"commit": "f" * 40, "branch": "main", "message": "e2e", "meta_data": {"ferry-release": "shop-1"}}
    async with box.client("buildkite") as bk:
        created = await bk.post(BUILDS, json=body)
        assert created.status_code == 201
        build = created.json()
        assert build["state"] == "scheduled" and build["number"] == 1
        assert build["web_url"] == "http://buildkite.test/acme/e2e/builds/1"

        async def final(number: int) -> dict | None:
            b = (await bk.get(f"{BUILDS}/{number}")).json()
            return b if b["finished_at"] else None

        passed = await eventually(lambda: final(1))
        assert passed["state"] == "passed" and passed["jobs"][0]["exit_status"] == 0

        found = await bk.get(
            BUILDS, params={"commit": "f" * 40, "branch": "main", "meta_data[ferry-release]": "shop-1"}
        )
        assert [b["number"] for b in found.json()] == [1]
        assert (await bk.get(BUILDS, params={"meta_data[ferry-release]": "other"})).json() == []

        box.set_scenario({"e2e": {"result": "failed"}})
        await bk.post(BUILDS, json=body)
        failed = await eventually(lambda: final(2))
        assert failed["state"] == "failed" and failed["failing_at"]
        assert box.world.buildkite.created_count() == 2
        assert [b["number"] for b in (await bk.get(BUILDS, params={"state": "failed"})).json()] == [2]

        assert (await bk.post(BUILDS, json={"branch": "main"})).status_code == 422
        assert (await bk.get(f"{BUILDS}/99")).status_code == 404


# --- faults, tokens, scenario ---


async def test_fault_injection_rate_and_down(tmp_path: Path) -> None:
    box = Box(tmp_path, {"faults": {"*": {"error_rate": 0.3, "status": 503}, "argocd-cloud": {"down": True}}})
    async with box.client("harbor-onprem") as onprem, box.client("argocd-cloud") as argo:
        codes = [(await onprem.get("/api/v2.0/ping")).status_code for _ in range(200)]
        failures = codes.count(503)
        assert set(codes) == {200, 503}
        assert 30 <= failures <= 90, failures  # ~60 expected
        down = [(await argo.get("/api/v1/applications")).status_code for _ in range(20)]
        assert down == [503] * 20
        # The inspection path is never faulted.
        state = await argo.get("/_sandbox/state")
        assert state.status_code == 200 and state.json()["standin"] == "argocd-cloud"

        box.set_scenario({})
        assert (await argo.get("/api/v1/applications")).status_code == 200


async def test_tokens_are_required_when_configured(tmp_path: Path) -> None:
    box = Box(tmp_path, tokens={"harbor-onprem": "h-secret", "tekton": "t-secret", "sonarqube": "s-secret"})
    async with box.client("harbor-onprem") as onprem, box.client("tekton") as tekton, box.client("sonarqube") as sq:
        anonymous = await onprem.get("/api/v2.0/projects")
        assert anonymous.status_code == 401 and anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert (await onprem.get("/api/v2.0/projects", auth=("robot$ferry", "wrong"))).status_code == 401
        assert (await onprem.get("/api/v2.0/projects", auth=("robot$ferry", "h-secret"))).status_code == 200
        assert (await onprem.get("/api/v2.0/ping")).status_code == 200  # documented as unauthenticated

        assert (await tekton.get(RUNS)).status_code == 401
        assert (await tekton.get(RUNS, headers={"Authorization": "Bearer t-secret"})).status_code == 200
        # SonarQube: bearer, or the token as basic-auth login with an empty password.
        assert (await sq.get("/api/ce/task", params={"id": "x"}, auth=("s-secret", ""))).status_code == 404
        assert (await sq.get("/api/ce/task", params={"id": "x"})).status_code == 401
        for response in (anonymous, await tekton.get(RUNS)):
            assert "secret" not in response.text
    async with box.client("buildkite") as bk:  # no token configured: anything goes
        assert (await bk.get(BUILDS)).status_code == 200


def test_scenario_file_is_validated_with_the_key_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"quality_gate": {"api": "RED"}}))
    with pytest.raises(ScenarioError, match=r"quality_gate\.api"):
        World(bad)
    bad.write_text(yaml.safe_dump({"faults": {"harbour": {"down": True}}}))
    with pytest.raises(ScenarioError, match="faults.harbour: unknown stand-in"):
        World(bad)
    assert World(tmp_path / "absent.yaml").scenario.e2e_result == "passed"


# --- over real HTTP ---


async def test_serve_runs_real_http_servers_and_stops_cleanly(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.world.registry_hosts.clear()
    ready: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
    apps = {name: box.apps[name] for name in ("harbor-onprem", "tekton")}
    server = asyncio.create_task(serve(apps, {"harbor-onprem": 0, "tekton": 0}, on_ready=ready.set_result))
    ports = await asyncio.wait_for(ready, 10)
    assert box.world.registry_hosts == {"onprem": f"127.0.0.1:{ports['harbor-onprem']}"}
    async with httpx.AsyncClient(timeout=5) as client:
        pong = await client.get(f"http://127.0.0.1:{ports['harbor-onprem']}/api/v2.0/ping")
        assert pong.text == "Pong" and pong.headers["X-Request-Id"]
        url = f"http://127.0.0.1:{ports['tekton']}{RUNS}"
        assert (await client.post(url, json=pipelinerun("ferry-http-api", "api", "9" * 40))).status_code == 201
        assert (await client.get(url)).json()["items"][0]["metadata"]["name"] == "ferry-http-api"
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{ports['tekton']}{RUNS}")


def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "sandbox.standins", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "FERRY_SANDBOX_TOKEN_HARBOR_ONPREM" in help_text and all(name in help_text for name in NAMES)

    ports = ",".join(f"{name}=0" for name in NAMES)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.standins", "--ports", ports, "--scenario", str(tmp_path / "s.yaml")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FERRY_SANDBOX_TOKEN_TEKTON": "tok"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "standins ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
