"""Gate policy on the time-skipping server: distinct approvers, four-eyes, expiry with a webhook, freeze
windows and their override, supply-chain stops. Activities are fakes registered by name, except the webhook,
which is the real notify activity posting to the sandbox receiver (in-process)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fakes import Fakes, worker_plan
from sample import sample_config
from signing import signed
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.notify import NotifyActivities
from common.config import CredentialRef
from sandbox.receiver import build_receiver
from workflows.ci import CIWorkflow
from workflows.release import ReleaseWorkflow
from workflows.types import Decision, ReleaseInput, ReleaseStatus, Supersede

COMMIT = "b" * 40
HOOK = "http://receiver.test/hooks/t0ken-9f2"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FERRY_TEST_WEBHOOK", HOOK)
    return build_receiver()


@asynccontextmanager
async def running(env: WorkflowEnvironment, fakes: Fakes, receiver: Any) -> AsyncIterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    onprem, cloud = f"onprem-{suffix}", f"cloud-{suffix}"
    notify = NotifyActivities(CredentialRef(env="FERRY_TEST_WEBHOOK"), httpx.ASGITransport(app=receiver))
    async with (
        Worker(
            env.client,
            task_queue=onprem,
            workflows=[ReleaseWorkflow, CIWorkflow],
            activities=[*fakes.onprem(notify=False), notify.webhook],
        ),
        Worker(env.client, task_queue=cloud, activities=fakes.cloud()),
    ):
        yield onprem, cloud
    await notify.aclose()


async def start(
    env: WorkflowEnvironment, queues: tuple[str, str], edit: Callable[[dict], None] = lambda c: None
) -> WorkflowHandle:
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": queues[0], "cloud": queues[1]}
    cfg["notifications"] = {"webhook_url": {"env": "FERRY_TEST_WEBHOOK"}}
    edit(cfg)
    inp = ReleaseInput(release_id=f"rel-{uuid.uuid4().hex[:6]}", commit=COMMIT, branch="main", plan=worker_plan(cfg))
    return await env.client.start_workflow(
        ReleaseWorkflow.run, inp, id=f"release/test/{inp.release_id}", task_queue=queues[0]
    )


async def wait_stage(handle: WorkflowHandle, stage: str) -> ReleaseStatus:
    for _ in range(300):
        status = await handle.query(ReleaseWorkflow.status)
        if status.stage == stage:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {stage}; at {status.stage}")


async def approve(handle: WorkflowHandle, stage: str, user: str, **extra: Any) -> Any:
    decision = Decision(stage=stage, user=user, **extra)
    return await handle.execute_update(ReleaseWorkflow.approve, signed(decision, handle.id, "approve"))


async def test_two_distinct_approvers_open_the_gate_the_same_one_twice_counts_once(
    time_env: WorkflowEnvironment, receiver: Any
) -> None:
    def two(cfg: dict) -> None:
        cfg["gates"]["production"]["required_approvals"] = 2

    fakes = Fakes()
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, two)
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        first = await approve(handle, "production", "rita")
        again = await approve(handle, "production", "rita")
        assert (first.state, again.state, again.approvals) == ("waiting", "waiting", ["rita"])
        assert (await handle.query(ReleaseWorkflow.status)).stage == "gate:production"
        opened = await approve(handle, "production", "raj")
        result = await handle.result()
    assert opened.state == "approved" and opened.approvals == ["rita", "raj"]
    assert result.outcome == "succeeded"
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed", "staging", "production"]


async def test_commit_author_is_refused_at_production_another_member_passes(
    time_env: WorkflowEnvironment, receiver: Any
) -> None:
    fakes = Fakes(author=("Rita Release", "rita@example.com"))
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues)
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await approve(handle, "production", "rita")
        assert "four-eyes: rita is the author of the commit" in str(refused.value.cause)
        await approve(handle, "production", "raj")
        result = await handle.result()
    assert result.outcome == "succeeded" and result.gates[1].decided_by == "raj"


async def test_gate_expires_without_moving_the_environment_and_says_so(
    time_env: WorkflowEnvironment, receiver: Any
) -> None:
    def short(cfg: dict) -> None:
        cfg["gates"]["staging"]["deadline_hours"] = 1

    fakes = Fakes()
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, short)
        result = await handle.result()  # nobody approves; the server skips time to the deadline
    assert result.outcome == "expired" and result.gates[0].state == "expired"
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed"]
    events = [m["ferry"]["event"] for m in receiver.state.messages]
    assert events == ["gate_waiting", "gate_expired"]
    assert "expired at gate staging" in receiver.state.messages[-1]["text"]
    assert all(m["path"] == "/hooks/t0ken-9f2" for m in receiver.state.messages)


def production_frozen_at(now: datetime) -> Callable[[dict], None]:
    """A freeze of production around `now` (the test server's clock, which earlier tests moved on)."""
    return lambda cfg: _freeze(cfg, now)


def _freeze(cfg: dict, now: datetime) -> None:
    cfg["freeze_windows"] = [
        {
            "environments": ["production"],
            "reason": "year-end freeze",
            "start": (now - timedelta(hours=1)).isoformat(),
            "end": (now + timedelta(hours=6)).isoformat(),
        }
    ]


async def test_approval_in_a_freeze_waits_for_the_window_to_end(time_env: WorkflowEnvironment, receiver: Any) -> None:
    fakes = Fakes()
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, production_frozen_at(await time_env.get_current_time()))
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        gate = await approve(handle, "production", "rita")
        assert gate.state == "approved"
        frozen = await wait_stage(handle, "frozen:production")
        assert frozen.gates[1].freeze_reason == "year-end freeze" and frozen.gates[1].frozen_until
        assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed", "staging"]
        result = await handle.result()  # time skips to the end of the window
    assert result.outcome == "succeeded"
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed", "staging", "production"]
    moved_at = datetime.fromisoformat(result.timings["deploy:production"]["started"])
    assert moved_at >= datetime.fromisoformat(frozen.gates[1].frozen_until)


async def test_a_release_superseded_while_frozen_does_not_move_when_the_window_ends(
    time_env: WorkflowEnvironment, receiver: Any
) -> None:
    fakes = Fakes()
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, production_frozen_at(await time_env.get_current_time()))
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        await approve(handle, "production", "rita")
        await wait_stage(handle, "frozen:production")
        # A newer commit passed CI meanwhile: its coordinator tells this release.
        await handle.signal(ReleaseWorkflow.supersede, Supersede(by_commit="d" * 40, by_release="shop-dddddddddddd"))
        result = await handle.result()
    assert result.outcome == "superseded" and result.superseded_by == "d" * 40
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed", "staging"]  # production untouched


async def test_override_freeze_deploys_at_once_and_is_audited(time_env: WorkflowEnvironment, receiver: Any) -> None:
    fakes = Fakes()
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, production_frozen_at(await time_env.get_current_time()))
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        with pytest.raises(WorkflowUpdateFailedError) as no_comment:
            await approve(handle, "production", "rita", override_freeze=True)
        assert "needs --comment" in str(no_comment.value.cause)
        await approve(handle, "production", "rita", override_freeze=True, comment="hotfix for INC-42")
        result = await handle.result()
    assert result.outcome == "succeeded"
    assert "frozen:production" not in result.timings
    override = [a for a in result.audit if "override-freeze" in a.action]
    assert [(a.user, a.comment) for a in override] == [("rita", "hotfix for INC-42")]


async def test_override_after_approval_releases_a_waiting_move(time_env: WorkflowEnvironment, receiver: Any) -> None:
    fakes = Fakes()
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, production_frozen_at(await time_env.get_current_time()))
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        await approve(handle, "production", "raj")
        await wait_stage(handle, "frozen:production")
        with pytest.raises(WorkflowUpdateFailedError) as qa:
            await approve(handle, "production", "quinn", override_freeze=True, comment="please")
        assert "may not override a freeze" in str(qa.value.cause)
        await approve(handle, "production", "rita", override_freeze=True, comment="security fix")
        result = await handle.result()
    assert result.outcome == "succeeded"
    # The refused override is audited too (as every refusal is), with the reason.
    assert [a.action for a in result.audit if a.stage == "production"] == ["approve", "refused", "override-freeze"]


async def test_high_cve_passes_testbed_and_is_blocked_for_production(
    time_env: WorkflowEnvironment, receiver: Any
) -> None:
    fakes = Fakes(high={"api"})
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues)
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        await wait_stage(handle, "gate:production")
        await approve(handle, "production", "rita")
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query(ReleaseWorkflow.status)
    assert status.error.startswith("deploy:production") and "CVE-2026-1000" in status.error
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed", "staging"]
    assert [m["ferry"]["event"] for m in receiver.state.messages][-1] == "failed"


async def test_allow_listed_cve_passes_until_its_expiry(time_env: WorkflowEnvironment, receiver: Any) -> None:
    def allow(expires: str) -> Callable[[dict], None]:
        def edit(cfg: dict) -> None:
            cfg["environments"]["production"]["policy"]["allow_cves"] = [
                {"id": "CVE-2026-1000", "expires": expires, "reason": "not reachable"}
            ]

        return edit

    today = await time_env.get_current_time()
    tomorrow = (today + timedelta(days=1)).date().isoformat()
    yesterday = (today - timedelta(days=1)).date().isoformat()
    for expires, outcome in ((tomorrow, "succeeded"), (yesterday, "failed")):
        fakes = Fakes(high={"api"})
        async with running(time_env, fakes, receiver) as queues:
            handle = await start(time_env, queues, allow(expires))
            await wait_stage(handle, "gate:staging")
            await approve(handle, "staging", "quinn")
            await wait_stage(handle, "gate:production")
            await approve(handle, "production", "rita")
            with pytest.raises(WorkflowFailureError) if outcome == "failed" else _nothing():
                await handle.result()
            status = await handle.query(ReleaseWorkflow.status)
        assert status.outcome == outcome
        if outcome == "succeeded":
            assert status.allowed_findings == {"production/api": ["CVE-2026-1000 (High)"]}


async def test_unsigned_image_is_refused_before_staging(time_env: WorkflowEnvironment, receiver: Any) -> None:
    def signed(cfg: dict) -> None:
        cfg["signing"] = {"key": {"file": "/k"}, "public_key": {"file": "/k.pub"}}
        cfg["environments"]["staging"]["policy"]["require_signature"] = True

    fakes = Fakes(unsigned={"api"})
    async with running(time_env, fakes, receiver) as queues:
        handle = await start(time_env, queues, signed)
        await wait_stage(handle, "gate:staging")
        await approve(handle, "staging", "quinn")
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query(ReleaseWorkflow.status)
    assert status.error.startswith("deploy:staging") and "no signature" in status.error
    assert [a.environment for _, a in fakes.names("gitops.move")] == ["testbed"]
    # CI signed what it pushed; the cloud worker verified before staging.
    assert [q for q, _ in fakes.names("cosign.sign")] == [queues[0]]
    assert [q for q, _ in fakes.names("cosign.verify")] == [queues[1]]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
