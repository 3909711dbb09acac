"""End to end on the real Temporal dev server: both workers as separate processes, stand-ins over real HTTP,
real git repositories. Each test pushes its own commit to the example monorepo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from e2e import E2E, start_sandbox
from temporalio.client import WorkflowFailureError

from sandbox.repos import commit_change, log, read_file_at
from workflows.coordinator import BranchCoordinator

pytestmark = pytest.mark.e2e

HISTORIES = Path(__file__).parent / "histories"


@pytest_asyncio.fixture(scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    sandbox = await start_sandbox(tmp_path_factory.mktemp("sandbox"))
    try:
        yield sandbox
    finally:
        await asyncio.to_thread(sandbox.box.down, False, lambda _: None)


@pytest.fixture(autouse=True)
def clean_scenario(e2e: E2E):
    e2e.scenario({})
    yield
    e2e.scenario({})


async def start(e2e: E2E, commit: str, *extra: str) -> None:
    """`ferry release start` (through the branch coordinator), then wait until the release exists."""
    run = e2e.ferry("release", "start", "--commit", commit, "--branch", "main", *extra)
    assert run.code == 0, run.err
    await e2e.wait_started(commit)


async def test_happy_path_reaches_production_with_the_ci_digest(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"services/web/index.html": "<h1>v2</h1>\n"}, "web: new front page")
    await start(e2e, commit, "--base", base)
    await e2e.approve_all(commit)
    result = await e2e.handle(commit).result()

    assert result.outcome == "succeeded" and result.services == ["web"]
    digest = result.digests["web"]
    assert digest.startswith("sha256:")
    assert e2e.pinned("production", "web") == digest
    app = e2e.api("argocd-cloud", "/api/v1/applications/shop-production").json()
    assert app["status"]["health"]["status"] == "Healthy"
    assert app["status"]["sync"]["revision"] == result.environments[-1].gitops_commit
    assert any(digest in image for image in app["status"]["summary"]["images"])
    # The exact digest exists on both Harbor instances.
    for harbor in ("harbor-onprem", "harbor-cloud"):
        assert e2e.api(harbor, f"/api/v2.0/projects/ferry/repositories/web/artifacts/{digest}").status_code == 200
    # One GitOps commit per environment move.
    rid = e2e.release_id(commit)
    assert e2e.gitops_commits(rid) == [f"{env}: release {rid}" for env in ("production", "staging", "testbed")]
    status = e2e.ferry("status", rid, "--json")
    assert status.code == 0 and json.loads(status.out)["outcome"] == "succeeded"
    # No secret value in the history, the workers' logs or the CLI's output.
    history = (await e2e.handle(commit).fetch_history()).to_json()
    logs = "".join(p.read_text(errors="replace") for p in e2e.box.logs.glob("worker-*.log"))
    for secret_file in (e2e.box.root / "secrets").iterdir():
        secret = secret_file.read_text().strip()
        assert secret not in history, secret_file.name
        assert secret not in logs, secret_file.name
        assert secret not in status.out, secret_file.name
    # FERRY_RECORD_HISTORIES=tests/histories refreshes the recorded histories that test_replay replays.
    if record := os.environ.get("FERRY_RECORD_HISTORIES"):
        history = await e2e.handle(commit).fetch_history()
        Path(record, "release-gate-policy.json").write_text(history.to_json())
        ci = await e2e.client.get_workflow_handle(f"ci/shop/{commit[:12]}").fetch_history()
        Path(record, "ci-signed.json").write_text(ci.to_json())


async def test_only_changed_services_and_dependents_are_built(e2e: E2E) -> None:
    base = e2e.head()
    lib = e2e.commit({"libs/common/util.py": "VERSION = 2\n"}, "common: bump")
    await start(e2e, lib, "--base", base)
    status = await e2e.wait_stage(lib, "gate:staging")
    assert status.services == ["api", "worker"]
    runs = e2e.api(
        "tekton", f"/apis/tekton.dev/v1/namespaces/ci/pipelineruns?labelSelector=ferry.dev/commit={lib[:12]}"
    )
    assert sorted(r["metadata"]["labels"]["ferry.dev/service"] for r in runs.json()["items"]) == ["api", "worker"]
    assert e2e.ferry("reject", e2e.release_id(lib), "--stage", "staging", "--as", "quinn").code == 0

    docs = e2e.commit({"docs/guide.md": "# Guide\nMore words.\n"}, "docs: guide")
    await start(e2e, docs, "--base", lib)
    result = await e2e.handle(docs).result()
    assert result.outcome == "nothing_to_release" and result.services == []


async def test_failing_quality_gate_stops_before_testbed(e2e: E2E) -> None:
    e2e.scenario({"quality_gate": {"api": "ERROR"}})
    base = e2e.head()
    commit = e2e.commit({"services/api/handler.py": "def handle():\n    return 2\n"}, "api: change")
    waited = e2e.ferry("release", "start", "--commit", commit, "--branch", "main", "--base", base, "--wait")
    assert waited.code == 1 and "outcome   failed" in waited.out
    status = await e2e.status(commit)
    assert "api" in status.error and "quality gate" in status.error.lower()
    assert e2e.gitops_commits(e2e.release_id(commit)) == []


async def test_critical_cve_blocks_the_image(e2e: E2E) -> None:
    e2e.scenario({"vulnerabilities": {"billing": {"Critical": 1, "High": 3}}})
    base = e2e.head()
    commit = e2e.commit({"services/billing/invoice.py": "TAX = 0.2\n"}, "billing: tax")
    await start(e2e, commit, "--base", base)
    with pytest.raises(WorkflowFailureError):
        await e2e.handle(commit).result()
    status = await e2e.status(commit)
    assert "Critical" in status.error and "billing" in status.error
    assert e2e.gitops_commits(e2e.release_id(commit)) == []


async def test_failing_e2e_reverts_testbed_and_stops_before_staging_gate(e2e: E2E) -> None:
    e2e.scenario({"e2e": {"result": "failed"}})
    base = e2e.head()
    before = e2e.pinned("testbed", "web")
    commit = e2e.commit({"services/web/about.html": "about\n"}, "web: about")
    await start(e2e, commit, "--base", base)
    status = await e2e.handle(commit).result()
    assert status.outcome == "rolled_back" and status.rollback_cause.startswith("e2e:testbed:")
    assert status.e2e_url.startswith("http") and "/builds/" in status.e2e_url
    assert status.gates[0].state == "pending"
    rid = e2e.release_id(commit)
    assert e2e.gitops_commits(rid) == [f"testbed: revert release {rid}", f"testbed: release {rid}"]
    assert e2e.pinned("testbed", "web") == before  # the previous digest runs again
    human = e2e.ferry("status", rid)
    assert status.e2e_url in human.out and "rolled back because e2e:testbed" in human.out


async def test_reject_and_unauthorised_approver(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"services/worker/jobs.py": "JOBS = []\n"}, "worker: jobs")
    await start(e2e, commit, "--base", base)
    await e2e.wait_stage(commit, "gate:staging")
    rid = e2e.release_id(commit)
    refused = e2e.ferry("approve", rid, "--stage", "staging", "--as", "mallory")
    assert refused.code == 1 and "mallory may not decide gate 'staging'" in refused.err
    assert (await e2e.status(commit)).stage == "gate:staging"
    rejected = e2e.ferry("reject", rid, "--stage", "staging", "--as", "quentin", "--comment", "flaky login")
    assert rejected.code == 0
    result = await e2e.handle(commit).result()
    gate = result.gates[0]
    assert (result.outcome, gate.decided_by, gate.comment) == ("rejected", "quentin", "flaky login")
    audit = json.loads(e2e.ferry("audit", rid, "--json").out)["audit"]
    # mallory's refused attempt is audited too, with the reason.
    assert [(a["user"], a["action"], a["channel"]) for a in audit] == [
        ("mallory", "refused", "cli"),
        ("quentin", "reject", "cli"),
    ]
    assert "may not decide" in audit[0]["reason"] and audit[1]["method"].startswith("ssh signature")
    assert "quentin" in e2e.ferry("audit", rid).out
    events = [(m["ferry"]["event"], m["ferry"]["release"]) for m in e2e.webhook_messages()]
    assert ("gate_waiting", rid) in events and ("gate_decided", rid) in events


async def test_degraded_application_is_reverted_and_fails_when_it_stays_degraded(e2e: E2E) -> None:
    e2e.scenario({"health": {"shop-testbed": "Degraded"}})  # Degraded at any revision, the old one too
    base = e2e.head()
    commit = e2e.commit({"services/web/style.css": "body{}\n"}, "web: style")
    await start(e2e, commit, "--base", base)
    with pytest.raises(WorkflowFailureError):
        await e2e.handle(commit).result()
    status = await e2e.status(commit)
    assert status.error.startswith("rollback:testbed") and "Degraded" in status.error
    rid = e2e.release_id(commit)
    assert e2e.gitops_commits(rid)[0] == f"testbed: revert release {rid}"


async def test_happy_path_survives_30_percent_503s(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"services/web/flaky.txt": "503\n"}, "web: under fire")
    e2e.scenario({"faults": {"*": {"error_rate": 0.3, "status": 503}}})
    await start(e2e, commit, "--base", base)
    await e2e.approve_all(commit)
    result = await e2e.handle(commit).result()
    assert result.outcome == "succeeded"
    rid = e2e.release_id(commit)
    assert e2e.gitops_commits(rid) == [f"{env}: release {rid}" for env in ("production", "staging", "testbed")]


async def test_half_of_all_requests_failing_and_a_60s_argocd_outage_finish_without_a_person(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"services/web/storm.txt": "50%\n"}, "web: under heavier fire")
    # Every stand-in answers every other request with a 503 (Retry-After-less), for the whole release.
    e2e.scenario({"faults": {"*": {"error_rate": 0.5, "status": 503}}})
    await start(e2e, commit, "--base", base)
    first_run = (await e2e.handle(commit).describe()).run_id
    await e2e.wait_stage(commit, "gate:staging", timeout=300)
    # Then Argo CD-Cloud goes down for a minute just as staging is approved: the release rides it out.
    e2e.scenario({"faults": {"*": {"error_rate": 0.5, "status": 503}, "argocd-cloud": {"down": True}}})
    rid = e2e.release_id(commit)
    assert e2e.ferry("approve", rid, "--stage", "staging", "--as", "quinn").code == 0
    await asyncio.sleep(60)
    e2e.scenario({"faults": {"*": {"error_rate": 0.5, "status": 503}}})
    await e2e.wait_stage(commit, "gate:production", timeout=300)
    e2e.scenario({})
    assert e2e.ferry("approve", rid, "--stage", "production", "--as", "rita").code == 0
    result = await e2e.handle(commit).result()
    assert result.outcome == "succeeded"
    # Nobody retried anything (a `ferry retry` is a Reset: another run), and one GitOps commit per environment.
    assert (await e2e.handle(commit).describe()).run_id == first_run
    assert e2e.gitops_commits(rid) == [f"{env}: release {rid}" for env in ("production", "staging", "testbed")]


async def test_onprem_worker_killed_mid_ci_resumes_without_duplicates(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"libs/common/crash.py": "X = 1\n"}, "common: crash test")
    await start(e2e, commit, "--base", base)
    path = f"/apis/tekton.dev/v1/namespaces/ci/pipelineruns?labelSelector=ferry.dev/commit={commit[:12]}"
    for _ in range(300):
        if e2e.api("tekton", path).json()["items"]:
            break
        await asyncio.sleep(0.05)
    assert (await e2e.status(commit)).stage == "ci"
    e2e.box.stop_worker("onprem")
    await asyncio.sleep(1)
    await asyncio.to_thread(e2e.box.start_worker, "onprem")
    await e2e.approve_all(commit)
    result = await e2e.handle(commit).result()
    assert result.outcome == "succeeded"
    runs = e2e.api("tekton", path).json()["items"]
    assert sorted(r["metadata"]["name"] for r in runs) == sorted({r["metadata"]["name"] for r in runs})
    assert len(runs) == 2
    rid = e2e.release_id(commit)
    assert len(e2e.gitops_commits(rid)) == 3


async def test_retry_after_a_standin_was_down_skips_completed_stages(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"services/billing/retry.py": "R = 1\n"}, "billing: retry")
    await start(e2e, commit, "--base", base)
    await e2e.wait_stage(commit, "gate:staging")
    e2e.scenario({"faults": {"argocd-cloud": {"down": True}}})
    rid = e2e.release_id(commit)
    assert e2e.ferry("approve", rid, "--stage", "staging", "--as", "quinn").code == 0
    with pytest.raises(WorkflowFailureError):
        await e2e.handle(commit).result()
    failed = await e2e.status(commit)
    assert failed.error.startswith("deploy:staging")
    e2e.scenario({})
    runs_before = e2e.api(
        "tekton", f"/apis/tekton.dev/v1/namespaces/ci/pipelineruns?labelSelector=ferry.dev/commit={commit[:12]}"
    ).json()
    retried = e2e.ferry("retry", rid)
    assert retried.code == 0, retried.err
    await e2e.wait_stage(commit, "gate:production")
    assert e2e.ferry("approve", rid, "--stage", "production", "--as", "rita").code == 0
    result = await e2e.handle(commit).result()
    assert result.outcome == "succeeded"
    assert e2e.gitops_commits(rid) == [f"{env}: release {rid}" for env in ("production", "staging", "testbed")]
    runs_after = e2e.api(
        "tekton", f"/apis/tekton.dev/v1/namespaces/ci/pipelineruns?labelSelector=ferry.dev/commit={commit[:12]}"
    ).json()
    assert len(runs_after["items"]) == len(runs_before["items"]) == 1
    # The staging approval was kept: the retried run did not ask for it again.
    assert [a.user for a in result.audit if a.stage == "staging"] == ["quinn"]


async def test_a_reset_to_before_replication_reuses_the_execution_that_copied_the_images(e2e: E2E) -> None:
    import uuid

    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest

    base = e2e.head()
    commit = e2e.commit({"services/billing/reset.py": "R = 2\n"}, "billing: reset replication")
    await start(e2e, commit, "--base", base)
    rid = e2e.release_id(commit)
    await e2e.wait_stage(commit, "gate:staging")
    assert e2e.ferry("approve", rid, "--stage", "staging", "--as", "quinn").code == 0
    await e2e.wait_stage(commit, "gate:production")

    def executions() -> list[dict]:
        return e2e.api("harbor-onprem", "/api/v2.0/replication/executions?policy_id=1&page_size=100").json()

    before = executions()
    # Reset the run to just before harbor.replicate was scheduled, as an SRE picks that event in the UI (or
    # `ferry retry` does after a failed replication): the activity runs again with no heartbeat details.
    handle = e2e.handle(commit)
    events = list((await handle.fetch_history()).events)
    scheduled = next(
        e
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "harbor.replicate"
    )
    desc = await handle.describe()
    reset = await e2e.client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=e2e.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=desc.run_id),
            reason="test: replication again",
            workflow_task_finish_event_id=scheduled.activity_task_scheduled_event_attributes.workflow_task_completed_event_id,
            request_id=str(uuid.uuid4()),
        )
    )
    rerun = e2e.client.get_workflow_handle(handle.id, run_id=reset.run_id)
    replicated_again = False
    for _ in range(600):
        history = (await rerun.fetch_history()).events
        replicated_again = any(
            e.HasField("activity_task_completed_event_attributes")
            and history[
                e.activity_task_completed_event_attributes.scheduled_event_id - 1
            ].activity_task_scheduled_event_attributes.activity_type.name
            == "harbor.replicate"
            for e in history
        )
        if replicated_again:
            break
        await asyncio.sleep(0.1)
    assert replicated_again
    await e2e.wait_stage(commit, "gate:production")
    assert executions() == before  # the rerun took the execution that had copied the images: none started
    assert e2e.ferry("approve", rid, "--stage", "production", "--as", "rita").code == 0
    assert (await e2e.handle(commit).result()).outcome == "succeeded"
    assert e2e.gitops_commits(rid) == [f"{env}: release {rid}" for env in ("production", "staging", "testbed")]


async def test_a_megabyte_comment_is_refused_and_the_release_goes_on(e2e: E2E) -> None:
    from temporalio.client import WorkflowUpdateFailedError

    from workflows.release import ReleaseWorkflow
    from workflows.types import Decision

    base = e2e.head()
    commit = e2e.commit({"services/web/comment.txt": "1 MB\n"}, "web: a long comment")
    await start(e2e, commit, "--base", base)
    await e2e.wait_stage(commit, "gate:staging")
    rid, handle = e2e.release_id(commit), e2e.handle(commit)
    megabyte = "x" * 1_000_000
    # Straight to Temporal, as anyone who can reach it can: the Update is refused at the door (not in history)...
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(ReleaseWorkflow.approve, Decision(stage="staging", user="quinn", comment=megabyte))
    assert "at most 2000" in str(refused.value.cause)
    # ... and the Signal is refused by its handler, its comment cut to the bound in the audit.
    await handle.signal(ReleaseWorkflow.decide, Decision(stage="staging", user="quinn", comment=megabyte))
    for _ in range(100):
        audit = (await e2e.status(commit)).audit
        if audit:
            break
        await asyncio.sleep(0.1)
    assert audit[-1].action == "refused" and len(audit[-1].comment) <= 2000
    # The CLI refuses it before signing or sending anything.
    run = e2e.ferry("approve", rid, "--stage", "staging", "--as", "quinn", "--comment", "y" * 100_000)
    assert run.code == 2 and "--comment" in run.err
    # The release still answers, and goes on.
    status = e2e.ferry("status", rid, "--json")
    assert status.code == 0 and json.loads(status.out)["stage"] == "gate:staging"
    assert e2e.ferry("approve", rid, "--stage", "staging", "--as", "quinn", "--comment", "QA passed").code == 0
    await e2e.wait_stage(commit, "gate:production")
    assert e2e.ferry("reject", rid, "--stage", "production", "--as", "rita", "--comment", "enough").code == 0
    assert (await handle.result()).outcome == "rejected"


async def test_bad_input_is_refused_with_exit_2_and_changes_nothing(e2e: E2E, tmp_path: Path) -> None:
    gitops_before = e2e.gitops_commits("")
    head = e2e.head()
    cases = [
        (["release", "start", "--commit", "xyz", "--branch", "main"], "not a full 40-character"),
        (["release", "start", "--commit", head, "--branch", "main", "--service", "nope"], "unknown service"),
        (["status", "not-a-release"], "is not a release"),
    ]
    for args, expected in cases:
        run = e2e.ferry(*args)
        assert run.code == 2 and expected in run.err and len(run.err.strip().splitlines()) == 1, run.err
    broken = tmp_path / "ferry.yaml"
    broken.write_text("sites: [\n")
    run = e2e.ferry("--config", str(broken), "list")
    assert run.code == 2 and "not valid YAML" in run.err
    assert e2e.gitops_commits("") == gitops_before


async def test_broken_kustomization_fails_the_move_and_changes_nothing(e2e: E2E) -> None:
    good = read_file_at(e2e.gitops_repo, "main", "testbed/kustomization.yaml")
    commit_change(e2e.gitops_repo, {"testbed/kustomization.yaml": "resources: [unclosed\n"}, "testbed: oops")
    gitops_head = log(e2e.gitops_repo)[0][0]
    try:
        base = e2e.head()
        commit = e2e.commit({"services/web/broken.txt": "x\n"}, "web: meets a broken kustomization")
        await start(e2e, commit, "--base", base)
        with pytest.raises(WorkflowFailureError):
            await e2e.handle(commit).result()
        status = await e2e.status(commit)
        assert status.error.startswith("deploy:testbed") and "testbed/kustomization.yaml" in status.error
        assert log(e2e.gitops_repo)[0][0] == gitops_head
    finally:
        commit_change(e2e.gitops_repo, {"testbed/kustomization.yaml": good}, "testbed: repair")


async def test_high_cve_reaches_staging_but_not_production(e2e: E2E) -> None:
    e2e.scenario({"vulnerabilities": {"worker": {"High": ["CVE-2026-31337"]}}})
    base = e2e.head()
    commit = e2e.commit({"services/worker/queue.py": "Q = 1\n"}, "worker: queue")
    await start(e2e, commit, "--base", base)
    await e2e.approve_all(commit)
    with pytest.raises(WorkflowFailureError):
        await e2e.handle(commit).result()
    status = await e2e.status(commit)
    assert status.error.startswith("deploy:production")
    assert "CVE-2026-31337" in status.error and "High or worse blocks" in status.error
    assert status.digests["worker"] in status.error
    rid = e2e.release_id(commit)
    assert e2e.gitops_commits(rid) == [f"{env}: release {rid}" for env in ("staging", "testbed")]


async def test_unsigned_image_is_refused_before_staging(e2e: E2E) -> None:
    base = e2e.head()
    commit = e2e.commit({"services/billing/sig.py": "S = 1\n"}, "billing: unsigned")
    await start(e2e, commit, "--base", base)
    status = await e2e.wait_stage(commit, "gate:staging")
    # Someone pushed this digest without the CI's signature: remove what CI signed.
    (e2e.box.root / "signatures" / (status.digests["billing"].replace(":", "-") + ".sig")).unlink()
    rid = e2e.release_id(commit)
    assert e2e.ferry("approve", rid, "--stage", "staging", "--as", "quinn").code == 0
    with pytest.raises(WorkflowFailureError):
        await e2e.handle(commit).result()
    failed = await e2e.status(commit)
    assert failed.error.startswith("deploy:staging") and "no signature" in failed.error
    assert e2e.gitops_commits(rid) == [f"testbed: release {rid}"]


async def test_drift_schedule_reports_state_changed_behind_terraforms_back(e2e: E2E) -> None:
    from starters.provision_cmds import last_drift

    applied = e2e.ferry("provision", "apply", "tf-cloud", "--wait")
    assert applied.code == 0, applied.out + applied.err
    workspace = e2e.cfg.provisioning.workspaces["tf-cloud"].path
    terraform = [e2e.cfg.provisioning.terraform.binary]
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    listed = subprocess.run([*terraform, "state", "list"], cwd=workspace, env=env, capture_output=True, text=True)
    victim = listed.stdout.split()[0]
    subprocess.run([*terraform, "state", "rm", victim], cwd=workspace, env=env, check=True, capture_output=True)

    assert e2e.ferry("provision", "drift-schedule").code == 0
    await e2e.client.get_schedule_handle("drift/tf-cloud").trigger()
    for _ in range(300):
        drift = await last_drift(e2e.client, "tf-cloud")
        if drift is not None:
            break
        await asyncio.sleep(0.2)
    assert drift is not None and drift.drifted and drift.summary is not None
    assert victim in drift.summary.adds  # Terraform would create again what it no longer tracks
    assert any(m["ferry"]["event"] == "drift" and "tf-cloud" in m["text"] for m in e2e.webhook_messages())
    status = e2e.ferry("provision", "status", "tf-cloud")
    assert status.code == 0 and "drift" in status.out.lower()


async def test_storm_of_20_commits_releases_the_newest_and_cancels_or_skips_the_rest(e2e: E2E) -> None:
    from starters.release_cmds import release_input_from_args, submit_commit

    commits = [e2e.commit({"services/web/storm.txt": f"{i}\n"}, f"web: storm {i}") for i in range(20)]
    for commit in commits:  # pushed back to back, as a busy branch does
        args = argparse.Namespace(
            from_buildkite=False, commit=commit, branch="main", message="storm", repo=None, base=None, service=[]
        )
        await submit_commit(e2e.client, release_input_from_args(e2e.cfg, args))
    newest = commits[-1]
    await e2e.wait_started(newest)
    await e2e.wait_stage(newest, "gate:staging", timeout=180)

    assert (
        e2e.kustomization("testbed")["images"]
        and e2e.pinned("testbed", "web") == (await e2e.status(newest)).digests["web"]
    )
    coordinator = e2e.client.get_workflow_handle_for(BranchCoordinator.run, "branch/shop/main")
    queue = await coordinator.query(BranchCoordinator.status)
    skipped = {e.commit: e.by for e in queue.recent if e.state == "skipped"}
    ci_completed, superseded = 0, {}
    for commit in commits[:-1]:
        if commit in skipped:
            assert skipped[commit] in commits, "skipped for a commit of the storm"
            continue
        status = await e2e.status(commit)
        ci_completed += status.ci is not None
        assert status.outcome == "superseded" and status.superseded_by in commits, (commit, status.outcome)
        superseded[commit] = status.superseded_by
    assert ci_completed + 1 <= 2  # the newest plus at most one that finished CI before it was superseded
    assert len(skipped) + len(superseded) == 19
    # Superseded runs were cancelled on the cluster too.
    for commit in superseded:
        runs = e2e.api(
            "tekton", f"/apis/tekton.dev/v1/namespaces/ci/pipelineruns?labelSelector=ferry.dev/commit={commit[:12]}"
        )
        for run in runs.json()["items"]:
            condition = run["status"]["conditions"][0]
            assert condition["status"] == "True" or condition["reason"] == "Cancelled", condition
    assert e2e.ferry("reject", e2e.release_id(newest), "--stage", "staging", "--as", "quinn").code == 0
