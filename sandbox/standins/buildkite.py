"""Buildkite stand-in: the REST builds API (`/v2/organizations/{org}/pipelines/{pipeline}/builds`).

Written from specs/buildkite/apis_rest_api_builds.md and apis_rest_api.md: the build data model, create
(201), get by number, list newest first with the filters a client uses to find an existing build, cancel,
`page`/`per_page` pagination with a `Link` header, bearer auth. A build runs one E2E job:
scheduled -> running -> passed | failed | canceled, the result chosen by the scenario (`e2e.result`).

The stored docs leave the builds list's query-string table out (it is a partial the docs render from
elsewhere). They name `state` (apis_rest_api.md), `branch` and `created_from` (the 400 message), and
`meta_data[...]=` filtering on build URLs (pipelines_configure_build_meta_data.md); `commit` and
`created_to` are taken from the public Buildkite REST docs of the same endpoint.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins.world import iso_ms

if TYPE_CHECKING:
    from sandbox.standins.world import World

AUTH_SCHEME = "bearer"
PUBLIC_PATHS: frozenset[str] = frozenset({"/"})

SCHEDULED_SECONDS = 0.2
RUNNING_SECONDS = 1.0
FINISHED = ("passed", "failed", "canceled", "skipped", "not_run")


def message(status: int, text: str, **extra: Any) -> JSONResponse:
    """Buildkite's error body `{"message": ...}`."""
    return JSONResponse({"message": text, **extra}, status_code=status)


def unauthorized() -> Response:
    """Answer to a request without a valid bearer token (wording not in the stored docs)."""
    return message(401, "Authentication required. Please supply a valid API Access Token.")


@dataclass
class Build:
    """One build of a pipeline and its single E2E job."""

    id: str
    number: int
    org: str
    pipeline: str
    commit: str
    branch: str
    message: str
    env: dict[str, Any]
    meta_data: dict[str, Any]
    author: dict[str, Any] | None
    created_at: float
    state: str = "scheduled"
    started_at: float | None = None
    finished_at: float | None = None
    failing_at: float | None = None
    cancel_reason: str | None = None
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: list[Any] = field(default_factory=list)

    def to_json(self, base: str, *, with_jobs: bool = True, with_pipeline: bool = True) -> dict[str, Any]:
        """The build data model; `base` is the scheme://host the client used."""
        api = f"{base}/v2/organizations/{self.org}/pipelines/{self.pipeline}"
        web = f"{base}/{self.org}/{self.pipeline}/builds/{self.number}"

        def ts(t: float | None) -> str | None:
            return iso_ms(t) if t is not None else None

        out: dict[str, Any] = {
            "id": self.id,
            "graphql_id": f"QnVpbGQtLS0{self.id}",
            "url": f"{api}/builds/{self.number}",
            "web_url": web,
            "number": self.number,
            "state": self.state,
            "cancel_reason": self.cancel_reason,
            "blocked": False,
            "message": self.message,
            "commit": self.commit,
            "branch": self.branch,
            "env": self.env,
            "source": "api",
            "author": self.author,
            "creator": {"id": "00000000-0000-0000-0000-000000000001", "name": "Ferry", "email": "ferry@localhost"},
            "created_at": ts(self.created_at),
            "scheduled_at": ts(self.created_at),
            "started_at": ts(self.started_at),
            "failing_at": ts(self.failing_at),
            "finished_at": ts(self.finished_at),
            "meta_data": self.meta_data,
            "pull_request": None,
            "merge_queue": None,
            "rebuilt_from": None,
        }
        if with_jobs:
            job_state = self.state
            out["jobs"] = [
                {
                    "id": self.job_id,
                    "type": "script",
                    "name": ":test_tube: e2e",
                    "step_key": "e2e",
                    "state": job_state,
                    "web_url": f"{web}#{self.job_id}",
                    "command": "make e2e",
                    "soft_failed": False,
                    "exit_status": {"passed": 0, "failed": 1}.get(job_state),
                    "created_at": ts(self.created_at),
                    "scheduled_at": ts(self.created_at),
                    "runnable_at": ts(self.created_at),
                    "started_at": ts(self.started_at),
                    "finished_at": ts(self.finished_at),
                    "retried": False,
                }
            ]
        if with_pipeline:
            out["pipeline"] = {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, api)),
                "url": api,
                "web_url": f"{base}/{self.org}/{self.pipeline}",
                "name": self.pipeline,
                "slug": self.pipeline,
                "builds_url": f"{api}/builds",
                "default_branch": "main",
            }
        return out


class BuildkiteState:
    """Builds per (organization, pipeline). Every pipeline asked about exists: the sandbox needs no setup."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.builds: dict[tuple[str, str], list[Build]] = {}
        self.created = Counter[tuple[str, str]]()

    def created_count(self, org: str | None = None, pipeline: str | None = None) -> int:
        """How many builds were created (in total, or for one org/pipeline)."""
        return sum(n for (o, p), n in self.created.items() if org in (None, o) and pipeline in (None, p))

    def create(self, org: str, pipeline: str, body: dict[str, Any]) -> Build:
        """Create a build and run it: scheduled -> running -> the scenario's result."""
        world = self.world
        with world.lock:
            builds = self.builds.setdefault((org, pipeline), [])
            now = world.now()
            build = Build(
                id=str(uuid.uuid4()),
                number=len(builds) + 1,
                org=org,
                pipeline=pipeline,
                commit=str(body["commit"]),
                branch=str(body["branch"]),
                message=str(body.get("message") or ""),
                env=dict(body.get("env") or {}),
                meta_data=dict(body.get("meta_data") or {}),
                author=body.get("author"),
                created_at=now,
            )
            builds.append(build)
            self.created[(org, pipeline)] += 1

            def start(at: float) -> None:
                build.state, build.started_at = "running", at
                build.events.append(world.after(RUNNING_SECONDS, finish, base=at))

            def finish(at: float) -> None:
                result = world.scenario.e2e_result
                build.state, build.finished_at = result, at
                if result == "failed":
                    build.failing_at = at
                if result == "canceled":
                    build.cancel_reason = "canceled by the sandbox scenario"

            build.events.append(world.after(SCHEDULED_SECONDS, start, base=now))
            return build

    def cancel(self, build: Build) -> bool:
        """Cancel a scheduled or running build; False when it has already finished."""
        if build.state in FINISHED:
            return False
        for event in build.events:
            event.cancel()
        build.state, build.finished_at = "canceled", self.world.now()
        build.cancel_reason = "canceled through the API"
        return True

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        return {
            f"{o}/{p}": {b.number: {"state": b.state, "commit": b.commit, "meta_data": b.meta_data} for b in builds}
            for (o, p), builds in sorted(self.builds.items())
        }


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def build_app(world: World) -> Starlette:
    """The ASGI app of the Buildkite stand-in."""
    state = world.buildkite

    def base_of(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    def flags(request: Request) -> dict[str, bool]:
        q = request.query_params
        return {"with_jobs": q.get("exclude_jobs") != "true", "with_pipeline": q.get("exclude_pipeline") != "true"}

    async def root(request: Request) -> Response:
        return JSONResponse({"message": "🛠", "timestamp": int(world.now())})

    async def create(request: Request) -> Response:
        org, pipeline = request.path_params["org"], request.path_params["pipeline"]
        try:
            body = json.loads(await request.body())
        except ValueError:
            return message(400, "Problems parsing JSON")
        if not isinstance(body, dict):
            return message(400, "Problems parsing JSON")
        missing = [f for f in ("commit", "branch") if not body.get(f)]
        if missing:
            return message(422, "Validation Failed", errors=[{"field": f, "code": "missing_field"} for f in missing])
        for key in ("env", "meta_data"):
            if body.get(key) is not None and not isinstance(body[key], dict):
                return message(422, "Validation Failed", errors=[{"field": key, "code": "invalid"}])
        build = state.create(org, pipeline, body)
        return JSONResponse(build.to_json(base_of(request)), status_code=201)

    def lookup(request: Request) -> Build | None:
        builds = state.builds.get((request.path_params["org"], request.path_params["pipeline"]), [])
        number = request.path_params["number"]
        return builds[number - 1] if 0 < number <= len(builds) else None

    async def get(request: Request) -> Response:
        build = lookup(request)
        if build is None:
            return message(404, "Not Found")
        return JSONResponse(build.to_json(base_of(request), **flags(request)))

    async def cancel(request: Request) -> Response:
        build = lookup(request)
        if build is None:
            return message(404, "Not Found")
        with world.lock:
            if not state.cancel(build):
                return message(422, f"Build can't be canceled because it's {build.state}")
        return JSONResponse(build.to_json(base_of(request)))

    async def list_builds(request: Request) -> Response:
        q = request.query_params
        builds = list(reversed(state.builds.get((request.path_params["org"], request.path_params["pipeline"]), [])))
        states = set(q.getlist("state") + q.getlist("state[]"))
        branches = set(q.getlist("branch") + q.getlist("branch[]"))
        meta = {
            k[len("meta_data[") : -1]: v for k, v in q.multi_items() if k.startswith("meta_data[") and k.endswith("]")
        }
        try:
            created_from = _time(q["created_from"]) if q.get("created_from") else None
            created_to = _time(q["created_to"]) if q.get("created_to") else None
            page = max(1, int(q.get("page", 1)))
            per_page = min(100, max(1, int(q.get("per_page", 30))))
        except ValueError:
            return message(400, "Invalid page, per_page, created_from or created_to")
        builds = [
            b
            for b in builds
            if (not states or b.state in states)
            and (not branches or b.branch in branches)
            and (not q.get("commit") or b.commit == q["commit"])
            and all(str(b.meta_data.get(k)) == v for k, v in meta.items())
            and (created_from is None or b.created_at >= created_from)
            and (created_to is None or b.created_at < created_to)
        ]
        headers = {}
        if page * per_page < len(builds):
            url = request.url.include_query_params(page=page + 1, per_page=per_page)
            headers["Link"] = f'<{url}>; rel="next"'
        chunk = builds[(page - 1) * per_page : page * per_page]
        return JSONResponse([b.to_json(base_of(request), **flags(request)) for b in chunk], headers=headers)

    async def no_route(request: Request, exc: Exception) -> Response:
        return message(404, "Not Found")

    builds = "/v2/organizations/{org}/pipelines/{pipeline}/builds"
    return Starlette(
        routes=[
            Route("/", root, methods=["GET"]),
            Route(builds, list_builds, methods=["GET"]),
            Route(builds, create, methods=["POST"]),
            Route(builds + "/{number:int}", get, methods=["GET"]),
            Route(builds + "/{number:int}/cancel", cancel, methods=["PUT"]),
        ],
        exception_handlers={404: no_route, 405: no_route},
    )
