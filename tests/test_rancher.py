"""Rancher import and platform apps, against the Rancher and Kubernetes stand-ins (in-process, same code as over
HTTP): every activity run twice shows no second side effect; 5xx are retryable and 4xx name chart and reason;
no secret (Rancher API token, registration token, cluster credentials) appears in an error or a heartbeat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sample import sample_config
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import AUTH_FAILED, NOT_CONFIGURED, NOT_FOUND
from activities.rancher import APP_INSTALL_FAILED, RancherActivities, kube_auth
from common.config import parse_config
from sandbox.standins import ScenarioError, World, build_apps, serve
from workflows.provision_types import AppSpec, ClusterInfo, RancherAppInput, RancherImportInput

RANCHER_TOKEN = "token-x7k2p:r4nch3r-s3cr3t-value"
KUBE_TOKEN = "kube-s3cr3t-4f1c"
RANCHER_URL = "http://rancher.test"
KUBE_URL = "http://kube.test"
HARBOR = AppSpec(
    name="harbor",
    chart="harbor",
    version="1.14.0",
    namespace="harbor",
    repo="rancher-partner-charts",
    values={"expose": {"type": "clusterIP"}},
)


class Router(httpx.AsyncBaseTransport):
    """Route rancher.test and kube.test to their stand-ins; `intercept` may answer a request itself."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self._hosts = {"rancher.test": apps["rancher"], "kube.test": apps["kube"]}
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in self._hosts.items()}
        self.intercept: Callable[[httpx.Request], httpx.Response | None] = lambda request: None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.intercept(request)
        if answer is not None:
            return answer
        return await self._transports[request.url.host].handle_async_request(request)


class Sandbox:
    """A world with the Rancher and kube stand-ins, a ferry.yaml with a Rancher on-prem, and a kubeconfig."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, speed: float = 0.01) -> None:
        from activities import http

        monkeypatch.setattr(http, "READ_BACKOFF_SECONDS", 0.0)
        monkeypatch.setenv("FERRY_TEST_TOKEN_RANCHER", RANCHER_TOKEN)
        self.tmp = tmp
        self.scenario = tmp / "scenario.yaml"
        self.world = World(self.scenario, tokens={"rancher": RANCHER_TOKEN, "kube": KUBE_TOKEN}, speed=speed, seed=7)
        self.router = Router(build_apps(self.world))
        data = sample_config(poll_seconds=0.005)
        data["sites"]["onprem"]["rancher"] = {"url": RANCHER_URL, "credential": {"env": "FERRY_TEST_TOKEN_RANCHER"}}
        self.cfg = parse_config(data)
        self.activities = RancherActivities.from_config(self.cfg, "onprem", transport=self.router)
        self.kubeconfig = self.write_kubeconfig("main", KUBE_TOKEN)

    def write_kubeconfig(self, name: str, token: str) -> Path:
        path = self.tmp / f"{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": name,
                    "contexts": [{"name": name, "context": {"cluster": name, "user": "admin"}}],
                    "clusters": [{"name": name, "cluster": {"server": f"{KUBE_URL}/clusters/{name}"}}],
                    "users": [{"name": "admin", "user": {"token": token}}],
                }
            )
        )
        return path

    def cluster(self, name: str = "onprem-main", kubeconfig: Path | None = None) -> ClusterInfo:
        return ClusterInfo(
            name=name, api_endpoint=f"{KUBE_URL}/clusters/{name}", kubeconfig_path=str(kubeconfig or self.kubeconfig)
        )

    def set_scenario(self, data: dict) -> None:
        self.scenario.write_text(yaml.safe_dump(data))
        st = self.scenario.stat()
        os.utime(self.scenario, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    def secrets(self) -> list[str]:
        """Every credential in play: the Rancher API token, the cluster's token, the registration tokens."""
        return [RANCHER_TOKEN, KUBE_TOKEN, "r4nch3r-s3cr3t"] + [
            t["token"] for t in self.world.rancher.tokens.values() if t["token"]
        ]

    async def import_cluster(self, name: str = "onprem-main") -> str:
        return (await self.activities.import_cluster(RancherImportInput("onprem", self.cluster(name)))).id


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    return Sandbox(tmp_path, monkeypatch)


def assert_no_secret(sandbox: Sandbox, *texts: Any) -> None:
    for text in texts:
        for secret in sandbox.secrets():
            assert secret not in str(text), f"a secret leaked into: {text}"


async def raised(coro: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await coro
    return info.value


# --- import ---


async def test_import_twice_makes_one_cluster_and_applies_the_manifest_once(sandbox: Sandbox) -> None:
    inp = RancherImportInput("onprem", sandbox.cluster())
    first = await sandbox.activities.import_cluster(inp)
    rancher, kube = sandbox.world.rancher, sandbox.world.kube

    assert first.state == "active" and first.name == "onprem-main" and first.id.startswith("c-")
    stored = rancher.clusters[first.id]
    assert stored["driver"] == "imported" and stored["apiEndpoint"] == f"{KUBE_URL}/clusters/onprem-main"
    assert rancher.clusters_created == {"onprem-main": 1}
    assert rancher.tokens_created[first.id] == 1
    objects = kube.snapshot()["onprem-main"]["objects"]
    assert "Deployment cattle-system/cattle-cluster-agent" in objects and "Namespace cattle-system" in objects
    applies = kube.applies["onprem-main"]
    assert applies == len(objects) == 9  # every object of the manifest, once

    second = await sandbox.activities.import_cluster(inp)
    assert second == first
    assert rancher.clusters_created == {"onprem-main": 1}
    assert rancher.tokens_created[first.id] == 1
    assert kube.applies["onprem-main"] == applies  # an active cluster is not touched again


async def test_reapplying_the_manifest_to_a_pending_cluster_changes_nothing(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second attempt that finds the cluster not yet active applies again: server-side apply makes that a no-op."""
    from sandbox.standins import rancher

    monkeypatch.setattr(rancher, "CONNECT_SECONDS", 1e6)  # the agent never connects: the cluster stays pending
    inp = RancherImportInput("onprem", sandbox.cluster())
    kube = sandbox.world.kube
    for attempt in (1, 2):
        task = asyncio.create_task(sandbox.activities.import_cluster(inp))
        while kube.applies["onprem-main"] < 9 * attempt:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # polling for "active" by now
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert kube.applies["onprem-main"] == 18 and kube.changes["onprem-main"] == 9
    assert sandbox.world.rancher.clusters_created == {"onprem-main": 1}
    assert len(sandbox.world.rancher.tokens) == 1
    assert [c["state"] for c in sandbox.world.rancher.clusters.values() if c["name"] == "onprem-main"] == ["pending"]


async def test_a_retried_import_resumes_from_its_heartbeat_and_only_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = Sandbox(tmp_path, monkeypatch, speed=0.3)  # connect + active take ~0.3 s
    inp = RancherImportInput("onprem", sandbox.cluster())
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    first = asyncio.create_task(env.run(sandbox.activities.import_cluster, inp))
    while not any(b.get("applied") for b in beats):
        await asyncio.sleep(0.005)
    first.cancel()  # the worker dies while waiting for the agent
    with pytest.raises(asyncio.CancelledError):
        await first
    applies = sandbox.world.kube.applies["onprem-main"]
    assert applies == 9

    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=[beats[-1]])
    result = await retry.run(sandbox.activities.import_cluster, inp)
    assert result.state == "active"
    assert sandbox.world.kube.applies["onprem-main"] == applies  # resumed: no second apply
    assert sandbox.world.rancher.clusters_created == {"onprem-main": 1}
    assert all(set(b) >= {"name", "cluster_id", "applied"} for b in beats)
    assert_no_secret(sandbox, *beats)


async def test_import_on_a_worker_without_that_rancher_is_not_configured(sandbox: Sandbox) -> None:
    error = await raised(sandbox.activities.import_cluster(RancherImportInput("cloud", sandbox.cluster())))
    assert error.non_retryable and error.type == NOT_CONFIGURED and "sites.cloud.rancher" in str(error)


# --- apps ---


async def test_install_twice_is_installed_then_unchanged(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    inp = RancherAppInput("onprem", cid, HARBOR)
    first = await sandbox.activities.install_app(inp)
    assert (first.name, first.version, first.action) == ("harbor", "1.14.0", "installed")
    app = sandbox.world.rancher.apps[(cid, "harbor", "harbor")]
    assert (app["chart"], app["version"], app["status"], app["revision"]) == ("harbor", "1.14.0", "deployed", 1)
    assert app["values"] == {"expose": {"type": "clusterIP"}}
    assert [a["action"] for a in sandbox.world.rancher.actions] == ["install"]

    second = await sandbox.activities.install_app(inp)
    assert (second.version, second.action) == ("1.14.0", "unchanged")
    assert [a["action"] for a in sandbox.world.rancher.actions] == ["install"]  # no write
    assert sandbox.world.rancher.apps[(cid, "harbor", "harbor")]["revision"] == 1


async def test_another_version_or_other_values_are_upgraded_once(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    await sandbox.activities.install_app(RancherAppInput("onprem", cid, HARBOR))
    newer = dataclasses.replace(HARBOR, version="1.15.0")
    upgraded = await sandbox.activities.install_app(RancherAppInput("onprem", cid, newer))
    assert (upgraded.version, upgraded.action) == ("1.15.0", "upgraded")
    app = sandbox.world.rancher.apps[(cid, "harbor", "harbor")]
    assert (app["version"], app["revision"], app["status"]) == ("1.15.0", 2, "deployed")
    assert (await sandbox.activities.install_app(RancherAppInput("onprem", cid, newer))).action == "unchanged"

    retuned = dataclasses.replace(newer, values={"expose": {"type": "ingress"}})
    assert (await sandbox.activities.install_app(RancherAppInput("onprem", cid, retuned))).action == "upgraded"
    assert [a["action"] for a in sandbox.world.rancher.actions] == ["install", "upgrade", "upgrade"]
    assert sandbox.world.rancher.apps[(cid, "harbor", "harbor")]["values"] == {"expose": {"type": "ingress"}}


async def test_a_5xx_on_install_is_retryable_and_the_retry_installs_once(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    sandbox.set_scenario({"rancher": {"install_errors": {"harbor": 1}}})
    inp = RancherAppInput("onprem", cid, HARBOR)
    error = await raised(sandbox.activities.install_app(inp))
    assert not error.non_retryable and "HTTP 503" in str(error)
    assert "harbor 1.14.0" in str(error) and "rancher-partner-charts" in str(error)
    assert sandbox.world.rancher.actions == [] and not sandbox.world.rancher.apps

    retried = await sandbox.activities.install_app(inp)  # what Temporal's retry policy does next
    assert retried.action == "installed"
    assert len(sandbox.world.rancher.actions) == 1
    assert_no_secret(sandbox, error)


async def test_a_cluster_whose_agent_is_not_connected_is_retryable(sandbox: Sandbox) -> None:
    created = await sandbox.activities.clients["onprem"].create_cluster("not-yet")
    assert created is not None and created["state"] == "pending"
    error = await raised(sandbox.activities.install_app(RancherAppInput("onprem", created["id"], HARBOR)))
    assert not error.non_retryable and "503" in str(error)


async def test_a_4xx_names_the_chart_the_version_and_the_reason(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    sandbox.set_scenario({"rancher": {"reject_chart": {"harbor": "chart harbor 9.9.9 not found in repo"}}})
    bad = dataclasses.replace(HARBOR, version="9.9.9")
    error = await raised(sandbox.activities.install_app(RancherAppInput("onprem", cid, bad)))
    message = str(error)
    assert error.non_retryable and error.type == NOT_FOUND
    assert "chart harbor 9.9.9" in message and "HTTP 404" in message
    assert "chart harbor 9.9.9 not found in repo" in message  # Rancher's reason, verbatim
    assert "ferry.yaml" in message  # and where to fix it
    assert sandbox.world.rancher.actions == []
    assert_no_secret(sandbox, error)


async def test_a_failed_helm_release_is_fatal_and_names_helms_reason(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    sandbox.set_scenario({"rancher": {"helm_failures": {"nexus": "timed out waiting for the condition"}}})
    nexus = AppSpec(name="nexus", chart="nexus", version="3.1.0", namespace="nexus")
    error = await raised(sandbox.activities.install_app(RancherAppInput("onprem", cid, nexus)))
    assert error.non_retryable and error.type == APP_INSTALL_FAILED
    assert "nexus 3.1.0" in str(error) and "timed out waiting for the condition" in str(error)

    sandbox.set_scenario({})  # fixed: the next run upgrades the failed release in place
    assert (await sandbox.activities.install_app(RancherAppInput("onprem", cid, nexus))).action == "upgraded"


async def test_install_resumes_from_its_heartbeat_without_a_second_request(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    sandbox.world.speed = 0.3
    inp = RancherAppInput("onprem", cid, HARBOR)
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    first = asyncio.create_task(env.run(sandbox.activities.install_app, inp))
    while not any(b.get("action") for b in beats):
        await asyncio.sleep(0.005)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=[beats[-1]])
    result = await retry.run(sandbox.activities.install_app, inp)
    assert result.action == "installed"  # what the first attempt did, not "unchanged"
    assert len(sandbox.world.rancher.actions) == 1


# --- secrets ---


async def test_no_token_in_any_error_message(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[ApplicationError] = []

    # The manifest URL holds the registration token; a proxy echoing the URL in a 5xx must not leak it.
    def echo_import(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.startswith("/v3/import/"):
            return httpx.Response(502, text=f"bad gateway fetching {request.url}", request=request)
        return None

    sandbox.router.intercept = echo_import
    errors.append(await raised(sandbox.activities.import_cluster(RancherImportInput("onprem", sandbox.cluster()))))
    assert not errors[-1].non_retryable and "HTTP 502" in str(errors[-1]) and "***" in str(errors[-1])
    assert any(t["token"] for t in sandbox.world.rancher.tokens.values())
    sandbox.router.intercept = lambda request: None

    # The cluster's API refuses the kubeconfig's token.
    wrong = sandbox.write_kubeconfig("wrong", "not-the-" + KUBE_TOKEN)
    cluster = sandbox.cluster(kubeconfig=wrong)
    errors.append(await raised(sandbox.activities.import_cluster(RancherImportInput("onprem", cluster))))
    assert errors[-1].type == AUTH_FAILED and str(wrong) in str(errors[-1])

    # Rancher refuses the API token.
    cid = await sandbox.import_cluster()
    monkeypatch.setenv("FERRY_TEST_TOKEN_RANCHER", "token-x7k2p:wrong-" + RANCHER_TOKEN)
    errors.append(await raised(sandbox.activities.install_app(RancherAppInput("onprem", cid, HARBOR))))
    assert errors[-1].type == AUTH_FAILED
    monkeypatch.setenv("FERRY_TEST_TOKEN_RANCHER", RANCHER_TOKEN)

    # A chart Rancher rejects.
    sandbox.set_scenario({"rancher": {"reject_chart": {"harbor": {"status": 422, "message": "values invalid"}}}})
    errors.append(await raised(sandbox.activities.install_app(RancherAppInput("onprem", cid, HARBOR))))
    assert "values invalid" in str(errors[-1]) and "HTTP 422" in str(errors[-1])

    assert_no_secret(sandbox, *errors, *(e.details for e in errors))
    assert "wrong-" not in " ".join(str(e) for e in errors)


def test_kubeconfig_credentials_are_read_and_plugins_are_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file\n")
    config = {
        "current-context": "b",
        "contexts": [
            {"name": "a", "context": {"cluster": "c", "user": "u1"}},
            {"name": "b", "context": {"cluster": "c", "user": "u2"}},
        ],
        "clusters": [{"name": "c", "cluster": {"server": "https://k", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u1", "user": {"token": "t1"}}, {"name": "u2", "user": {"tokenFile": "token"}}],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    auth = kube_auth(str(path))
    assert auth.headers == {"Authorization": "Bearer from-a-file"} and auth.verify is False

    config["users"][1]["user"] = {"exec": {"command": "aws", "args": ["eks", "get-token"]}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ApplicationError, match="exec/auth-provider plugin") as info:
        kube_auth(str(path))
    assert info.value.type == NOT_CONFIGURED
    with pytest.raises(ApplicationError, match="cannot be read on this worker"):
        kube_auth(str(tmp_path / "absent"))


# --- the stand-ins themselves ---


async def test_standin_requires_the_token_except_for_the_import_manifest(sandbox: Sandbox) -> None:
    cid = await sandbox.import_cluster()
    token = next(t for t in sandbox.world.rancher.tokens.values() if t["clusterId"] == cid)
    transport = httpx.ASGITransport(app=build_apps(sandbox.world)["rancher"])
    async with httpx.AsyncClient(transport=transport, base_url=RANCHER_URL) as client:
        anonymous = await client.get("/v3/clusters")
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "Unauthorized"
        listed = await client.get(
            "/v3/clusters", params={"name": "onprem-main"}, headers={"Authorization": f"Bearer {RANCHER_TOKEN}"}
        )
        assert [c["id"] for c in listed.json()["data"]] == [cid]
        manifest = await client.get(f"/v3/import/{token['token']}_{cid}.yaml")  # kubectl apply -f URL: no auth
        assert manifest.status_code == 200 and "cattle-cluster-agent" in manifest.text
        assert (await client.get(f"/v3/import/wrong_{cid}.yaml")).status_code == 404
    assert token["command"] == f"kubectl apply -f {token['manifestUrl']}"
    assert token["manifestUrl"] == f"{RANCHER_URL}/v3/import/{token['token']}_{cid}.yaml"
    assert "token" not in str(sandbox.world.rancher.snapshot()["tokens"]).replace(":default-token", "")


def test_rancher_scenario_is_validated_with_the_key_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rancher": {"reject_chart": {"harbor": {"status": 503, "message": "x"}}}}))
    with pytest.raises(ScenarioError, match=r"rancher\.reject_chart\.harbor"):
        World(bad)
    bad.write_text(yaml.safe_dump({"rancher": {"install_errors": {"harbor": -1}}}))
    with pytest.raises(ScenarioError, match=r"rancher\.install_errors\.harbor"):
        World(bad)
    bad.write_text(yaml.safe_dump({"rancher": {"fail": {}}}))
    with pytest.raises(ScenarioError, match="rancher: unknown key"):
        World(bad)


async def test_import_and_install_over_real_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same activities and stand-ins served by uvicorn: manifestUrl and apiEndpoint carry real addresses."""
    monkeypatch.setenv("FERRY_TEST_TOKEN_RANCHER", RANCHER_TOKEN)
    world = World(tokens={"rancher": RANCHER_TOKEN, "kube": KUBE_TOKEN}, speed=0.01)
    apps = build_apps(world)
    ready: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve({n: apps[n] for n in ("rancher", "kube")}, {"rancher": 0, "kube": 0}, on_ready=ready.set_result)
    )
    try:
        ports = await asyncio.wait_for(ready, 10)
        data = sample_config(poll_seconds=0.005)
        data["sites"]["onprem"]["rancher"] = {
            "url": f"http://127.0.0.1:{ports['rancher']}",
            "credential": {"env": "FERRY_TEST_TOKEN_RANCHER"},
        }
        activities = RancherActivities.from_config(parse_config(data), "onprem")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {"users": [{"name": "u", "user": {"token": KUBE_TOKEN}}], "clusters": [{"name": "c", "cluster": {}}]}
            )
        )
        api = f"http://127.0.0.1:{ports['kube']}/clusters/cloud-main"
        cluster = await activities.import_cluster(
            RancherImportInput("onprem", ClusterInfo("cloud-main", api, str(kubeconfig)))
        )
        assert cluster.state == "active" and world.rancher.clusters[cluster.id]["apiEndpoint"] == api
        token = next(iter(world.rancher.tokens.values()))
        assert token["manifestUrl"].startswith(f"http://127.0.0.1:{ports['rancher']}/v3/import/")
        result = await activities.install_app(RancherAppInput("onprem", cluster.id, HARBOR))
        assert result.action == "installed"
        await activities.aclose()
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
