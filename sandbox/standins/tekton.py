"""Tekton stand-in: the Kubernetes API subset for `tekton.dev/v1` PipelineRuns, and a simulated `ferry-ci`.

Written from specs/tekton/ (docs_pipelineruns.md for status, conditions, childReferences and cancelling;
NOTES-from-source.md for reasons and spec.status values). The Kubernetes parts (201 on create, 409
AlreadyExists and 404 NotFound as `Status` objects, merge-patch, label selectors, resourceVersion) follow
the standard Kubernetes API conventions, which the Tekton specs do not restate.

A created run executes lint -> unit-tests -> bazel-build -> image-build. lint submits a SonarQube analysis
for `sonar-project`; image-build pushes `image` to Harbor-OnPrem with a digest that depends only on image
and commit, so the same commit of the same service always yields the same digest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins.world import PIPELINE_TASKS, Event, iso_s, split_image

if TYPE_CHECKING:
    from sandbox.standins.world import World

AUTH_SCHEME = "bearer"
PUBLIC_PATHS: frozenset[str] = frozenset()
API = "/apis/tekton.dev/v1"
GROUP, PLURAL, KIND = "tekton.dev", "pipelineruns", "PipelineRun"

START_SECONDS = 0.05
TASK_SECONDS = 0.25
REQUIRED_PARAMS = ("service", "commit", "image", "tag", "sonar-project")
CANCEL_VALUES = ("Cancelled", "CancelledRunFinally", "StoppedRunFinally")  # NOTES: spec.status values
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def status_error(code: int, reason: str, message: str, name: str | None = None) -> JSONResponse:
    """A Kubernetes `Status` failure object."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name is not None:
        body["details"] = {"name": name, "group": GROUP, "kind": PLURAL}
    return JSONResponse(body, status_code=code)


def unauthorized() -> Response:
    """What the Kubernetes API server answers without a valid bearer token."""
    return status_error(401, "Unauthorized", "Unauthorized")


def image_digest(image: str, commit: str) -> str:
    """The deterministic digest the simulated Kaniko build produces for `image` at `commit`."""
    return "sha256:" + hashlib.sha256(f"{image}@{commit}".encode()).hexdigest()


def _param_values(obj: dict[str, Any]) -> dict[str, str]:
    out = {}
    for p in obj.get("spec", {}).get("params") or []:
        if isinstance(p, dict) and "name" in p:
            value = p.get("value")
            out[str(p["name"])] = value if isinstance(value, str) else json.dumps(value)
    return out


@dataclass
class Run:
    """A PipelineRun object plus its simulation state."""

    obj: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    done: bool = False
    started: bool = False
    completed_tasks: int = 0
    ce_task_id: str = ""

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.obj["metadata"]["name"]


class TektonState:
    """PipelineRuns per namespace and the simulated controller that runs them."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.runs: dict[tuple[str, str], Run] = {}
        self.created = Counter[str]()
        self._resource_version = 0

    def created_count(self, name: str) -> int:
        """How many times a PipelineRun of this name was created (409s do not count)."""
        return self.created[name]

    def _bump(self, run: Run) -> None:
        self._resource_version += 1
        run.obj["metadata"]["resourceVersion"] = str(self._resource_version)

    def _condition(self, run: Run, status: str, reason: str, message: str, at: float) -> None:
        run.obj["status"]["conditions"] = [
            {
                "type": "Succeeded",
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": iso_s(at),
            }
        ]
        self._bump(run)

    @staticmethod
    def _progress(done: int, failed: int = 0, cancelled: int = 0, skipped: int = 0) -> str:
        # The message format of docs_pipelineruns.md ("Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 1").
        return f"Tasks Completed: {done + failed} (Failed: {failed}, Cancelled {cancelled}), Skipped: {skipped}"

    # --- lifecycle ---

    def create(self, namespace: str, obj: dict[str, Any]) -> Run:
        """Store a validated PipelineRun and let the simulated controller pick it up."""
        world = self.world
        now = world.now()
        meta = obj["metadata"]
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=iso_s(now),
            generation=1,
        )
        obj["status"] = {}  # the status subresource is never taken from a create
        run = Run(obj)
        self.runs[(namespace, run.name)] = run
        self.created[run.name] += 1
        self._bump(run)
        if obj["spec"].get("status") == "PipelineRunPending":
            self._condition(run, "Unknown", "PipelineRunPending", f'PipelineRun "{run.name}" is pending', now)
        else:
            run.events.append(world.after(START_SECONDS, lambda at: self._start(run, at), base=now))
        return run

    def _start(self, run: Run, at: float) -> None:
        run.started = True
        status = run.obj["status"]
        status["startTime"] = iso_s(at)
        params = _param_values(run.obj)
        missing = [p for p in REQUIRED_PARAMS if not params.get(p)]
        if missing:
            pipeline = run.obj["spec"].get("pipelineRef", {}).get("name", "inline")
            self._finish(
                run,
                at,
                "False",
                "ParameterMissing",
                f"[User error] PipelineRun {run.obj['metadata']['namespace']}/{run.name} parameters is "
                f"missing some parameters required by Pipeline {pipeline}'s parameters: pipelineRun "
                f"missing parameters: [{', '.join(missing)}]",
            )
            return
        self._condition(run, "Unknown", "Running", self._progress(0), at)
        self._run_task(run, 0, at)

    def _run_task(self, run: Run, index: int, at: float) -> None:
        task = PIPELINE_TASKS[index]
        run.obj["status"].setdefault("childReferences", []).append(
            {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": f"{run.name}-{task}", "pipelineTaskName": task}
        )
        self._bump(run)
        run.events.append(self.world.after(TASK_SECONDS, lambda t: self._task_done(run, index, t), base=at))

    def _task_done(self, run: Run, index: int, at: float) -> None:
        world = self.world
        task = PIPELINE_TASKS[index]
        params = _param_values(run.obj)
        failure = None
        if world.scenario.failing_task(params["service"]) == task:
            failure = f'"step-{task}" exited with code 1 (sandbox scenario: pipeline_failures)'
        elif task == "lint":
            if world.scenario.fault_for("sonarqube").down:
                failure = "sonar-scanner could not reach SonarQube (stand-in is down)"
            else:
                run.ce_task_id = world.sonar.submit(params["sonar-project"], base=at)
        elif task == "image-build":
            try:
                _, project, repository = split_image(params["image"])
            except ValueError as e:
                failure = f"kaniko: {e}"
            else:
                if world.scenario.fault_for("harbor-onprem").down:
                    failure = f"kaniko: pushing {params['image']}: harbor-onprem is unavailable"
                else:
                    digest = image_digest(params["image"], params["commit"])
                    world.harbor["onprem"].push(project, repository, params["tag"], digest, at=at)
        if failure:
            skipped = len(PIPELINE_TASKS) - index - 1
            message = (
                f"{self._progress(index, failed=1, skipped=skipped)}; failed task: {task} "
                f"(TaskRun {run.name}-{task}): {failure}"
            )
            self._finish(run, at, "False", "Failed", message)
            return
        run.completed_tasks = index + 1
        if index + 1 < len(PIPELINE_TASKS):
            self._condition(run, "Unknown", "Running", self._progress(index + 1), at)
            self._run_task(run, index + 1, at)
            return
        digest = image_digest(params["image"], params["commit"])
        run.obj["status"]["results"] = [
            {"name": "IMAGE_DIGEST", "value": digest},
            {"name": "IMAGE_URL", "value": f"{params['image']}@{digest}"},
            {"name": "SONAR_CE_TASK_ID", "value": run.ce_task_id},
        ]
        self._finish(run, at, "True", "Succeeded", self._progress(len(PIPELINE_TASKS)))

    def _finish(self, run: Run, at: float, status: str, reason: str, message: str) -> None:
        run.done = True
        for event in run.events:
            event.cancel()
        run.obj["status"]["completionTime"] = iso_s(at)
        run.obj["status"].setdefault("startTime", iso_s(at))
        self._condition(run, status, reason, message, at)

    def patch(self, run: Run, patch: dict[str, Any]) -> None:
        """Apply a JSON merge patch to metadata labels/annotations and spec; react to spec.status."""
        world = self.world
        before = copy.deepcopy(run.obj["spec"])
        merged = _merge_patch(copy.deepcopy(run.obj), patch)
        meta = run.obj["metadata"]
        for key in ("labels", "annotations"):
            if key in merged.get("metadata", {}):
                meta[key] = merged["metadata"][key]
        run.obj["spec"] = merged.get("spec", {})
        if run.obj["spec"] != before:
            meta["generation"] = meta.get("generation", 1) + 1
        self._bump(run)
        wanted = run.obj["spec"].get("status")
        now = world.now()
        if run.done:
            return
        if wanted in CANCEL_VALUES:
            # Graceful variants run `finally` tasks; the simulated Pipeline has none, so all three cancel.
            self._finish(run, now, "False", "Cancelled", f'PipelineRun "{run.name}" was cancelled')
        elif not run.started and wanted != "PipelineRunPending":
            run.events.append(world.after(START_SECONDS, lambda at: self._start(run, at), base=now))

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        out = {}
        for (ns, name), run in sorted(self.runs.items()):
            cond = (run.obj["status"].get("conditions") or [{}])[0]
            out[f"{ns}/{name}"] = {"status": cond.get("status"), "reason": cond.get("reason")}
        return {"runs": out, "created": dict(self.created)}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def _selector(raw: str) -> list[tuple[str, str, str]]:
    """Equality-based label selector terms (`k=v`, `k==v`, `k!=v`, `k`, `!k`); set-based ones are 400."""
    terms = []
    for term in filter(None, (t.strip() for t in raw.split(","))):
        if m := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w.-]*)", term):
            terms.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", term):
            terms.append((m[2], "!" if m[1] else "exists", ""))
        else:
            raise ValueError(f"unable to parse requirement: {term!r} (the stand-in supports equality selectors)")
    return terms


def _matches(labels: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    for key, op, value in terms:
        if (
            (op == "=" and labels.get(key) != value)
            or (op == "!=" and labels.get(key) == value)
            or (op == "exists" and key not in labels)
            or (op == "!" and key in labels)
        ):
            return False
    return True


def build_app(world: World) -> Starlette:
    """The ASGI app of the Tekton (Kubernetes API) stand-in."""
    tekton = world.tekton

    def not_found(name: str) -> JSONResponse:
        return status_error(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found', name)

    async def read_body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def create(request: Request) -> Response:
        ns = request.path_params["namespace"]
        obj = await read_body(request)
        if not isinstance(obj, dict):
            return status_error(400, "BadRequest", "the body is not a JSON object")
        if obj.get("apiVersion") != f"{GROUP}/v1" or obj.get("kind") != KIND:
            return status_error(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({GROUP}/v1) or kind is not {KIND}",
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict) or not isinstance(obj.setdefault("spec", {}), dict):
            return status_error(400, "BadRequest", "metadata and spec must be objects")
        if meta.get("namespace", ns) != ns:
            return status_error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            return status_error(
                422,
                "Invalid",
                f'{KIND}.{GROUP} "" is invalid: metadata.name: Required value: name or generateName is required',
            )
        if len(name) > 63 or not DNS_LABEL.match(name):
            # Tekton's admission webhook rejects names that cannot be used as label values.
            return status_error(
                400,
                "BadRequest",
                f'admission webhook "validation.webhook.pipeline.tekton.dev" denied the request: '
                f"validation failed: invalid resource name {name!r}: must be a DNS label of at "
                "most 63 characters: metadata.name",
            )
        spec = obj["spec"]
        if not spec.get("pipelineRef") and not spec.get("pipelineSpec"):
            return status_error(
                400,
                "BadRequest",
                'admission webhook "validation.webhook.pipeline.tekton.dev" denied the request: '
                "validation failed: expected exactly one, got neither: spec.pipelineRef, "
                "spec.pipelineSpec",
            )
        with world.lock:
            if (ns, name) in tekton.runs:
                return status_error(409, "AlreadyExists", f'{PLURAL}.{GROUP} "{name}" already exists', name)
            run = tekton.create(ns, obj)
            return JSONResponse(run.obj, status_code=201)

    async def get(request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        run = tekton.runs.get((ns, name))
        return JSONResponse(run.obj) if run else not_found(name)

    async def list_runs(request: Request) -> Response:
        ns = request.path_params["namespace"]
        try:
            terms = _selector(request.query_params.get("labelSelector", ""))
        except ValueError as e:
            return status_error(400, "BadRequest", str(e))
        if request.query_params.get("fieldSelector"):
            return status_error(400, "BadRequest", "the stand-in does not support fieldSelector")
        items = [
            r.obj
            for (n, _), r in sorted(tekton.runs.items())
            if n == ns and _matches(r.obj["metadata"].get("labels") or {}, terms)
        ]
        return JSONResponse(
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": f"{KIND}List",
                "metadata": {"resourceVersion": str(tekton._resource_version)},
                "items": items,
            }
        )

    async def patch(request: Request) -> Response:
        ns, name = request.path_params["namespace"], request.path_params["name"]
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/merge-patch+json":
            return status_error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"(stand-in): application/merge-patch+json; got {content_type or 'none'}",
            )
        body = await read_body(request)
        if not isinstance(body, dict):
            return status_error(400, "BadRequest", "the merge patch is not a JSON object")
        with world.lock:
            run = tekton.runs.get((ns, name))
            if run is None:
                return not_found(name)
            tekton.patch(run, body)
            return JSONResponse(run.obj)

    async def no_route(request: Request, exc: Exception) -> Response:
        return status_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")

    async def no_method(request: Request, exc: Exception) -> Response:
        return status_error(405, "MethodNotAllowed", f"{request.method} is not supported by the stand-in here")

    base = f"{API}/namespaces/{{namespace}}/{PLURAL}"
    return Starlette(
        routes=[
            Route(base, list_runs, methods=["GET"]),
            Route(base, create, methods=["POST"]),
            Route(f"{base}/{{name}}", get, methods=["GET"]),
            Route(f"{base}/{{name}}", patch, methods=["PATCH"]),
        ],
        exception_handlers={404: no_route, 405: no_method},
    )
