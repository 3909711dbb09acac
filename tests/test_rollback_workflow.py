"""The Rollback workflow restores an environment's whole state under the target release, on the time-skipping
server with fake activities: every service's pin at the target's move commit (not only the target's own
images), what it cannot restore left and listed, and a refusal that changes nothing when the state cannot be
restored (no such state, an image gone from Harbor). The signed request binds the GitOps commit restored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from fakes import Fakes, worker_plan
from sample import sample_config
from signing import signed_rollback
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import errors
from common.config import FerryConfig, parse_config
from starters import rollback_cmds
from workflows.environments import image_pins
from workflows.progressive import image_of
from workflows.rollback import RollbackWorkflow, restoration, rollback_target, rollback_workflow_id
from workflows.types import (
    Artifact,
    ArtifactRef,
    EnvironmentSpec,
    EnvironmentState,
    EnvironmentStateInput,
    ImagePin,
    RollbackImage,
    RollbackInput,
    RollbackStatus,
)

TARGET = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0"
RID = f"shop-{TARGET[:12]}"
MOVE = "5" * 40  # the target's move commit in staging
D1, D2, D3, D4, D5 = ("sha256:" + c * 64 for c in "12345")


@pytest.fixture(scope="module")
async def env(time_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_env


def name_of(fn: Callable) -> str:
    return fn.__temporal_activity_definition.name  # type: ignore[attr-defined]


@asynccontextmanager
async def running(
    env: WorkflowEnvironment, fakes: Fakes, onprem: list | None = None, cloud: list | None = None
) -> AsyncIterator[FerryConfig]:
    """Both workers on per-test queues, with `onprem`/`cloud` replacing the fakes of the same names."""
    suffix = uuid.uuid4().hex[:8]
    data = sample_config()
    data["temporal"]["task_queues"] = {"onprem": f"onprem-{suffix}", "cloud": f"cloud-{suffix}"}
    cfg = parse_config(data)

    def merged(base: list, extra: list | None) -> list:
        names = {name_of(f) for f in extra or []}
        return [f for f in base if name_of(f) not in names] + list(extra or [])

    async with (
        Worker(
            env.client,
            task_queue=cfg.task_queue("onprem"),
            workflows=[RollbackWorkflow],
            activities=merged(fakes.onprem(), onprem),
        ),
        Worker(env.client, task_queue=cfg.task_queue("cloud"), activities=merged(fakes.cloud(), cloud)),
    ):
        yield cfg


def staging(cfg: FerryConfig) -> EnvironmentSpec:
    return next(e for e in worker_plan(cfg).environments if e.name == "staging")


def pin(cfg: FerryConfig, name: str, digest: str) -> ImagePin:
    [p] = image_pins(staging(cfg), [Artifact(service=name, repository=name, digest=digest)])
    return p


def request(cfg: FerryConfig, user: str = "quinn", **kw) -> RollbackInput:
    """A rollback of staging to a release that built api only."""
    return RollbackInput(
        environment="staging",
        target_release_id=RID,
        target_commit=TARGET,
        artifacts=[Artifact(service="api", repository="api", digest=D1)],
        comment="checkout broke after the web release",
        requested_by=user,
        plan=worker_plan(cfg),
        target_gitops_commit=kw.pop("target_gitops_commit", MOVE),
        **kw,
    )


async def run(env: WorkflowEnvironment, inp: RollbackInput, tamper: Callable | None = None) -> RollbackStatus:
    wf_id = f"{rollback_workflow_id('shop', inp.environment, inp.target_commit)}/{uuid.uuid4().hex[:6]}"
    sent = signed_rollback(inp, wf_id)
    if tamper:
        sent = tamper(sent)
    return await env.client.execute_workflow(RollbackWorkflow.run, sent, id=wf_id, task_queue=inp.plan.onprem_queue)


def state_fake(images: Callable[[], list[ImagePin]], current: Callable[[], list[ImagePin]], seen: list):
    @activity.defn(name="gitops.state_at")
    async def state_at(inp: EnvironmentStateInput) -> EnvironmentState:
        seen.append(inp)
        return EnvironmentState(inp.environment, inp.release_id, inp.commit or MOVE, images(), "9" * 40, current())

    return state_at


async def test_the_whole_state_is_restored_and_what_cannot_be_is_listed(env: WorkflowEnvironment) -> None:
    """The target built api only; a later release moved web and added worker; `legacy` left ferry.yaml."""
    fakes, seen = Fakes(), []
    cfg = parse_config(sample_config())  # for the pins only: the registry is the same on every test queue
    then = [pin(cfg, "api", D1), pin(cfg, "web", D2), pin(cfg, "legacy", D5)]
    now = [pin(cfg, "api", D1), pin(cfg, "web", D3), pin(cfg, "worker", D4)]
    async with running(env, fakes, onprem=[state_fake(lambda: then, lambda: now, seen)]) as cfg:
        result = await run(env, request(cfg))

    assert result.outcome == "succeeded", result.error
    [asked] = seen
    assert asked.release_id == RID and asked.commit == MOVE and asked.app_commit == TARGET
    assert asked.expected == [pin(cfg, "api", D1)]  # the target's own images must be in its state
    [(_, move)] = fakes.names("gitops.move")
    assert move.rollback and move.release_id == RID
    assert move.images == [pin(cfg, "api", D1), pin(cfg, "web", D2)]  # web too: every service's pin of then
    # Only the image that changes is confirmed in Harbor; one Argo CD application deploys both.
    assert [a.repository for _, a in fakes.names("harbor.confirm")] == ["web"]
    assert [a.app for _, a in fakes.names("argocd.sync")] == ["shop-staging"]
    assert result.state_commit == MOVE
    images = {i.name: i for i in result.images}
    assert images["api"] == RollbackImage("api", "api", image_of(now[0]), image_of(then[0]), image_of(then[0]))
    assert images["web"] == RollbackImage("web", "web", image_of(now[1]), image_of(then[1]), image_of(then[1]))
    assert images["worker"].after == image_of(now[2]) and images["worker"].target == ""
    assert images["worker"].left_behind.startswith(f"added after {RID}")
    assert images["legacy"].after == "" and images["legacy"].target == image_of(then[2])
    assert "no service of ferry.yaml uses it in staging now" in images["legacy"].left_behind

    out = rollback_cmds.render(result)
    assert f"staging rolled back to {RID} ({TARGET[:12]})" in out
    assert f"every service's pin as {RID} left it (gitops {MOVE[:12]}):" in out
    assert f"    api: unchanged, {rollback_cmds.short_image(image_of(then[0]))}" in out
    web = f"{rollback_cmds.short_image(image_of(now[1]))} -> {rollback_cmds.short_image(image_of(then[1]))}"
    assert f"    web: {web}\n" in out
    assert "  left behind (2)" in out
    assert f"    worker: stays {rollback_cmds.short_image(image_of(now[2]))}: added after {RID}" in out
    assert "    legacy: stays (not pinned): pinned in" in out


@pytest.mark.parametrize(
    "failure",
    [
        f"{RID}'s deployment to staging was reverted (...): it never stayed deployed there",
        f"no GitOps commit on the branch deployed {RID} to staging",
    ],
)
async def test_no_state_to_restore_is_refused_and_changes_nothing(env: WorkflowEnvironment, failure: str) -> None:
    @activity.defn(name="gitops.state_at")
    async def state_at(inp: EnvironmentStateInput) -> EnvironmentState:
        raise errors.fatal(failure, "UnrestorableState")

    fakes = Fakes()
    async with running(env, fakes, onprem=[state_at]) as cfg:
        result = await run(env, request(cfg))
    assert result.outcome == "refused" and result.stage == "refused"
    assert result.error == f"cannot restore staging to {RID}: {failure}"
    assert [a.action for a in result.audit] == ["refused"] and result.audit[0].reason == result.error
    assert not fakes.names("gitops.move") and not fakes.names("harbor.confirm") and not fakes.names("argocd.sync")


async def test_an_image_gone_from_harbor_is_refused_naming_it(env: WorkflowEnvironment) -> None:
    fakes, seen, confirmed = Fakes(), [], []
    cfg = parse_config(sample_config())
    then = [pin(cfg, "api", D1), pin(cfg, "web", D2), pin(cfg, "worker", D4)]
    now = [pin(cfg, "api", D3), pin(cfg, "web", D3), pin(cfg, "worker", D3)]

    @activity.defn(name="harbor.confirm")
    async def confirm(ref: ArtifactRef) -> ArtifactRef:
        confirmed.append(ref.repository)
        if ref.repository != "web":
            # As harbor.confirm says it (retryable, since replication may lag): the workflow does not wait.
            raise errors.retryable(
                f"Harbor ({ref.instance}): image {ref.repository} is not there yet", "ArtifactMissing"
            )
        return ref

    async with running(env, fakes, onprem=[state_fake(lambda: then, lambda: now, seen)], cloud=[confirm]) as cfg:
        result = await run(env, request(cfg))
    assert result.outcome == "refused"
    assert sorted(confirmed) == ["api", "web", "worker"]  # each checked once: a missing image is not waited for
    assert result.error.startswith(f"cannot restore staging to {RID}: api (")
    assert f"worker ({image_of(then[2])})" in result.error and "web" not in result.error
    assert "no longer in cloud Harbor (project ferry); nothing was changed" in result.error
    assert not fakes.names("gitops.move") and not fakes.names("argocd.sync")


async def test_the_signature_binds_the_gitops_commit_restored(env: WorkflowEnvironment) -> None:
    fakes, seen = Fakes(), []
    cfg = parse_config(sample_config())
    state = [pin(cfg, "api", D1)]
    async with running(env, fakes, onprem=[state_fake(lambda: state, lambda: state, seen)]) as cfg:
        other = await run(env, request(cfg), tamper=lambda s: dataclasses.replace(s, target_gitops_commit="6" * 40))
        dropped = await run(env, request(cfg), tamper=lambda s: dataclasses.replace(s, target_gitops_commit=""))
        ok = await run(env, request(cfg))
    for refused in (other, dropped):
        assert refused.outcome == "refused" and "not '" in refused.error  # the target is not the signed one
    assert ok.outcome == "succeeded" and [s.commit for s in seen] == [MOVE]
    [(_, move)] = fakes.names("gitops.move")
    assert move.images == state  # nothing changes: the move finds its pins in place


def test_the_target_names_the_release_its_images_and_the_gitops_commit() -> None:
    cfg = parse_config(sample_config())
    inp = request(cfg)
    assert rollback_target(inp).startswith(f"{RID} ")
    assert rollback_target(inp) != rollback_target(dataclasses.replace(inp, target_gitops_commit="6" * 40))
    # Without a commit (an older CLI) the target is what it always was: the release and its images.
    legacy = dataclasses.replace(inp, target_gitops_commit="")
    assert rollback_target(legacy) == f"{RID} " + hashlib.sha256(f"api=api@{D1}".encode()).hexdigest()[:32]


def test_restoration_pins_every_service_of_the_state_and_never_an_unknown_image() -> None:
    cfg = parse_config(sample_config())
    plan, env = worker_plan(cfg), staging(cfg)
    state = EnvironmentState(
        "staging",
        RID,
        MOVE,
        images=[pin(cfg, "api", D1), pin(cfg, "redis", D2), pin(cfg, "web", D2)],
        current=[pin(cfg, "redis", D2), pin(cfg, "web", D3), pin(cfg, "sidecar", D4)],
    )
    pins, images = restoration(plan, env, state)
    assert pins == [pin(cfg, "api", D1), pin(cfg, "web", D2)]
    by = {i.name: i for i in images}
    assert list(by) == ["api", "redis", "sidecar", "web"]
    assert (by["api"].before, by["api"].after) == ("", image_of(pin(cfg, "api", D1)))  # pinned again
    assert by["redis"].left_behind == "" and by["redis"].after == by["redis"].target  # the same then and now
    assert "pinned outside Ferry, left as is" in by["sidecar"].left_behind and by["sidecar"].service == ""
