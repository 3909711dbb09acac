"""SonarQube stand-in: `api/ce/task` and `api/qualitygates/project_status`.

Written from specs/sonarqube/ (ws-ce.proto, ws-qualitygates.proto, the two example JSON files and
NOTES-webservice-definitions.md). Analyses are submitted by the Tekton stand-in's lint task
(`world.sonar.submit`), as sonar-scanner submits a report to the Compute Engine; the background task goes
PENDING -> IN_PROGRESS -> SUCCESS and the quality gate status comes from the scenario.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins.world import sonar_time

if TYPE_CHECKING:
    from sandbox.standins.world import World

AUTH_SCHEME = "bearer-or-token-login"  # NOTES: bearer, or basic with the token as login and no password
PUBLIC_PATHS = frozenset({"/api/system/status"})  # SonarQube serves its status without authentication

PENDING_SECONDS = 0.2
PROCESSING_SECONDS = 0.5

# Conditions per gate status, shaped like specs/sonarqube/project_status-example.json.
_OK_CONDITIONS = [
    {"status": "OK", "metricKey": "new_coverage", "comparator": "LT", "errorThreshold": "80", "actualValue": "87.5"},
    {
        "status": "OK",
        "metricKey": "new_blocker_violations",
        "comparator": "GT",
        "errorThreshold": "0",
        "actualValue": "0",
    },
    {
        "status": "OK",
        "metricKey": "new_duplicated_lines_density",
        "comparator": "GT",
        "errorThreshold": "3",
        "actualValue": "0.8",
    },
]
_CONDITIONS: dict[str, list[dict[str, str]]] = {
    "OK": _OK_CONDITIONS,
    "WARN": [
        _OK_CONDITIONS[0],
        _OK_CONDITIONS[1],
        {
            "status": "WARN",
            "metricKey": "new_duplicated_lines_density",
            "comparator": "GT",
            "warningThreshold": "3",
            "actualValue": "4.2",
        },
    ],
    "ERROR": [
        {
            "status": "ERROR",
            "metricKey": "new_coverage",
            "comparator": "LT",
            "errorThreshold": "80",
            "actualValue": "62.5",
        },
        {
            "status": "ERROR",
            "metricKey": "new_blocker_violations",
            "comparator": "GT",
            "errorThreshold": "0",
            "actualValue": "3",
        },
        _OK_CONDITIONS[2],
    ],
    "NONE": [],
}


def errors(status: int, message: str) -> JSONResponse:
    """SonarQube's web-service error body `{"errors": [{"msg": ...}]}` (not in the stored specs)."""
    return JSONResponse({"errors": [{"msg": message}]}, status_code=status)


def unauthorized() -> Response:
    """Answer to a request without a valid token."""
    return errors(401, "Authentication is required")


def _uuid_like(*parts: str) -> str:
    """A 20-character id shaped like SonarQube's (e.g. AYhSC2-LY0CHkWJxvNA9), deterministic per input."""
    raw = hashlib.sha256("/".join(parts).encode()).digest()
    return "AY" + base64.urlsafe_b64encode(raw).decode()[:18]


@dataclass
class Task:
    """A Compute Engine background task (ws-ce.proto Task)."""

    id: str
    project_key: str
    submitted_at: float
    status: str = "PENDING"
    started_at: float | None = None
    executed_at: float | None = None
    analysis_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `task` object of api/ce/task (task-example.json)."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": "REPORT",
            "componentId": _uuid_like("component", self.project_key),
            "componentKey": self.project_key,
            "componentName": self.project_key,
            "componentQualifier": "TRK",
            "status": self.status,
            "submittedAt": sonar_time(self.submitted_at),
            "submitterLogin": "ferry-ci",
            "hasScannerContext": True,
            "warningCount": 0,
            "warnings": [],
        }
        if self.started_at is not None:
            out["startedAt"] = sonar_time(self.started_at)
        if self.executed_at is not None:
            out["executedAt"] = sonar_time(self.executed_at)
            out["executionTimeMs"] = int((self.executed_at - (self.started_at or self.executed_at)) * 1000)
        if self.analysis_id is not None:
            out["analysisId"] = self.analysis_id
        return out


@dataclass
class SonarState:
    """Tasks, analyses (analysis id -> project and gate status) and projects."""

    world: World
    tasks: dict[str, Task] = field(default_factory=dict)
    analyses: dict[str, tuple[str, str]] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)  # project key -> newest analysis id

    def submit(self, project_key: str, *, base: float | None = None) -> str:
        """Submit an analysis report (what sonar-scanner does); returns the CE task id."""
        world = self.world
        with world.lock:
            now = world.now() if base is None else base
            task = Task(_uuid_like("task", project_key, str(len(self.tasks)), str(now)), project_key, now)
            self.tasks[task.id] = task
            self.latest.setdefault(project_key, "")

            def start(at: float) -> None:
                task.status, task.started_at = "IN_PROGRESS", at
                world.after(PROCESSING_SECONDS, finish, base=at)

            def finish(at: float) -> None:
                analysis = _uuid_like("analysis", task.id)
                # The gate is computed during the analysis, so the scenario of that moment decides it.
                self.analyses[analysis] = (project_key, world.scenario.gate_for(project_key))
                self.latest[project_key] = analysis
                task.status, task.executed_at, task.analysis_id = "SUCCESS", at, analysis

            world.after(PENDING_SECONDS, start, base=now)
            return task.id

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        return {
            "tasks": {t.id: {"project": t.project_key, "status": t.status} for t in self.tasks.values()},
            "analyses": {a: {"project": p, "gate": g} for a, (p, g) in self.analyses.items()},
        }


def project_status(status: str) -> dict[str, Any]:
    """ProjectStatusResponse for a gate status."""
    return {
        "projectStatus": {
            "status": status,
            "ignoredConditions": False,
            "caycStatus": "compliant" if status in ("OK", "NONE") else "non-compliant",
            "conditions": _CONDITIONS[status],
            "period": {"mode": "PREVIOUS_VERSION", "date": "2024-01-01T00:00:00+0000"},
        }
    }


def build_app(world: World) -> Starlette:
    """The ASGI app of the SonarQube stand-in."""
    sonar = world.sonar

    async def ce_task(request: Request) -> Response:
        task_id = request.query_params.get("id")
        if not task_id:
            return errors(400, "The 'id' parameter is missing")
        task = sonar.tasks.get(task_id)
        if task is None:
            return errors(404, f"No activity found for task '{task_id}'")
        return JSONResponse({"task": task.to_json()})

    async def gate(request: Request) -> Response:
        params = request.query_params
        given = [k for k in ("analysisId", "projectId", "projectKey") if params.get(k)]
        if len(given) != 1:
            return errors(400, "Either 'analysisId', 'projectId' or 'projectKey' must be provided")
        if params.get("branch") and params.get("pullRequest"):
            return errors(400, "Either 'branch' or 'pullRequest' can be provided, not both")
        if params.get("analysisId"):
            found = sonar.analyses.get(params["analysisId"])
            if found is None:
                return errors(404, f"Analysis with id '{params['analysisId']}' is not found")
            return JSONResponse(project_status(found[1]))
        key = params.get("projectKey")
        if params.get("projectId"):
            key = next((k for k in sonar.latest if _uuid_like("component", k) == params["projectId"]), None)
        if key is None or key not in sonar.latest:
            return errors(404, f"Project '{params.get('projectKey') or params.get('projectId')}' not found")
        analysis = sonar.latest[key]
        # A project without a finished analysis has no gate status yet.
        return JSONResponse(project_status(sonar.analyses[analysis][1] if analysis else "NONE"))

    async def system_status(request: Request) -> Response:
        return JSONResponse({"id": "sandbox", "version": "10.0-sandbox", "status": "UP"})

    async def no_route(request: Request, exc: Exception) -> Response:
        return errors(404, f"Unknown url : {request.url.path}")

    return Starlette(
        routes=[
            Route("/api/ce/task", ce_task, methods=["GET"]),
            Route("/api/qualitygates/project_status", gate, methods=["GET"]),
            Route("/api/system/status", system_status, methods=["GET"]),
        ],
        exception_handlers={404: no_route},
    )
