"""Harbor stand-in: the `/api/v2.0` subset Ferry uses, for the on-prem and the cloud instance.

Written from specs/harbor/swagger.yaml and specs/harbor/NOTES-from-source.md. Real behaviour kept:
artifacts keyed by digest (reference = digest or tag), scan overview keyed by report MIME type, replication
executions that read InProgress -> Succeed/Failed/Stopped and really copy artifacts between the two
instances (Harbor-Cloud holds only what replication copied), 201 + Location for created resources, the
`{"errors": [{code, message}]}` error body, and `X-Request-Id` echoed on every answer.

Replication as Harbor runs it (src/controller/replication, src/server/v2.0/handler/replication.go): an
execution enumerates what its policy selects when it starts and makes one task per repository
(`src_resource` "project/repo [N item(s) in total]", resource_type "artifact"), tasks read Pending ->
InProgress -> Succeed/Failed/Stopped; listing executions and tasks honours `sort` (default: newest
start_time first), `page`/`page_size` and the swagger's filters (`policy_id`, `status`, `trigger`; tasks:
`status`, `resource_type`), with the status and trigger strings reverse-mapped as the handler does.
"""

from __future__ import annotations

import json
import re
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.standins.world import SEVERITIES, iso_ms

if TYPE_CHECKING:
    from sandbox.standins.world import World

BASE = "/api/v2.0"
AUTH_SCHEME = "basic"
PUBLIC_PATHS = frozenset({f"{BASE}/ping"})  # swagger: "This path does not require any authentication."

# The two report MIME types of the `X-Accept-Vulnerabilities` parameter; the first is the default one.
MIME_V11 = "application/vnd.security.vulnerability.report; version=1.1"
MIME_HARBOR = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
SCANNER = {"name": "Trivy", "vendor": "Aqua Security", "version": "sandbox"}

# Simulated durations in seconds at speed 1.0.
SCAN_QUEUE_SECONDS = 0.1
SCAN_SECONDS = 0.5
REPLICATION_SECONDS = 1.0
REPLICATION_TASK_PENDING_SECONDS = 0.2  # a task waits this long for the job service before it runs

# Harbor's zero time, printed for a time not reached yet (an execution or task that has not ended).
ZERO_TIME = "0001-01-01T00:00:00.000Z"
# The list handlers reverse-map the API strings to job statuses and pass any other string through, so a raw
# job status (or trigger) filters too (handler/replication.go ListReplicationExecutions/ListReplicationTasks).
EXECUTION_STATUS_FILTER = {"Running": "InProgress", "Success": "Succeed", "Error": "Failed"}
TASK_STATUS_FILTER = {"Running": "InProgress", "Scheduled": "InProgress", "Success": "Succeed", "Error": "Failed"}
TRIGGER_FILTER = {"MANUAL": "manual", "SCHEDULE": "scheduled", "EVENT": "event_based"}
# Sortable keys (model columns in src/pkg/task/dao/model.go); Harbor ignores any other `sort` key.
EXECUTION_SORT_KEYS = frozenset({"id", "status", "trigger", "start_time", "end_time"})
TASK_SORT_KEYS = frozenset({"id", "status", "job_id", "start_time", "end_time"})


def errors(status: int, code: str, message: str) -> JSONResponse:
    """Harbor's error body (definitions/Errors)."""
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def unauthorized() -> Response:
    """What Harbor answers without valid basic-auth credentials."""
    return errors(401, "UNAUTHORIZED", "unauthorized")


@dataclass
class ScanReport:
    """One vulnerability report; shared by reference with a replicated copy of the artifact."""

    report_id: str
    status: str  # job statuses from NOTES: Pending, Running, Success, Error, Stopped
    start_time: float
    end_time: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    cves: dict[str, list[str]] = field(default_factory=dict)

    def overview(self) -> dict[str, Any]:
        """NativeReportSummary of the swagger."""
        out: dict[str, Any] = {
            "report_id": self.report_id,
            "scan_status": self.status,
            "start_time": iso_ms(self.start_time),
            "complete_percent": 100 if self.end_time is not None else 0,
            "scanner": SCANNER,
        }
        if self.status == "Success" and self.end_time is not None:
            found = {s: n for s, n in self.counts.items() if n and s != "None"}
            worst = max(found, key=SEVERITIES.index) if found else "None"
            total = sum(found.values())
            out.update(
                end_time=iso_ms(self.end_time),
                duration=int(self.end_time - self.start_time),
                severity=worst,
                # The stand-in calls every vulnerability fixable: the scenario has no notion of fixes.
                summary={"total": total, "fixable": total, "summary": found},
            )
        return out


@dataclass
class Artifact:
    """An image manifest in one repository, addressed by digest."""

    id: int
    project: str
    repository: str
    digest: str
    push_time: float
    tags: dict[str, float] = field(default_factory=dict)  # tag -> push time
    report: ScanReport | None = None

    def to_json(self, project_id: int, *, with_tag: bool, scan_mime: str | None) -> dict[str, Any]:
        """The swagger's Artifact definition (the fields a client reads)."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": "IMAGE",
            "media_type": "application/vnd.oci.image.config.v1+json",
            "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
            "project_id": project_id,
            "repository_name": f"{self.project}/{self.repository}",
            "digest": self.digest,
            "size": 1024 * 1024,
            "push_time": iso_ms(self.push_time),
            "pull_time": "0001-01-01T00:00:00.000Z",
            "extra_attrs": {"architecture": "amd64", "os": "linux"},
        }
        if with_tag:
            out["tags"] = [
                {
                    "id": zlib.crc32(f"{self.id}:{t}".encode()),
                    "artifact_id": self.id,
                    "name": t,
                    "push_time": iso_ms(at),
                    "pull_time": "0001-01-01T00:00:00.000Z",
                    "immutable": False,
                }
                for t, at in sorted(self.tags.items(), key=lambda kv: kv[1])
            ]
        if scan_mime is not None and self.report is not None:
            # Without a report the overview is left out (an empty map is omitted from the JSON).
            out["scan_overview"] = {scan_mime: self.report.overview()}
        return out


@dataclass
class ReplicationTask:
    """One task of an execution: the copy of one repository's selected artifacts."""

    id: int
    execution_id: int
    project: str
    repository: str
    artifacts: list[Artifact]
    status: str = "Pending"  # API strings: Pending, InProgress, Succeed, Failed, Stopped
    start_time: float | None = None
    end_time: float | None = None
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        """The swagger's ReplicationTask definition; names as Harbor's getResourceName prints them."""
        items = sum(len(a.tags) or 1 for a in self.artifacts)  # its tags, or its digest when untagged
        name = f"{self.project}/{self.repository} [{items} item(s) in total]"
        return {
            "id": self.id,
            "execution_id": self.execution_id,
            "status": self.status,
            "job_id": self.job_id,
            "operation": "copy",
            "resource_type": "artifact",
            "src_resource": name,
            "dst_resource": name,  # the stand-in copies into the same project and repository
            "start_time": iso_ms(self.start_time) if self.start_time is not None else ZERO_TIME,
            "end_time": iso_ms(self.end_time) if self.end_time is not None else ZERO_TIME,
        }


@dataclass
class Execution:
    """A replication execution and its tasks, one per repository."""

    id: int
    policy_id: int
    start_time: float
    status: str = "InProgress"
    status_text: str = ""
    end_time: float | None = None
    tasks: list[ReplicationTask] = field(default_factory=list)
    trigger: str = "manual"
    event: Any = None

    def to_json(self) -> dict[str, Any]:
        """The swagger's ReplicationExecution definition; the counters come from the tasks (convertExecution)."""
        count = {s: sum(1 for t in self.tasks if t.status == s) for s in ("Succeed", "Failed", "Stopped")}
        return {
            "id": self.id,
            "policy_id": self.policy_id,
            "status": self.status,
            "status_text": self.status_text,
            "trigger": self.trigger,
            "start_time": iso_ms(self.start_time),
            # Harbor prints the zero time for an execution that has not ended.
            "end_time": iso_ms(self.end_time) if self.end_time else ZERO_TIME,
            "total": len(self.tasks),
            "succeed": count["Succeed"],
            "failed": count["Failed"],
            "stopped": count["Stopped"],
            # pending + scheduled + running tasks
            "in_progress": sum(1 for t in self.tasks if t.status in ("Pending", "InProgress")),
        }


def doublestar(pattern: str) -> re.Pattern[str]:
    """Harbor's name/tag filter glob (doublestar): `**` any depth, `*` and `?` within a segment, {a,b}."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            end = pattern.find("}", i)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append("(?:" + "|".join(re.escape(a) for a in pattern[i + 1 : end].split(",")) + ")")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


class HarborInstance:
    """The state of one Harbor: projects, artifacts, registries, replication policies and executions."""

    def __init__(self, world: World, site: str, *, auto_scan: bool = False) -> None:
        self.world = world
        self.site = site
        self.name = f"harbor-{site}"
        self.auto_scan = auto_scan
        self.projects: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[tuple[str, str], dict[str, Artifact]] = {}
        self.registries: dict[int, dict[str, Any]] = {}
        self.policies: dict[int, dict[str, Any]] = {}
        self.executions: dict[int, Execution] = {}
        self._ids: dict[str, int] = {}

    def _next(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    # --- projects ---

    def ensure_project(self, name: str, public: bool = False) -> dict[str, Any]:
        """Create the project if absent; returns it."""
        project = self.projects.get(name)
        if project is None:
            now = iso_ms(self.world.now())
            project = {
                "project_id": self._next("project"),
                "name": name,
                "owner_id": 1,
                "owner_name": "admin",
                "creation_time": now,
                "update_time": now,
                "deleted": False,
                "metadata": {"public": "true" if public else "false", "auto_scan": str(self.auto_scan).lower()},
            }
            self.projects[name] = project
        return project

    def project_json(self, project: dict[str, Any]) -> dict[str, Any]:
        """A project with its live repository count."""
        repos = sum(1 for (p, _), arts in self.artifacts.items() if p == project["name"] and arts)
        return {**project, "repo_count": repos}

    # --- artifacts ---

    def push(self, project: str, repository: str, tag: str, digest: str, *, at: float | None = None) -> Artifact:
        """An image push (what Kaniko does in the Tekton run). Pushing the same digest again only tags it.

        Real Harbor refuses pushes into a missing project; the stand-in creates it so that the sandbox needs
        no setup step. A tag moves to the new digest, as tags do in an OCI registry.
        """
        with self.world.lock:
            self.ensure_project(project)
            repo = self.artifacts.setdefault((project, repository), {})
            now = self.world.now() if at is None else at
            if tag:
                for other in repo.values():
                    other.tags.pop(tag, None)
            artifact = repo.get(digest)
            created = artifact is None
            if artifact is None:
                artifact = Artifact(self._next("artifact"), project, repository, digest, now)
                repo[digest] = artifact
            if tag:
                artifact.tags[tag] = now
            if created and self.auto_scan:
                self.start_scan(artifact, base=now)
            return artifact

    def receive_copy(self, source: Artifact, at: float) -> bool:
        """Replication target side: store a copy (tags and scan report kept). False if it was already here."""
        self.ensure_project(source.project)
        repo = self.artifacts.setdefault((source.project, source.repository), {})
        existing = repo.get(source.digest)
        if existing is not None:
            existing.tags.update(source.tags)
            return False
        # The copy shares the source's report object: the stand-in does not rescan on the destination.
        repo[source.digest] = Artifact(
            self._next("artifact"),
            source.project,
            source.repository,
            source.digest,
            at,
            dict(source.tags),
            source.report,
        )
        return True

    def find(self, project: str, repository: str, reference: str) -> Artifact | None:
        """An artifact by digest or tag."""
        repo = self.artifacts.get((project, repository), {})
        if reference in repo:
            return repo[reference]
        for artifact in repo.values():
            if reference in artifact.tags:
                return artifact
        return None

    def has_image(self, project: str, repository: str, reference: str) -> bool:
        """True when a pull of project/repository@digest (or :tag) would succeed."""
        with self.world.lock:
            return self.find(project, repository, reference) is not None

    def start_scan(self, artifact: Artifact, *, base: float | None = None) -> None:
        """Scan Pending -> Running -> Success; the counts come from the scenario when the scan finishes."""
        start = self.world.now() if base is None else base
        report = ScanReport(str(uuid.uuid4()), "Pending", start)
        artifact.report = report

        def running(at: float) -> None:
            if artifact.report is report:
                report.status = "Running"
                self.world.after(SCAN_SECONDS, finish, base=at)

        def finish(at: float) -> None:
            if artifact.report is report:
                report.cves = self.world.scenario.cves_for(artifact.repository)
                report.counts = {severity: len(ids) for severity, ids in report.cves.items()}
                report.status = "Success"
                report.end_time = at

        self.world.after(SCAN_QUEUE_SECONDS, running, base=start)

    # --- replication ---

    def seed_replication_to(self, target: str) -> None:
        """Pre-create registry 1 (the other Harbor) and policy 1 pushing `ferry/**` there, as a platform
        team would; ferry.yaml's `replication_policies: {cloud: 1}` then works with no setup."""
        now = iso_ms(self.world.now())
        reg_id = self._next("registry")
        self.registries[reg_id] = {
            "id": reg_id,
            "name": f"harbor-{target}",
            "type": "harbor",
            "url": f"harbor-{target}",
            "insecure": True,
            "status": "healthy",
            "creation_time": now,
            "update_time": now,
            "description": "sandbox: the other Harbor stand-in",
        }
        pol_id = self._next("policy")
        self.policies[pol_id] = {
            "id": pol_id,
            "name": f"ferry-to-{target}",
            "description": "sandbox default",
            "src_registry": None,
            "dest_registry": {"id": reg_id, "name": f"harbor-{target}"},
            "dest_namespace": "",
            "filters": [{"type": "name", "value": "ferry/**"}],
            "trigger": {"type": "manual"},
            "enabled": True,
            "override": True,
            "replicate_deletion": False,
            "creation_time": now,
            "update_time": now,
        }

    def target_of(self, policy: dict[str, Any]) -> str:
        """Which Harbor instance a push policy's destination registry is.

        Matched by the registry URL's host against the hosts the world knows; the stand-in world has
        only two Harbors, so anything else means "the other one".
        """
        reg = self.registries.get((policy.get("dest_registry") or {}).get("id", -1), {})
        host = re.sub(r"^https?://", "", str(reg.get("url", ""))).split("/")[0]
        known = self.world.harbor_for_host(host) or {"harbor-onprem": "onprem", "harbor-cloud": "cloud"}.get(host)
        if known and known != self.site:
            return known
        return next(s for s in self.world.harbor if s != self.site)

    def matching(self, policy: dict[str, Any]) -> list[Artifact]:
        """Artifacts a policy's name and tag filters select (other filter types are not modelled)."""
        out = []
        filters = policy.get("filters") or []
        for (project, repository), arts in sorted(self.artifacts.items()):
            for artifact in arts.values():
                if all(self._passes(f, project, repository, artifact) for f in filters):
                    out.append(artifact)
        return out

    @staticmethod
    def _passes(flt: dict[str, Any], project: str, repository: str, artifact: Artifact) -> bool:
        kind, value = flt.get("type"), flt.get("value")
        excludes = flt.get("decoration") == "excludes"
        if kind == "name" and isinstance(value, str):
            hit = bool(doublestar(value).match(f"{project}/{repository}"))
        elif kind == "tag" and isinstance(value, str):
            hit = any(doublestar(value).match(t) for t in artifact.tags)
        else:
            return True
        return hit != excludes

    def start_replication(
        self, policy_id: int, *, trigger: str = "manual", only: list[Artifact] | None = None
    ) -> Execution:
        """Create an execution (InProgress) that copies what the policy selects now, after a short delay.

        Like Harbor, the execution enumerates its resources when it starts, one task per repository: an
        artifact pushed later is not part of it. `only` is what an event_based execution gets instead: the one
        artifact whose push fired it (the HTTP API only starts manual executions).
        """
        policy = self.policies[policy_id]
        now = self.world.now()
        execution = Execution(self._next("execution"), policy_id, now, trigger=trigger)
        self.executions[execution.id] = execution
        target = self.target_of(policy)
        by_repository: dict[tuple[str, str], list[Artifact]] = {}
        for artifact in self.matching(policy) if only is None else only:
            by_repository.setdefault((artifact.project, artifact.repository), []).append(artifact)
        execution.tasks = [
            ReplicationTask(self._next("task"), execution.id, project, repository, artifacts)
            for (project, repository), artifacts in sorted(by_repository.items())
        ]

        def running(at: float) -> None:
            for task in execution.tasks:
                if task.status == "Pending":
                    task.status, task.start_time = "InProgress", at

        def run(at: float) -> None:
            if execution.status != "InProgress":
                return
            world = self.world
            dest = world.harbor[target]
            failure = None
            if world.scenario.fault_for(dest.name).down:
                failure = f"failed to reach the destination registry harbor-{target}: it is down (scenario)"
            elif world.scenario.replication_result == "Failed":
                failure = "replication failed (scenario replication.result: Failed)"
            for task in execution.tasks:
                if task.start_time is None:
                    task.start_time = at
                if not failure:
                    for artifact in task.artifacts:
                        dest.receive_copy(artifact, at)
                task.status, task.end_time = ("Failed" if failure else "Succeed"), at
            execution.status = "Failed" if failure else "Succeed"
            execution.status_text = failure or ("" if execution.tasks else "no resources need to be replicated")
            execution.end_time = at

        self.world.after(REPLICATION_TASK_PENDING_SECONDS, running, base=now)
        execution.event = self.world.after(REPLICATION_SECONDS, run, base=now)
        return execution

    def stop(self, execution: Execution) -> None:
        """PUT /replication/executions/{id}: stop an execution still in progress (and its unfinished tasks)."""
        if execution.status == "InProgress":
            if execution.event is not None:
                execution.event.cancel()
            now = self.world.now()
            for task in execution.tasks:
                if task.status in ("Pending", "InProgress"):
                    task.status, task.end_time = "Stopped", now
            execution.status = "Stopped"
            execution.status_text = "stopped by request"
            execution.end_time = now

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        return {
            "projects": sorted(self.projects),
            "artifacts": {
                f"{p}/{r}": {
                    d: {"tags": sorted(a.tags), "scan_status": a.report.status if a.report else None}
                    for d, a in arts.items()
                }
                for (p, r), arts in sorted(self.artifacts.items())
            },
            "policies": {i: p["name"] for i, p in self.policies.items()},
            "executions": {i: e.status for i, e in self.executions.items()},
        }


# --- HTTP layer ---


def _page(request: Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
    try:
        page = max(1, int(request.query_params.get("page", 1)))
        size = min(100, max(1, int(request.query_params.get("page_size", 10))))
    except ValueError:
        raise _Bad("page and page_size must be integers") from None
    headers = {"X-Total-Count": str(len(items))}
    if page * size < len(items):
        url = request.url.include_query_params(page=page + 1, page_size=size)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return items[(page - 1) * size : page * size], headers


def _sorted(
    request: Request, items: list[dict[str, Any]], allowed: frozenset[str], default: str
) -> list[dict[str, Any]]:
    """Order by the `sort` parameter (`field1,-field2`; `-` descending), else by `default`.

    Keys are compared as the JSON shows them (Harbor's RFC 3339 times sort as text); a key that is not
    sortable is ignored, as Harbor's query builder does.
    """
    keys = [k.strip() for k in request.query_params.get("sort", "").split(",") if k.strip()]
    keys = [k for k in keys if k.lstrip("-") in allowed] or default.split(",")
    out = list(items)
    for key in reversed(keys):  # stable sorts, least significant key first
        name = key.lstrip("-")
        out.sort(key=lambda item: (item.get(name) is None, item.get(name)), reverse=key.startswith("-"))
    return out


class _Bad(Exception):
    pass


def _bool(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() == "true"


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    """Exact-match `q=k=v,k2=v2` terms; other query patterns are not modelled (400, so nobody relies on
    them silently)."""
    out = {}
    raw = request.query_params.get("q")
    if not raw:
        return out
    for term in raw.split(","):
        key, sep, value = term.partition("=")
        if not sep or key not in allowed or value[:1] in ("~", "[", "{", "("):
            raise _Bad(f"the stand-in supports only exact q terms on {sorted(allowed)}, got {term!r}")
        out[key] = value.strip("\"'")
    return out


def _scan_mime(request: Request) -> str | None:
    if not _bool(request, "with_scan_overview", False):
        return None
    accepted = request.headers.get("X-Accept-Vulnerabilities", f"{MIME_V11}, {MIME_HARBOR}")
    # The swagger: "The first mime type will be used when the report found for it."
    for mime in re.split(r",\s*(?=application/)", accepted):
        if mime.strip() in (MIME_V11, MIME_HARBOR):
            return mime.strip()
    return MIME_V11


def build_app(world: World, site: str) -> Starlette:
    """The ASGI app of Harbor `site`."""
    harbor = world.harbor[site]

    def repo_name(request: Request) -> str:
        # The path was percent-decoded once by the server; the swagger asks clients to encode a slash
        # twice (a/b -> a%252Fb), so one more decode gives the repository name.
        return unquote(request.path_params["repository_name"])

    async def ping(request: Request) -> Response:
        return PlainTextResponse("Pong")

    async def list_projects(request: Request) -> Response:
        name = request.query_params.get("name")
        # listProjects' `name` is a fuzzy match in Harbor; a substring match here.
        items = [harbor.project_json(p) for n, p in sorted(harbor.projects.items()) if not name or name in n]
        page, headers = _page(request, items)
        return JSONResponse(page, headers=headers)

    async def head_project(request: Request) -> Response:
        name = request.query_params.get("project_name")
        if not name:
            return errors(400, "BAD_REQUEST", "project_name is required")
        return Response(status_code=200 if name in harbor.projects else 404)

    async def create_project(request: Request) -> Response:
        body = await _json(request)
        name = body.get("project_name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", name):
            return errors(400, "BAD_REQUEST", "project_name must be lowercase letters, digits and ._-")
        if name in harbor.projects:
            return errors(409, "CONFLICT", f"The project named {name} already exists")
        public = body.get("public") or (body.get("metadata") or {}).get("public") == "true"
        project = harbor.ensure_project(name, bool(public))
        by_name = request.headers.get("X-Resource-Name-In-Location", "false").lower() == "true"
        ref = name if by_name else project["project_id"]
        return Response(status_code=201, headers={"Location": f"{BASE}/projects/{ref}"})

    def lookup_project(request: Request) -> dict[str, Any] | None:
        ref = request.path_params["project_name_or_id"]
        if request.headers.get("X-Is-Resource-Name", "false").lower() != "true" and ref.isdigit():
            return next((p for p in harbor.projects.values() if p["project_id"] == int(ref)), None)
        return harbor.projects.get(ref)

    async def get_project(request: Request) -> Response:
        project = lookup_project(request)
        if project is None:
            return errors(404, "NOT_FOUND", f"project {request.path_params['project_name_or_id']} not found")
        return JSONResponse(harbor.project_json(project))

    def repo_json(project: dict[str, Any], repository: str, arts: dict[str, Artifact]) -> dict[str, Any]:
        times = [a.push_time for a in arts.values()]
        return {
            "id": zlib.crc32(f"{project['name']}/{repository}".encode()),
            "project_id": project["project_id"],
            "name": f"{project['name']}/{repository}",
            "artifact_count": len(arts),
            "pull_count": 0,
            "creation_time": iso_ms(min(times)),
            "update_time": iso_ms(max(times)),
        }

    async def list_repositories(request: Request) -> Response:
        project = harbor.projects.get(request.path_params["project_name"])
        if project is None:
            return errors(404, "NOT_FOUND", f"project {request.path_params['project_name']} not found")
        items = [
            repo_json(project, r, arts)
            for (p, r), arts in sorted(harbor.artifacts.items())
            if p == project["name"] and arts
        ]
        page, headers = _page(request, items)
        return JSONResponse(page, headers=headers)

    async def get_repository(request: Request) -> Response:
        name, repository = request.path_params["project_name"], repo_name(request)
        project, arts = harbor.projects.get(name), harbor.artifacts.get((name, repository))
        if project is None or not arts:
            return errors(404, "NOT_FOUND", f"repository {name}/{repository} not found")
        return JSONResponse(repo_json(project, repository, arts))

    async def list_artifacts(request: Request) -> Response:
        name, repository = request.path_params["project_name"], repo_name(request)
        project = harbor.projects.get(name)
        if project is None:
            return errors(404, "NOT_FOUND", f"project {name} not found")
        q = _query(request, {"digest", "tags"})
        arts = sorted(harbor.artifacts.get((name, repository), {}).values(), key=lambda a: -a.push_time)
        if "digest" in q:
            arts = [a for a in arts if a.digest == q["digest"]]
        if "tags" in q:
            arts = [a for a in arts if q["tags"] in a.tags]
        mime, with_tag = _scan_mime(request), _bool(request, "with_tag", True)
        items = [a.to_json(project["project_id"], with_tag=with_tag, scan_mime=mime) for a in arts]
        page, headers = _page(request, items)
        return JSONResponse(page, headers=headers)

    def lookup_artifact(request: Request) -> tuple[dict[str, Any] | None, Artifact | None, str]:
        name, repository = request.path_params["project_name"], repo_name(request)
        reference = request.path_params["reference"]
        project = harbor.projects.get(name)
        artifact = harbor.find(name, repository, reference) if project else None
        return project, artifact, f"{name}/{repository}{'@' if ':' in reference else ':'}{reference}"

    async def get_artifact(request: Request) -> Response:
        project, artifact, ref = lookup_artifact(request)
        if project is None or artifact is None:
            return errors(404, "NOT_FOUND", f"artifact {ref} not found")
        mime, with_tag = _scan_mime(request), _bool(request, "with_tag", True)
        return JSONResponse(artifact.to_json(project["project_id"], with_tag=with_tag, scan_mime=mime))

    async def get_vulnerabilities(request: Request) -> Response:
        # The swagger types the body as a string; upstream returns the report JSON keyed by its MIME type
        # (vulnerability report v1.1: generated_at, scanner, severity, vulnerabilities[]).
        project, artifact, ref = lookup_artifact(request)
        if project is None or artifact is None:
            return errors(404, "NOT_FOUND", f"artifact {ref} not found")
        report = artifact.report
        if report is None or report.status != "Success" or report.end_time is None:
            return JSONResponse({})
        findings = [
            {
                "id": cve,
                "package": f"pkg-{cve.lower()}",
                "version": "1.0.0",
                "fix_version": "1.0.1",
                "severity": severity,
                "description": f"sandbox finding {cve}",
                "links": [f"https://avd.aquasec.com/nvd/{cve.lower()}"],
            }
            for severity, ids in report.cves.items()
            for cve in ids
        ]
        worst = report.overview().get("severity", "None")
        body = {"generated_at": iso_ms(report.end_time), "scanner": SCANNER, "severity": worst}
        return JSONResponse({MIME_V11: {**body, "vulnerabilities": findings}})

    async def scan_artifact(request: Request) -> Response:
        project, artifact, ref = lookup_artifact(request)
        if project is None or artifact is None:
            return errors(404, "NOT_FOUND", f"artifact {ref} not found")
        body = await _json(request, optional=True)
        if body.get("scan_type", "vulnerability") != "vulnerability":
            return errors(400, "BAD_REQUEST", "the stand-in scans for vulnerabilities only")
        # A scan already pending or running is left alone; a finished one is redone with today's scenario.
        if artifact.report is None or artifact.report.status not in ("Pending", "Running"):
            harbor.start_scan(artifact)
        return Response(status_code=202)

    async def list_registries(request: Request) -> Response:
        name = request.query_params.get("name")
        items = [r for _, r in sorted(harbor.registries.items()) if not name or r["name"] == name]
        page, headers = _page(request, items)
        return JSONResponse(page, headers=headers)

    async def create_registry(request: Request) -> Response:
        body = await _json(request)
        name, url = body.get("name"), body.get("url")
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
            return errors(400, "BAD_REQUEST", "name and url are required")
        if any(r["name"] == name for r in harbor.registries.values()):
            return errors(409, "CONFLICT", f"registry {name} already exists")
        reg_id = harbor._next("registry")
        now = iso_ms(world.now())
        registry = {
            "id": reg_id,
            "name": name,
            "url": url,
            "type": body.get("type", "harbor"),
            "insecure": bool(body.get("insecure", False)),
            "description": body.get("description", ""),
            "status": "healthy",
            "creation_time": now,
            "update_time": now,
        }
        if isinstance(body.get("credential"), dict):
            # Never echo the secret back, as Harbor does not.
            registry["credential"] = {
                "type": body["credential"].get("type", "basic"),
                "access_key": "",
                "access_secret": "*****",
            }
        harbor.registries[reg_id] = registry
        return Response(status_code=201, headers={"Location": f"{BASE}/registries/{reg_id}"})

    async def get_registry(request: Request) -> Response:
        registry = harbor.registries.get(request.path_params["id"])
        if registry is None:
            return errors(404, "NOT_FOUND", f"registry {request.path_params['id']} not found")
        return JSONResponse(registry)

    async def list_policies(request: Request) -> Response:
        q = _query(request, {"name"})
        name = q.get("name") or request.query_params.get("name")
        items = [p for _, p in sorted(harbor.policies.items()) if not name or p["name"] == name]
        page, headers = _page(request, items)
        return JSONResponse(page, headers=headers)

    async def create_policy(request: Request) -> Response:
        body = await _json(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return errors(400, "BAD_REQUEST", "name is required")
        if any(p["name"] == name for p in harbor.policies.values()):
            return errors(409, "CONFLICT", f"policy {name} already exists")
        dest = body.get("dest_registry") or {}
        src = body.get("src_registry") or {}
        if src.get("id"):
            # Pull-based policies (a remote source) are not modelled: the sandbox pushes on-prem -> cloud.
            return errors(400, "BAD_REQUEST", "the stand-in supports push policies only (no src_registry)")
        if dest.get("id") not in harbor.registries:
            return errors(400, "BAD_REQUEST", f"destination registry {dest.get('id')} not found")
        filters = body.get("filters") or []
        if not isinstance(filters, list) or not all(isinstance(f, dict) for f in filters):
            return errors(400, "BAD_REQUEST", "filters must be a list of {type, value}")
        pol_id = harbor._next("policy")
        now = iso_ms(world.now())
        harbor.policies[pol_id] = {
            "id": pol_id,
            "name": name,
            "description": body.get("description", ""),
            "src_registry": None,
            "dest_registry": {"id": dest["id"], "name": harbor.registries[dest["id"]]["name"]},
            "dest_namespace": body.get("dest_namespace", ""),
            "filters": filters,
            "trigger": body.get("trigger") or {"type": "manual"},
            "enabled": body.get("enabled", True),
            "override": body.get("override", True),
            "replicate_deletion": body.get("replicate_deletion", False),
            "creation_time": now,
            "update_time": now,
        }
        return Response(status_code=201, headers={"Location": f"{BASE}/replication/policies/{pol_id}"})

    async def get_policy(request: Request) -> Response:
        policy = harbor.policies.get(request.path_params["id"])
        if policy is None:
            return errors(404, "NOT_FOUND", f"policy {request.path_params['id']} not found")
        return JSONResponse(policy)

    async def start_execution(request: Request) -> Response:
        body = await _json(request)
        policy_id = body.get("policy_id")
        if not isinstance(policy_id, int):
            return errors(400, "BAD_REQUEST", "policy_id (an integer) is required")
        if policy_id not in harbor.policies:
            # Not among the swagger's listed responses; Harbor's handler passes the NotFound error through.
            return errors(404, "NOT_FOUND", f"policy {policy_id} not found")
        execution = harbor.start_replication(policy_id)
        # NOTES: 201, `Location: <request path>/<executionID>`, no JSON body.
        return Response(status_code=201, headers={"Location": f"{request.url.path.rstrip('/')}/{execution.id}"})

    async def list_executions(request: Request) -> Response:
        params = request.query_params
        items = list(harbor.executions.values())
        if params.get("policy_id"):
            try:
                policy_id = int(params["policy_id"])
            except ValueError:
                return errors(400, "BAD_REQUEST", "policy_id must be an integer")
            items = [e for e in items if e.policy_id == policy_id]
        if params.get("status"):
            status = EXECUTION_STATUS_FILTER.get(params["status"], params["status"])
            items = [e for e in items if e.status == status]
        if params.get("trigger"):
            trigger = TRIGGER_FILTER.get(params["trigger"], params["trigger"])
            items = [e for e in items if e.trigger == trigger]
        # Default order: the model's `sort:"default:desc"` on start_time; id breaks ties the same way.
        listed = _sorted(request, [e.to_json() for e in items], EXECUTION_SORT_KEYS, "-start_time,-id")
        page, headers = _page(request, listed)
        return JSONResponse(page, headers=headers)

    def lookup_execution(request: Request) -> Execution | None:
        return harbor.executions.get(request.path_params["id"])

    async def get_execution(request: Request) -> Response:
        execution = lookup_execution(request)
        if execution is None:
            return errors(404, "NOT_FOUND", f"execution {request.path_params['id']} not found")
        return JSONResponse(execution.to_json())

    async def stop_execution(request: Request) -> Response:
        execution = lookup_execution(request)
        if execution is None:
            return errors(404, "NOT_FOUND", f"execution {request.path_params['id']} not found")
        harbor.stop(execution)
        return Response(status_code=200)

    async def list_tasks(request: Request) -> Response:
        execution = lookup_execution(request)
        if execution is None:
            return errors(404, "NOT_FOUND", f"execution {request.path_params['id']} not found")
        tasks = execution.tasks
        if request.query_params.get("status"):
            status = TASK_STATUS_FILTER.get(request.query_params["status"], request.query_params["status"])
            tasks = [t for t in tasks if t.status == status]
        listed = [t.to_json() for t in tasks]
        if request.query_params.get("resource_type"):
            listed = [t for t in listed if t["resource_type"] == request.query_params["resource_type"]]
        # Default order: Task.GetDefaultSorts, start_time then id, both descending.
        page, headers = _page(request, _sorted(request, listed, TASK_SORT_KEYS, "-start_time,-id"))
        return JSONResponse(page, headers=headers)

    repo = f"{BASE}/projects/{{project_name}}/repositories/{{repository_name}}"
    routes = [
        Route(f"{BASE}/ping", ping, methods=["GET"]),
        Route(f"{BASE}/projects", list_projects, methods=["GET"]),
        Route(f"{BASE}/projects", head_project, methods=["HEAD"]),
        Route(f"{BASE}/projects", create_project, methods=["POST"]),
        Route(f"{BASE}/projects/{{project_name_or_id}}", get_project, methods=["GET"]),
        Route(f"{BASE}/projects/{{project_name}}/repositories", list_repositories, methods=["GET"]),
        Route(repo, get_repository, methods=["GET"]),
        Route(f"{repo}/artifacts", list_artifacts, methods=["GET"]),
        Route(f"{repo}/artifacts/{{reference}}", get_artifact, methods=["GET"]),
        Route(f"{repo}/artifacts/{{reference}}/scan", scan_artifact, methods=["POST"]),
        Route(f"{repo}/artifacts/{{reference}}/additions/vulnerabilities", get_vulnerabilities, methods=["GET"]),
        Route(f"{BASE}/registries", list_registries, methods=["GET"]),
        Route(f"{BASE}/registries", create_registry, methods=["POST"]),
        Route(f"{BASE}/registries/{{id:int}}", get_registry, methods=["GET"]),
        Route(f"{BASE}/replication/policies", list_policies, methods=["GET"]),
        Route(f"{BASE}/replication/policies", create_policy, methods=["POST"]),
        Route(f"{BASE}/replication/policies/{{id:int}}", get_policy, methods=["GET"]),
        Route(f"{BASE}/replication/executions", list_executions, methods=["GET"]),
        Route(f"{BASE}/replication/executions", start_execution, methods=["POST"]),
        Route(f"{BASE}/replication/executions/{{id:int}}", get_execution, methods=["GET"]),
        Route(f"{BASE}/replication/executions/{{id:int}}", stop_execution, methods=["PUT"]),
        Route(f"{BASE}/replication/executions/{{id:int}}/tasks", list_tasks, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={_Bad: _bad_request, 404: _no_route, 405: _no_method},
    )
    return RequestIdMiddleware(app)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return errors(400, "BAD_REQUEST", str(exc))


async def _no_route(request: Request, exc: Exception) -> Response:
    return errors(404, "NOT_FOUND", f"no such API in the Harbor stand-in: {request.method} {request.url.path}")


async def _no_method(request: Request, exc: Exception) -> Response:
    return errors(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.url.path}")


async def _json(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if optional:
            return {}
        raise _Bad("a JSON body is required")
    try:
        body = json.loads(raw)
    except ValueError:
        raise _Bad("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Bad("the body must be a JSON object")
    return body


class RequestIdMiddleware:
    """Echo `X-Request-Id` (or a fresh one) on every answer, as every Harbor response definition does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id") or str(uuid.uuid4()).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", given)]
            await send(message)

        await self.app(scope, receive, send_with_id)
