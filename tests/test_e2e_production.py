"""Production end to end on the real sandbox: canary, automatic rollback, feedback issue, logs, encrypted
payloads and the DORA report over exactly the releases this module ran.

Own sandbox (module scope), so `ferry report --since <module start>` sees only these releases. The tests
run in file order and build on each other: the rollback test needs a previous api digest in production
(the canary test's), and the report test reads what all of them did.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from e2e import E2E, start_sandbox
from temporalio.client import Client, WorkflowFailureError

from sandbox.repos import commit_change, log, read_file_at
from workflows.types import ReleaseStatus

pytestmark = pytest.mark.e2e

ROLLOUT_API = "/clusters/cloud/apis/argoproj.io/v1alpha1/namespaces/shop-production/rollouts/api"
ANNOTATION = "commonAnnotations:\n  shop.example.com/on-call: team-shop\n"


@pytest_asyncio.fixture(scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    box = await start_sandbox(tmp_path_factory.mktemp("sandbox"))
    box.started_at = datetime.now(UTC)  # type: ignore[attr-defined]
    box.releases = {}  # type: ignore[attr-defined]  # name -> (commit, final status)
    try:
        yield box
    finally:
        await asyncio.to_thread(box.box.down, False, lambda _: None)


@pytest.fixture(autouse=True)
def clean_scenario(e2e: E2E):
    e2e.scenario({})
    yield
    e2e.scenario({})


async def release(e2e: E2E, name: str, files: dict[str, str], message: str, *, gates: bool = True) -> ReleaseStatus:
    """Push a commit, release it through the CLI, approve both gates, return its final status."""
    base = e2e.head()
    commit = e2e.commit(files, message)
    run = e2e.ferry("release", "start", "--commit", commit, "--branch", "main", "--base", base)
    assert run.code == 0, run.err
    await e2e.wait_started(commit)
    if gates:
        await e2e.approve_all(commit)
    try:
        status = await e2e.handle(commit).result()
    except WorkflowFailureError:
        status = await e2e.status(commit)
    e2e.releases[name] = (commit, status)  # type: ignore[attr-defined]
    return status


def rollout(e2e: E2E) -> dict:
    return httpx.get(e2e.box.url("kube") + ROLLOUT_API, timeout=10).json()


async def test_canary_promotes_each_step_and_production_is_healthy(e2e: E2E) -> None:
    # The Rollout's first revision has nothing to compare with: it becomes stable at once, without steps.
    first = await release(e2e, "baseline", {"services/api/handler.py": "VERSION = 'one'\n"}, "api: one")
    assert first.outcome == "succeeded" and first.environments[-1].rollouts["api"].promoted_steps == []

    result = await release(e2e, "canary", {"services/api/handler.py": "VERSION = 'canary'\n"}, "api: canary")

    assert result.outcome == "succeeded" and result.services == ["api"]
    digest = result.digests["api"]
    progress = result.environments[-1].rollouts["api"]
    assert (progress.name, progress.strategy, progress.phase) == ("api", "canary", "Healthy")
    assert progress.step == progress.steps == 6
    # The indefinite pause (step 1) waits for Ferry; each promotion is in the status, by the soak policy.
    assert progress.promoted_steps and progress.promoted_steps[0].startswith("step 1 (pause)")
    assert all(" promoted by soak " in p for p in progress.promoted_steps)
    status = rollout(e2e)["status"]
    assert status["phase"] == "Healthy" and status["stableRS"] == status["currentPodHash"]
    assert not status.get("abort")
    app = e2e.api("argocd-cloud", "/api/v1/applications/shop-production").json()
    assert app["status"]["health"]["status"] == "Healthy"
    assert any(digest in image for image in app["status"]["summary"]["images"])
    human = e2e.ferry("status", e2e.release_id(e2e.releases["canary"][0]))
    assert human.code == 0 and "rollout api (api) Healthy at step 6/6" in human.out
    assert "step 1 (pause) promoted by soak" in human.out


async def test_failing_canary_is_reverted_keeping_a_newer_commit_and_opens_an_issue(e2e: E2E) -> None:
    before = e2e.pinned("production", "api")
    assert before, "the canary test deployed api to production first"
    e2e.scenario({"rollouts": {"api": {"fail_at_step": 2}}})  # the analysis after the first pause fails
    base = e2e.head()
    commit = e2e.commit({"services/api/handler.py": "VERSION = 'broken'\n"}, "api: broken")
    run = e2e.ferry("release", "start", "--commit", commit, "--branch", "main", "--base", base)
    assert run.code == 0, run.err
    await e2e.wait_started(commit)
    await e2e.approve_all(commit)
    # While production soaks at the first pause, someone else pushes a newer production commit.
    await e2e.wait_stage(commit, "rollout:production")
    text = read_file_at(e2e.gitops_repo, "main", "production/kustomization.yaml")
    assert text.count("kind: Kustomization\n") == 1  # the annotation goes at the top, far from `images:`
    edited = text.replace("kind: Kustomization\n", "kind: Kustomization\n" + ANNOTATION)
    newer = commit_change(e2e.gitops_repo, {"production/kustomization.yaml": edited}, "production: on-call annotation")
    result = await e2e.handle(commit).result()
    e2e.releases["rolled_back"] = (commit, result)  # type: ignore[attr-defined]

    rid = e2e.release_id(commit)
    assert result.outcome == "rolled_back" and result.stage == "rolled_back"
    assert result.rollback_cause.startswith("rollout:production:")
    assert "aborted after step 1/6 (pause)" in result.rollback_cause and "Failed" in result.rollback_cause
    # The revert undid the release's own commit only: the newer commit is its parent and stays.
    (revert_sha, revert_message), (newer_sha, _) = log(e2e.gitops_repo)[:2]
    assert newer_sha == newer and revert_message.startswith(f"production: revert release {rid}")
    assert f"This reverts commit {result.environments[-1].gitops_commit}." in revert_message
    assert result.environments[-1].revert_commit == revert_sha
    assert ANNOTATION in read_file_at(e2e.gitops_repo, "main", "production/kustomization.yaml")
    # Production runs the previous digest, Healthy, and the Rollout is no longer aborted.
    assert e2e.pinned("production", "api") == before
    app = e2e.api("argocd-cloud", "/api/v1/applications/shop-production").json()
    assert app["status"]["health"]["status"] == "Healthy" and app["status"]["sync"]["revision"] == revert_sha
    assert any(before in image for image in app["status"]["summary"]["images"])
    status = rollout(e2e)["status"]
    assert status["phase"] == "Healthy" and not status.get("abort")
    # One issue in the app's tracker, with release, digest, failing check and the revert.
    issues = httpx.get(f"http://127.0.0.1:{e2e.box.ports['receiver']}/_sandbox/issues", timeout=10).json()
    ours = [i["issue"] for i in issues if f"ferry-release: {rid}/production" in i["issue"]["body"]]
    assert len(ours) == 1 and issues[-1]["project"] == "acme/shop"
    body = ours[0]["body"]
    assert result.digests["api"] in body and revert_sha in body and "Failed" in body
    assert result.feedback_issue == ours[0]["html_url"]
    events = [(m["ferry"]["event"], m["ferry"]["release"]) for m in e2e.webhook_messages()]
    assert ("rolled_back", rid) in events


async def test_a_ci_failure_fails_the_release(e2e: E2E) -> None:
    e2e.scenario({"quality_gate": {"billing": "ERROR"}})
    result = await release(e2e, "ci_failed", {"services/billing/invoice.py": "TAX = 2\n"}, "billing", gates=False)
    assert result.outcome == "failed" and result.error.startswith("ci:")


async def test_logs_are_json_lines_with_context_and_no_secret_anywhere(e2e: E2E) -> None:
    lines = [
        line for p in sorted(e2e.box.logs.glob("worker-*.log")) for line in p.read_text().splitlines() if line.strip()
    ]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    commit, _ = e2e.releases["canary"]  # type: ignore[attr-defined]
    wf_id = e2e.handle(commit).id
    stages = [e for e in events if e.get("event") == "stage entered" and e.get("workflow_id") == wf_id]
    assert {"ci", "gate:staging", "deploy:production", "rollout:production", "done"} <= {e["stage"] for e in stages}
    assert all(e["run_id"] and e["release"] == e2e.release_id(commit) for e in stages)
    acts = [e for e in events if e.get("activity") == "rollouts.promote" and e.get("workflow_id") == wf_id]
    assert acts and all("attempt" in e and e["release"] == e2e.release_id(commit) for e in acts)

    raw = await Client.connect(e2e.cfg.temporal.address, namespace=e2e.cfg.temporal.namespace)
    histories = []
    for commit, _ in e2e.releases.values():  # type: ignore[attr-defined]
        histories.append((await raw.get_workflow_handle(e2e.handle(commit).id).fetch_history()).to_json())
        histories.append((await e2e.handle(commit).fetch_history()).to_json())
    cli = e2e.ferry("status", e2e.release_id(commit), "--json")
    every_log = "".join(p.read_text(errors="replace") for p in e2e.box.logs.glob("*.log"))  # servers too
    for secret_file in (e2e.box.root / "secrets").iterdir():
        secret = secret_file.read_text().strip()
        assert secret not in every_log, secret_file.name
        assert all(secret not in h for h in histories), secret_file.name
        assert secret not in cli.out + cli.err, secret_file.name


async def test_payloads_are_encrypted_on_the_server_and_still_readable_with_the_key(e2e: E2E) -> None:
    commit, final = e2e.releases["canary"]  # type: ignore[attr-defined]
    wf_id = e2e.handle(commit).id
    raw = await Client.connect(e2e.cfg.temporal.address, namespace=e2e.cfg.temporal.namespace)
    history = await raw.get_workflow_handle(wf_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    payload = started.input.payloads[0]
    assert payload.metadata["encoding"] == b"binary/encrypted"
    text = history.to_json()
    # Plain values of the input (repo paths, the commit message, the digests) are nowhere in the raw history.
    for plain in (str(e2e.gitops_repo), "api: canary", final.digests["api"], "shop-production"):
        assert plain not in text, plain
    status = e2e.ferry("status", e2e.release_id(commit), "--json")
    assert status.code == 0 and json.loads(status.out)["digests"] == final.digests
    replay = e2e.ferry("replay", wf_id)
    assert replay.code == 0, replay.out + replay.err


async def test_report_gives_the_four_metrics_of_this_run(e2e: E2E, tmp_path: Path) -> None:
    until = datetime.now(UTC)
    since = e2e.started_at  # type: ignore[attr-defined]
    page = tmp_path / "report.html"
    run = e2e.ferry("report", "--since", since.isoformat(), "--until", until.isoformat(), "--json", "--html", str(page))
    assert run.code == 0, run.err
    report = json.loads(run.out)
    production = report["environments"]["production"]

    releases = e2e.releases  # type: ignore[attr-defined]
    _, rolled_back = releases["rolled_back"]
    days = (until - since).total_seconds() / 86400
    # Deployment frequency: two verified production deployments (baseline and canary) in the window.
    assert production["deployment_frequency"]["deployments"] == 2
    assert production["deployment_frequency"]["per_day"] == pytest.approx(2 / days, rel=1e-3)
    # Lead time: each one's commit time -> its production deployment verified; the median of two is their mean.
    leads = []
    for name in ("baseline", "canary"):
        status = releases[name][1]
        committed = datetime.fromisoformat(status.ci.committed_at)
        deployed = datetime.fromisoformat(status.timings["deploy:production"]["ended"])
        leads.append((deployed - committed).total_seconds())
    assert production["lead_time"]["samples"] == 2
    assert production["lead_time"]["median_seconds"] == pytest.approx(sum(leads) / 2, abs=1)
    # Change failure rate: three production deployments started, one rolled back.
    assert (production["change_failure_rate"]["started"], production["change_failure_rate"]["failed"]) == (3, 1)
    assert production["change_failure_rate"]["rate"] == pytest.approx(1 / 3)
    # Time to restore: the rolled-back release's failure -> Healthy on the previous digest.
    rollback = rolled_back.timings["rollback:production"]
    restore = (datetime.fromisoformat(rollback["ended"]) - datetime.fromisoformat(rollback["started"])).total_seconds()
    assert production["time_to_restore"]["samples"] == 1
    assert production["time_to_restore"]["median_seconds"] == pytest.approx(restore, abs=1)
    assert report["outcomes"] == {"succeeded": 2, "rolled_back": 1, "failed": 1}
    assert {"ci", "gate:production", "rollout:production"} <= {s["stage"] for s in report["stages"]}

    html = page.read_text()
    assert html.count("<svg") >= 4
    for metric in ("Deployment frequency", "Lead time", "Change failure rate", "Time to restore"):
        assert metric.lower() in html.lower(), metric
    assert "<script src=" not in html
