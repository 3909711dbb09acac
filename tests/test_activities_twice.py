"""Every activity a worker registers, run twice against the sandbox stand-ins (in-process, same code as over
HTTP): the second run returns the same answer and leaves no second side effect anywhere.

The activities come from `SiteActivities.from_config`, exactly as the workers build them, with HTTP routed to
the stand-in apps by host:port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from signing import proof

from activities.registry import SiteActivities
from common.config import parse_config
from common.plan import build_plan
from sandbox.config import STANDINS, default_ports
from sandbox.repos import commit_change, create_repos, log
from sandbox.standins import World, build_apps
from workflows.approval_types import PolicyRequest, VerifyInput
from workflows.types import (
    AnalyzeChangesInput,
    ArgoSyncInput,
    ArtifactRef,
    E2EInput,
    GitOpsMoveInput,
    ImagePin,
    PolicyCheckInput,
    PolicyCheckResult,
    QualityGateInput,
    RenderPipelineInput,
    ReplicationInput,
    RolloutPromoteInput,
    RolloutRef,
    RolloutWaitInput,
    ScanGateInput,
    TektonRunInput,
)

ROOT = Path(__file__).parent.parent
TOKENS = {name: f"token-{name}-b7e1" for name in STANDINS}


class Router(httpx.AsyncBaseTransport):
    """Send each request to the stand-in app that serves its host:port."""

    def __init__(self, apps: dict[str, Any], ports: dict[str, int]) -> None:
        self._by_port = {ports[name]: httpx.ASGITransport(app=apps[name]) for name in STANDINS}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._by_port[request.url.port].handle_async_request(request)


def by_name(site: SiteActivities) -> dict[str, Any]:
    return {fn.__temporal_activity_definition.name: fn for fn in site.functions}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from activities import http

    monkeypatch.setattr(http, "READ_BACKOFF_SECONDS", 0.0)
    for name, token in TOKENS.items():
        monkeypatch.setenv("FERRY_TEST_TOKEN_" + name.upper().replace("-", "_"), token)
    app_repo, gitops_repo = create_repos(
        tmp_path / "repos", ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app"
    )
    from sample import sample_config

    data = sample_config(app_repo=str(app_repo), gitops_repo=str(gitops_repo), poll_seconds=0.01)
    data["workdir"] = str(tmp_path / "work")
    cfg = parse_config(data)
    world = World(tokens=TOKENS, speed=0.01, seed=7)
    ports = default_ports()
    world.set_registry_host("onprem", f"127.0.0.1:{ports['harbor-onprem']}")
    world.set_registry_host("cloud", f"127.0.0.1:{ports['harbor-cloud']}")
    world.argocd["onprem"].create_app("shop-testbed", str(gitops_repo), "testbed")
    world.argocd["cloud"].create_app("shop-staging", str(gitops_repo), "staging")
    world.argocd["cloud"].create_app("shop-production", str(gitops_repo), "production")
    router = Router(build_apps(world), ports)
    onprem = SiteActivities.from_config(cfg, "onprem", transport=router)
    cloud = SiteActivities.from_config(cfg, "cloud", transport=router)
    return cfg, world, app_repo, gitops_repo, by_name(onprem), by_name(cloud)


async def test_every_activity_twice_same_answer_no_second_side_effect(setup) -> None:
    cfg, world, app_repo, gitops_repo, onprem, cloud = setup
    plan = build_plan(cfg)
    assert set(onprem) == {
        "changes.analyze",
        "pipeline.render",
        "gitops.move",
        "gitops.deployed",
        "gitops.state_at",  # twice: tests/test_gitops_state.py
        "tekton.run",
        "tekton.cancel",
        "sonarqube.quality_gate",
        "harbor.scan_gate",
        "harbor.replicate",
        "policy.check_image",
        "argocd.sync",
        "buildkite.e2e",
        "rancher.import_cluster",
        "rancher.install_app",
        "gitops.revert",  # twice: tests/test_gitops_revert.py
        "ferry.plan",
        "approvals.policy",
        "approvals.verify",
    }
    assert set(cloud) == {
        "harbor.confirm",
        "policy.check_image",
        "argocd.sync",
        "rancher.import_cluster",
        "rancher.install_app",
        "rollouts.wait",
        "rollouts.promote",
        "rollouts.abort",
    }

    async def twice(fn: Any, arg: Any) -> Any:
        first = await fn(arg)
        second = await fn(arg)
        assert first == second, fn.__temporal_activity_definition.name
        return first

    base = log(app_repo)[0][0]
    commit = commit_change(app_repo, {"services/api/handler.py": "X = 1\n"}, "api: change")
    changes = await twice(
        onprem["changes.analyze"],
        AnalyzeChangesInput(
            repo_url=str(app_repo),
            commit=commit,
            branch="main",
            default_branch="main",
            services=plan.services,
            base_commit=base,
        ),
    )
    assert changes.affected == ["api"]

    pipeline = await twice(
        onprem["pipeline.render"],
        RenderPipelineInput(
            release_id="shop-x",
            commit=commit,
            branch="main",
            affected=changes.affected,
            services=plan.services,
            registry=plan.onprem_registry,
            project="ferry",
            namespace="ci",
            pipeline="ferry-ci",
        ),
    )
    run_input = TektonRunInput(service="api", namespace="ci", manifest=pipeline.pipelineruns["api"])
    run = await twice(onprem["tekton.run"], run_input)
    assert world.tekton.created_count(pipeline.pipelineruns["api"]["metadata"]["name"]) == 1

    gate = await twice(
        onprem["sonarqube.quality_gate"],
        QualityGateInput(service="api", project_key="api", ce_task_id=run.results["SONAR_CE_TASK_ID"]),
    )
    assert gate.status == "OK"
    digest = run.results["IMAGE_DIGEST"]
    scan = await twice(onprem["harbor.scan_gate"], ScanGateInput(ArtifactRef("onprem", "ferry", "api", digest)))
    assert scan.severity in ("None", "Unknown", "Low", "Medium", "High")

    replication = ReplicationInput(
        instance="onprem", policy_id=1, release_id="shop-x", artifacts=[ArtifactRef("onprem", "ferry", "api", digest)]
    )
    first = await twice(onprem["harbor.replicate"], replication)
    assert first.status == "Succeed"
    assert len(world.harbor["onprem"].executions) == 1  # the second found the first's execution
    cloud_ref = ArtifactRef("cloud", "ferry", "api", digest)
    assert await twice(cloud["harbor.confirm"], cloud_ref) == cloud_ref
    policy = PolicyCheckInput(
        artifact=cloud_ref, environment="production", block_severity="High", allow_cves=[], today="2026-11-27"
    )
    assert await twice(cloud["policy.check_image"], policy) == PolicyCheckResult()
    assert list(world.harbor["cloud"].artifacts[("ferry", "api")]) == [digest]

    move_input = GitOpsMoveInput(
        repo_url=str(gitops_repo),
        branch="main",
        environment="testbed",
        path="testbed",
        images=[ImagePin(name="api", new_name=f"{plan.onprem_registry}/ferry/api", digest=digest)],
        release_id="shop-x",
        app_commit=commit,
    )
    commits_before = len(log(gitops_repo))
    first_move = await onprem["gitops.move"](move_input)
    second_move = await onprem["gitops.move"](move_input)
    assert first_move.changed and not second_move.changed and first_move.commit == second_move.commit
    assert len(log(gitops_repo)) == commits_before + 1

    synced = await twice(
        onprem["argocd.sync"], ArgoSyncInput(instance="onprem", app="shop-testbed", revision=first_move.commit)
    )
    assert synced.health == "Healthy" and any(digest in image for image in synced.images)
    assert len(world.argocd["onprem"].apps["shop-testbed"].history) == 1

    e2e = await twice(
        onprem["buildkite.e2e"],
        E2EInput(release_id="shop-x", commit=commit, branch="main", environment="testbed"),
    )
    assert e2e.state == "passed" and world.buildkite.created_count() == 1

    cancelled = await twice(onprem["tekton.cancel"], run_input)
    assert cancelled == "finished"

    # Production runs api as an Argo Rollout; its first sync creates it (Healthy at once, without steps).
    production = GitOpsMoveInput(
        repo_url=str(gitops_repo),
        branch="main",
        environment="production",
        path="production",
        images=[ImagePin(name="api", new_name=f"{plan.environments[-1].harbor_registry}/ferry/api", digest=digest)],
        release_id="shop-x",
        app_commit=commit,
    )
    moved = await onprem["gitops.move"](production)
    sync = ArgoSyncInput(instance="cloud", app="shop-production", revision=moved.commit, wait_healthy=False)
    assert (await twice(cloud["argocd.sync"], sync)).revision == moved.commit
    rollout = RolloutRef(instance="cloud", namespace="shop-production", name="api")
    wanted = [f"{plan.environments[-1].harbor_registry}/ferry/api@{digest}"]
    state = await twice(cloud["rollouts.wait"], RolloutWaitInput(rollout=rollout, images=wanted))
    assert state.phase == "Healthy" and state.promoted
    assert await twice(cloud["rollouts.promote"], RolloutPromoteInput(rollout=rollout, step=1)) == state
    assert await twice(cloud["rollouts.abort"], rollout) == state  # nothing in progress: nothing to abort

    # The workers' own word: the same plan, policy and verified identity each time (the nonce is the workflow's
    # to remember, so a second verification of one proof answers the same).
    assert await twice(onprem["ferry.plan"], PolicyRequest()) == plan
    gate_policy = await twice(onprem["approvals.policy"], PolicyRequest(gate="production", environment="production"))
    assert gate_policy.gate is not None and gate_policy.gate.groups == ["release-managers"]
    wf = "release/shop/" + commit[:12]
    check = VerifyInput(
        workflow_id=wf,
        action="approve",
        stage="production",
        user="rita",
        comment="ok",
        proof=proof(wf, "approve", "production", "rita", "ok"),
    )
    identity = await twice(onprem["approvals.verify"], check)
    assert identity.verified and identity.user == "rita" and identity.aliases == ["rita", "rita@example.com"]


async def test_harbor_replicate_rerun_as_after_a_reset_starts_one_execution(setup) -> None:
    # `ferry retry` resets the release: the activity runs again with no heartbeat details (called outside an
    # activity here, it has none either). Given the release's images, the rerun takes the execution that
    # already copied them.
    cfg, world, app_repo, gitops_repo, onprem, cloud = setup
    digest = "sha256:" + "5e" * 32
    world.harbor["onprem"].push("ferry", "api", "v9", digest)
    image = ArtifactRef("onprem", "ferry", "api", digest)
    replication = ReplicationInput(instance="onprem", policy_id=1, release_id="shop-r", artifacts=[image])
    first = await onprem["harbor.replicate"](replication)
    second = await onprem["harbor.replicate"](replication)
    assert first == second and first.status == "Succeed"
    assert [e.id for e in world.harbor["onprem"].executions.values()] == [first.execution_id]
    cloud_ref = ArtifactRef("cloud", "ferry", "api", digest)
    assert await cloud["harbor.confirm"](cloud_ref) == cloud_ref
