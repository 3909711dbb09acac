"""Who unblocked a block step, read from the Buildkite stand-in in-process (httpx.ASGITransport).

Builds with a block step, users and teams are set up through the stand-in's sandbox-only routes (on its bare
app); unblocking and reading go through the served stand-in, with its bearer-token check, and the production
client. The last test is the workers' `approvals.verify` over the same stand-in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from httpfakes import credential_fixture
from temporalio.exceptions import ApplicationError

from activities import errors
from activities.buildkite import BuildkiteClient
from activities.buildkite_unblock import UNBLOCK_NOT_VERIFIED, read_unblock
from common.config import BuildkiteEndpoint
from sandbox.standins import World, build_apps
from sandbox.standins import buildkite as standin

TOKEN = "bkua_unblock_secret_5d1c"
ENV = "FERRY_TEST_BUILDKITE_TOKEN_UNBLOCK"
COMMIT = "abcdef012345" + "e" * 28
PIPELINE = "release"
ORG = "/v2/organizations/acme"
BUILDS = f"{ORG}/pipelines/{PIPELINE}/builds"

token = credential_fixture(ENV, TOKEN)


@dataclass
class Box:
    """The world, the sandbox-only routes (`setup`), the served stand-in (`bk`) and the Ferry client."""

    world: World
    setup: httpx.AsyncClient
    bk: httpx.AsyncClient
    client: BuildkiteClient

    async def blocked_build(self, commit: str = COMMIT, step_key: str = "qa-approval") -> dict[str, Any]:
        body = {"commit": commit, "branch": "main", "step_key": step_key, "label": "QA sign-off"}
        response = await self.setup.post(f"/_sandbox/organizations/acme/pipelines/{PIPELINE}/blocked-builds", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    async def user_id(self, name: str) -> str:
        users = (await self.setup.get("/_sandbox/users")).json()
        return next(u["id"] for u in users if u["name"] == name)

    async def unblock(self, build: dict[str, Any], body: dict[str, Any] | None = None) -> httpx.Response:
        job = build["jobs"][0]["id"]
        return await self.bk.put(f"{BUILDS}/{build['number']}/jobs/{job}/unblock", json=body or {})


def make_world(tmp_path: Path, scenario: dict[str, Any] | None = None) -> World:
    path = tmp_path / "scenario.yaml"
    if scenario is not None:
        path.write_text(yaml.safe_dump(scenario))
    return World(path, tokens={"buildkite": TOKEN}, speed=0.02, seed=7)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    world = make_world(tmp_path)
    served = httpx.ASGITransport(app=build_apps(world)["buildkite"])
    endpoint = BuildkiteEndpoint(
        url="http://buildkite.test", credential={"env": ENV}, organization="acme", e2e_pipeline="e2e"
    )
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=standin.build_app(world)), base_url="http://bk") as setup,
        httpx.AsyncClient(
            transport=served, base_url="http://buildkite.test", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as bk,
    ):
        client = BuildkiteClient(endpoint, transport=served)
        yield Box(world, setup, bk, client)
        await client.aclose()


async def refusal(box: Box, number: int, job_id: str, pipeline: str = PIPELINE) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await read_unblock(box.client, pipeline, number, job_id, with_teams=True)
    err = info.value
    assert err.type == UNBLOCK_NOT_VERIFIED and err.non_retryable
    assert f"build {number} of pipeline {pipeline}" in err.message and job_id in err.message
    assert TOKEN not in err.message
    return err


async def test_unblock_as_quinn_is_read_back_with_quinns_identity_commit_step_and_teams(box: Box) -> None:
    build = await box.blocked_build()
    job = build["jobs"][0]
    assert (build["state"], build["blocked"]) == ("passed", True)
    assert (job["type"], job["state"], job["step_key"], job["unblockable"]) == (
        "manual",
        "blocked",
        "qa-approval",
        True,
    )
    assert job["unblock_url"] == f"http://bk{BUILDS}/1/jobs/{job['id']}/unblock"
    anonymous = await box.bk.put(f"{BUILDS}/1/jobs/{job['id']}/unblock", json={}, headers={"Authorization": ""})
    assert anonymous.status_code == 401

    quinn = await box.user_id("quinn")
    response = await box.unblock(build, {"unblocker": quinn, "fields": {"release-name": "spring"}})
    assert response.status_code == 200, response.text
    unblocked = response.json()
    assert (unblocked["state"], unblocked["unblockable"]) == ("unblocked", False)
    assert unblocked["unblocked_by"]["id"] == quinn and unblocked["unblocked_by"]["email"] == "quinn@example.com"

    seen = (await box.bk.get(f"{BUILDS}/1")).json()
    assert seen["blocked"] is False and seen["meta_data"] == {"release-name": "spring"}

    got = await read_unblock(box.client, PIPELINE, 1, job["id"], with_teams=True)
    assert (got.user_id, got.name, got.email, got.teams) == (quinn, "quinn", "quinn@example.com", ["qa"])
    assert (got.commit, got.branch, got.pipeline, got.build_number) == (COMMIT, "main", PIPELINE, 1)
    assert (got.step_key, got.job_id) == ("qa-approval", job["id"])
    assert got.unblocked_at == unblocked["unblocked_at"] and got.unblocked_at.endswith("Z")
    assert (await read_unblock(box.client, PIPELINE, 1, job["id"], with_teams=False)).teams == []


async def test_a_still_blocked_step_is_refused(box: Box) -> None:
    build = await box.blocked_build()
    err = await refusal(box, 1, build["jobs"][0]["id"])
    assert "'blocked', not unblocked" in err.message


async def test_a_job_of_another_build_is_refused(box: Box) -> None:
    await box.blocked_build()
    other = await box.blocked_build(commit="1" * 40)
    other_job = other["jobs"][0]["id"]
    assert (await box.unblock(other, {"unblocker": await box.user_id("rita")})).status_code == 200
    err = await refusal(box, 1, other_job)
    assert "no such job" in err.message
    # Nor can the build-scoped route unblock it through the wrong build.
    assert (await box.bk.put(f"{BUILDS}/1/jobs/{other_job}/unblock", json={})).status_code == 404


async def test_an_e2e_command_job_is_refused_and_cannot_be_unblocked(box: Box) -> None:
    created = await box.bk.post(f"{ORG}/pipelines/e2e/builds", json={"commit": COMMIT, "branch": "main"})
    assert created.status_code == 201
    e2e = created.json()
    job = e2e["jobs"][0]
    assert (job["type"], job["step_key"]) == ("script", "e2e")
    err = await refusal(box, e2e["number"], job["id"], pipeline="e2e")
    assert "'script' job, not a block step" in err.message
    answer = await box.bk.put(f"{ORG}/pipelines/e2e/builds/1/jobs/{job['id']}/unblock", json={})
    assert (answer.status_code, answer.json()) == (400, {"message": "This job type cannot be unblocked"})


async def test_unblocking_twice_is_422_and_keeps_the_first_unblocker(box: Box) -> None:
    build = await box.blocked_build()
    job_id = build["jobs"][0]["id"]
    quinn, mallory = await box.user_id("quinn"), await box.user_id("mallory")
    assert (await box.unblock(build, {"unblocker": quinn})).status_code == 200
    again = await box.bk.put(f"{ORG}/jobs/{job_id}/unblock", json={"unblocker": mallory})  # the org-scoped route
    assert (again.status_code, again.json()) == (422, {"message": standin.NOT_BLOCKED})
    assert (await read_unblock(box.client, PIPELINE, 1, job_id, with_teams=False)).user_id == quinn


async def test_a_missing_build_is_refused(box: Box) -> None:
    err = await refusal(box, 7, "0b7e0000-0000-4000-8000-000000000000")
    assert "the build does not exist" in err.message


async def test_teams_come_from_the_api_and_a_user_in_no_team_has_none(box: Box) -> None:
    build = await box.blocked_build()
    job_id = build["jobs"][0]["id"]
    assert (await box.unblock(build, {"unblocker": await box.user_id("mallory")})).status_code == 200
    got = await read_unblock(box.client, PIPELINE, 1, job_id, with_teams=True)
    assert (got.name, got.teams) == ("mallory", [])

    added = await box.setup.post("/_sandbox/teams", json={"slug": "sre", "members": ["mallory", "raj"]})
    assert added.status_code == 201 and added.json()["slug"] == "sre"
    assert (await read_unblock(box.client, PIPELINE, 1, job_id, with_teams=True)).teams == ["sre"]
    assert (await box.setup.post("/_sandbox/teams", json={"slug": "sre", "members": []})).status_code == 409
    unknown = await box.setup.post("/_sandbox/teams", json={"slug": "ops", "members": ["nobody"]})
    assert (unknown.status_code, unknown.json()["message"]) == (422, "No such user: nobody")


async def test_team_lists_are_read_across_pages(box: Box) -> None:
    directory = box.world.buildkite.directory
    crowd = [directory.add_user(f"user{n}").name for n in range(130)]
    directory.add_team("everyone", [*crowd, "quinn"])  # quinn is on the second page of members
    for n in range(105):
        directory.add_team(f"squad-{n:03d}", ["quinn"])
    teams = await box.bk.get(f"{ORG}/teams", params={"per_page": 2})
    assert len(teams.json()) == 2 and 'rel="next"' in teams.headers["Link"]

    slugs = await box.client.team_slugs_of(await box.user_id("quinn"))
    assert slugs == sorted(["qa", "everyone", *(f"squad-{n:03d}" for n in range(105))])
    assert await box.client.team_slugs_of(await box.user_id("user0")) == ["everyone"]


async def test_the_acting_user_is_the_unblocker_else_the_token_owner(box: Box) -> None:
    invalid = await box.unblock(await box.blocked_build(), {"unblocker": "not-a-user"})
    assert (invalid.status_code, invalid.json()) == (
        422,
        {"message": "Unblocker is not a valid user id for this organization"},
    )

    unowned = await box.unblock(await box.blocked_build())
    assert unowned.json()["unblocked_by"]["id"] == standin.API_USER_ID  # the sandbox's own API user

    tess = await box.setup.post("/_sandbox/users", json={"name": "tess", "token": TOKEN})
    assert tess.status_code == 201 and tess.json()["email"] == "tess@example.com"
    assert "token" not in tess.json()
    assert (await box.setup.post("/_sandbox/users", json={"name": "quinn"})).status_code == 409
    owned = await box.unblock(await box.blocked_build())
    assert owned.json()["unblocked_by"]["id"] == tess.json()["id"]


async def test_a_canceled_blocked_build_cannot_be_unblocked(box: Box) -> None:
    build = await box.blocked_build()
    canceled = await box.bk.put(f"{BUILDS}/1/cancel")
    assert canceled.status_code == 200 and (canceled.json()["state"], canceled.json()["blocked"]) == ("canceled", False)
    answer = await box.unblock(build, {"unblocker": await box.user_id("quinn")})
    assert (answer.status_code, answer.json()) == (422, {"message": "Jobs from canceled builds cannot be unblocked"})
    assert "not unblocked" in (await refusal(box, 1, build["jobs"][0]["id"])).message


async def test_5xx_stays_retryable(tmp_path: Path) -> None:
    world = make_world(tmp_path, {"faults": {"buildkite": {"error_rate": 1.0, "status": 503}}})
    endpoint = BuildkiteEndpoint(
        url="http://buildkite.test", credential={"env": ENV}, organization="acme", e2e_pipeline="e2e"
    )
    client = BuildkiteClient(endpoint, transport=httpx.ASGITransport(app=build_apps(world)["buildkite"]))
    with pytest.raises(ApplicationError) as info:
        await read_unblock(client, PIPELINE, 1, "job", with_teams=True)
    assert info.value.type == errors.UPSTREAM_UNAVAILABLE and not info.value.non_retryable
    await client.aclose()


async def test_the_step_can_be_named_by_its_key_and_must_be_that_step(box: Box) -> None:
    build = await box.blocked_build(step_key="approve-staging")
    job_id = build["jobs"][0]["id"]
    assert (await box.unblock(build, {"unblocker": await box.user_id("quentin")})).status_code == 200
    got = await read_unblock(box.client, PIPELINE, 1, step_key="approve-staging", with_teams=True)
    assert (got.name, got.job_id, got.teams, got.commit) == ("quentin", job_id, ["qa"], COMMIT)

    with pytest.raises(ApplicationError) as info:
        await read_unblock(box.client, PIPELINE, 1, step_key="approve-production", with_teams=False)
    assert info.value.type == UNBLOCK_NOT_VERIFIED and "step 'approve-production'" in info.value.message
    assert "0 jobs of that step" in info.value.message
    with pytest.raises(ApplicationError) as info:
        await read_unblock(box.client, PIPELINE, 1, job_id, step_key="approve-production", with_teams=False)
    assert "is step 'approve-staging', not 'approve-production'" in info.value.message


async def test_the_workers_verify_a_buildkite_decision_against_the_api(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`approvals.verify`: the block step of this gate, of a build of this commit, in an allowed pipeline,
    unblocked: the identity is Buildkite's unblocker (and their other names), whatever name was claimed."""
    from sample import sample_config

    from activities.approvals import ApprovalActivities
    from common.config import parse_config
    from workflows.approval_types import VerifyInput
    from workflows.types import Proof

    monkeypatch.setenv("FERRY_TEST_TOKEN_BUILDKITE", TOKEN)
    raw = sample_config()
    raw["approvals"]["buildkite_pipelines"] = [PIPELINE]
    cfg = parse_config(raw)
    acts = ApprovalActivities(lambda: cfg, transport=httpx.ASGITransport(app=build_apps(box.world)["buildkite"]))
    build = await box.blocked_build(step_key="approve-production")

    async def ask(**change: Any) -> Any:
        where = {"pipeline": PIPELINE, "build_number": build["number"], "step_key": "approve-production"}
        asked = {"stage": "production", "commit": COMMIT, "action": "approve"}
        asked |= {k: v for k, v in change.items() if k in asked}
        proof = Proof(kind="buildkite", **(where | {k: v for k, v in change.items() if k in where}))
        return await acts.verify(
            VerifyInput(workflow_id="release/shop/x", user="rita", comment="", proof=proof, **asked)
        )

    not_yet = await ask()
    assert not not_yet.verified and "not unblocked" in not_yet.reason
    assert (await box.unblock(build, {"unblocker": await box.user_id("raj")})).status_code == 200
    raj = await ask()
    assert raj.verified and (raj.user, raj.email, raj.teams) == (
        "raj@example.com",
        "raj@example.com",
        ["release-managers"],
    )
    assert raj.aliases == ["raj", "raj@example.com"] and raj.nonce == f"buildkite:{build['jobs'][0]['id']}"
    refusals = {
        "another gate": (await ask(stage="staging")).reason,
        "another commit": (await ask(commit="f" * 40)).reason,
        "another pipeline": (await ask(pipeline="other")).reason,
        "another step": (await ask(step_key="approve-staging")).reason,
        # The unblock that approved production cannot also roll production back: that is its own step.
        "a rollback": (await ask(action="rollback")).reason,
    }
    assert "does not decide staging" in refusals["another gate"]
    assert "not of this release's" in refusals["another commit"]
    assert "may not decide gates" in refusals["another pipeline"]
    assert "does not decide production" in refusals["another step"]
    assert "its block step is 'rollback-production'" in refusals["a rollback"]
    await acts.aclose()
