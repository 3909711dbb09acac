"""Harbor activities: the vulnerability gate, replication to another site, and confirming a copy arrived.

Written from specs/harbor/swagger.yaml (API v2.0) and specs/harbor/NOTES-from-source.md, which gives the
status and severity strings the swagger leaves out. Harbor's API security definition is HTTP basic, used
with a robot account (`username` + credential in ferry.yaml).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity

from activities import waiting
from activities.errors import (
    ARTIFACT_MISSING,
    BAD_REQUEST,
    REPLICATION_FAILED,
    UPSTREAM_UNAVAILABLE,
    VULNERABILITY_POLICY,
    fatal,
    retryable,
)
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import HarborEndpoint
from workflows.types import ArtifactRef, ReplicationInput, ReplicationResult, ScanGateInput, ScanResult

API = "/api/v2.0"

# Lowest first (src/pkg/scan/vuln/severity.go, quoted in NOTES). "None" marks "no vulnerabilities".
SEVERITIES = ("None", "Unknown", "Negligible", "Low", "Medium", "High", "Critical")
# scan_status carries raw job statuses (NOTES: src/jobservice/job/status.go); Success/Error/Stopped are final.
SCAN_SUCCESS = "Success"
SCAN_ENDED_BADLY = frozenset({"Error", "Stopped"})
# Replication execution statuses as the API returns them (NOTES: handler/replication.go convertExecution).
EXECUTION_SUCCEEDED = "Succeed"
EXECUTION_FAILED = frozenset({"Failed", "Stopped"})


def image_name(ref: ArtifactRef) -> str:
    """`project/repository@digest`: how messages name an image so an operator can find it in Harbor."""
    return f"{ref.project}/{ref.repository}@{ref.digest}"


def severity_rank(severity: str) -> int:
    """Position in Harbor's severity order; a string Harbor did not document ranks as "Unknown"."""
    for rank, name in enumerate(SEVERITIES):
        if name.lower() == severity.lower():
            return rank
    return SEVERITIES.index("Unknown")


class HarborClient:
    """Typed calls of one Harbor instance's API v2.0 (robot account over HTTP basic)."""

    def __init__(
        self,
        endpoint: HarborEndpoint,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        instance: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.instance = instance
        system = f"Harbor ({instance})" if instance else "Harbor"
        self.api = ApiClient(system, endpoint, auth="basic", transport=transport)

    @staticmethod
    def artifact_path(project: str, repository: str, reference: str) -> str:
        """The artifact URL path. The swagger says a repository name is URL-encoded twice (a/b -> a%252Fb)."""
        repo = quote(quote(repository, safe=""), safe="")
        project = quote(project, safe="")
        return f"{API}/projects/{project}/repositories/{repo}/artifacts/{quote(reference, safe=':')}"

    async def get_artifact(self, ref: ArtifactRef, *, scan_overview: bool = False) -> dict[str, Any] | None:
        """The artifact by digest, or None when this Harbor has no such artifact (404)."""
        params = {"with_scan_overview": "true"} if scan_overview else {}
        response = await self.api.request(
            "GET",
            self.artifact_path(ref.project, ref.repository, ref.digest),
            f"read artifact {image_name(ref)}",
            ok=lambda r: r.is_success or r.status_code == 404,
            params=params,
        )
        return None if response.status_code == 404 else response.json()

    async def scan(self, ref: ArtifactRef) -> None:
        """Ask Harbor's scanner (Trivy) to scan the artifact (202 Accepted)."""
        await self.api.request(
            "POST",
            f"{self.artifact_path(ref.project, ref.repository, ref.digest)}/scan",
            f"start scan of {image_name(ref)}",
            # The swagger lists no 409; accepting one costs nothing if a Harbor answers "already scanning".
            ok=lambda r: r.is_success or r.status_code == 409,
            json={"scan_type": "vulnerability"},
        )

    async def start_replication(self, policy_id: int) -> int:
        """Start an execution of a replication policy; its id comes from the 201's Location header."""
        response = await self.api.request(
            "POST",
            f"{API}/replication/executions",
            f"start replication policy {policy_id}",
            json={"policy_id": policy_id},
        )
        location = response.headers.get("Location", "")
        tail = location.rstrip("/").rsplit("/", 1)[-1]
        if tail.isdigit():
            return int(tail)
        # NOTES say Location is always set; should a proxy drop it, the newest execution of the policy is ours
        # (listing is newest first with sort=-start_time).
        latest = await self.latest_execution(policy_id)
        if latest is None or not isinstance(latest.get("id"), int):
            raise retryable(
                f"{self.api.system}: started replication policy {policy_id} but got no execution id "
                "(no Location header, and no execution listed)",
                UPSTREAM_UNAVAILABLE,
            )
        return latest["id"]

    async def latest_execution(self, policy_id: int) -> dict[str, Any] | None:
        """The newest execution of a policy, if any."""
        response = await self.api.request(
            "GET",
            f"{API}/replication/executions",
            f"list executions of replication policy {policy_id}",
            params={"policy_id": policy_id, "sort": "-start_time", "page": 1, "page_size": 1},
        )
        items = response.json()
        return items[0] if isinstance(items, list) and items else None

    async def get_execution(self, execution_id: int) -> dict[str, Any] | None:
        """One replication execution, or None when Harbor no longer knows it (404)."""
        response = await self.api.request(
            "GET",
            f"{API}/replication/executions/{execution_id}",
            f"read replication execution {execution_id}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        return None if response.status_code == 404 else response.json()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


def _scan_report(artifact: dict[str, Any]) -> dict[str, Any] | None:
    """The vulnerability report summary of an artifact, if it has one.

    scan_overview is keyed by report MIME type (NOTES); Harbor fills it for the first requested type that has
    a report, so whichever entry is there is the one to read.
    """
    overview = artifact.get("scan_overview") or {}
    for report in overview.values():
        if isinstance(report, dict):
            return report
    return None


def _summarize(report: dict[str, Any]) -> tuple[str, dict[str, int], str]:
    """Highest severity, counts per severity, and a readable line of the counts (highest first)."""
    vulns = report.get("summary") or {}
    counts = {str(k): int(v) for k, v in (vulns.get("summary") or {}).items() if isinstance(v, int)}
    highest = str(report.get("severity") or "None")
    # Trust the counts as much as the overall field: the higher of the two is the answer.
    for name, count in counts.items():
        if count > 0 and severity_rank(name) > severity_rank(highest):
            highest = name
    ordered = sorted(counts.items(), key=lambda kv: -severity_rank(kv[0]))
    line = ", ".join(f"{name} {count}" for name, count in ordered if count) or "no vulnerabilities"
    if "total" in vulns:
        line += f" (total {vulns.get('total')}, fixable {vulns.get('fixable', 0)})"
    return highest, counts, line


def _block_rank(block_severity: str) -> int | None:
    """Rank from which a finding blocks; None when the policy blocks nothing (block_severity "None")."""
    if block_severity.lower() == "none":
        # "At or above None" would block clean images too; config's "None" can only mean "never block".
        return None
    if block_severity.lower() not in (s.lower() for s in SEVERITIES):
        raise fatal(
            f"Harbor scan gate: unknown block_severity '{block_severity}'; "
            f"use one of {', '.join(SEVERITIES)} (policy.block_severity in ferry.yaml)",
            BAD_REQUEST,
        )
    return severity_rank(block_severity)


class HarborActivities(SiteClients[HarborClient, HarborEndpoint]):
    """Harbor activities of one worker; `clients` maps a Harbor instance ('onprem'/'cloud') to its client."""

    system = "harbor"
    label = "Harbor"

    @classmethod
    def build_client(
        cls, endpoint: HarborEndpoint, transport: httpx.AsyncBaseTransport | None, site: str
    ) -> HarborClient:
        """Named after its site, since a release reaches this system on both sites and messages must say which."""
        return HarborClient(endpoint, transport, instance=site)

    @activity.defn(name="harbor.scan_gate")
    async def scan_gate(self, inp: ScanGateInput) -> ScanResult:
        """Block the image when its scan finds anything at or above block_severity; scan first if needed."""
        ref = inp.artifact
        block = _block_rank(inp.block_severity)
        client = self._client(ref.instance, "harbor.scan_gate")
        image = image_name(ref)
        triggered = False
        before: tuple[Any, Any] | None = None  # identity of the report our scan replaces
        last_status = ""

        async def scanned() -> dict[str, Any] | None:
            nonlocal triggered, before, last_status
            artifact = await client.get_artifact(ref, scan_overview=True)
            if artifact is None:
                raise fatal(
                    f"Harbor ({ref.instance}): image {image} does not exist; check that CI pushed it to "
                    f"project '{ref.project}' (IMAGE_DIGEST result of the pipeline run)",
                    ARTIFACT_MISSING,
                )
            report = _scan_report(artifact)
            status = str(report.get("scan_status") or "") if report else ""
            identity = (report.get("report_id"), report.get("start_time")) if report else None
            identity = identity if identity and any(identity) else None
            last_status = status or "not scanned"
            if triggered and before is not None and identity == before:
                return None  # still the report from before our scan request
            if status == SCAN_SUCCESS:
                return report
            if status in SCAN_ENDED_BADLY and triggered:
                # Our scan ended badly. A retry of the activity scans again; Temporal's retry policy bounds
                # how often.
                raise retryable(
                    f"Harbor ({ref.instance}): scan of {image} ended with status {status}; a retry rescans. "
                    "If it keeps failing, check the scanner under Interrogation Services in Harbor",
                    UPSTREAM_UNAVAILABLE,
                )
            if not triggered and (not status or status in SCAN_ENDED_BADLY):
                await client.scan(ref)
                triggered, before = True, identity
                activity.logger.info("Harbor: started scan of %s on %s", image, ref.instance)
            # Pending / Running / Scheduled: wait.
            return None

        report = await waiting.poll(
            scanned, interval=self.poll_seconds, progress=lambda: {"image": image, "scan_status": last_status}
        )
        highest, counts, line = _summarize(report)
        if block is not None and severity_rank(highest) >= block:
            floor = SEVERITIES[block]
            rule = f"{floor} blocks" if floor == SEVERITIES[-1] else f"{floor} or higher blocks"
            raise fatal(
                f"Harbor ({ref.instance}): image {image} has {highest} vulnerabilities and the policy says "
                f"'{rule}' (policy.block_severity); counts: {line}. Fix or upgrade the affected packages and "
                "release a new commit; see the image's vulnerabilities in Harbor",
                VULNERABILITY_POLICY,
                image=image,
                severity=highest,
                summary=counts,
            )
        return ScanResult(severity=highest, summary=counts)

    @activity.defn(name="harbor.replicate")
    async def replicate(self, inp: ReplicationInput) -> ReplicationResult:
        """Run a replication policy on the source Harbor and wait until the execution is final.

        The execution id goes into the heartbeat at once, so a retried attempt resumes polling the same
        execution instead of starting a second one.
        """
        client = self._client(inp.instance, "harbor.replicate")
        execution_id: int | None = None
        previous = waiting.last_heartbeat()
        if (
            isinstance(previous, dict)
            and previous.get("policy_id") == inp.policy_id
            and isinstance(previous.get("execution_id"), int)
            and await client.get_execution(previous["execution_id"]) is not None
        ):
            execution_id = previous["execution_id"]
            activity.logger.info("Harbor: resuming replication execution %s", execution_id)
        if execution_id is None:
            execution_id = await client.start_replication(inp.policy_id)
            activity.logger.info(
                "Harbor: started replication execution %s of policy %s for %s",
                execution_id,
                inp.policy_id,
                inp.release_id,
            )
        details: dict[str, Any] = {"policy_id": inp.policy_id, "execution_id": execution_id, "status": ""}
        waiting.heartbeat(dict(details))

        async def finished() -> dict[str, Any] | None:
            execution = await client.get_execution(execution_id)
            if execution is None:
                raise retryable(
                    f"Harbor ({inp.instance}): replication execution {execution_id} disappeared; a retry "
                    "starts a new one",
                    UPSTREAM_UNAVAILABLE,
                )
            status = str(execution.get("status") or "")
            details["status"] = status
            if status == EXECUTION_SUCCEEDED:
                return execution
            if status in EXECUTION_FAILED:
                failed = f"{execution.get('failed', 0)} of {execution.get('total', 0)} tasks failed"
                text = f": {execution['status_text']}" if execution.get("status_text") else ""
                raise fatal(
                    f"Harbor ({inp.instance}): replication execution {execution_id} of policy "
                    f"{inp.policy_id} ended {status} ({failed}{text}). "
                    f"Read its tasks (GET /replication/executions/{execution_id}/tasks or Administration > "
                    "Replications in Harbor), fix the target registry endpoint or credentials, then retry",
                    REPLICATION_FAILED,
                    execution_id=execution_id,
                )
            return None  # InProgress

        execution = await waiting.poll(finished, interval=self.poll_seconds, progress=lambda: dict(details))
        return ReplicationResult(execution_id=execution_id, status=str(execution.get("status")))

    @activity.defn(name="harbor.confirm")
    async def confirm(self, ref: ArtifactRef) -> ArtifactRef:
        """Check the digest exists on the target Harbor; missing is retryable since replication may lag."""
        client = self._client(ref.instance, "harbor.confirm")
        if await client.get_artifact(ref) is None:
            raise retryable(
                f"Harbor ({ref.instance}): image {image_name(ref)} is not there yet; replication may lag. "
                "If retries run out, check the replication execution and the policy's filters",
                ARTIFACT_MISSING,
            )
        return ref
