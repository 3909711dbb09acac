"""Monotonic environments and `ferry rollback`.

Activity part, against real bare repos (app monorepo + GitOps): a move goes forward, a move to an ancestor of
the running app commit is refused with NonMonotonicMove, the same commit is a no-op, diverged lines pass,
and an explicit rollback with a comment moves back and records a `Ferry-Rollback:` trailer.
Workflow part, on the time-skipping server with fake activities registered by name: the Rollback workflow's
audit, its refusal of an unauthorised requester, and the `ferry rollback` command against a real release.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import git
import pytest
from fakes import Fakes, worker_plan
from sample import sample_config
from signing import signed, signed_rollback
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import activities.gitops as gitops_module
from activities.errors import BAD_REQUEST, NON_MONOTONIC_MOVE
from activities.gitops import GitOpsActivities
from activities.gitrepo import GitWorkspace
from common.config import FerryConfig, parse_config
from sandbox.repos import commit_change, create_repos, log
from starters import rollback_cmds
from starters.common import FAILED, OK, CommandError
from workflows.ci import CIWorkflow
from workflows.release import ReleaseWorkflow, release_workflow_id
from workflows.rollback import ROLLBACK_FAILED, RollbackWorkflow, refusal, rollback_target, rollback_workflow_id
from workflows.types import (
    Artifact,
    Decision,
    DeployedInput,
    DeployedRevision,
    GitOpsMoveInput,
    ImagePin,
    ReleaseInput,
    RollbackInput,
    RollbackStatus,
)

ROOT = Path(__file__).resolve().parent.parent
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


# --- the activity, on real repos ---


@dataclass
class Repos:
    """The bare repos and the app history: c0 -> c1 -> c2 on main, and h on a hotfix branch off c1."""

    app: Path
    gitops: Path
    c0: str
    c1: str
    c2: str
    h: str


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Repos:
    root = tmp_path_factory.mktemp("template")
    app, gitops = create_repos(root, ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app")
    c0 = git.Git(str(app)).rev_parse("refs/heads/main").strip()
    c1 = commit_change(app, {"services/api/one.txt": "1\n"}, "api: one")
    c2 = commit_change(app, {"services/api/two.txt": "2\n"}, "api: two")
    h = commit_change(app, {"services/api/fix.txt": "fix\n"}, "api: hotfix", branch="hotfix", start_point=c1)
    return Repos(app=app, gitops=gitops, c0=c0, c1=c1, c2=c2, h=h)


@pytest.fixture
def repos(template: Repos, tmp_path: Path) -> Repos:
    """A fresh copy of the module's repos for each test (made once: creating them is the slow part)."""
    app, gitops = tmp_path / "app.git", tmp_path / "gitops.git"
    shutil.copytree(template.app, app)
    shutil.copytree(template.gitops, gitops)
    return dataclasses.replace(template, app=app, gitops=gitops)


@pytest.fixture
def acts(tmp_path: Path) -> GitOpsActivities:
    return GitOpsActivities(GitWorkspace(tmp_path / "ws"), author_name="Ferry Bot", author_email="ferry@example.com")


def move(
    r: Repos,
    commit: str,
    digest: str,
    *,
    env: str = "testbed",
    check: bool = True,
    rollback: bool = False,
    comment: str = "",
    by: str = "",
) -> GitOpsMoveInput:
    return GitOpsMoveInput(
        repo_url=str(r.gitops),
        branch="main",
        environment=env,
        path=env,
        images=[ImagePin(name="api", new_name="harbor.onprem.local/ferry/api", digest=digest)],
        release_id=f"shop-{commit[:12]}",
        app_commit=commit,
        app_repo_url=str(r.app) if check else "",
        rollback=rollback,
        rollback_comment=comment,
        requested_by=by,
    )


def head(repo: Path) -> str:
    return git.Git(str(repo)).rev_parse("refs/heads/main").strip()


def trailers(repo: Path, sha: str) -> dict[str, str]:
    out = git.Git(str(repo)).log("-1", "--format=%(trailers:only,unfold)", sha).strip()
    return dict(line.split(": ", 1) for line in out.splitlines())


async def test_forward_moves_pass_and_each_environment_is_judged_on_its_own(repos: Repos, acts) -> None:
    first = await acts.move(move(repos, repos.c1, D1))
    second = await acts.move(move(repos, repos.c2, D2))
    assert first.changed and second.changed and second.commit == head(repos.gitops)
    assert trailers(repos.gitops, second.commit)["Ferry-Commit"] == repos.c2
    # Staging runs nothing yet: c1 is fine there although testbed is at c2.
    staging = await acts.move(move(repos, repos.c1, D1, env="staging"))
    assert staging.changed and trailers(repos.gitops, staging.commit)["Ferry-Environment"] == "staging"
    # And run twice, a forward move is one commit.
    again = await acts.move(move(repos, repos.c1, D1, env="staging"))
    assert not again.changed and again.commit == staging.commit == head(repos.gitops)


async def test_a_move_to_an_ancestor_is_refused_with_what_to_do(repos: Repos, acts) -> None:
    await acts.move(move(repos, repos.c2, D2))
    before = head(repos.gitops)
    commits = len(log(repos.gitops))
    for _ in range(2):  # refused the same way every time, and nothing is ever written
        with pytest.raises(ApplicationError) as err:
            await acts.move(move(repos, repos.c1, D1))
        e = err.value
        assert e.type == NON_MONOTONIC_MOVE and e.non_retryable
        assert e.message.startswith(f"environment testbed runs app commit {repos.c2[:12]}; {repos.c1[:12]} ")
        assert "older code over newer" in e.message
        assert f"ferry rollback testbed --to shop-{repos.c1[:12]} --comment" in e.message
        assert e.details == ({"environment": "testbed", "running_commit": repos.c2, "requested_commit": repos.c1},)
        assert head(repos.gitops) == before and len(log(repos.gitops)) == commits
    # The root commit is an ancestor too, however far back.
    with pytest.raises(ApplicationError, match="is an ancestor of it"):
        await acts.move(move(repos, repos.c0, D3))


async def test_the_same_commit_again_is_the_usual_no_op(repos: Repos, acts) -> None:
    done = await acts.move(move(repos, repos.c2, D2))
    again = await acts.move(move(repos, repos.c2, D2))
    assert not again.changed and again.commit == done.commit == head(repos.gitops)
    # A rebuild of the running commit (new digest, same code) is not a step back either.
    rebuilt = await acts.move(move(repos, repos.c2, D3))
    assert rebuilt.changed and trailers(repos.gitops, rebuilt.commit)["Ferry-Commit"] == repos.c2


async def test_diverged_commits_replace_each_other(repos: Repos, acts) -> None:
    await acts.move(move(repos, repos.c2, D2))
    hotfix = await acts.move(move(repos, repos.h, D3))  # h is off c1: neither is the other's ancestor
    assert hotfix.changed and trailers(repos.gitops, hotfix.commit)["Ferry-Commit"] == repos.h
    back_to_main = await acts.move(move(repos, repos.c2, D2))
    assert back_to_main.changed
    # But the hotfix's own base is an ancestor of what runs now (c2): refused.
    with pytest.raises(ApplicationError) as err:
        await acts.move(move(repos, repos.c1, D1))
    assert err.value.type == NON_MONOTONIC_MOVE


async def test_rollback_with_a_comment_moves_back_and_records_who_and_why(repos: Repos, acts) -> None:
    await acts.move(move(repos, repos.c2, D2))
    back = move(repos, repos.c1, D1, rollback=True, comment="api 500s after\nc2", by="rita")
    done = await acts.move(back)
    assert done.changed and done.commit == head(repos.gitops)
    assert trailers(repos.gitops, done.commit) == {
        "Ferry-Release": f"shop-{repos.c1[:12]}",
        "Ferry-Commit": repos.c1,
        "Ferry-Environment": "testbed",
        "Ferry-Rollback": "rita: api 500s after c2",  # a newline in the comment cannot forge a trailer
    }
    assert log(repos.gitops)[0][1].startswith(f"testbed: rollback to release shop-{repos.c1[:12]}\n")
    # Twice: the same commit, nothing new.
    again = await acts.move(back)
    assert not again.changed and again.commit == done.commit == head(repos.gitops)
    # From there testbed runs c1: c1 again is a no-op, c2 is forward again, c0 is still refused.
    assert not (await acts.move(move(repos, repos.c1, D1))).changed
    with pytest.raises(ApplicationError, match="ferry rollback testbed"):
        await acts.move(move(repos, repos.c0, D3))
    assert (await acts.move(move(repos, repos.c2, D2))).changed


@pytest.mark.parametrize(
    ("comment", "by", "problem"), [("", "rita", "a comment"), ("  ", "rita", "a comment"), ("why", "", "who asked")]
)
async def test_rollback_without_comment_or_requester_is_refused(
    repos: Repos, acts, comment: str, by: str, problem: str
) -> None:
    with pytest.raises(ApplicationError) as err:
        await acts.move(move(repos, repos.c1, D1, rollback=True, comment=comment, by=by))
    assert err.value.type == BAD_REQUEST and err.value.non_retryable
    assert problem in str(err.value) and "ferry rollback testbed --to RELEASE --comment" in str(err.value)
    assert not acts.workspace.root.exists()  # refused before any git


async def test_without_the_app_repo_there_is_no_check(repos: Repos, acts) -> None:
    """Releases recorded before the check send no app_repo_url; they move as they always did."""
    await acts.move(move(repos, repos.c2, D2))
    assert (await acts.move(move(repos, repos.c1, D1, check=False))).changed


async def test_a_running_commit_the_app_repo_lost_does_not_block_forever(repos: Repos, acts) -> None:
    gone = "f" * 40  # history rewritten since that release: the commit cannot be ordered any more
    await acts.move(move(repos, gone, D2, check=False))
    assert (await acts.move(move(repos, repos.c1, D1))).changed


async def test_an_environment_moved_during_the_check_is_checked_again(
    repos: Repos, acts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """testbed runs c0; while a move to c1 is being checked, another release puts testbed on c2."""
    await acts.move(move(repos, repos.c0, D3))
    original = gitops_module.check_forward
    seen: list[str] = []

    def racing_check(repo: git.Repo, inp: GitOpsMoveInput, running: str) -> None:
        seen.append(running)
        if len(seen) == 1:  # runs in the workspace's thread, so a loop of its own is fine
            other = GitOpsActivities(GitWorkspace(acts.workspace.root.parent / "other-worker"))
            asyncio.run(other.move(move(repos, repos.c2, D2, check=False)))
        original(repo, inp, running)

    monkeypatch.setattr(gitops_module, "check_forward", racing_check)
    with pytest.raises(ApplicationError) as err:
        await acts.move(move(repos, repos.c1, D1))
    assert err.value.type == NON_MONOTONIC_MOVE
    assert seen == [repos.c0, repos.c2]  # c1 passed against c0, then was judged again against c2
    assert trailers(repos.gitops, head(repos.gitops))["Ferry-Commit"] == repos.c2


async def test_deployed_reads_what_an_environment_runs(repos: Repos, acts) -> None:
    moved = await acts.move(move(repos, repos.c2, D2))
    inp = DeployedInput(repo_url=str(repos.gitops), branch="main", environment="testbed", path="testbed")
    first, second = await acts.deployed(inp), await acts.deployed(inp)
    assert first == second == DeployedRevision(environment="testbed", app_commit=repos.c2, gitops_commit=moved.commit)
    staging = await acts.deployed(DeployedInput(str(repos.gitops), "main", "staging", "staging"))
    assert staging.app_commit == "" and staging.gitops_commit == moved.commit
    with pytest.raises(ApplicationError) as err:
        await acts.deployed(DeployedInput(str(repos.gitops), "main", "x", "../x"))
    assert err.value.type == BAD_REQUEST


# --- the Rollback workflow, on the time-skipping server ---

TARGET = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
RUNNING = "beef0000beef0000beef0000beef0000beef0000"


@pytest.fixture(scope="module")
async def env(time_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return time_env


@asynccontextmanager
async def running(env: WorkflowEnvironment, fakes: Fakes, *, release: bool = False) -> AsyncIterator[FerryConfig]:
    """Both workers on per-test task queues; yields the config that names them."""
    suffix = uuid.uuid4().hex[:8]
    data = sample_config()
    data["temporal"]["task_queues"] = {"onprem": f"onprem-{suffix}", "cloud": f"cloud-{suffix}"}
    cfg = parse_config(data)
    workflows = [RollbackWorkflow, ReleaseWorkflow, CIWorkflow] if release else [RollbackWorkflow]
    async with (
        Worker(
            env.client,
            task_queue=cfg.task_queue("onprem"),
            workflows=workflows,
            activities=fakes.onprem(),
        ),
        Worker(env.client, task_queue=cfg.task_queue("cloud"), activities=fakes.cloud()),
    ):
        yield cfg


def rollback_request(cfg: FerryConfig, user: str, environment: str = "staging", **kw) -> RollbackInput:
    return RollbackInput(
        environment=environment,
        target_release_id=f"shop-{TARGET[:12]}",
        target_commit=TARGET,
        artifacts=[
            Artifact(service="api", repository="api", digest=D1),
            Artifact(service="web", repository="web", digest=D2),
        ],
        comment=kw.pop("comment", "checkout errors since the last release"),
        requested_by=user,
        plan=worker_plan(cfg),
        **kw,
    )


async def run_rollback(env: WorkflowEnvironment, inp: RollbackInput) -> RollbackStatus:
    """Start the Rollback as `ferry rollback --as` does: signed by the requester (when there is one)."""
    wf_id = f"{rollback_workflow_id('shop', inp.environment, inp.target_commit)}/{uuid.uuid4().hex[:6]}"
    sent = signed_rollback(inp, wf_id) if inp.requested_by.strip() and inp.proof is None else inp
    return await env.client.execute_workflow(RollbackWorkflow.run, sent, id=wf_id, task_queue=inp.plan.onprem_queue)


async def test_rollback_by_a_gate_member_moves_syncs_and_is_audited(env: WorkflowEnvironment) -> None:
    fakes = Fakes(running=RUNNING)
    async with running(env, fakes) as cfg:
        inp = rollback_request(cfg, "quinn")  # qa decides the staging gate
        result = await run_rollback(env, inp)
    onprem, cloud = cfg.task_queue("onprem"), cfg.task_queue("cloud")

    assert result.outcome == "succeeded" and result.stage == "done"
    assert result.from_commit == RUNNING
    [(queue, moved)] = fakes.names("gitops.move")
    assert queue == onprem
    assert moved.rollback and moved.requested_by == "quinn" and moved.rollback_comment == inp.comment
    assert moved.app_commit == TARGET and moved.release_id == f"shop-{TARGET[:12]}"
    assert moved.app_repo_url == inp.plan.app_repo_url and moved.path == "staging"
    staging = next(e for e in inp.plan.environments if e.name == "staging")
    assert {(p.name, p.new_name, p.digest) for p in moved.images} == {
        ("api", f"{staging.harbor_registry}/{staging.harbor_project}/api", D1),
        ("web", f"{staging.harbor_registry}/{staging.harbor_project}/web", D2),
    }
    gitops_commit = hashlib.sha1(b"staging").hexdigest()  # what the fake move returns
    assert result.gitops_commit == gitops_commit
    # Images confirmed in the cloud Harbor before the move; Argo CD synced there at the rollback's commit.
    assert sorted(a.digest for q, a in fakes.names("harbor.confirm") if q == cloud) == [D1, D2]
    names = [n for n, _, _ in fakes.calls]
    assert names.index("gitops.deployed") < names.index("harbor.confirm") < names.index("gitops.move")
    synced = fakes.names("argocd.sync")
    assert {(q, a.instance, a.revision) for q, a in synced} == {(cloud, "cloud", gitops_commit)}
    assert [a.app for _, a in synced] == ["shop-staging"]  # one application deploys both services
    assert list(result.apps) == ["shop-staging"] and result.apps["shop-staging"].startswith("Synced/Healthy@")
    [entry] = result.audit
    assert (entry.environment, entry.user, entry.action, entry.channel) == ("staging", "quinn", "rolled-back", "cli")
    assert (entry.from_commit, entry.to_commit, entry.comment) == (RUNNING, TARGET, inp.comment)
    assert entry.at and entry.reason == ""


async def test_an_unauthorised_requester_is_refused_and_audited(env: WorkflowEnvironment) -> None:
    fakes = Fakes(running=RUNNING)
    async with running(env, fakes) as cfg:
        refused = await run_rollback(env, rollback_request(cfg, "mallory"))
        not_qa = await run_rollback(env, rollback_request(cfg, "dev", email="dev@example.com", channel="buildkite"))
    for result, who in ((refused, "mallory"), (not_qa, "dev")):
        assert result.outcome == "refused" and result.stage == "refused"
        assert f"{who} may not roll back staging" in result.error
        [entry] = result.audit
        assert (entry.user, entry.action, entry.to_commit) == (who, "refused", TARGET)
        assert entry.reason == result.error and entry.comment
    assert not_qa.audit[0].channel == "buildkite"
    assert fakes.calls == []  # nothing read, nothing moved, nothing synced


async def test_release_managers_may_roll_back_anywhere_and_any_gate_member_an_ungated_env(
    env: WorkflowEnvironment,
) -> None:
    fakes = Fakes(running=RUNNING)
    async with running(env, fakes) as cfg:
        rita = await run_rollback(env, rollback_request(cfg, "rita"))  # release manager, not qa
        testbed = await run_rollback(env, rollback_request(cfg, "quentin", environment="testbed"))
        teams = await run_rollback(env, rollback_request(cfg, "someone", teams=["qa"], channel="buildkite"))
    assert rita.outcome == "succeeded" and testbed.outcome == "succeeded"
    # Teams count only where ferry.yaml trusts Buildkite teams (the sample does not).
    assert teams.outcome == "refused"
    # testbed is on-prem: no cloud confirmation, synced by the on-prem Argo CD.
    testbed_syncs = [a for _, a in fakes.names("argocd.sync") if a.app == "shop-testbed"]
    assert testbed_syncs and {a.instance for a in testbed_syncs} == {"onprem"}
    assert {a.instance for _, a in fakes.names("harbor.confirm")} == {"cloud"}
    assert len(fakes.names("harbor.confirm")) == 2  # rita's staging rollback only


async def test_a_failed_sync_fails_the_rollback_and_keeps_the_audit(env: WorkflowEnvironment) -> None:
    fakes = Fakes(degraded={"shop-staging"}, running=RUNNING)
    async with running(env, fakes) as cfg:
        with pytest.raises(WorkflowFailureError) as err:
            await run_rollback(env, rollback_request(cfg, "quinn"))
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ROLLBACK_FAILED
    assert cause.message == "sync: Argo CD application shop-staging is Degraded"
    assert len(fakes.names("gitops.move")) == 1


def test_refusal_explains_bad_requests() -> None:
    cfg = parse_config(sample_config())
    assert refusal(rollback_request(cfg, "quinn")) is None
    assert "no environment 'qa'" in (refusal(rollback_request(cfg, "quinn", environment="qa")) or "")
    assert "--comment" in (refusal(rollback_request(cfg, "quinn", comment=" ")) or "")
    assert "identity is required" in (refusal(rollback_request(cfg, "")) or "")


# --- `ferry rollback`, against a real Release workflow ---

COMMIT = "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0"


async def wait_stage(handle: WorkflowHandle, stage: str) -> None:
    for _ in range(400):
        if (await handle.query(ReleaseWorkflow.status)).stage == stage:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"release never reached {stage}")


def cli_args(**kw) -> argparse.Namespace:
    base = {
        "environment": "staging",
        "to": f"shop-{COMMIT[:12]}",
        "comment": "payments broke",
        "as_user": "quinn",
        "from_buildkite": False,
        "key": None,
        "block_step": None,
        "wait": True,
        "json": False,
    }
    return argparse.Namespace(**(base | kw))


async def test_ferry_rollback_reads_the_release_and_runs_the_rollback(
    env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes = Fakes(affected=["api"], running=RUNNING)
    async with running(env, fakes, release=True) as cfg:

        async def client_for(_cfg: FerryConfig):
            return env.client

        monkeypatch.setattr(rollback_cmds, "client_for", client_for)
        plan = worker_plan(cfg)
        release = await env.client.start_workflow(
            ReleaseWorkflow.run,
            ReleaseInput(release_id=f"shop-{COMMIT[:12]}", commit=COMMIT, branch="main", plan=plan),
            id=release_workflow_id("shop", COMMIT),
            id_reuse_policy=WorkflowIDReusePolicy.TERMINATE_IF_RUNNING,
            task_queue=plan.onprem_queue,
        )
        await wait_stage(release, "gate:staging")
        # Staging is not deployed by this release yet: nothing to roll staging back to.
        with pytest.raises(CommandError, match="never completed a deployment to staging"):
            await rollback_cmds.rollback(cfg, cli_args())
        await release.execute_update(
            ReleaseWorkflow.approve, signed(Decision(stage="staging", user="quinn"), release.id, "approve")
        )
        await wait_stage(release, "gate:production")
        capsys.readouterr()

        assert await rollback_cmds.rollback(cfg, cli_args(as_user="mallory")) == FAILED
        assert "refused: mallory may not roll back staging" in capsys.readouterr().out
        # Without --wait the command still reports the refusal, here as JSON.
        assert await rollback_cmds.rollback(cfg, cli_args(as_user="mallory", wait=False, json=True)) == FAILED
        answer = json.loads(capsys.readouterr().out)
        assert answer["workflow_id"] == rollback_workflow_id("shop", "staging", COMMIT) and answer["started"]
        assert answer["status"]["outcome"] == "refused" and answer["status"]["audit"][0]["user"] == "mallory"
        assert await rollback_cmds.rollback(cfg, cli_args()) == OK
        out = capsys.readouterr().out
        handle = env.client.get_workflow_handle(rollback_workflow_id("shop", "staging", COMMIT))
        status = await handle.query(RollbackWorkflow.status)
        await release.terminate("test over")

    assert f"staging rolled back to shop-{COMMIT[:12]} ({COMMIT[:12]})" in out
    assert f"rolled-back by quinn via cli: from {RUNNING[:12]} to {COMMIT[:12]}" in out
    back = [a for _, a in fakes.names("gitops.move") if a.rollback]
    assert len(back) == 1 and back[0].environment == "staging" and back[0].rollback_comment == "payments broke"
    assert status.outcome == "succeeded" and [a.action for a in status.audit] == ["rolled-back"]
    # The release's own moves carried the app repo, so the activity checks they go forward.
    forward = [a for _, a in fakes.names("gitops.move") if not a.rollback]
    assert forward and all(a.app_repo_url == plan.app_repo_url for a in forward)


def test_a_signed_rollback_request_names_the_exact_images() -> None:
    """The signature covers the target's images: the same request with other digests is another request."""
    cfg = parse_config(sample_config())
    inp = rollback_request(cfg, "rita")
    other = dataclasses.replace(inp, artifacts=[Artifact(service="api", repository="api", digest=D2)])
    assert rollback_target(inp).startswith(inp.target_release_id + " ")
    assert rollback_target(inp) != rollback_target(other)
    assert rollback_target(inp) == rollback_target(dataclasses.replace(inp, artifacts=list(reversed(inp.artifacts))))
