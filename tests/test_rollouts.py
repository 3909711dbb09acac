"""Argo Rollouts: the stand-in's controller, its Kubernetes API, and the rollouts activities over it.

The GitOps repo is the real template (infra/gitops), so production's Rollouts are the ones a team would run:
api is a canary (setWeight 20, pause, analysis, setWeight 50, pause 10s, setWeight 100), web a blue-green with
manual promotion. State-machine tests drive a fake clock; activity tests run on the real clock, fast.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
import yaml
from httpfakes import credential_fixture
from sample import sample_config
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import errors
from activities.gitops import pin_images
from activities.registry import SiteActivities
from activities.rollouts import RolloutsActivities
from common.config import ConfigError, Endpoint, parse_config
from common.plan import build_plan
from sandbox.repos import create_repos
from sandbox.standins import ScenarioError, World, build_apps
from sandbox.standins.argocd import ROLLOUT_SECONDS, SYNC_SECONDS
from sandbox.standins.rollouts import ANALYSIS_SECONDS, OBSERVE_SECONDS, REACT_SECONDS, RolloutSim
from sandbox.standins.world import parse_scenario
from workflows.types import ImagePin, RolloutPromoteInput, RolloutRef, RolloutState, RolloutWaitInput

ROOT = Path(__file__).resolve().parent.parent
NS = "shop-production"
APP = "shop-production"
CLOUD = "127.0.0.1:18102"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
TOKEN = "kube-token-7f3a"
ENV = "FERRY_TEST_KUBE_TOKEN_ROLLOUTS"
SPEED = 0.02  # real-clock tests: a canary step takes 6 ms, the 10 s pause 0.2 s

token = credential_fixture(ENV, TOKEN)


def image(service: str, digest: str) -> str:
    return f"{CLOUD}/ferry/{service}@{digest}"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Cloud:
    """The cloud site: a World, its apps, the GitOps repo from infra/gitops and the Argo CD app of production."""

    def __init__(self, tmp: Path, scenario: dict | None = None, *, fake_clock: bool = True) -> None:
        # The template repo is made once per module (GITOPS_TEMPLATE); each test works on its own copy.
        self.gitops = tmp / "gitops.git"
        shutil.copytree(GITOPS_TEMPLATE, self.gitops)
        self.work = tmp / "gitops-work"
        git.Repo.clone_from(str(self.gitops), self.work).close()
        self.scenario_path = tmp / "scenario.yaml"
        self.scenario_path.write_text(yaml.safe_dump(scenario or {}))
        self.clock = Clock() if fake_clock else None
        self.world = World(
            self.scenario_path,
            tokens={"kube": TOKEN},
            speed=1.0 if fake_clock else SPEED,
            seed=3,
            clock=self.clock or time.time,
        )
        self.world.set_registry_host("cloud", CLOUD)
        self.apps = build_apps(self.world)
        self.argo = self.world.argocd["cloud"]
        self.app = self.argo.create_app(APP, str(self.gitops), "production", namespace=NS)

    def set_scenario(self, data: dict) -> None:
        self.scenario_path.write_text(yaml.safe_dump(data))
        self.world._scenario_stamp = None  # re-read now, whatever the file system's mtime resolution

    def advance(self, seconds: float) -> None:
        """Move the fake clock and apply what fell due."""
        assert self.clock is not None
        self.clock.now += seconds
        self.world.tick()

    def pin(self, **digests: str) -> str:
        """A GitOps commit pinning production's images (as gitops.move writes them); the digests exist in
        Harbor-Cloud, so nothing is Degraded for a missing image."""
        file = self.work / "production" / "kustomization.yaml"
        pins = [ImagePin(name=s, new_name=f"{CLOUD}/ferry/{s}", digest=d) for s, d in digests.items()]
        for service, digest in digests.items():
            self.world.harbor["cloud"].push("ferry", service, "", digest)
        new = pin_images(file.read_text(), pins, "production")
        assert new is not None
        file.write_text(new)
        repo = git.Repo(self.work)
        repo.git.add("-A")
        repo.git(c=["user.name=t", "user.email=t@example.com"]).commit("-q", "-m", "production: pin")
        repo.git.push("-q", "origin", "HEAD:main")
        return repo.head.commit.hexsha

    async def sync(self, revision: str = "main") -> None:
        """Argo CD syncs production to `revision`, until the operation finished."""
        await self.argo.sync(self.app, revision)
        if self.clock is not None:
            self.advance(SYNC_SECONDS)
        while self.app.running:  # real clock: as Argo CD's own sync would be awaited (argocd.sync)
            await asyncio.sleep(0.005)
            self.world.tick()
        assert self.app.op_state["phase"] == "Succeeded", self.app.op_state

    def rollout(self, name: str) -> RolloutSim:
        sim = self.world.rollouts.get(("cloud", NS, name))
        assert sim is not None, name
        return sim

    def health(self) -> dict[str, str]:
        return self.argo.health(self.app)

    def deployment(self, name: str) -> dict[str, Any]:
        obj = self.world.kube.cluster("cloud").get("apps/v1", "deployments", NS, name)
        assert obj is not None, name
        return obj

    def kube(self, transport: httpx.AsyncBaseTransport | None = None, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=transport or httpx.ASGITransport(app=self.apps["kube"]),
            base_url="http://kube.test/clusters/cloud",
            headers={"Authorization": f"Bearer {TOKEN}", **headers},
        )

    def activities(self, transport: httpx.AsyncBaseTransport | None = None) -> RolloutsActivities:
        endpoint = Endpoint(url="http://kube.test/clusters/cloud", credential={"env": ENV})
        client = RolloutsActivities.build_client(
            endpoint, transport or httpx.ASGITransport(app=self.apps["kube"]), "cloud"
        )
        return RolloutsActivities({"cloud": client}, poll_seconds=0.005)


GITOPS_TEMPLATE = Path()


@pytest.fixture(scope="module", autouse=True)
def gitops_template(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The GitOps repo of infra/gitops, as `ferry sandbox up` makes it, once for the module."""
    global GITOPS_TEMPLATE
    tmp = tmp_path_factory.mktemp("template")
    _, GITOPS_TEMPLATE = create_repos(tmp, ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app")


def ref(name: str) -> RolloutRef:
    return RolloutRef(instance="cloud", namespace=NS, name=name)


async def started(tmp_path: Path, scenario: dict | None = None, *, fake_clock: bool = True) -> Cloud:
    """Production synced once at D1 (a first sync: the Rollouts come up Healthy without any step)."""
    cloud = Cloud(tmp_path, scenario, fake_clock=fake_clock)
    await cloud.sync(cloud.pin(api=D1, web=D1))
    if fake_clock:
        cloud.advance(max(OBSERVE_SECONDS, ROLLOUT_SECONDS))
    return cloud


def run_until(cloud: Cloud, name: str, done: Callable[[dict[str, Any]], bool], limit: float = 30.0) -> list[str]:
    """Advance the fake clock in small steps until `done(status)`; the (phase, step) seen on the way."""
    seen: list[str] = []
    waited = 0.0
    while True:
        status = cloud.rollout(name).status
        mark = f"{status.get('phase')}@{status.get('currentStepIndex')}"
        if not seen or seen[-1] != mark:
            seen.append(mark)
        if done(status):
            return seen
        assert waited < limit, f"{name} never got there: {seen}"
        cloud.advance(0.05)
        waited += 0.05


def paused(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Paused"


def healthy(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Healthy"


# --- the GitOps template ---


async def test_first_sync_renders_production_and_creates_healthy_rollouts_without_steps(tmp_path: Path) -> None:
    cloud = await started(tmp_path)
    api, web = cloud.rollout("api"), cloud.rollout("web")
    # Rendered like kustomize: the overlay's namespace and image pins reach the Deployments the Rollouts use.
    assert cloud.deployment("api")["spec"]["template"]["spec"]["containers"][0]["image"] == image("api", D1)
    assert cloud.deployment("web")["metadata"]["namespace"] == NS
    assert cloud.world.kube.cluster("cloud").get("apps/v1", "deployments", NS, "worker") is None  # no Rollout
    assert api.spec["workloadRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert [next(iter(s)) for s in api.steps] == ["setWeight", "pause", "analysis", "setWeight", "pause", "setWeight"]
    assert web.strategy == "blueGreen"
    # A new Rollout has nothing to roll from: upstream makes the first ReplicaSet stable at once.
    for sim in (api, web):
        assert sim.status["phase"] == "Healthy"
        assert sim.status["stableRS"] == sim.status["currentPodHash"]
    assert api.status["currentStepIndex"] == len(api.steps)
    assert web.status["blueGreen"]["activeSelector"] == web.status["currentPodHash"]
    assert cloud.health() == {"status": "Healthy"}


def test_scenario_rollouts_key_is_validated() -> None:
    scenario = parse_scenario({"rollouts": {"api": {"fail_at_step": 2}, "web": {"fail": True}}})
    assert scenario.rollout_failure("api") == {"fail_at_step": 2}
    assert scenario.rollout_failure("billing") is None
    for bad, key in (
        ({"api": {"fail_at_step": -1}}, "rollouts.api.fail_at_step"),
        ({"api": {"fail": "yes"}}, "rollouts.api.fail"),
        ({"api": {"explode": True}}, "rollouts.api"),
        ({"api": "fail"}, "rollouts.api"),
    ):
        with pytest.raises(ScenarioError, match=key):
            parse_scenario({"rollouts": bad})


# --- the controller (fake clock) ---


async def test_canary_walks_every_step_with_a_promotion_and_a_timed_pause(tmp_path: Path) -> None:
    cloud = await started(tmp_path)
    api = cloud.rollout("api")
    stable = api.status["currentPodHash"]
    await cloud.sync(cloud.pin(api=D2))

    # The Deployment (the workload) has a new generation the controller has not observed yet: status is stale.
    deployment_generation = cloud.deployment("api")["metadata"]["generation"]
    assert deployment_generation == 2
    assert api.status["workloadObservedGeneration"] == "1" and api.status["phase"] == "Healthy"
    assert cloud.world.rollouts.health(("cloud", NS, "api")) == {
        "status": "Progressing",
        "message": "Rollout api: Waiting for rollout spec update to be observed",
    }
    assert api.obj["metadata"]["generation"] == 1  # with a workloadRef the Rollout's own spec did not change

    seen = run_until(cloud, "api", paused)
    assert seen == ["Healthy@6", "Progressing@0", "Progressing@1", "Paused@1"]
    assert api.status["workloadObservedGeneration"] == "2" and api.status["currentPodHash"] != stable
    assert [c["reason"] for c in api.status["pauseConditions"]] == ["CanaryPauseStep"]
    assert api.status["controllerPause"] is True and api.weight == 20
    assert cloud.health() == {"status": "Suspended", "message": "Rollout api: CanaryPauseStep"}
    cloud.advance(60)
    assert api.status["phase"] == "Paused" and api.status["currentStepIndex"] == 1  # pause {} waits for a promote

    api.patch({"status": {"pauseConditions": None}}, subresource=True)  # kubectl argo rollouts promote
    assert api.status["phase"] == "Paused"  # until the controller reacts
    seen = run_until(cloud, "api", lambda s: paused(s) and s["currentStepIndex"] == 4)
    assert seen == ["Paused@1", "Progressing@2", "Progressing@3", "Progressing@4", "Paused@4"]
    assert api.status["canary"]["currentStepAnalysisRunStatus"]["status"] == "Successful"
    assert api.weight == 50

    cloud.advance(9.9)  # pause {duration: 10s}
    assert api.status["phase"] == "Paused"
    seen = run_until(cloud, "api", healthy)
    assert seen == ["Paused@4", "Progressing@5", "Progressing@6", "Healthy@6"]
    assert api.status["stableRS"] == api.status["currentPodHash"] != stable
    assert api.weight == 100 and cloud.health() == {"status": "Healthy"}


async def test_failing_analysis_aborts_and_a_revert_to_stable_is_healthy_at_once(tmp_path: Path) -> None:
    cloud = await started(tmp_path, {"rollouts": {"api": {"fail": True}}})
    api = cloud.rollout("api")
    stable = api.status["stableRS"]
    await cloud.sync(cloud.pin(api=D2))
    run_until(cloud, "api", paused)
    api.patch({"status": {"pauseConditions": None}}, subresource=True)
    seen = run_until(cloud, "api", lambda s: s.get("phase") == "Degraded")
    assert seen == ["Paused@1", "Progressing@2", "Degraded@0"]  # aborted during the analysis step
    status = api.status
    assert status["abort"] is True and status["abortedAt"]
    assert status["message"] == (
        'RolloutAborted: Rollout aborted update to revision 2: Metric "success-rate" assessed Failed due to '
        "failed (1) > failureLimit (0)"
    )
    assert status["stableRS"] == stable and status["currentPodHash"] != stable
    assert cloud.health()["status"] == "Degraded" and "RolloutAborted" in cloud.health()["message"]

    # The GitOps revert: the template is the stable one again -> no steps, abort cleared, Healthy.
    await cloud.sync(cloud.pin(api=D1))
    assert api.status["phase"] == "Degraded"  # until the controller sees it
    cloud.advance(OBSERVE_SECONDS)
    assert api.status["phase"] == "Healthy" and api.status["abort"] is False and "abortedAt" not in api.status
    assert api.status["currentPodHash"] == api.status["stableRS"] == stable
    cloud.advance(ROLLOUT_SECONDS)  # Argo CD's own "rollout in progress" window after any sync
    assert cloud.health() == {"status": "Healthy"}


async def test_fail_at_step_aborts_there_without_pausing(tmp_path: Path) -> None:
    cloud = await started(tmp_path, {"rollouts": {"api": {"fail_at_step": 0}}})
    await cloud.sync(cloud.pin(api=D2))
    seen = run_until(cloud, "api", lambda s: s.get("phase") == "Degraded")
    assert seen == ["Healthy@6", "Progressing@0", "Degraded@0"]
    assert 'Metric "analysis" assessed Failed' in cloud.rollout("api").status["message"]
    # A scenario fixed later does not resurrect it: an aborted Rollout waits for a new template.
    cloud.set_scenario({})
    cloud.advance(5)
    assert cloud.rollout("api").status["phase"] == "Degraded"


async def test_blue_green_waits_for_its_promotion_then_switches_the_active_service(tmp_path: Path) -> None:
    cloud = await started(tmp_path)
    web = cloud.rollout("web")
    active = web.status["blueGreen"]["activeSelector"]
    await cloud.sync(cloud.pin(web=D2))
    run_until(cloud, "web", paused)
    bg = web.status["blueGreen"]
    assert bg["previewSelector"] == web.status["currentPodHash"] != active and bg["activeSelector"] == active
    assert [c["reason"] for c in web.status["pauseConditions"]] == ["BlueGreenPause"]
    cloud.advance(ANALYSIS_SECONDS)
    assert web.status["blueGreen"]["prePromotionAnalysisRunStatus"]["status"] == "Successful"
    assert web.status["phase"] == "Paused" and cloud.health()["status"] == "Suspended"

    web.patch({"status": {"pauseConditions": None}}, subresource=True)
    run_until(cloud, "web", healthy)
    assert web.status["blueGreen"]["activeSelector"] == web.status["currentPodHash"] == web.status["stableRS"]
    assert cloud.health() == {"status": "Healthy"}


async def test_blue_green_failure_keeps_the_active_version(tmp_path: Path) -> None:
    cloud = await started(tmp_path, {"rollouts": {"web": {"fail": True}}})
    web = cloud.rollout("web")
    active = web.status["blueGreen"]["activeSelector"]
    await cloud.sync(cloud.pin(web=D2))
    run_until(cloud, "web", lambda s: s.get("phase") == "Degraded")
    assert web.status["abort"] is True and web.status["blueGreen"]["activeSelector"] == active
    assert "RolloutAborted" in web.status["message"]


async def test_a_rollout_with_its_own_template_shows_the_observed_generation_lag(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path)
    manifest = yaml.safe_load((ROOT / "infra/gitops/production/rollouts/api-rollout.yaml").read_text())
    del manifest["spec"]["workloadRef"]
    manifest["spec"]["template"] = {"spec": {"containers": [{"name": "api", "image": image("api", D1)}]}}
    world, now = cloud.world, cloud.clock
    assert now is not None
    world.rollouts.deploy("cloud", NS, [manifest], now.now)
    cloud.advance(OBSERVE_SECONDS)
    sim = cloud.rollout("api")
    assert (sim.obj["metadata"]["generation"], sim.status["observedGeneration"]) == (1, "1")

    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = image("api", D2)
    world.rollouts.deploy("cloud", NS, [manifest], now.now)
    assert (sim.obj["metadata"]["generation"], sim.status["observedGeneration"]) == (2, "1")
    assert sim.status["phase"] == "Healthy"  # ...of generation 1: a client must not believe it
    cloud.advance(OBSERVE_SECONDS)
    assert sim.status["observedGeneration"] == "2" and sim.status["phase"] == "Progressing"
    world.rollouts.deploy("cloud", NS, [manifest], now.now)  # the same manifest again: no new generation
    assert sim.obj["metadata"]["generation"] == 2


# --- the Kubernetes API ---


async def test_http_get_merge_patches_and_errors(tmp_path: Path) -> None:
    cloud = await started(tmp_path)
    path = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/api"
    merge = {"Content-Type": "application/merge-patch+json"}
    async with cloud.kube() as kube:
        got = (await kube.get(path)).json()
        assert got["kind"] == "Rollout" and got["status"]["phase"] == "Healthy"
        assert (await kube.get(path + "/status")).json() == got

        # The main resource: spec and metadata change (a new generation), status is ignored.
        patched = await kube.patch(
            path, content=json.dumps({"spec": {"paused": True}, "status": {"abort": True}}), headers=merge
        )
        assert patched.status_code == 200
        body = patched.json()
        assert body["spec"]["paused"] is True and body["metadata"]["generation"] == 2
        assert body["status"]["abort"] is False and body["status"]["observedGeneration"] == "1"
        cloud.advance(REACT_SECONDS)
        body = (await kube.get(path)).json()
        assert body["status"]["phase"] == "Paused" and body["status"]["observedGeneration"] == "2"

        # The status subresource: only status, merged key by key; null deletes.
        cloud.rollout("api").status["pauseConditions"] = [{"reason": "CanaryPauseStep", "startTime": "x"}]
        patched = await kube.patch(
            path + "/status",
            content=json.dumps({"spec": {"paused": False}, "status": {"pauseConditions": None, "currentStepIndex": 6}}),
            headers=merge,
        )
        body = patched.json()
        assert "pauseConditions" not in body["status"] and body["status"]["stableRS"]
        assert body["spec"]["paused"] is True and body["metadata"]["generation"] == 2

        missing = await kube.get(f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/nope")
        assert missing.status_code == 404
        assert missing.json() | {"metadata": {}} == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'rollouts.argoproj.io "nope" not found',
            "reason": "NotFound",
            "code": 404,
        }
        other_ns = await kube.patch(path.replace(NS, "shop-staging") + "/status", content="{}", headers=merge)
        assert other_ns.status_code == 404
        apply = await kube.patch(path, content="{}", headers={"Content-Type": "application/apply-patch+yaml"})
        assert apply.status_code == 415 and apply.json()["reason"] == "UnsupportedMediaType"
        invalid = await kube.patch(path + "/status", content='{"status": {"currentStepIndex": -1}}', headers=merge)
        assert invalid.status_code == 422 and "currentStepIndex" in invalid.json()["message"]
        not_json = await kube.patch(path, content="[1]", headers=merge)
        assert not_json.status_code == 400
    async with cloud.kube(Authorization="Bearer wrong") as kube:
        assert (await kube.get(path)).status_code == 401


# --- the activities over the stand-in (real clock) ---


class Recorder(httpx.AsyncBaseTransport):
    """The kube stand-in, recording each request and the status it answered with."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.log: list[tuple[str, str, dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        parsed = json.loads(body) if body else {}
        self.log.append((request.method, request.url.path, parsed if isinstance(parsed, dict) else {}))
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    def patches(self, suffix: str = "") -> list[str]:
        return [p for m, p, _ in self.log if m == "PATCH" and p.endswith(suffix)]


async def on_fake_clock(cloud: Cloud, recorder: Recorder, wait: Coroutine[Any, Any, RolloutState]) -> RolloutState:
    """Run a `rollouts.wait` while moving the fake clock, a small step at a time and only once the wait has read
    the Rollout twice since the last step: it sees every state the controller passes through, however loaded
    the machine (a real clock let a 10 ms Paused window slip by unseen)."""
    task = asyncio.ensure_future(wait)

    def reads() -> int:
        return sum(1 for m, p, _ in recorder.log if m == "GET" and "/rollouts/" in p)

    for _ in range(1200):  # a minute of controller time
        seen = reads()
        while reads() < seen + 2 and not task.done():
            await asyncio.sleep(0.001)
        if task.done():
            return task.result()
        cloud.advance(0.05)
    task.cancel()
    raise AssertionError(f"the wait did not end within a minute of controller time: {cloud.rollout('api').status}")


async def test_wait_and_promote_drive_the_canary_to_healthy_and_wait_twice_agrees(tmp_path: Path) -> None:
    cloud = await started(tmp_path, fake_clock=False)
    await cloud.sync(cloud.pin(api=D2))
    acts = cloud.activities()
    wanted = [image("api", D2)]
    after, paused_at = -1, []
    for _ in range(10):
        state = await asyncio.wait_for(acts.wait(RolloutWaitInput(ref("api"), wanted, after_step=after)), 10)
        assert state.images == wanted and not state.aborted
        if state.phase == "Healthy":
            break
        assert state.phase == "Paused" and state.pause_reasons == ["CanaryPauseStep"]
        paused_at.append((state.step, state.step_kind, state.weight))
        promoted = await acts.promote(RolloutPromoteInput(ref("api"), step=state.step))
        assert promoted.step == state.step  # answered before the controller moved on
        after = state.step
    assert paused_at[0] == (1, "pause", 20)
    assert set(paused_at[1:]) <= {(4, "pause 10s", 50)}  # the timed pause resumes by itself unless seen first
    assert state.promoted and state.weight == 100 and state.step == state.steps == 6 and state.step_kind == ""
    again = await acts.wait(RolloutWaitInput(ref("api"), wanted, after_step=after))
    assert again == state
    await acts.aclose()


async def test_wait_gives_up_when_another_change_replaced_the_revision(tmp_path: Path) -> None:
    """Production moved on to D3 (a newer change) while a release waited for D2: the wait ends, non-retryable,
    instead of waiting for a revision that will never run; a template Argo CD has not applied yet still waits."""
    cloud = await started(tmp_path, fake_clock=False)
    await cloud.sync(cloud.pin(api=D3))
    acts = cloud.activities()
    acts.replaced_after_seconds = 0.05
    with pytest.raises(ApplicationError) as replaced:
        await asyncio.wait_for(acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)])), 10)
    assert replaced.value.type == errors.ROLLOUT_REPLACED and replaced.value.non_retryable
    assert image("api", D3) in str(replaced.value) and "another change replaced" in str(replaced.value)
    await acts.aclose()


async def test_promote_twice_promotes_once(tmp_path: Path) -> None:
    cloud = await started(tmp_path, fake_clock=False)
    await cloud.sync(cloud.pin(api=D2))
    recorder = Recorder(cloud.apps["kube"])
    acts = cloud.activities(recorder)
    state = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)]))
    assert (state.phase, state.step) == ("Paused", 1)
    first = await acts.promote(RolloutPromoteInput(ref("api"), step=1))
    second = await acts.promote(RolloutPromoteInput(ref("api"), step=1))
    assert recorder.patches() == [f"/clusters/cloud/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/api/status"]
    assert first.step == 1 and first.pause_reasons == []
    # The controller runs in real time here and may have moved on before the second read: past step 1 is fine.
    assert second.step > 1 or second.pause_reasons == []
    sent = next(b for m, _, b in recorder.log if m == "PATCH")
    assert "pauseConditions" not in sent["status"]  # what the patch left: the conditions are gone

    state = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)], after_step=1))
    assert (state.phase, state.step) == ("Paused", 4)  # one step promoted: the analysis ran, no pause skipped
    late = await acts.promote(RolloutPromoteInput(ref("api"), step=1))  # a retry of the old promote
    assert late.step >= 4 and len(recorder.patches()) == 1  # the 10 s pause may have ended by now: still no patch
    done = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)], after_step=4))
    assert done.phase == "Healthy" and done.promoted

    # A full promotion, from an indefinite pause so that the controller cannot move on by itself meanwhile.
    await cloud.sync(cloud.pin(api=D3))
    state = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D3)]))
    assert (state.phase, state.step) == ("Paused", 1)
    full = await acts.promote(RolloutPromoteInput(ref("api"), step=1, full=True))
    await acts.promote(RolloutPromoteInput(ref("api"), step=1, full=True))
    assert len(recorder.patches()) == 2 and not full.promoted  # promoteFull sent once; the controller finishes
    done = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D3)], after_step=1))
    assert done.phase == "Healthy" and done.promoted and done.images == [image("api", D3)]
    await acts.aclose()


async def test_wait_returns_degraded_on_a_failed_analysis_and_abort_is_idempotent(tmp_path: Path) -> None:
    cloud = await started(tmp_path, {"rollouts": {"web": {"fail": True}}})
    await cloud.sync(cloud.pin(api=D2, web=D2))
    recorder = Recorder(cloud.apps["kube"])
    acts = cloud.activities(recorder)

    # Blue-green pauses for its promotion while the pre-promotion analysis runs; then the analysis fails.
    web = await on_fake_clock(cloud, recorder, acts.wait(RolloutWaitInput(ref("web"), [image("web", D2)])))
    assert (web.phase, web.step, web.step_kind, web.pause_reasons) == ("Paused", 0, "pause", ["BlueGreenPause"])
    web = await on_fake_clock(
        cloud, recorder, acts.wait(RolloutWaitInput(ref("web"), [image("web", D2)], after_step=0))
    )
    assert web.phase == "Degraded" and web.aborted and web.strategy == "blueGreen" and web.weight == 0
    assert 'Metric "success-rate" assessed Failed' in web.message
    assert (await acts.abort(ref("web"))).aborted and recorder.patches() == []  # already aborted: no patch

    api = await on_fake_clock(cloud, recorder, acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)])))
    assert (api.phase, api.step) == ("Paused", 1)
    first = await acts.abort(ref("api"))
    second = await acts.abort(ref("api"))
    assert first.aborted and second.aborted and len(recorder.patches("/status")) == 1
    cloud.advance(REACT_SECONDS)  # the controller reacts to the abort: Degraded, the stable ReplicaSet serves all
    aborted = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)], after_step=1))
    assert aborted.phase == "Degraded" and aborted.message.startswith("RolloutAborted: Rollout aborted update")
    assert (await acts.promote(RolloutPromoteInput(ref("api"), step=1))).aborted  # never promotes an abort
    assert len(recorder.patches()) == 1

    # The revert: back on the stable template, the next wait sees it Healthy and promoted, no abort left.
    await cloud.sync(cloud.pin(api=D1))
    restored = await on_fake_clock(cloud, recorder, acts.wait(RolloutWaitInput(ref("api"), [image("api", D1)])))
    assert restored.phase == "Healthy" and restored.promoted and not restored.aborted

    # `promote --full` is the one promotion an abort takes: the controller resumes it, skipping every step.
    await acts.promote(RolloutPromoteInput(ref("web"), step=0, full=True))
    await acts.promote(RolloutPromoteInput(ref("web"), step=0, full=True))
    assert len(recorder.patches()) == 2
    web = await on_fake_clock(cloud, recorder, acts.wait(RolloutWaitInput(ref("web"), [image("web", D2)])))
    assert web.phase == "Healthy" and web.promoted and not web.aborted and web.weight == 100
    await acts.aclose()


async def test_wait_ignores_a_status_the_controller_has_not_caught_up_with(tmp_path: Path) -> None:
    cloud = await started(tmp_path)  # the fake clock: the controller moves only when the test moves time
    recorder = Recorder(cloud.apps["kube"])
    acts = cloud.activities(recorder)
    await cloud.sync(cloud.pin(api=D2))  # Argo CD applied the new Deployment; the controller has not observed it
    waiting = asyncio.create_task(acts.wait(RolloutWaitInput(ref("api"), [image("api", D2)])))

    def reads(kind: str) -> list[dict[str, Any]]:
        return [b for m, p, b in recorder.log if m == "GET" and f"/{kind}/" in p]

    while len(reads("rollouts")) < 5 and not waiting.done():
        await asyncio.sleep(0.005)
    assert not waiting.done(), waiting.result()
    # What it has read so far: the previous revision's Healthy, while the controller had not observed the new
    # Deployment generation. None of it answered the wait.
    stale = list(zip(reads("rollouts"), reads("deployments"), strict=False))
    assert all(r["status"]["phase"] == "Healthy" for r, _ in stale)
    assert all(r["status"].get("workloadObservedGeneration") != str(d["metadata"]["generation"]) for r, d in stale)
    assert all(d["spec"]["template"]["spec"]["containers"][0]["image"] == image("api", D2) for _, d in stale)

    for _ in range(200):
        if waiting.done():
            break
        cloud.advance(0.05)
        await asyncio.sleep(0.01)
    state = await asyncio.wait_for(waiting, 5)
    assert (state.phase, state.step, state.images) == ("Paused", 1, [image("api", D2)])
    await acts.aclose()


def mock_rollouts(responses: list[dict[str, Any]], log: list[tuple[str, str, Any]]) -> httpx.MockTransport:
    """A cluster answering GETs with `responses` in turn (the last one repeats) and /status PATCHes with 404."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        log.append((request.method, request.url.path, body))
        if request.method == "PATCH":
            if request.url.path.endswith("/status"):
                return httpx.Response(404, json={"kind": "Status", "reason": "NotFound", "code": 404})
            return httpx.Response(200, json=responses[-1])
        return httpx.Response(200, json=responses.pop(0) if len(responses) > 1 else responses[0])

    return httpx.MockTransport(handler)


def own_template_rollout(generation: int, observed: int, phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "api", "generation": generation},
        "spec": {
            "template": {"spec": {"containers": [{"name": "api", "image": image("api", D3)}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]}},
        },
        "status": {"observedGeneration": str(observed), "phase": phase, "currentPodHash": "b", **status},
    }


async def test_stale_generation_is_ignored_and_status_patches_fall_back_to_the_main_resource() -> None:
    log: list[tuple[str, str, Any]] = []
    responses = [
        own_template_rollout(2, 1, "Healthy", stableRS="b"),  # generation 1's Healthy: not ours
        own_template_rollout(2, 2, "Paused", stableRS="a", currentStepIndex=1, pauseConditions=[{"reason": "x"}]),
    ]
    endpoint = Endpoint(url="http://k8s.test", credential={"env": ENV})
    client = RolloutsActivities.build_client(endpoint, mock_rollouts(responses, log), "cloud")
    acts = RolloutsActivities({"cloud": client}, poll_seconds=0.001)
    state = await acts.wait(RolloutWaitInput(ref("api"), [image("api", D3)]))
    assert (state.phase, state.step, state.step_kind, state.weight) == ("Paused", 1, "pause", 20)
    assert len([m for m, _, _ in log if m == "GET"]) == 2

    await acts.promote(RolloutPromoteInput(ref("api"), step=1))
    patches = [(p.rsplit("/", 1)[-1], b) for m, p, b in log if m == "PATCH"]
    # As the kubectl plugin: the status subresource first, then (NotFound: an old controller) the object.
    assert patches == [
        ("status", {"status": {"pauseConditions": None}}),
        ("api", {"status": {"pauseConditions": None}}),
    ]
    await acts.aclose()


async def test_errors_are_classified_and_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = await started(tmp_path, fake_clock=False)
    acts = cloud.activities()
    with pytest.raises(ApplicationError) as info:
        await acts.wait(RolloutWaitInput(ref("nope"), []))
    assert info.value.type == errors.NOT_FOUND and info.value.non_retryable
    assert "shop-production/nope" in info.value.message and "services.*.rollouts" in info.value.message
    monkeypatch.setenv(ENV, "stale-token")
    with pytest.raises(ApplicationError) as info:
        await acts.abort(ref("api"))
    assert info.value.type == errors.AUTH_FAILED and "stale-token" not in info.value.message
    with pytest.raises(ApplicationError) as info:
        await acts.promote(RolloutPromoteInput(RolloutRef("onprem", NS, "api"), step=1))
    assert info.value.type == errors.NOT_CONFIGURED and "sites.onprem.kubernetes" in info.value.message
    await acts.aclose()


# --- configuration ---


def test_config_plan_and_registry() -> None:
    raw = sample_config()
    cfg = parse_config(raw)
    production = next(e for e in build_plan(cfg).environments if e.name == "production")
    assert production.rollouts == {"api": "api", "web": "web"} and production.rollout_namespace == NS
    assert (production.promotion, production.soak_seconds, production.auto_rollback) == ("auto", 3.0, True)
    staging = next(e for e in build_plan(cfg).environments if e.name == "staging")
    assert staging.rollouts == {} and staging.rollout_namespace == ""

    names = {
        site: {activity._Definition.must_from_callable(f).name for f in SiteActivities.from_config(cfg, site).functions}
        for site in ("onprem", "cloud")
    }
    assert {"rollouts.wait", "rollouts.promote", "rollouts.abort"} <= names["cloud"]
    assert not any(n.startswith("rollouts.") for n in names["onprem"])

    def refused(change: Callable[[dict[str, Any]], None]) -> str:
        data = sample_config()
        change(data)
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        return str(info.value)

    def no_namespace(d: dict[str, Any]) -> None:
        d["environments"]["production"]["rollout"].pop("namespace")

    def no_cluster(d: dict[str, Any]) -> None:
        d["sites"]["cloud"].pop("kubernetes")

    def unknown_env(d: dict[str, Any]) -> None:
        d["services"]["api"]["rollouts"]["prod"] = "api"

    assert "services.api.rollouts.production: environment 'production' has no rollout.namespace" in refused(
        no_namespace
    )
    assert "services.web.rollouts.production: sites.cloud.kubernetes is not configured" in refused(no_cluster)
    assert "services.api.rollouts.prod: unknown environment 'prod'" in refused(unknown_env)
    assert "environments.production.rollout.promotion" in refused(
        lambda d: d["environments"]["production"]["rollout"].update(promotion="sometimes")
    )
    plain = parse_config(sample_config() | {})
    assert isinstance(plain.sites["cloud"].kubernetes, Endpoint)


def test_rollout_state_is_a_plain_payload() -> None:
    # What the workflow receives must survive Temporal's JSON converter unchanged.
    from temporalio.converter import DataConverter

    state = RolloutState(name="api", phase="Paused", step=1, steps=6, step_kind="pause", weight=20)
    payload = DataConverter.default.payload_converter.to_payloads([state])
    assert DataConverter.default.payload_converter.from_payloads(payload, [RolloutState]) == [state]
