"""Buildkite stand-in: the REST builds API (`/v2/organizations/{org}/pipelines/{pipeline}/builds`).

Written from specs/buildkite/apis_rest_api_builds.md and apis_rest_api.md: the build data model, create
(201), get by number, list newest first with the filters a client uses to find an existing build, cancel,
`page`/`per_page` pagination with a `Link` header, bearer auth. A build runs one E2E job:
scheduled -> running -> passed | failed | canceled, the result chosen by the scenario (`e2e.result`).

The stored docs leave the builds list's query-string table out (it is a partial the docs render from
elsewhere). They name `state` (apis_rest_api.md), `branch` and `created_from` (the 400 message), and
`meta_data[...]=` filtering on build URLs (pipelines_configure_build_meta_data.md); `commit` and
`created_to` are taken from the public Buildkite REST docs of the same endpoint.

Block steps (apis_rest_api_jobs.md "Unblock a job", apis_rest_api_builds.md job data model,
pipelines_configure_step_types_block_step.md): a build made through the sandbox-only route below carries one
`manual` job, `blocked` until someone unblocks it through either unblock route. The build then keeps its
state (`passed`) with `blocked: true`, as the builds doc says. Unblocking records who did it (`unblocked_by`),
when, and copies the block step's `fields` into the build's meta-data.

Who unblocks: the spec's `unblocker` body property (a user id of the organization), else "the user making the
API request", i.e. the owner of the bearer token: a token registered for a sandbox user with
`POST /_sandbox/users {"token": ...}`, else the sandbox's API user (Ferry, the creator of every build).
The stand-in trusts whoever holds a token that passes auth, as Buildkite does: `unblocker` lets any holder of
a `write_builds` token attribute an unblock to any member of the organization.

People and teams: one directory shared by every organization slug, seeded with quinn, quentin, rita, raj,
mallory (`<name>@example.com`) and the teams `qa` (quinn, quentin) and `release-managers` (rita, raj). The
teams list (`GET /v2/organizations/{org}/teams`, paginated, `user_id` filter) and the team members list
(`.../teams/{team.uuid}/members`) are listed in apis_rest_api.md, but their response bodies are not in the
stored specs: they follow Buildkite's public docs (teams: id, graphql_id, name, slug, description, privacy,
default, created_at, created_by; members: role, user_id, user_name, created_at). Members are paginated like
the other lists.

The stored spec gives no REST answer for unblocking a job that is no longer blocked: the stand-in answers 422
with the wording of Buildkite's GraphQL API ("The job's state must be blocked").

Sandbox-only routes (not upstream), under `/_sandbox/` like the inspection path:
- `POST /_sandbox/organizations/{org}/pipelines/{pipeline}/blocked-builds`
  `{"commit", "branch", "step_key"?, "label"?, "message"?}` -> 201, the build (its jobs: the block job);
- `GET /_sandbox/users` -> `[{"id", "name", "email", "teams": [slug, ...]}]`;
- `POST /_sandbox/users` `{"name", "email"?, "token"?}` -> 201, the user (409 when the name or email is taken);
- `POST /_sandbox/teams` `{"slug", "name"?, "members": [user name or id, ...]}` -> 201, the team (409 when
  the slug is taken, 422 naming an unknown member).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable
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

# The API user: owner of the sandbox's token and creator of every build.
API_USER_ID = "00000000-0000-0000-0000-000000000001"
SEED_USERS = ("quinn", "quentin", "rita", "raj", "mallory")
SEED_TEAMS = {"qa": ("quinn", "quentin"), "release-managers": ("rita", "raj")}
_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "https://buildkite.sandbox.ferry")
NOT_BLOCKED = "The job's state must be blocked"


def message(status: int, text: str, **extra: Any) -> JSONResponse:
    """Buildkite's error body `{"message": ...}`."""
    return JSONResponse({"message": text, **extra}, status_code=status)


def unauthorized() -> Response:
    """Answer to a request without a valid bearer token (wording not in the stored docs)."""
    return message(401, "Authentication required. Please supply a valid API Access Token.")


def graphql_id(kind: str, id: str) -> str:
    """Buildkite's GraphQL id: base64 of `<Kind>---<uuid>`."""
    return base64.b64encode(f"{kind}---{id}".encode()).decode()


@dataclass
class User:
    """A person of the organization: who an unblock is attributed to and who belongs to teams."""

    id: str
    name: str
    email: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        """The user as `unblocked_by` and `created_by` show it."""
        return {
            "id": self.id,
            "graphql_id": graphql_id("User", self.id),
            "name": self.name,
            "email": self.email,
            "avatar_url": "https://www.gravatar.com/avatar/" + hashlib.md5(self.email.lower().encode()).hexdigest(),
            "created_at": iso_ms(self.created_at),
        }


@dataclass
class Team:
    """A team of the organization; `members` maps user id to role (`member` or `maintainer`)."""

    id: str
    slug: str
    name: str
    created_at: float
    created_by: User
    members: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The team data model."""
        return {
            "id": self.id,
            "graphql_id": graphql_id("Team", self.id),
            "name": self.name,
            "slug": self.slug,
            "description": "",
            "privacy": "visible",
            "default": False,
            "created_at": iso_ms(self.created_at),
            "created_by": self.created_by.to_json(),
        }


class Directory:
    """The organization's users, teams and API tokens (one directory for every organization slug)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.api_user = User(API_USER_ID, "Ferry", "ferry@localhost", clock())
        self.users: dict[str, User] = {API_USER_ID: self.api_user}
        self.teams: dict[str, Team] = {}
        self.tokens: dict[str, str] = {}  # API token -> user id
        for name in SEED_USERS:
            self.add_user(name)
        for slug, members in SEED_TEAMS.items():
            self.add_team(slug, list(members))

    def find(self, ref: str) -> User | None:
        """A user by id or by name."""
        return self.users.get(ref) or next((u for u in self.users.values() if u.name == ref), None)

    def add_user(self, name: str, email: str | None = None, token: str | None = None) -> User:
        """A new user (ids are derived from the email, so they are the same in every sandbox).

        ValueError when the name or the email is taken.
        """
        email = email or f"{name}@example.com"
        if any(u.name == name or u.email == email for u in self.users.values()):
            raise ValueError(f"a user named {name} or with the email {email} already exists")
        user = User(str(uuid.uuid5(_IDS, f"user:{email}")), name, email, self.clock())
        self.users[user.id] = user
        if token:
            self.tokens[token] = user.id
        return user

    def add_team(self, slug: str, members: list[str], name: str | None = None) -> Team:
        """A new team of existing users (by name or id); KeyError names an unknown one, ValueError a taken slug."""
        if any(t.slug == slug for t in self.teams.values()):
            raise ValueError(f"A team with the slug {slug} already exists")
        users = [self.find(m) for m in members]
        unknown = [m for m, u in zip(members, users, strict=True) if u is None]
        if unknown:
            raise KeyError(", ".join(unknown))
        team = Team(str(uuid.uuid5(_IDS, f"team:{slug}")), slug, name or slug, self.clock(), self.api_user)
        team.members = {u.id: "member" for u in users if u is not None}
        self.teams[team.id] = team
        return team

    def user_of_token(self, authorization: str) -> User:
        """The owner of the request's bearer token: a registered sandbox user, else the API user."""
        kind, _, token = authorization.partition(" ")
        user_id = self.tokens.get(token.strip()) if kind.lower() == "bearer" else None
        return self.users.get(user_id or "", self.api_user)

    def teams_of(self, user_id: str) -> list[Team]:
        """The teams `user_id` belongs to."""
        return [t for t in self.teams.values() if user_id in t.members]


@dataclass
class BlockJob:
    """A block step of a build (a `manual` job): blocked until someone unblocks it through the API."""

    id: str
    step_key: str
    label: str
    created_at: float
    unblocked_by: User | None = None
    unblocked_at: float | None = None

    def to_json(self, api_build: str, *, unblockable: bool) -> dict[str, Any]:
        """The job as the build and the unblock call show it (web_url is null, as in the spec's example)."""
        return {
            "id": self.id,
            "graphql_id": graphql_id("JobTypeBlock", self.id),
            "type": "manual",
            "label": self.label,
            "step_key": self.step_key,
            "state": "blocked" if self.unblocked_by is None else "unblocked",
            "web_url": None,
            "unblocked_by": self.unblocked_by.to_json() if self.unblocked_by else None,
            "unblocked_at": iso_ms(self.unblocked_at) if self.unblocked_at is not None else None,
            "unblockable": unblockable,
            "unblock_url": f"{api_build}/jobs/{self.id}/unblock",
            "created_at": iso_ms(self.created_at),
        }


@dataclass
class Build:
    """One build of a pipeline: its single E2E job, or (made by the sandbox route) its single block step."""

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
    block: BlockJob | None = None
    # Sandbox-only: what the environment under test ran while the E2E job ran (app -> images, at start and at
    # finish), so a test can tell that each E2E ran against its own release's images.
    observed: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        """Waiting on its block step (a canceled build waits on nothing)."""
        return self.block is not None and self.block.unblocked_by is None and self.state != "canceled"

    def job_ids(self) -> list[str]:
        """The ids of this build's jobs."""
        return [self.block.id] if self.block else [self.job_id]

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
            "blocked": self.blocked,
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
        if with_jobs and self.block is not None:
            out["jobs"] = [self.block.to_json(f"{api}/builds/{self.number}", unblockable=self.blocked)]
        elif with_jobs:
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
        self.directory = Directory(world.now)

    def created_count(self, org: str | None = None, pipeline: str | None = None) -> int:
        """How many builds were created (in total, or for one org/pipeline)."""
        return sum(n for (o, p), n in self.created.items() if org in (None, o) and pipeline in (None, p))

    def create(self, org: str, pipeline: str, body: dict[str, Any]) -> Build:
        """Create a build and run it: scheduled -> running -> the scenario's result."""
        world = self.world
        with world.lock:
            now = world.now()
            build = self._add(
                org, pipeline, body, env=dict(body.get("env") or {}), author=body.get("author"), created_at=now
            )
            build.meta_data = dict(body.get("meta_data") or {})

            def start(at: float) -> None:
                build.state, build.started_at = "running", at
                build.observed["start"] = self._environment_images(build)
                build.events.append(world.after(RUNNING_SECONDS, finish, base=at))

            def finish(at: float) -> None:
                build.observed["finish"] = self._environment_images(build)
                result = world.scenario.e2e_result
                build.state, build.finished_at = result, at
                if result == "failed":
                    build.failing_at = at
                if result == "canceled":
                    build.cancel_reason = "canceled by the sandbox scenario"

            build.events.append(world.after(SCHEDULED_SECONDS, start, base=now))
            return build

    def _environment_images(self, build: Build) -> dict[str, list[str]]:
        """The images every Argo CD app of the build's FERRY_ENVIRONMENT runs now (apps named `*-<env>`)."""
        env = str(build.env.get("FERRY_ENVIRONMENT") or "")
        if not env:
            return {}
        return {
            name: list(app.deployed.images) if app.deployed else []
            for argo in self.world.argocd.values()
            for name, app in argo.apps.items()
            if name.endswith(f"-{env}")
        }

    def create_blocked(self, org: str, pipeline: str, body: dict[str, Any]) -> Build:
        """Create a build whose steps before its block step passed: `passed`, blocked on that step."""
        with self.world.lock:
            now = self.world.now()
            block = BlockJob(
                id=str(uuid.uuid4()),
                step_key=str(body.get("step_key") or "approve"),
                label=str(body.get("label") or "Approve"),
                created_at=now,
            )
            return self._add(
                org,
                pipeline,
                body,
                env={},
                author=None,
                created_at=now,
                state="passed",
                started_at=now,
                finished_at=now,
                block=block,
            )

    def _add(self, org: str, pipeline: str, body: dict[str, Any], **fields: Any) -> Build:
        """A new build of `pipeline` numbered after the last one (the caller holds the world's lock)."""
        builds = self.builds.setdefault((org, pipeline), [])
        build = Build(
            id=str(uuid.uuid4()),
            number=len(builds) + 1,
            org=org,
            pipeline=pipeline,
            commit=str(body["commit"]),
            branch=str(body["branch"]),
            message=str(body.get("message") or ""),
            meta_data={},
            **fields,
        )
        builds.append(build)
        self.created[(org, pipeline)] += 1
        return build

    def find_job(self, org: str, job_id: str) -> Build | None:
        """The build of `org` that has the job `job_id`."""
        for (o, _), builds in self.builds.items():
            for build in builds:
                if o == org and job_id in build.job_ids():
                    return build
        return None

    def unblock(self, build: Build, job_id: str, body: dict[str, Any], authorization: str) -> tuple[int, Any]:
        """Unblock a block job as the spec says: (status, job JSON or error message)."""
        with self.world.lock:
            block = build.block
            if block is None or block.id != job_id:
                return 400, "This job type cannot be unblocked"
            if build.state == "canceled":
                return 422, "Jobs from canceled builds cannot be unblocked"
            if block.unblocked_by is not None:
                return 422, NOT_BLOCKED
            unblocker = body.get("unblocker")
            if unblocker is None:
                user = self.directory.user_of_token(authorization)
            else:
                found = self.directory.users.get(unblocker) if isinstance(unblocker, str) else None
                if found is None:
                    return 422, "Unblocker is not a valid user id for this organization"
                user = found
            fields = body.get("fields") or {}
            if not isinstance(fields, dict):
                return 422, "Fields must be an object"
            block.unblocked_by, block.unblocked_at = user, self.world.now()
            build.meta_data.update({str(k): str(v) for k, v in fields.items()})
            return 200, None

    def cancel(self, build: Build) -> bool:
        """Cancel a scheduled, running or blocked build; False when it has already finished."""
        if build.state in FINISHED and not build.blocked:
            return False
        for event in build.events:
            event.cancel()
        build.state, build.finished_at = "canceled", self.world.now()
        build.cancel_reason = "canceled through the API"
        return True

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        return {f"{o}/{p}": {b.number: _snapshot(b) for b in builds} for (o, p), builds in sorted(self.builds.items())}


def _snapshot(build: Build) -> dict[str, Any]:
    out: dict[str, Any] = {"state": build.state, "commit": build.commit, "meta_data": build.meta_data}
    if build.observed:
        out.update(env=build.env, observed=build.observed)
    if build.block is not None:
        by = build.block.unblocked_by
        out.update(blocked=build.blocked, step_key=build.block.step_key, unblocked_by=by.name if by else None)
    return out


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

    async def json_body(request: Request, *, empty: bool = False) -> dict[str, Any] | Response:
        raw = await request.body()
        if empty and not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            return message(400, "Problems parsing JSON")
        return body if isinstance(body, dict) else message(400, "Problems parsing JSON")

    async def unblock(request: Request) -> Response:
        org, job_id = request.path_params["org"], request.path_params["job_id"]
        if "number" in request.path_params:
            build = lookup(request)
            if build is not None and job_id not in build.job_ids():
                build = None
        else:
            build = state.find_job(org, job_id)
        if build is None:
            return message(404, "Not Found")
        body = await json_body(request, empty=True)
        if isinstance(body, Response):
            return body
        status, error = state.unblock(build, job_id, body, request.headers.get("authorization", ""))
        if error is not None:
            return message(status, error)
        api = f"{base_of(request)}/v2/organizations/{build.org}/pipelines/{build.pipeline}/builds/{build.number}"
        assert build.block is not None
        return JSONResponse(build.block.to_json(api, unblockable=build.blocked))

    def page_of(request: Request, items: list[Any]) -> tuple[list[Any], dict[str, str]] | Response:
        try:
            page = max(1, int(request.query_params.get("page", 1)))
            per_page = min(100, max(1, int(request.query_params.get("per_page", 30))))
        except ValueError:
            return message(400, "Invalid page or per_page")
        headers = {}
        if page * per_page < len(items):
            url = request.url.include_query_params(page=page + 1, per_page=per_page)
            headers["Link"] = f'<{url}>; rel="next"'
        return items[(page - 1) * per_page : page * per_page], headers

    async def list_teams(request: Request) -> Response:
        teams = list(state.directory.teams.values())
        if request.query_params.get("user_id"):
            teams = [t for t in teams if request.query_params["user_id"] in t.members]
        paged = page_of(request, teams)
        if isinstance(paged, Response):
            return paged
        chunk, headers = paged
        return JSONResponse([t.to_json() for t in chunk], headers=headers)

    async def team_members(request: Request) -> Response:
        team = state.directory.teams.get(request.path_params["team"])
        if team is None:
            return message(404, "Not Found")
        users = state.directory.users
        members = [
            {"role": role, "created_at": iso_ms(team.created_at), "user_id": uid, "user_name": users[uid].name}
            for uid, role in team.members.items()
        ]
        paged = page_of(request, members)
        if isinstance(paged, Response):
            return paged
        chunk, headers = paged
        return JSONResponse(chunk, headers=headers)

    # --- sandbox-only routes (not upstream) ---

    async def create_blocked(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        missing = [f for f in ("commit", "branch") if not body.get(f)]
        if missing:
            return message(422, "Validation Failed", errors=[{"field": f, "code": "missing_field"} for f in missing])
        org, pipeline = request.path_params["org"], request.path_params["pipeline"]
        build = state.create_blocked(org, pipeline, body)
        return JSONResponse(build.to_json(base_of(request)), status_code=201)

    async def list_users(request: Request) -> Response:
        directory = state.directory
        return JSONResponse(
            [
                {"id": u.id, "name": u.name, "email": u.email, "teams": [t.slug for t in directory.teams_of(u.id)]}
                for u in directory.users.values()
            ]
        )

    async def add_user(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return message(422, "Validation Failed", errors=[{"field": "name", "code": "missing_field"}])
        with world.lock:
            try:
                user = state.directory.add_user(name, body.get("email") or None, body.get("token") or None)
            except ValueError as e:
                return message(409, str(e))
        return JSONResponse(user.to_json(), status_code=201)

    async def add_team(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        slug, members = body.get("slug"), body.get("members") or []
        if not isinstance(slug, str) or not slug:
            return message(422, "Validation Failed", errors=[{"field": "slug", "code": "missing_field"}])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            return message(422, "Validation Failed", errors=[{"field": "members", "code": "invalid"}])
        with world.lock:
            try:
                team = state.directory.add_team(slug, members, body.get("name") or None)
            except KeyError as e:
                return message(422, f"No such user: {e.args[0]}")
            except ValueError as e:
                return message(409, str(e))
        return JSONResponse(team.to_json(), status_code=201)

    async def no_route(request: Request, exc: Exception) -> Response:
        return message(404, "Not Found")

    org = "/v2/organizations/{org}"
    builds = org + "/pipelines/{pipeline}/builds"
    return Starlette(
        routes=[
            Route("/", root, methods=["GET"]),
            Route(builds, list_builds, methods=["GET"]),
            Route(builds, create, methods=["POST"]),
            Route(builds + "/{number:int}", get, methods=["GET"]),
            Route(builds + "/{number:int}/cancel", cancel, methods=["PUT"]),
            Route(builds + "/{number:int}/jobs/{job_id}/unblock", unblock, methods=["PUT"]),
            Route(org + "/jobs/{job_id}/unblock", unblock, methods=["PUT"]),
            Route(org + "/teams", list_teams, methods=["GET"]),
            Route(org + "/teams/{team}/members", team_members, methods=["GET"]),
            Route(
                "/_sandbox/organizations/{org}/pipelines/{pipeline}/blocked-builds", create_blocked, methods=["POST"]
            ),
            Route("/_sandbox/users", list_users, methods=["GET"]),
            Route("/_sandbox/users", add_user, methods=["POST"]),
            Route("/_sandbox/teams", add_team, methods=["POST"]),
        ],
        exception_handlers={404: no_route, 405: no_route},
    )
