"""SonarQube activity: wait for the analysis a pipeline run submitted, then enforce its quality gate.

Written from specs/sonarqube: ws-ce.proto / task-example.json (GET api/ce/task), ws-qualitygates.proto /
project_status-example.json (GET api/qualitygates/project_status) and NOTES-webservice-definitions.md
(statuses, 404s, and "SonarQube supports the bearer authentication scheme" for user tokens).
"""

from __future__ import annotations

from typing import Any

import httpx
from temporalio import activity

from activities import waiting
from activities.errors import NOT_FOUND, QUALITY_GATE_FAILED, fatal
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import Endpoint
from workflows.types import QualityGateInput, QualityGateResult

# ws-ce.proto TaskStatus.
TASK_WAITING = frozenset({"PENDING", "IN_PROGRESS"})
TASK_SUCCESS = "SUCCESS"
TASK_ENDED_BADLY = frozenset({"FAILED", "CANCELED"})
# ProjectStatusAction: "The different statuses returned are: OK, WARN, ERROR, NONE" (NONE: no gate set).
GATE_ERROR = "ERROR"
# SonarQube lives on-prem (design: the `onprem` task queue); the inputs carry no instance name.
SITE = "onprem"


class SonarQubeClient:
    """Typed calls of the SonarQube web API (user token as bearer)."""

    def __init__(self, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.api = ApiClient("SonarQube", endpoint, auth="bearer", transport=transport)

    async def task(self, task_id: str) -> dict[str, Any]:
        """The Compute Engine task (the background processing of an analysis report)."""
        response = await self.api.request(
            "GET",
            "/api/ce/task",
            f"read background task {task_id}",
            ok=lambda r: r.is_success or r.status_code == 404,
            params={"id": task_id},
        )
        if response.status_code == 404:
            raise fatal(
                f"SonarQube: no background task '{task_id}' (HTTP 404); check the SONAR_CE_TASK_ID result of "
                "the pipeline run and that the token may 'Execute Analysis' on the project",
                NOT_FOUND,
            )
        return response.json().get("task") or {}

    async def project_status(self, analysis_id: str) -> dict[str, Any]:
        """The quality gate status computed during that analysis."""
        response = await self.api.request(
            "GET",
            "/api/qualitygates/project_status",
            f"read quality gate of analysis {analysis_id}",
            params={"analysisId": analysis_id},
        )
        return response.json().get("projectStatus") or {}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


def condition_line(condition: dict[str, Any]) -> str:
    """`metric actual comparator threshold`, e.g. `new_coverage 82.5 LT 85`; what a developer must fix."""
    parts = [
        str(condition.get("metricKey", "?")),
        str(condition.get("actualValue", "?")),
        str(condition.get("comparator", "")),
        # Conditions without a threshold exist (project_status-example.json, open_issues); leave it out then.
        str(condition.get("errorThreshold") or condition.get("warningThreshold") or ""),
    ]
    return " ".join(p for p in parts if p)


class SonarQubeActivities(SiteClients[SonarQubeClient, Endpoint]):
    """SonarQube activities of the on-prem worker; `clients` maps the site ('onprem') to its client."""

    system = "sonarqube"
    label = "SonarQube"
    client_type = SonarQubeClient

    @activity.defn(name="sonarqube.quality_gate")
    async def quality_gate(self, inp: QualityGateInput) -> QualityGateResult:
        """Wait for the analysis task, then fail the service on a quality gate ERROR (read-only, so idempotent)."""
        client = self._client(SITE, "sonarqube.quality_gate")
        last_status = ""

        async def processed() -> dict[str, Any] | None:
            nonlocal last_status
            task = await client.task(inp.ce_task_id)
            status = str(task.get("status") or "")
            last_status = status
            if status == TASK_SUCCESS:
                return task
            if status in TASK_ENDED_BADLY:
                why = task.get("errorMessage") or "no error message"
                raise fatal(
                    f"SonarQube: analysis task {inp.ce_task_id} of service {inp.service} (project "
                    f"{inp.project_key}) ended {status}: {why}. Read the task under Project Settings > "
                    "Background Tasks, fix the analysis and release again",
                    QUALITY_GATE_FAILED,
                    task_id=inp.ce_task_id,
                )
            return None  # PENDING / IN_PROGRESS

        task = await waiting.poll(
            processed, interval=self.poll_seconds, progress=lambda: {"task": inp.ce_task_id, "status": last_status}
        )
        component = task.get("componentKey")
        if component and component != inp.project_key:
            # Reading another project's gate would pass or fail the wrong service.
            raise fatal(
                f"SonarQube: task {inp.ce_task_id} analysed project '{component}', but service {inp.service} is "
                f"configured with sonar_project '{inp.project_key}'; fix ferry.yaml or the pipeline's "
                "sonar.projectKey",
                QUALITY_GATE_FAILED,
            )
        analysis_id = task.get("analysisId")
        if not analysis_id:
            raise fatal(
                f"SonarQube: task {inp.ce_task_id} of service {inp.service} succeeded without an analysisId; "
                "the report was not an analysis (check the pipeline's scanner step)",
                QUALITY_GATE_FAILED,
            )
        gate = await client.project_status(str(analysis_id))
        status = str(gate.get("status") or "NONE")
        failing = [c for c in gate.get("conditions") or [] if c.get("status") not in (None, "OK")]
        lines = [condition_line(c) for c in failing]
        if status == GATE_ERROR:
            errors_only = [condition_line(c) for c in failing if c.get("status") == GATE_ERROR] or lines
            raise fatal(
                f"SonarQube quality gate failed for service {inp.service} (project {inp.project_key}, "
                f"analysis {analysis_id}): {'; '.join(errors_only) or 'no condition reported'}. Fix the code "
                "or, if justified, the project's quality gate in SonarQube, then release a new commit",
                QUALITY_GATE_FAILED,
                conditions=errors_only,
            )
        return QualityGateResult(status=status, conditions=lines)
