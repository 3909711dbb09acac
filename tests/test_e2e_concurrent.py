"""Five releases at once on the real sandbox: environments are held one move at a time and never go back.

Five commits of one line of history are released side by side (`--direct`, so no coordinator serialises
their CI): all five reach testbed at about the same time, as the releases of a busy team do. Each release
must end succeeded or superseded (never failed), testbed's Argo CD sync history must only go forward in
app commits, and every E2E must have run against its own release's images, start to finish.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from e2e import E2E, start_sandbox

from sandbox.repos import log

pytestmark = pytest.mark.e2e

RELEASES = 5


@pytest_asyncio.fixture(scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    sandbox = await start_sandbox(tmp_path_factory.mktemp("concurrent"))
    try:
        yield sandbox
    finally:
        await asyncio.to_thread(sandbox.box.down, False, lambda _: None)


def app_commit_of(e2e: E2E) -> dict[str, str]:
    """GitOps commit -> the app commit it deployed (its Ferry-Commit trailer)."""
    out = {}
    for sha, message in log(e2e.gitops_repo):
        if found := re.search(r"^Ferry-Commit: ([0-9a-f]{40})$", message, re.M):
            out[sha] = found.group(1)
    return out


async def drive(e2e: E2E, commits: list[str], timeout: float = 600) -> dict[str, str]:
    """Approve every gate as it opens (quinn for staging, rita for production) until all releases end."""
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(outcomes) < len(commits):
        assert time.monotonic() < deadline, f"releases still running: {set(commits) - set(outcomes)}"
        for commit in commits:
            if commit in outcomes:
                continue
            try:
                status = await e2e.status(commit)
            except Exception:  # noqa: BLE001 - not started yet
                continue
            if status.outcome != "running":
                outcomes[commit] = status.outcome
                continue
            for stage, user in (("staging", "quinn"), ("production", "rita")):
                gate = next((g for g in status.gates if g.stage == stage), None)
                if status.stage == f"gate:{stage}" and gate is not None and gate.state == "waiting":
                    run = await asyncio.to_thread(
                        e2e.ferry, "approve", e2e.release_id(commit), "--stage", stage, "--as", user
                    )
                    assert run.code == 0 or "not waiting" in run.err or "superseded" in run.err, run.err
        await asyncio.sleep(0.5)
    return outcomes


async def test_five_releases_at_once_go_through_testbed_one_at_a_time_and_only_forward(e2e: E2E) -> None:
    base = e2e.head()
    commits = [e2e.commit({"services/web/concurrent.txt": f"{i}\n"}, f"web: concurrent {i}") for i in range(RELEASES)]
    runs = await asyncio.gather(
        *(
            asyncio.to_thread(
                e2e.ferry, "release", "start", "--commit", c, "--branch", "main", "--base", base, "--direct"
            )
            for c in commits
        )
    )
    assert all(run.code == 0 for run in runs), [run.err for run in runs]
    outcomes = await drive(e2e, commits)

    # Nobody failed: each release either shipped or found its environment already on a newer commit.
    assert set(outcomes.values()) <= {"succeeded", "superseded"}, outcomes
    assert outcomes[commits[-1]] == "succeeded"  # the newest is never superseded
    assert e2e.pinned("production", "web") == (await e2e.status(commits[-1])).digests["web"]
    for commit in commits:
        status = await e2e.status(commit)
        if status.outcome == "superseded":
            assert status.superseded_by in commits[commits.index(commit) + 1 :], (commit, status.superseded_by)

    # They did meet there: some release queued behind another for testbed.
    testbed = [next(e for e in (await e2e.status(c)).environments if e.name == "testbed") for c in commits]
    assert any(e.waited_for for e in testbed), [(e.state, e.waited_for) for e in testbed]

    # Testbed only went forward: its Argo CD sync history, in order, is in the order of the commits.
    app = e2e.api("argocd-onprem", "/api/v1/applications/shop-testbed").json()
    deployed = app_commit_of(e2e)
    order = [
        commits.index(deployed[h["revision"]])
        for h in app["status"]["history"]
        if deployed.get(h["revision"]) in commits
    ]
    assert order and order == sorted(order), f"testbed went back: {order}"

    # Every E2E of testbed ran against its own release's web image, from its first second to its last.
    digests = {e2e.release_id(c): (await e2e.status(c)).digests["web"] for c in commits}
    builds = e2e.api("buildkite", "/_sandbox/state").json()["buildkite"]
    checked = 0
    for pipeline in builds.values():
        for build in pipeline.values():
            env = build.get("env") or {}
            if env.get("FERRY_ENVIRONMENT") != "testbed" or env.get("FERRY_RELEASE") not in digests:
                continue
            digest = digests[env["FERRY_RELEASE"]]
            for moment in ("start", "finish"):
                images = build["observed"][moment]["shop-testbed"]
                assert any(image.endswith(digest) for image in images), (env["FERRY_RELEASE"], moment, images)
            checked += 1
    assert checked >= sum(1 for o in outcomes.values() if o == "succeeded")
