"""Buildkite activity: run the E2E pipeline against an environment, once per release and environment.

Written from specs/buildkite/apis_rest_api_builds.md (build data model, create, get) and apis_rest_api.md
(bearer token auth, pagination). The builds-list query strings are a docs partial that the specs folder
does not carry; the upstream partial (buildkite/docs pages/apis/rest_api/_pipeline_builds_list_query_strings.md)
documents `branch`, `commit` (full SHA only) and `meta_data[key]=value` filters. The meta_data match is
still checked client-side, so a server that ignores that filter cannot attach us to another release's build.

Who unblocked a block step (activities/buildkite_unblock.py) reads a build of any pipeline with its jobs, and
the unblocker's teams: the teams list (apis_rest_api.md; its `user_id` filter and both response bodies are
from Buildkite's public docs, not the stored specs) narrowed to the user, each confirmed by its members list,
so a server that ignores the filter cannot give a user teams they are not in.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity

from activities import waiting
from activities.errors import BAD_REQUEST, E2E_FAILED, fatal
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import BuildkiteEndpoint
from workflows.types import E2EInput, E2EResult

RELEASE_KEY = "ferry-release"
ENVIRONMENT_KEY = "ferry-environment"
PASSED = "passed"
# Build states from the data model: scheduled, running, passed, failed, blocked, canceled, canceling,
# skipped, not_run, waiting, waiting_failed (plus creating/failing in the list filter). These end a build
# without passing; failing, canceling, waiting... still move.
FAILED_STATES = frozenset({"failed", "canceled", "skipped", "not_run", "waiting_failed"})
# Lists are read 100 to a page (the documented maximum); more pages than this is a server that never ends.
PER_PAGE = 100
MAX_PAGES = 50
# The E2E pipeline belongs to the on-prem Buildkite (sites.onprem.buildkite).
SITE = "onprem"


class BuildkiteClient:
    """Builds of the E2E pipeline (and of any pipeline, for unblocks) and teams, through the Buildkite REST API."""

    def __init__(self, endpoint: BuildkiteEndpoint, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.api = ApiClient("Buildkite", endpoint, auth="bearer", transport=transport)
        self.org_path = f"/v2/organizations/{quote(endpoint.organization, safe='')}"
        self.builds_path = self._builds_path(endpoint.e2e_pipeline)

    def _builds_path(self, pipeline: str) -> str:
        return f"{self.org_path}/pipelines/{quote(pipeline, safe='')}/builds"

    async def find_builds(self, commit: str, branch: str, meta_data: dict[str, str]) -> list[dict[str, Any]]:
        """Builds of this commit and branch whose meta_data has all of `meta_data`, newest first."""
        params: dict[str, str | int] = {"commit": commit, "branch": branch, "exclude_jobs": "true", "per_page": 100}
        params.update({f"meta_data[{k}]": v for k, v in meta_data.items()})
        response = await self.api.request(
            "GET", self.builds_path, f"list E2E builds of {commit[:12]} on {branch}", params=params
        )
        builds = response.json()
        # One page suffices: the filters leave a handful of builds per commit, newest first.
        return [
            b
            for b in (builds if isinstance(builds, list) else [])
            if all(str((b.get("meta_data") or {}).get(k)) == v for k, v in meta_data.items())
        ]

    async def create_build(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a build (201)."""
        response = await self.api.request("POST", self.builds_path, "create E2E build", json=body)
        return response.json()

    async def get_build(self, number: int) -> dict[str, Any] | None:
        """A build by number (not id: the single-build URLs take the number); None on 404."""
        response = await self.api.request(
            "GET",
            f"{self.builds_path}/{number}",
            f"read E2E build {number}",
            ok=lambda r: r.is_success or r.status_code == 404,
            params={"exclude_jobs": "true"},
        )
        return None if response.status_code == 404 else response.json()

    async def get_build_of(self, pipeline: str, number: int) -> dict[str, Any] | None:
        """A build of any pipeline of the organization by number, with its jobs; None on 404."""
        response = await self.api.request(
            "GET",
            f"{self._builds_path(pipeline)}/{number}",
            f"read build {number} of {pipeline}",
            ok=lambda r: r.is_success or r.status_code == 404,
            params={"exclude_pipeline": "true"},
        )
        return None if response.status_code == 404 else response.json()

    async def _list(self, path: str, what: str, params: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list, following the `Link` header's `next` page number on our own path.

        Only the page number is taken from the link, so the token is never sent to a host the link names.
        """
        items: list[dict[str, Any]] = []
        page = 1
        for _ in range(MAX_PAGES):
            query = {**(params or {}), "per_page": PER_PAGE, "page": page}
            response = await self.api.request("GET", path, what, params=query)
            body = response.json()
            items.extend(i for i in (body if isinstance(body, list) else []) if isinstance(i, dict))
            following = httpx.URL(response.links.get("next", {}).get("url", "")).params.get("page", "")
            if not following.isdigit() or int(following) <= page:
                return items
            page = int(following)
        raise fatal(f"Buildkite: {what}: more than {MAX_PAGES} pages of {PER_PAGE}; not read to the end", BAD_REQUEST)

    async def team_slugs_of(self, user_id: str) -> list[str]:
        """The slugs of the organization's teams that `user_id` is a member of, sorted."""
        teams = await self._list(f"{self.org_path}/teams", f"list teams of user {user_id}", {"user_id": user_id})
        slugs: set[str] = set()
        for team in teams:
            team_id, slug = str(team.get("id") or ""), str(team.get("slug") or "")
            if not (team_id and slug):
                continue
            members = await self._list(
                f"{self.org_path}/teams/{quote(team_id, safe='')}/members", f"list members of team {slug}"
            )
            if any(m.get("user_id") == user_id for m in members):
                slugs.add(slug)
        return sorted(slugs)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


class BuildkiteActivities(SiteClients[BuildkiteClient, BuildkiteEndpoint]):
    """Buildkite activities of the on-prem worker; `clients` maps the site ('onprem') to its client."""

    system = "buildkite"
    label = "Buildkite"
    client_type = BuildkiteClient

    async def _existing_build(self, client: BuildkiteClient, inp: E2EInput) -> dict[str, Any] | None:
        """The build a previous attempt made: from the heartbeat first, else found by its meta-data."""
        previous = waiting.last_heartbeat()
        if isinstance(previous, dict) and isinstance(previous.get("build"), int):
            build = await client.get_build(previous["build"])
            if build is not None:
                return build
        found = await client.find_builds(
            inp.commit, inp.branch, {RELEASE_KEY: inp.release_id, ENVIRONMENT_KEY: inp.environment}
        )
        return found[0] if found else None

    @activity.defn(name="buildkite.e2e")
    async def e2e(self, inp: E2EInput) -> E2EResult:
        """Run (or find) the E2E build of this release and environment and wait until it is final."""
        client = self._client(SITE, "buildkite.e2e")
        build = await self._existing_build(client, inp)
        if build is None:
            build = await client.create_build(
                {
                    "commit": inp.commit,
                    "branch": inp.branch,
                    "message": inp.message or f"Ferry E2E: {inp.release_id} on {inp.environment}",
                    "env": {"FERRY_RELEASE": inp.release_id, "FERRY_ENVIRONMENT": inp.environment},
                    "meta_data": {RELEASE_KEY: inp.release_id, ENVIRONMENT_KEY: inp.environment},
                }
            )
            activity.logger.info("Buildkite: created E2E build %s for %s", build.get("number"), inp.release_id)
        number = int(build["number"])
        web_url = str(build.get("web_url") or "")
        progress: dict[str, Any] = {"build": number, "web_url": web_url, "state": build.get("state")}
        waiting.heartbeat(dict(progress))
        first: dict[str, Any] | None = build

        async def final() -> dict[str, Any] | None:
            nonlocal first
            seen = first if first is not None else await client.get_build(number)
            first = None
            if seen is None:
                raise fatal(
                    f"Buildkite: E2E build {number} ({web_url}) was deleted while Ferry waited for it; retry "
                    "to start a new one",
                    E2E_FAILED,
                    web_url=web_url,
                )
            state = str(seen.get("state") or "")
            progress.update(state=state, blocked=bool(seen.get("blocked")))
            if state in FAILED_STATES:
                return seen
            # A blocked build keeps its last state (e.g. "passed") with blocked=true: the steps after the
            # block step have not run, so it has not passed until someone unblocks it.
            if state == PASSED and not seen.get("blocked"):
                return seen
            return None

        done = await waiting.poll(final, interval=self.poll_seconds, progress=lambda: dict(progress))
        state = str(done.get("state"))
        web_url = str(done.get("web_url") or web_url)
        if state != PASSED:
            raise fatal(
                f"Buildkite: E2E build {number} for {inp.release_id} on {inp.environment} ended {state}: "
                f"{web_url}. Read the failed jobs there; if the failure was flaky, retry the failed jobs of "
                "that build in Buildkite, then retry this step (Ferry follows the same build)",
                E2E_FAILED,
                web_url=web_url,
            )
        return E2EResult(number=number, state=state, web_url=web_url)
