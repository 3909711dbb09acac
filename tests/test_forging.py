"""Every gate rule against every way to forge a decision, table-driven, on the time-skipping server.

The workers' own approval activities run (ferry.plan, approvals.policy, approvals.verify with real SSH
signatures); the rest of the systems are fakes. A refused decision must leave the gate as it was and an
entry in the audit; an accepted one must count exactly once. The same matrix over real worker processes
and real channels is tests/test_e2e_forging.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import WORKER_CONFIGS, Fakes, worker_plan
from sample import sample_config
from signing import key_of, proof, rogue_key, signed_promotion, signed_rollback
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common.config import ConfigError, TemporalSettings, parse_config
from common.plan import build_gate_policy
from common.temporal import connect
from workflows.ci import CIWorkflow
from workflows.release import ReleaseWorkflow
from workflows.rollback import RollbackWorkflow
from workflows.types import (
    Artifact,
    CIInput,
    Decision,
    GateStatus,
    ReleaseInput,
    ReleaseStatus,
    RollbackInput,
    RolloutPromoteRequest,
)

COMMIT = "c" * 40
AUTHOR = ("Rita Release", "rita@example.com")
HISTORIES = Path(__file__).parent / "histories"


def policy(cfg: dict) -> None:
    """Production: two release managers, not the author, not whoever approved staging."""
    cfg["gates"]["production"].update(required_approvals=2, forbid_previous_approvers=True)
    cfg["groups"]["release-managers"] = ["rita", "raj", "quinn", "rosa"]


@asynccontextmanager
async def running(env: WorkflowEnvironment, fakes: Fakes, edit: Callable[[dict], None] = policy) -> AsyncIterator[dict]:
    suffix = uuid.uuid4().hex[:8]
    onprem, cloud = f"onprem-{suffix}", f"cloud-{suffix}"
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": onprem, "cloud": cloud}
    edit(cfg)
    async with (
        Worker(
            env.client,
            task_queue=onprem,
            workflows=[ReleaseWorkflow, CIWorkflow, RollbackWorkflow],
            activities=fakes.onprem(),
        ),
        Worker(env.client, task_queue=cloud, activities=fakes.cloud()),
    ):
        yield cfg


async def start(env: WorkflowEnvironment, cfg: dict, **plan_changes: object) -> WorkflowHandle:
    plan = dataclasses.replace(worker_plan(cfg), **plan_changes)  # changes: what a forging starter would send
    inp = ReleaseInput(release_id=f"rel-{uuid.uuid4().hex[:6]}", commit=COMMIT, branch="main", plan=plan)
    return await env.client.start_workflow(
        ReleaseWorkflow.run, inp, id=f"release/test/{inp.release_id}", task_queue=plan.onprem_queue
    )


async def until(handle: WorkflowHandle, stage: str) -> ReleaseStatus:
    for _ in range(400):
        status = await handle.query(ReleaseWorkflow.status)
        if status.stage == stage:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {stage}; at {status.stage}")


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat(timespec="seconds")


# (case, stage, user, how the decision is made (given the workflow id), refusal expected or None to accept)
Forge = Callable[[str], Decision]


def signed_as(user: str, stage: str, action: str = "approve", comment: str = "", **kw: object) -> Forge:
    return lambda wf: Decision(
        stage=stage, user=user, comment=comment, proof=proof(wf, action, stage, user, comment, **kw)
    )


REPLAYED = {}  # proofs kept to be sent again


def keep(name: str, forge: Forge) -> Forge:
    def make(wf: str) -> Decision:
        REPLAYED[name] = forge(wf)
        return REPLAYED[name]

    return make


AT_THE_DOOR = {"a proof too large"}  # refused by the Update's validator, before anything is written
STAGING = [
    ("a name without proof", lambda wf: Decision(stage="staging", user="quinn"), "unverified"),
    ("a non-member's own signature", signed_as("mallory", "staging"), "mallory may not decide gate 'staging'"),
    ("quinn's name, mallory's key", signed_as("quinn", "staging", key=rogue_key("quinn")), "not a valid signature"),
    (
        "signed for another release",
        lambda wf: Decision(
            stage="staging", user="quinn", proof=proof("release/test/other", "approve", "staging", "quinn")
        ),
        "a replay?",
    ),
    ("signed an hour ago", signed_as("quinn", "staging", issued_at=ago(hours=1)), "expired"),
    ("dated tomorrow", signed_as("quinn", "staging", issued_at=ago(days=-1)), "in the future"),
    (
        "comment swapped after signing",
        lambda wf: dataclasses.replace(signed_as("quinn", "staging", comment="ok")(wf), comment="ship anything"),
        "comment is not the one that was signed",
    ),
    ("a signed reject sent as approve", signed_as("quinn", "staging", action="reject"), "for action 'reject'"),
    (
        "a proof too large",
        lambda wf: Decision(
            stage="staging",
            user="quinn",
            proof=dataclasses.replace(proof(wf, "approve", "staging", "quinn"), signature="A" * 20000),
        ),
        "larger than",
    ),
    ("quinn, signed", keep("quinn", signed_as("quinn", "staging")), None),
    ("quinn's decision again", lambda wf: REPLAYED["quinn"], "already approved"),
]
PRODUCTION = [
    (
        "quinn's staging proof at production",
        lambda wf: dataclasses.replace(REPLAYED["quinn"], stage="production"),
        "for stage 'staging'",
    ),
    # The old hole: the author sent `approve` with `"approve": false`, and four-eyes was skipped.
    (
        "the author, approve:false",
        lambda wf: dataclasses.replace(signed_as("rita", "production")(wf), approve=False),
        "four-eyes: rita is the author",
    ),
    (
        "the author under her email",
        signed_as("rita@example.com", "production", key=key_of("rita")),
        "four-eyes: rita@example.com is the author",
    ),
    ("the staging approver", signed_as("quinn", "production"), "four-eyes: quinn approved gate 'staging'"),
    ("raj, signed", keep("raj", signed_as("raj", "production")), None),
    ("raj's decision replayed", lambda wf: REPLAYED["raj"], "already used"),
    ("raj again, under his email", signed_as("raj@example.com", "production", key=key_of("raj")), None),  # counts once
    ("rosa, signed", signed_as("rosa", "production"), None),
    ("after the gate closed", signed_as("rosa", "production"), "already approved"),
]


async def test_every_forged_decision_is_refused_audited_and_changes_nothing(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes(author=AUTHOR)
    async with running(time_env, fakes) as cfg:
        handle = await start(time_env, cfg)
        outcomes: dict[str, str | None] = {}
        for stage, table in (("staging", STAGING), ("production", PRODUCTION)):
            await until(handle, f"gate:{stage}")
            if stage == "production":
                # A Signal nobody signed (the Temporal UI): audited, ignored.
                await handle.signal(ReleaseWorkflow.decide, Decision(stage="production", user="rita", approve=False))
            for case, forge, _ in table:
                before = await handle.query(ReleaseWorkflow.status)
                try:
                    gate = await handle.execute_update(ReleaseWorkflow.approve, forge(handle.id))
                    outcomes[case] = None
                    if case == "raj again, under his email":
                        assert gate.approvals == ["raj"] and gate.state == "waiting"  # one person, one approval
                except WorkflowUpdateFailedError as e:
                    outcomes[case] = str(getattr(e.cause, "message", e.cause))
                    after = await handle.query(ReleaseWorkflow.status)
                    assert [g.approvals for g in after.gates] == [g.approvals for g in before.gates], case
                    if case in AT_THE_DOOR:  # refused by the validator: it never enters history
                        assert after.audit == before.audit, case
                    else:
                        assert after.audit[-1].action == "refused" and after.audit[-1].reason == outcomes[case], case
        result = await handle.result()
        await keep_history(handle, "release-verified-decisions")

    for case, _, expected in STAGING + PRODUCTION:
        if expected is None:
            assert outcomes[case] is None, f"{case} was refused: {outcomes[case]}"
        else:
            assert outcomes[case] is not None and expected in outcomes[case], f"{case}: {outcomes[case]}"
    assert result.outcome == "succeeded"
    staging, production = result.gates
    assert staging.approvals == ["quinn"] and production.approvals == ["raj", "rosa"]
    assert staging.policy_version and production.policy_version
    refused = [a for a in result.audit if a.action == "refused"]
    audited = sum(1 for case, _, e in STAGING + PRODUCTION if e and case not in AT_THE_DOOR)
    assert len(refused) == audited + 1  # + the unsigned Signal
    assert any(a.channel == "signal" and "unverified" in a.reason for a in refused)
    assert {a.method.split()[0] for a in result.audit if a.action == "approve"} == {"ssh"}


async def test_a_policy_edit_reaches_the_next_gate_and_status_names_the_version(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with running(time_env, fakes, lambda cfg: None) as cfg:
        handle = await start(time_env, cfg)
        await until(handle, "gate:staging")
        await handle.execute_update(ReleaseWorkflow.approve, signed_as("quinn", "staging")(handle.id))
        # The workers' ferry.yaml changes while the release waits: rosa becomes a release manager.
        queue = cfg["temporal"]["task_queues"]["onprem"]
        original = WORKER_CONFIGS[queue]
        edited = original.model_copy(deep=True)
        edited.groups["release-managers"] = ["rosa"]
        WORKER_CONFIGS[queue] = edited
        await until(handle, "gate:production")
        with pytest.raises(WorkflowUpdateFailedError, match="Workflow update failed"):
            await handle.execute_update(ReleaseWorkflow.approve, signed_as("rita", "production")(handle.id))
        await handle.execute_update(ReleaseWorkflow.approve, signed_as("rosa", "production")(handle.id))
        result = await handle.result()
    production = result.gates[1]
    assert production.approvals == ["rosa"]
    assert production.policy_version == build_gate_policy(edited, "production").version
    assert production.policy_version != build_gate_policy(original, "production").version
    assert "rita may not decide gate 'production'" in next(a.reason for a in result.audit if a.user == "rita")


async def test_a_widened_plan_in_the_input_changes_nothing(time_env: WorkflowEnvironment) -> None:
    """A starter sends a plan without gates, with mallory as release manager: the workers' plan still gates."""
    fakes = Fakes()
    async with running(time_env, fakes, lambda cfg: None) as cfg:
        plan = worker_plan(cfg)
        handle = await start(
            time_env,
            cfg,
            environments=[dataclasses.replace(e, gate=None) for e in plan.environments],
            freeze_override_members=["mallory"],
            gates=[],
        )
        await until(handle, "gate:staging")
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(ReleaseWorkflow.approve, signed_as("mallory", "staging")(handle.id))
        await handle.execute_update(
            ReleaseWorkflow.reject, signed_as("quinn", "staging", action="reject", comment="no")(handle.id)
        )
        result = await handle.result()
    assert result.outcome == "rejected" and [a for _, a in fakes.names("gitops.move")][0].environment == "testbed"
    assert len(fakes.names("gitops.move")) == 1


def canary(cfg: dict) -> None:
    cfg["services"]["web"].pop("rollouts", None)
    cfg["environments"]["production"]["rollout"] = {"namespace": "shop-production", "promotion": "approval"}


async def test_promote_is_verified_and_authorised_by_the_workers_policy(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"], canary_steps=1)
    async with running(time_env, fakes, canary) as cfg:
        handle = await start(time_env, cfg, freeze_override_members=["mallory"])  # forged: mallory a manager
        await until(handle, "gate:staging")
        await handle.execute_update(ReleaseWorkflow.approve, signed_as("quinn", "staging")(handle.id))
        await until(handle, "gate:production")
        await handle.execute_update(ReleaseWorkflow.approve, signed_as("rita", "production")(handle.id))
        await until(handle, "rollout:production")
        for _ in range(200):
            status = await handle.query(ReleaseWorkflow.status)
            if (
                status.environments[-1].rollouts.get("api")
                and status.environments[-1].rollouts["api"].phase == "Paused"
            ):
                break
            await asyncio.sleep(0.05)
        request = RolloutPromoteRequest(environment="production", user="mallory")
        with pytest.raises(WorkflowUpdateFailedError) as mallory:
            await handle.execute_update(ReleaseWorkflow.promote, signed_promotion(request, handle.id))
        unsigned = RolloutPromoteRequest(environment="production", user="raj")
        with pytest.raises(WorkflowUpdateFailedError) as nobody:
            await handle.execute_update(ReleaseWorkflow.promote, unsigned)
        raj = signed_promotion(unsigned, handle.id)
        assert await handle.execute_update(ReleaseWorkflow.promote, raj) == "promotion of production accepted"
        result = await handle.result()
        await keep_history(handle, "release-verified-promotion")
    assert "mallory may not promote production" in str(mallory.value.cause)
    assert "unverified" in str(nobody.value.cause)
    assert [(a.user, a.action) for a in result.audit if a.stage == "rollout:production"] == [
        ("mallory", "refused"),
        ("raj", "refused"),
        ("raj", "promoted"),
    ]


async def test_rollback_is_verified_and_authorised_by_the_workers_policy(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes(affected=["api"])
    async with running(time_env, fakes, lambda cfg: None) as cfg:
        plan = worker_plan(cfg)
        forged = dataclasses.replace(plan, freeze_override_members=["mallory"], gates=[])
        base = RollbackInput(
            environment="production",
            target_release_id="shop-0a0a0a0a0a0a",
            target_commit="0a" * 20,
            artifacts=[Artifact(service="api", repository="api", digest="sha256:" + "7" * 64)],
            comment="error budget burnt",
            requested_by="mallory",
            plan=forged,
        )

        async def run(inp: RollbackInput, sign: bool = True, tamper: Callable | None = None) -> object:
            wf_id = f"rollback/test/{uuid.uuid4().hex[:8]}"
            sent = signed_rollback(inp, wf_id) if sign else inp
            if tamper:
                sent = tamper(sent)
            return await time_env.client.execute_workflow(
                RollbackWorkflow.run, sent, id=wf_id, task_queue=plan.onprem_queue
            ), wf_id

        mallory, _ = await run(base)
        unsigned, _ = await run(dataclasses.replace(base, requested_by="rita"), sign=False)
        swapped, _ = await run(
            dataclasses.replace(base, requested_by="rita"),
            tamper=lambda s: dataclasses.replace(
                s, artifacts=[Artifact(service="api", repository="api", digest="sha256:" + "6" * 64)]
            ),
        )
        rita, wf_id = await run(dataclasses.replace(base, requested_by="rita"))
        # rollback-verified.json is the history of a rollback before whole-state restores: kept as recorded.
        await keep_history(time_env.client.get_workflow_handle(wf_id), "rollback-whole-state")
    assert mallory.outcome == "refused" and "mallory may not roll back production" in mallory.error
    assert unsigned.outcome == "refused" and "unverified" in unsigned.error
    assert swapped.outcome == "refused" and "not '" in swapped.error  # the images are not the signed ones
    assert rita.outcome == "succeeded" and rita.audit[-1].method.startswith("ssh signature")
    assert len(fakes.names("gitops.move")) == 1
    assert len(fakes.names("gitops.state_at")) == 1 and rita.state_commit  # the whole state, read by a worker


async def test_trust_unverified_is_for_sandboxes_and_marks_every_gate_it_decides(
    time_env: WorkflowEnvironment,
) -> None:
    raw = sample_config()
    raw["approvals"]["trust_unverified"] = True
    raw["sandbox"] = False
    with pytest.raises(ConfigError, match="approvals.trust_unverified: only a sandbox config"):
        parse_config(raw)

    def trusting(cfg: dict) -> None:
        cfg["approvals"]["trust_unverified"] = True

    fakes = Fakes()
    async with running(time_env, fakes, trusting) as cfg:
        handle = await start(time_env, cfg)
        await until(handle, "gate:staging")
        await handle.execute_update(ReleaseWorkflow.approve, Decision(stage="staging", user="quinn"))
        await until(handle, "gate:production")
        await handle.execute_update(ReleaseWorkflow.approve, signed_as("rita", "production")(handle.id))
        result = await handle.result()
    staging, production = result.gates
    assert staging.unverified and not production.unverified
    assert "UNVERIFIED" in staging.verified_by[0] and "ssh signature" in production.verified_by[0]
    from starters.render import render_status

    assert "WARNING: decided without a verified identity" in render_status(result, "")


async def test_a_decision_after_the_deadline_is_refused(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes()

    def short(cfg: dict) -> None:
        cfg["gates"]["staging"]["deadline_hours"] = 1

    async with running(time_env, fakes, short) as cfg:
        handle = await start(time_env, cfg)
        await until(handle, "gate:staging")
        await time_env.sleep(2 * 3600)
        result = await handle.result()
        with pytest.raises(Exception):  # noqa: B017 - the release has ended: nothing accepts a decision
            await handle.execute_update(ReleaseWorkflow.approve, signed_as("quinn", "staging")(handle.id))
    assert result.outcome == "expired" and result.gates[0].state == "expired" and not result.gates[0].approvals
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed"]


async def keep_history(handle: WorkflowHandle, name: str) -> None:
    """FERRY_RECORD_HISTORIES=1 saves the history for the replay tests (after a deliberate workflow change)."""
    if os.environ.get("FERRY_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text((await handle.fetch_history()).to_json())


async def test_a_plaintext_decision_is_refused_where_payloads_are_encrypted(
    time_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone with Temporal access but without Ferry's keys sends a (validly signed) decision in plaintext."""
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("FERRY_TEST_PAYLOAD_KEY", base64.b64encode(os.urandom(32)).decode())
    settings = TemporalSettings(
        address=time_env.client.service_client.config.target_host,
        encryption={"active_key": "k1", "keys": {"k1": {"env": "FERRY_TEST_PAYLOAD_KEY"}}},
    )
    client = await connect(settings)
    suffix = uuid.uuid4().hex[:8]
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": f"onprem-{suffix}", "cloud": f"cloud-{suffix}"}
    fakes = Fakes()
    async with (
        Worker(
            client, task_queue=f"onprem-{suffix}", workflows=[ReleaseWorkflow, CIWorkflow], activities=fakes.onprem()
        ),
        Worker(client, task_queue=f"cloud-{suffix}", activities=fakes.cloud()),
    ):
        plan = worker_plan(cfg)
        inp = ReleaseInput(release_id=f"rel-{suffix}", commit=COMMIT, branch="main", plan=plan)
        handle = await client.start_workflow(
            ReleaseWorkflow.run, inp, id=f"release/test/{suffix}", task_queue=plan.onprem_queue
        )
        await until(handle, "gate:staging")
        plain = time_env.client.get_workflow_handle(handle.id)  # no codec: what `temporal workflow update` sends
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await plain.execute_update("approve", signed_as("quinn", "staging")(handle.id), result_type=GateStatus)
        gate = await handle.execute_update(ReleaseWorkflow.approve, signed_as("quinn", "staging")(handle.id))
        await handle.terminate("test over")
    assert "arrived unencrypted" in str(refused.value.cause)
    assert gate.state == "approved" and gate.approvals == ["quinn"]


async def test_a_ci_started_on_its_own_builds_what_the_workers_plan_says(time_env: WorkflowEnvironment) -> None:
    """CI started straight on Temporal with a plan naming another repository: the workers' repo is built."""
    fakes = Fakes(affected=["web"])
    async with running(time_env, fakes, lambda cfg: None) as cfg:
        plan = worker_plan(cfg)
        forged = dataclasses.replace(plan, app_repo_url="https://evil.example/x.git", tekton_namespace="kube-system")
        inp = CIInput(release_id="rel-ci", commit=COMMIT, branch="main", plan=forged)
        result = await time_env.client.execute_workflow(
            CIWorkflow.run, inp, id=f"ci/test/{uuid.uuid4().hex[:8]}", task_queue=plan.onprem_queue
        )
    assert [a.service for a in result.artifacts] == ["web"]
    [(_, analyzed)] = fakes.names("changes.analyze")
    assert analyzed.repo_url == plan.app_repo_url != forged.app_repo_url
    assert all(run.namespace == plan.tekton_namespace for _, run in fakes.names("tekton.run"))
