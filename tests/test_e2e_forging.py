"""End to end, as an attacker with nothing but Temporal access: every forged or unauthorised decision is refused,
audited, and changes nothing; every legitimate one passes. Real dev server, real worker processes, the
Buildkite stand-in over HTTP answering the job endpoint with `unblocked_by` as the real API does.

Channels: the CLI (`ferry approve --as`, signed), raw Updates and Signals (what `temporal workflow update/signal`
or the Temporal UI send), and Buildkite (`ferry approve --from-buildkite` after a block step).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml
from e2e import E2E, start_sandbox
from signing import proof
from temporalio.client import WorkflowUpdateFailedError

from common import signatures
from common.plan import build_plan
from sandbox.repos import commit_change
from starters.release_cmds import submit_commit
from workflows.release import ReleaseWorkflow
from workflows.rollback import RollbackWorkflow, rollback_target
from workflows.types import Artifact, Decision, ReleaseInput, RollbackInput

pytestmark = pytest.mark.e2e

RITA = ("Rita Release", "rita@example.com")  # the commit's author: four-eyes keeps her off production


@pytest_asyncio.fixture(scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    sandbox = await start_sandbox(tmp_path_factory.mktemp("forging"))
    try:
        yield sandbox
    finally:
        await asyncio.to_thread(sandbox.box.down, False, lambda _: None)


def key(e2e: E2E, user: str) -> Path:
    """`user`'s signing key in the sandbox (made by `ferry sandbox up`)."""
    return e2e.box.root / "keys" / user


def sandbox_proof(e2e: E2E, wf_id: str, action: str, stage: str, user: str, comment: str = "", **kw: object):
    """A proof as `ferry approve --as user` would make it, with the sandbox's key of `user` unless `key` is given."""
    kw.setdefault("key", key(e2e, user))
    return proof(wf_id, action, stage, user, comment, **kw)  # type: ignore[arg-type]


def edit_policy(e2e: E2E, change) -> None:  # noqa: ANN001 - a small callback
    """Edit the workers' ferry.yaml: the next gate that opens (or policy load) sees it, without a restart."""
    data = yaml.safe_load(e2e.box.config_path.read_text())
    change(data)
    e2e.box.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def buildkite(e2e: E2E, method: str, path: str, **kw: object) -> httpx.Response:
    token = (e2e.box.root / "secrets" / "buildkite").read_text().strip()
    return httpx.request(
        method, e2e.box.url("buildkite") + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw
    )


def blocked_build(e2e: E2E, commit: str, step: str) -> dict:
    """A build of pipeline `shop` at `commit` that waits on block step `step` (sandbox-only route)."""
    response = buildkite(
        e2e,
        "POST",
        "/_sandbox/organizations/acme/pipelines/shop/blocked-builds",
        json={"commit": commit, "branch": "main", "step_key": step},
    )
    assert response.status_code == 201, response.text
    return response.json()


def unblock(e2e: E2E, build: dict, user: str) -> None:
    """`user` unblocks the build's block step, as the Buildkite UI or API would record it."""
    users = {u["name"]: u["id"] for u in buildkite(e2e, "GET", "/_sandbox/users").json()}
    job = next(j for j in build["jobs"] if j["type"] == "manual")
    response = buildkite(
        e2e,
        "PUT",
        f"/v2/organizations/acme/pipelines/shop/builds/{build['number']}/jobs/{job['id']}/unblock",
        json={"unblocker": users[user], "fields": {}},
    )
    assert response.status_code == 200, response.text


def from_buildkite(e2e: E2E, release: str, stage: str, build: dict, **claims: str):
    """`ferry approve --from-buildkite` in a step of `build`, with whatever BUILDKITE_UNBLOCKER* it claims."""
    env = {"BUILDKITE_PIPELINE_SLUG": "shop", "BUILDKITE_BUILD_NUMBER": str(build["number"]), **claims}
    return e2e.ferry("approve", release, "--stage", stage, "--from-buildkite", "--comment", "from bk", env=env)


async def refused_update(handle, decision: Decision, update=ReleaseWorkflow.approve) -> str:  # noqa: ANN001
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await handle.execute_update(update, decision)
    return str(getattr(failed.value.cause, "message", failed.value.cause))


async def test_forging_matrix_on_every_channel(e2e: E2E) -> None:
    # The workers' policy, edited while the sandbox runs: production needs two release managers, nobody who
    # approved staging, and quinn and quentin join release-managers (so the previous-approver rule is what
    # keeps quinn off production).
    def policy(data: dict) -> None:
        data["gates"]["production"].update(required_approvals=2, forbid_previous_approvers=True)
        data["groups"]["release-managers"] = ["rita", "raj", "quinn", "quentin"]

    edit_policy(e2e, policy)
    commit = commit_change(e2e.app_repo, {"services/web/forging.txt": uuid.uuid4().hex}, "web: forging", author=RITA)
    release = e2e.release_id(commit)
    assert e2e.ferry("release", "start", "--commit", commit, "--branch", "main").code == 0
    await e2e.wait_stage(commit, "gate:staging")
    handle = e2e.handle(commit)
    wf = handle.id
    results: dict[str, str] = {}

    # --- staging ---
    # Signal channel, no proof (the Temporal UI, `temporal workflow signal`): refused as unverified, audited.
    await handle.signal(ReleaseWorkflow.decide, Decision(stage="staging", user="quinn", comment="via UI"))
    # Update channel, a name and no proof.
    results["update, no proof"] = await refused_update(handle, Decision(stage="staging", user="quinn"))
    # CLI: mallory's own valid key, not a member of qa.
    run = e2e.ferry("approve", release, "--stage", "staging", "--as", "mallory")
    results["cli, non-member"] = run.err
    assert run.code == 1
    # CLI: mallory signs as quinn with her own key.
    run = e2e.ferry("approve", release, "--stage", "staging", "--as", "quinn", "--key", str(key(e2e, "mallory")))
    results["cli, someone else's name"] = run.err
    assert run.code == 1
    # Buildkite: BUILDKITE_UNBLOCKER says quinn, but nobody unblocked the block step.
    blocked = blocked_build(e2e, commit, "approve-staging")
    run = from_buildkite(e2e, release, "staging", blocked, BUILDKITE_UNBLOCKER="quinn")
    results["buildkite, not unblocked"] = run.err
    assert run.code == 1
    # Buildkite: a block step of another commit's build, really unblocked by quinn.
    other = blocked_build(e2e, "f" * 40, "approve-staging")
    unblock(e2e, other, "quinn")
    run = from_buildkite(e2e, release, "staging", other, BUILDKITE_UNBLOCKER="quinn")
    results["buildkite, another commit's build"] = run.err
    assert run.code == 1
    # Update channel: quinn's signature, but for another release.
    results["update, signed for another release"] = await refused_update(
        handle,
        Decision(
            stage="staging",
            user="quinn",
            proof=sandbox_proof(e2e, "release/shop/000000000000", "approve", "staging", "quinn"),
        ),
    )
    # Update channel: signed an hour ago (a captured decision replayed later).
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    results["update, expired signature"] = await refused_update(
        handle,
        Decision(
            stage="staging", user="quinn", proof=sandbox_proof(e2e, wf, "approve", "staging", "quinn", issued_at=old)
        ),
    )
    # Update channel: quinn signed a reject; the attacker sends it as an approve (and `approve: false` as before).
    reject_proof = sandbox_proof(e2e, wf, "reject", "staging", "quinn")
    results["update, reject sent as approve"] = await refused_update(
        handle, Decision(stage="staging", user="quinn", approve=False, proof=reject_proof)
    )
    assert (await e2e.status(commit)).stage == "gate:staging"  # nothing of that moved anything

    # Legitimate, Signal channel: quinn's signed decision sent as a Signal counts.
    good = sandbox_proof(e2e, wf, "approve", "staging", "quinn", "QA passed")
    await handle.signal(
        ReleaseWorkflow.decide, Decision(stage="staging", user="quinn", comment="QA passed", proof=good)
    )
    await e2e.wait_stage(commit, "gate:production")
    # Replays of that very decision: at staging again (decided) and at production (another gate).
    results["update, replayed at a decided gate"] = await refused_update(
        handle, Decision(stage="staging", user="quinn", comment="QA passed", proof=good)
    )
    results["update, replayed at another gate"] = await refused_update(
        handle, Decision(stage="production", user="quinn", comment="QA passed", proof=good)
    )

    # --- production: two release managers, not the author, not whoever approved staging ---
    run = e2e.ferry("approve", release, "--stage", "production", "--as", "rita")
    results["cli, commit author"] = run.err
    assert run.code == 1
    run = e2e.ferry("approve", release, "--stage", "production", "--as", "quinn")
    results["cli, previous-gate approver"] = run.err
    assert run.code == 1
    # Legitimate, Buildkite channel: raj unblocked this build's production block step; the claimed name is ignored.
    build = blocked_build(e2e, commit, "approve-production")
    unblock(e2e, build, "raj")
    run = from_buildkite(e2e, release, "production", build, BUILDKITE_UNBLOCKER="rita")
    assert run.code == 0, run.err
    assert "1 of 2 approvals" in run.out and "raj@example.com" in run.out
    # The same unblock again, and raj again by signature: one person, one approval.
    run = from_buildkite(e2e, release, "production", build)
    results["buildkite, replayed unblock"] = run.err
    assert run.code == 1
    run = e2e.ferry("approve", release, "--stage", "production", "--as", "raj")
    assert run.code == 0 and "1 of 2 approvals" in run.out, run.out + run.err
    # Legitimate, CLI channel: quentin (signed) is the second release manager.
    run = e2e.ferry("approve", release, "--stage", "production", "--as", "quentin", "--comment", "ship it")
    assert run.code == 0 and "approved" in run.out, run.out + run.err
    assert "ssh signature" in run.out  # how the identity was verified

    result = await handle.result()
    assert result.outcome == "succeeded"
    expected = {
        "update, no proof": "unverified",
        "cli, non-member": "mallory may not decide gate 'staging'",
        "cli, someone else's name": "not a valid signature by quinn",
        "buildkite, not unblocked": "not unblocked",
        "buildkite, another commit's build": "not of this release's",
        "update, signed for another release": "a replay?",
        "update, expired signature": "expired",
        "update, reject sent as approve": "for action 'reject', not 'approve'",
        "update, replayed at a decided gate": "already approved",
        "update, replayed at another gate": "for stage 'staging', not 'production'",
        "cli, commit author": "four-eyes: rita is the author",
        "cli, previous-gate approver": "four-eyes: quinn approved gate 'staging'",
        "buildkite, replayed unblock": "already used",
    }
    for case, text in expected.items():
        assert text in results[case], f"{case}: {results[case]}"

    # Every refusal is in the audit with the channel and the name it claimed; the gates say which policy decided.
    refused = [a for a in result.audit if a.action == "refused"]
    assert len(refused) >= len(expected) + 1  # + the unverified Signal
    assert any(a.channel == "signal" and a.user == "quinn" and "unverified" in a.reason for a in refused)
    assert {a.channel for a in refused} >= {"signal", "update", "cli", "buildkite"}
    staging, production = result.gates
    assert staging.approvals == ["quinn"] and production.approvals == ["raj@example.com", "quentin"]
    assert staging.policy_version and production.policy_version and not production.unverified
    approvals = [a for a in result.audit if a.action == "approve"]
    assert [a.method.split()[0] for a in approvals] == ["ssh", "buildkite", "ssh", "ssh"]
    # `ferry audit` shows the refusals with the reason and how each decision was verified.
    audit = e2e.ferry("audit", release)
    assert audit.code == 0 and "refused" in audit.out and "ssh signature" in audit.out and "buildkite" in audit.out


async def test_a_commit_signal_with_a_widened_plan_changes_nothing(e2e: E2E) -> None:
    """A plan with no gates and mallory as release manager, sent with a commit: the release is still gated."""
    commit = commit_change(e2e.app_repo, {"services/web/forged.txt": uuid.uuid4().hex}, "forged", branch="forged")
    plan = build_plan(e2e.cfg)
    forged = dataclasses.replace(
        plan,
        environments=[dataclasses.replace(e, gate=None) for e in plan.environments],
        freeze_override_members=["mallory"],
        gates=[],
    )
    inp = ReleaseInput(release_id=e2e.release_id(commit), commit=commit, branch="forged", plan=forged)
    await submit_commit(e2e.client, inp)
    await e2e.wait_stage(commit, "gate:staging")
    mallory = e2e.ferry("approve", e2e.release_id(commit), "--stage", "staging", "--as", "mallory")
    assert mallory.code == 1 and "may not decide" in mallory.err
    assert (
        e2e.ferry("reject", e2e.release_id(commit), "--stage", "staging", "--as", "quinn", "--comment", "x").code == 0
    )
    result = await e2e.handle(commit).result()
    assert result.outcome == "rejected"
    assert len(e2e.gitops_commits(e2e.release_id(commit))) == 1  # testbed only: no gate was skipped


async def test_a_rollback_carrying_its_own_plan_is_refused(e2e: E2E) -> None:
    """A Rollback started straight on Temporal with a plan naming mallory a release manager, signed by her."""
    plan = build_plan(e2e.cfg)
    forged = dataclasses.replace(plan, freeze_override_members=["mallory"], gates=[])
    wf_id = f"rollback/shop/production/{uuid.uuid4().hex[:12]}"
    inp = RollbackInput(
        environment="production",
        target_release_id="shop-000000000000",
        target_commit="0" * 40,
        artifacts=[Artifact(service="web", repository="web", digest="sha256:" + "6" * 64)],
        comment="forged",
        requested_by="mallory",
        plan=forged,
    )
    signed = dataclasses.replace(
        inp, proof=sandbox_proof(e2e, wf_id, "rollback", "production", "mallory", "forged", target=rollback_target(inp))
    )
    result = await e2e.client.execute_workflow(RollbackWorkflow.run, signed, id=wf_id, task_queue=plan.onprem_queue)
    assert result.outcome == "refused" and "mallory may not roll back production" in result.error
    # Unsigned, claiming rita: refused as unverified.
    wf_id2 = wf_id + "x"
    result = await e2e.client.execute_workflow(
        RollbackWorkflow.run, dataclasses.replace(inp, requested_by="rita"), id=wf_id2, task_queue=plan.onprem_queue
    )
    assert result.outcome == "refused" and "unverified" in result.error
    assert [a.action for a in result.audit] == ["refused"]


def test_the_sandbox_signers_file_names_each_person_twice(e2e: E2E) -> None:
    """The allowed_signers file maps a signer to the email Buildkite knows them by (one person, two names)."""
    allowed = e2e.box.root / "allowed_signers"
    assert signatures.principals_of(allowed, "raj@example.com") == ["raj", "raj@example.com"]
