"""Rendering the minimal pipeline: deterministic PipelineRuns and a Buildkite upload that match them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from temporalio.exceptions import ApplicationError

from activities.errors import BAD_COMMIT, NOT_CONFIGURED
from activities.pipeline import PipelineActivities, dns_label, label_value, pipelinerun_name, render_pipeline
from workflows.types import RenderPipelineInput, ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "3f2a1c9d0b7e55aa66bb77cc88dd99ee00ff1122"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG = "a-service-with-a-name-that-is-really-much-too-long-for-kube"

SERVICES = [
    ServiceSpec(name="api", paths=["services/api/**"], depends_on=["common"], image="api"),
    ServiceSpec(name="web", paths=["services/web/**", "web-assets/**"], image="web", sonar_project="shop-web"),
    ServiceSpec(name="common", paths=["libs/common/**"], kind="library"),
    ServiceSpec(name=LONG, paths=["services/long/**"], image="long"),
    ServiceSpec(name=LONG + "2", paths=["services/long2/**"], image="long2"),
]


def render_input(affected: list[str], **kw: object) -> RenderPipelineInput:
    values: dict = dict(
        release_id="release/shop/3f2a1c9d0b7e",
        commit=COMMIT,
        branch="main",
        affected=affected,
        services=SERVICES,
        registry="harbor.onprem.local:8443",
        project="ferry",
        namespace="ci",
        pipeline="ferry-ci",
    )
    values.update(kw)
    return RenderPipelineInput(**values)


def params(manifest: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in manifest["spec"]["params"]}


def test_one_pipelinerun_per_service_with_the_exact_params() -> None:
    plan = render_pipeline(render_input(["api", "web"]))
    assert list(plan.pipelineruns) == ["api", "web"]
    api = plan.pipelineruns["api"]
    assert api["apiVersion"] == "tekton.dev/v1" and api["kind"] == "PipelineRun"
    assert api["metadata"]["name"] == "ferry-3f2a1c9d0b7e-api"
    assert api["metadata"]["namespace"] == "ci"
    assert api["spec"]["pipelineRef"] == {"name": "ferry-ci"}
    assert params(api) == {
        "service": "api",
        "commit": COMMIT,
        "branch": "main",
        "image": "harbor.onprem.local:8443/ferry/api",
        "tag": "3f2a1c9d0b7e",
        "sonar-project": "api",
        "paths": "services/api/**",
    }
    web = params(plan.pipelineruns["web"])
    assert web["sonar-project"] == "shop-web" and web["paths"] == "services/web/**,web-assets/**"


def test_labels_are_valid_label_values() -> None:
    plan = render_pipeline(render_input(["api"], release_id="release/shop/3f2a1c9d0b7e"))
    labels = plan.pipelineruns["api"]["metadata"]["labels"]
    assert labels["ferry.dev/release"] == "release-shop-3f2a1c9d0b7e"
    assert labels["ferry.dev/service"] == "api" and labels["ferry.dev/commit"] == "3f2a1c9d0b7e"
    assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values())
    # The exact release id survives in an annotation.
    assert plan.pipelineruns["api"]["metadata"]["annotations"]["ferry.dev/release"] == "release/shop/3f2a1c9d0b7e"


def test_long_names_are_shortened_deterministically_and_stay_distinct() -> None:
    first = render_pipeline(render_input([LONG, LONG + "2"]))
    second = render_pipeline(render_input([LONG, LONG + "2"]))
    names = [m["metadata"]["name"] for m in first.pipelineruns.values()]
    assert names == [m["metadata"]["name"] for m in second.pipelineruns.values()]
    assert len(set(names)) == 2
    for name in names:
        assert len(name) <= 63 and DNS_LABEL.match(name)
        assert name.startswith("ferry-3f2a1c9d0b7e-a-service")
    assert pipelinerun_name(COMMIT, "api") == "ferry-3f2a1c9d0b7e-api"
    assert pipelinerun_name(COMMIT[:12] + "0" * 28, "api") == pipelinerun_name(COMMIT, "api")  # by sha12


@pytest.mark.parametrize("text", ["release/" + "x" * 100, "-a-", "Ünïcode release!", "a" * 63, "a" * 64, "__x__"])
def test_label_value_and_dns_label_always_valid(text: str) -> None:
    value, label = label_value(text), dns_label(text)
    assert LABEL_VALUE.match(value) and len(value) <= 63
    assert DNS_LABEL.match(label) and len(label) <= 63
    assert label_value(text) == value  # deterministic


def test_buildkite_yaml_has_one_step_per_service() -> None:
    plan = render_pipeline(render_input(["api", "web"], release_id="release/$HOME/x"))
    doc = yaml.safe_load(plan.buildkite_yaml)
    steps = doc["steps"]
    assert [s["key"] for s in steps] == ["ci-api", "ci-web"]
    api = steps[0]
    assert api["command"] == "kubectl create -f pipelinerun-api.yaml"
    assert api["env"]["FERRY_SERVICE"] == "api"
    assert api["env"]["FERRY_PIPELINERUN"] == plan.pipelineruns["api"]["metadata"]["name"]
    assert api["env"]["FERRY_COMMIT"] == COMMIT
    # `$` is escaped so that `pipeline upload` does not interpolate the agent's environment into it.
    assert api["env"]["FERRY_RELEASE"] == "release/$$HOME/x"
    assert all("label" in s and "depends_on" not in s for s in steps)


@pytest.mark.parametrize(("name", "problem"), [("common", "library"), ("nope", "not in the release plan")])
def test_a_library_or_unknown_service_is_not_configured(name: str, problem: str) -> None:
    with pytest.raises(ApplicationError) as err:
        render_pipeline(render_input(["api", name]))
    assert err.value.type == NOT_CONFIGURED and err.value.non_retryable and problem in str(err.value)


def test_a_commit_that_is_not_a_sha_is_refused() -> None:
    with pytest.raises(ApplicationError) as err:
        render_pipeline(render_input(["api"], commit="main"))
    assert err.value.type == BAD_COMMIT


async def test_render_activity_twice_gives_the_same_plan() -> None:
    acts = PipelineActivities()
    first = await acts.render(render_input(["web", "api"]))
    second = await acts.render(render_input(["web", "api"]))
    assert first == second
    assert list(first.pipelineruns) == ["web", "api"]  # the caller's order


def test_rendered_runs_fit_the_ferry_ci_pipeline() -> None:
    pipeline = yaml.safe_load((ROOT / "infra" / "tekton" / "pipeline.yaml").read_text())
    assert pipeline["apiVersion"] == "tekton.dev/v1" and pipeline["kind"] == "Pipeline"
    assert pipeline["metadata"]["name"] == "ferry-ci"
    spec = pipeline["spec"]
    declared = {p["name"]: p for p in spec["params"]}
    run = render_pipeline(render_input(["api"])).pipelineruns["api"]
    given = params(run)
    assert set(given) <= set(declared)  # every param we pass is declared
    assert all(name in given for name, p in declared.items() if "default" not in p)  # every required one given
    assert {r["name"] for r in spec["results"]} == {"IMAGE_DIGEST", "IMAGE_URL", "SONAR_CE_TASK_ID"}
    assert {t["name"] for t in spec["tasks"]} >= {"lint", "unit-tests", "bazel-build", "build-push"}
    required_ws = {w["name"] for w in spec["workspaces"] if not w.get("optional")}
    assert required_ws <= {w["name"] for w in run["spec"]["workspaces"]}
    # Every $(params.x) in the pipeline refers to a declared param, every $(tasks.t.results.r) to a task result.
    text = (ROOT / "infra" / "tekton" / "pipeline.yaml").read_text()
    tasks = {t["name"]: t for t in spec["tasks"]}
    for task in spec["tasks"]:
        task_text = yaml.safe_dump(task["taskSpec"])
        task_params = {p["name"] for p in task["taskSpec"].get("params", [])}
        assert set(re.findall(r"\$\(params\.([\w-]+)\)", task_text)) <= task_params, task["name"]
        assert {p["name"] for p in task.get("params", [])} == task_params, task["name"]
        for dep in task.get("runAfter", []):
            assert dep in tasks
    pipeline_level = yaml.safe_dump({"tasks": [{"params": t.get("params", [])} for t in spec["tasks"]]})
    assert set(re.findall(r"\$\(params\.([\w-]+)\)", pipeline_level)) <= set(declared)
    for task_name, result in re.findall(r"\$\(tasks\.([\w-]+)\.results\.([\w-]+)\)", text):
        assert result in {r["name"] for r in tasks[task_name]["taskSpec"]["results"]}
