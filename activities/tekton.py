"""Tekton activities: run a service's CI PipelineRun exactly once per name and wait for its outcome.

Written from specs/tekton: 300-pipelinerun.yaml (tekton.dev/v1 PipelineRun, namespaced, status subresource),
docs_pipelineruns.md (the Succeeded condition table, cancelling) and NOTES-from-source.md (reasons,
spec.status values). The REST paths are the standard Kubernetes ones for that group/version/plural.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity

from activities import waiting
from activities.errors import BAD_REQUEST, PIPELINE_RUN_FAILED, fatal
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import TektonEndpoint
from workflows.types import TektonRunInput, TektonRunResult

# NOTES (pipelinerun_types.go): spec.status values that cancel or stop a run.
CANCEL = "Cancelled"
CANCELLING = frozenset({"Cancelled", "CancelledRunFinally", "StoppedRunFinally"})
# Tekton runs on the on-prem cluster (design: the `onprem` task queue); the inputs carry no instance name.
SITE = "onprem"


def _run_name(manifest: dict[str, Any]) -> str:
    name = (manifest.get("metadata") or {}).get("name")
    if not name:
        # generateName would make every attempt a new run: idempotence needs a deterministic name.
        raise fatal(
            "tekton.run: the PipelineRun manifest has no metadata.name; the pipeline renderer must set a "
            "deterministic name (generateName would start a second run on retry)",
            BAD_REQUEST,
        )
    return str(name)


def succeeded_condition(run: dict[str, Any]) -> dict[str, Any]:
    """The `Succeeded` condition (status True/False/Unknown, reason, message); empty before the controller."""
    for condition in (run.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Succeeded":
            return condition
    return {}


def run_results(run: dict[str, Any]) -> dict[str, str]:
    """status.results as name -> value; array/object values (ParamValue) become JSON text."""
    results: dict[str, str] = {}
    for item in (run.get("status") or {}).get("results") or []:
        value = item.get("value")
        results[str(item.get("name"))] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return results


class TektonClient:
    """PipelineRuns through the Kubernetes API of the cluster Tekton runs on (service-account bearer token)."""

    def __init__(self, endpoint: TektonEndpoint, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.api = ApiClient("Tekton", endpoint, auth="bearer", transport=transport)

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/tekton.dev/v1/namespaces/{quote(namespace, safe='')}/pipelineruns"
        return f"{base}/{quote(name, safe='')}" if name else base

    async def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PipelineRun, or None when there is none of that name (404)."""
        response = await self.api.request(
            "GET",
            self._path(namespace, name),
            f"read PipelineRun {namespace}/{name}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        return None if response.status_code == 404 else response.json()

    async def create_run(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the PipelineRun; False when it already exists (409 AlreadyExists: someone was first)."""
        name = _run_name(manifest)
        response = await self.api.request(
            "POST",
            self._path(namespace),
            f"create PipelineRun {namespace}/{name}",
            ok=lambda r: r.is_success or r.status_code == 409,
            json=manifest,
        )
        return response.status_code != 409

    async def cancel_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Merge-patch spec.status=Cancelled; None when there is no such run (404)."""
        response = await self.api.request(
            "PATCH",
            self._path(namespace, name),
            f"cancel PipelineRun {namespace}/{name}",
            ok=lambda r: r.is_success or r.status_code == 404,
            content=json.dumps({"spec": {"status": CANCEL}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        return None if response.status_code == 404 else response.json()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


class TektonActivities(SiteClients[TektonClient, TektonEndpoint]):
    """Tekton activities of the on-prem worker; `clients` maps the site ('onprem') to its client."""

    system = "tekton"
    label = "Tekton"
    client_type = TektonClient

    @activity.defn(name="tekton.run")
    async def run(self, inp: TektonRunInput) -> TektonRunResult:
        """Create the PipelineRun unless a run of that name exists, then wait for Succeeded True/False.

        Never creates a second run for the same name: a retry, a reset or a second worker finds the first.
        """
        client = self._client(SITE, "tekton.run")
        name = _run_name(inp.manifest)
        if await client.get_run(inp.namespace, name) is None:
            created = await client.create_run(inp.namespace, inp.manifest)
            activity.logger.info("Tekton: %s PipelineRun %s/%s", "created" if created else "found", inp.namespace, name)
        last: dict[str, Any] = {}

        async def finished() -> dict[str, Any] | None:
            nonlocal last
            run = await client.get_run(inp.namespace, name)
            if run is None:
                raise fatal(
                    f"Tekton: PipelineRun {inp.namespace}/{name} of service {inp.service} was deleted while "
                    "Ferry waited for it; retry the activity to run it again",
                    PIPELINE_RUN_FAILED,
                )
            last = succeeded_condition(run)
            status = last.get("status")
            if status == "True":
                return run
            if status == "False":
                reason = last.get("reason") or "Failed"
                raise fatal(
                    f"Tekton: PipelineRun {name} of service {inp.service} failed: {reason}: "
                    f"{last.get('message') or 'no message'}. Read its logs (tkn pipelinerun logs {name} -n "
                    f"{inp.namespace}); to rerun this commit delete the PipelineRun, then retry",
                    PIPELINE_RUN_FAILED,
                    run=name,
                    reason=reason,
                )
            return None  # Unknown (Started / Running / PipelineRunPending / Cancelled-in-progress) or no status

        run = await waiting.poll(
            finished,
            interval=self.poll_seconds,
            progress=lambda: {"run": name, "reason": last.get("reason", ""), "message": last.get("message", "")},
        )
        return TektonRunResult(name=name, results=run_results(run))

    @activity.defn(name="tekton.cancel")
    async def cancel(self, inp: TektonRunInput) -> str:
        """Cancel the service's PipelineRun (e.g. a superseded commit): 'absent', 'finished' or 'cancelling'."""
        client = self._client(SITE, "tekton.cancel")
        name = _run_name(inp.manifest)
        run = await client.get_run(inp.namespace, name)
        if run is None:
            return "absent"
        if succeeded_condition(run).get("status") in ("True", "False"):
            return "finished"
        if (run.get("spec") or {}).get("status") in CANCELLING:
            return "cancelling"  # already asked (by us or by someone stopping it gracefully): leave it be
        if await client.cancel_run(inp.namespace, name) is None:
            return "absent"
        activity.logger.info("Tekton: cancelling PipelineRun %s/%s", inp.namespace, name)
        return "cancelling"
