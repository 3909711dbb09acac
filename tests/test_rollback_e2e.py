"""`ferry rollback` end to end on the real sandbox: the environment gets back the whole state it had under the
target release, services a later release moved included, read from and written to the real GitOps repo,
synced by the Argo CD stand-in, with the real workers and the real CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from e2e import E2E, start_sandbox

from sandbox.repos import log
from starters.rollback_cmds import short_image as short
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture(scope="module")
async def e2e(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    sandbox = await start_sandbox(tmp_path_factory.mktemp("rollback"))
    try:
        yield sandbox
    finally:
        await asyncio.to_thread(sandbox.box.down, False, lambda _: None)


async def to_staging(e2e: E2E, commit: str, base: str) -> dict[str, str]:
    """Release `commit` (changes since `base`) up to staging, approved there; returns its digests."""
    run = e2e.ferry("release", "start", "--commit", commit, "--branch", "main", "--base", base)
    assert run.code == 0, run.err
    await e2e.wait_started(commit)
    await e2e.wait_stage(commit, "gate:staging")
    approve = e2e.ferry("approve", e2e.release_id(commit), "--stage", "staging", "--as", "quinn")
    assert approve.code == 0, approve.err
    status = await e2e.wait_stage(commit, "gate:production")  # staging deployed; production can wait
    assert next(e for e in status.environments if e.name == "staging").state == "deployed"
    return dict(status.digests)


async def test_rollback_restores_every_service_pin_of_the_target_release(e2e: E2E) -> None:
    base = e2e.head()
    a = e2e.commit({"services/api/handler.py": "A = 1\n", "services/web/index.html": "<h1>A</h1>\n"}, "api, web: A")
    a_digests = await to_staging(e2e, a, base)
    assert sorted(a_digests) == ["api", "web"]
    a_state = e2e.kustomization("staging")
    b = e2e.commit({"services/web/index.html": "<h1>B</h1>\n"}, "web: B")
    b_digests = await to_staging(e2e, b, a)
    assert sorted(b_digests) == ["web"] and b_digests["web"] != a_digests["web"]
    assert e2e.pinned("staging", "web") == b_digests["web"] and e2e.pinned("staging", "api") == a_digests["api"]

    ra = e2e.release_id(a)
    run = e2e.ferry("rollback", "staging", "--to", ra, "--comment", "B broke checkout", "--as", "quinn", "--wait")
    assert run.code == 0, run.out + run.err

    # The GitOps repo: staging pins api and web exactly as A left them, with one rollback commit on top.
    assert e2e.pinned("staging", "api") == a_digests["api"] and e2e.pinned("staging", "web") == a_digests["web"]
    assert e2e.kustomization("staging")["images"] == a_state["images"]
    sha, message = log(e2e.gitops_repo)[0]
    assert message.startswith(f"staging: rollback to release {ra}\n")
    assert "Ferry-Rollback: quinn: B broke checkout" in message and f"Ferry-Commit: {a}" in message
    # Argo CD synced staging at that commit, Healthy, running A's web again.
    app = e2e.api("argocd-cloud", "/api/v1/applications/shop-staging").json()
    assert app["status"]["sync"]["revision"] == sha and app["status"]["health"]["status"] == "Healthy"
    assert any(a_digests["web"] in image for image in app["status"]["summary"]["images"])

    # The command and the workflow's result say, per service, from which image to which it went.
    handle = e2e.client.get_workflow_handle(rollback_workflow_id(e2e.cfg.repos.app.short_name, "staging", a))
    status = await handle.query(RollbackWorkflow.status)
    assert status.outcome == "succeeded" and status.gitops_commit == sha and status.state_commit
    images = {i.service: i for i in status.images}
    assert set(images) == {"api", "web"} and not any(i.left_behind for i in status.images)
    assert images["web"].before.endswith(b_digests["web"]) and images["web"].after.endswith(a_digests["web"])
    assert images["api"].before == images["api"].after and images["api"].after.endswith(a_digests["api"])
    assert f"staging rolled back to {ra} ({a[:12]})" in run.out
    assert f"web: {short(images['web'].before)} -> {short(images['web'].after)}" in run.out
    assert f"api: unchanged, {short(images['api'].after)}" in run.out
    assert "left behind" not in run.out
