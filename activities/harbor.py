"""Harbor activities: the vulnerability gate, replication to another site, and confirming a copy arrived.

Written from specs/harbor/swagger.yaml (API v2.0) and specs/harbor/NOTES-from-source.md, which gives the
status and severity strings the swagger leaves out. Harbor's API security definition is HTTP basic, used
with a robot account (`username` + credential in ferry.yaml).
"""

from __future__ import annotations

from datetime import datetime
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
EXECUTION_IN_PROGRESS = "InProgress"
EXECUTION_FAILED = frozenset({"Failed", "Stopped"})
# Triggers whose executions replicate everything the policy selects at their start. An event_based execution
# copies only the one artifact whose push fired it (src/controller/replication: Start with a resource), so it
# says nothing about this release's other images.
WHOLE_POLICY_TRIGGERS = frozenset({"manual", "scheduled"})
# How far back the search for an execution that already covers a release's images reads (newest first).
EXECUTIONS_PAGE_SIZE = 50
EXECUTIONS_MAX_PAGES = 10
TASKS_PAGE_SIZE = 100
TASKS_MAX_PAGES = 20


def image_name(ref: ArtifactRef) -> str:
    """`project/repository@digest`: how messages name an image so an operator can find it in Harbor."""
    return f"{ref.project}/{ref.repository}@{ref.digest}"


def harbor_time(value: object) -> datetime | None:
    """A Harbor timestamp (`2026-05-01T10:00:00.123Z`, RFC 3339) as an aware datetime; None if absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def task_repository(src_resource: object) -> str:
    """The repository a replication task copied, from its `src_resource`.

    Harbor prints `project/repo [2 item(s) in total]` (src/controller/replication/flow/stage.go
    getResourceName: one task per repository, its tags or digests counted but not named); older releases
    printed `project/repo:[v1,v2]`. Either way the repository is what comes before the bracket.
    """
    text = str(src_resource or "").strip()
    for mark in (" [", ":["):
        text = text.split(mark, 1)[0]
    return text.strip()


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

    async def executions_since(self, policy_id: int, since: datetime) -> list[dict[str, Any]]:
        """The executions of a policy that started at or after `since`, newest first.

        Pages through `GET /replication/executions?policy_id=&sort=-start_time` and stops at the first older one.
        """
        found: list[dict[str, Any]] = []
        for page in range(1, EXECUTIONS_MAX_PAGES + 1):
            response = await self.api.request(
                "GET",
                f"{API}/replication/executions",
                f"list executions of replication policy {policy_id}",
                params={"policy_id": policy_id, "sort": "-start_time", "page": page, "page_size": EXECUTIONS_PAGE_SIZE},
            )
            items = response.json()
            if not isinstance(items, list):
                return found
            for execution in items:
                started = harbor_time(execution.get("start_time")) if isinstance(execution, dict) else None
                if started is None:
                    continue
                if started < since:
                    return found
                found.append(execution)
            if len(items) < EXECUTIONS_PAGE_SIZE:
                return found
        return found

    async def execution_tasks(self, execution_id: int) -> list[dict[str, Any]]:
        """Every task of an execution (one per repository it copies)."""
        tasks: list[dict[str, Any]] = []
        for page in range(1, TASKS_MAX_PAGES + 1):
            response = await self.api.request(
                "GET",
                f"{API}/replication/executions/{execution_id}/tasks",
                f"list tasks of replication execution {execution_id}",
                params={"page": page, "page_size": TASKS_PAGE_SIZE},
            )
            items = response.json()
            if not isinstance(items, list):
                break
            tasks += [t for t in items if isinstance(t, dict)]
            if len(items) < TASKS_PAGE_SIZE:
                break
        return tasks

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

        Starts at most one execution per release, even when a run of the activity lost what the previous one
        knew:
        - a retried attempt resumes the execution named in the last heartbeat;
        - a rerun without heartbeat details (a Reset: `ferry retry`) first looks for an execution of the policy
          that already covers the release's images (see `_covering_execution`): a Succeed one is the answer, an
          InProgress one is waited for. Only when none covers them (or those that did ended Failed/Stopped)
          does it start a new one.
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
            covering = await self._covering_execution(client, inp)
            if covering is not None:
                execution_id = covering["id"]
                activity.logger.info(
                    "Harbor: replication execution %s of policy %s (%s, started %s) already covers the images "
                    "of %s; not starting another",
                    execution_id,
                    inp.policy_id,
                    covering.get("status"),
                    covering.get("start_time"),
                    inp.release_id,
                )
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

    async def _covered_since(self, client: HarborClient, inp: ReplicationInput) -> datetime | None:
        """From when on an execution of the policy covers this release's images; None when that cannot be told.

        An execution enumerates what its policy selects when it starts, so one started after the last of the
        images was pushed copies them all (as a new execution would). Both times are the source Harbor's own
        clock (`push_time`, `start_time`), so no clock skew between Temporal and Harbor enters the comparison.
        `not_before`, when the workflow gives one, can only move that bound later.
        """
        bounds: list[datetime] = []
        if inp.not_before:
            not_before = harbor_time(inp.not_before)
            if not_before is None:
                raise fatal(
                    f"harbor.replicate: not_before {inp.not_before!r} is not an ISO 8601 time with a zone "
                    "(a workflow bug: it must pass e.g. 2026-05-01T10:00:00Z)",
                    BAD_REQUEST,
                )
            bounds.append(not_before)
        every_push_known = True
        for ref in inp.artifacts:
            source = ArtifactRef(inp.instance, ref.project, ref.repository, ref.digest)
            artifact = await client.get_artifact(source)
            if artifact is None:
                raise fatal(
                    f"Harbor ({inp.instance}): image {image_name(source)} is not there, so replication policy "
                    f"{inp.policy_id} cannot copy it; check that CI pushed it (and that no retention rule or "
                    "garbage collection removed it), then release the commit again",
                    ARTIFACT_MISSING,
                    image=image_name(source),
                )
            pushed = harbor_time(artifact.get("push_time"))
            if pushed is None:
                every_push_known = False
            else:
                bounds.append(pushed)
        if not bounds or (not every_push_known and not inp.not_before):
            return None
        return max(bounds)

    async def _covering_execution(self, client: HarborClient, inp: ReplicationInput) -> dict[str, Any] | None:
        """An execution of the policy that already covers this release's images, if there is one.

        Candidates: executions of the policy (`policy_id` filter, newest first) triggered manually or by schedule
        (they copy everything the policy selects) that started no earlier than `_covered_since`. Among them a
        Succeed one whose tasks name each of the release's repositories is taken first (nothing to wait for),
        else the newest InProgress one (its tasks may not be listed yet). Failed and Stopped ones are passed
        over: a new execution is what a retry after one of those needs.
        """
        since = await self._covered_since(client, inp)
        if since is None:
            return None
        repositories = {f"{ref.project}/{ref.repository}" for ref in inp.artifacts}
        candidates = [
            ex
            for ex in await client.executions_since(inp.policy_id, since)
            if ex.get("policy_id") == inp.policy_id
            and ex.get("trigger") in WHOLE_POLICY_TRIGGERS
            and isinstance(ex.get("id"), int)
        ]
        for ex in candidates:
            if ex.get("status") != EXECUTION_SUCCEEDED:
                continue
            if not repositories:  # bounded by not_before alone: nothing more to check
                return ex
            copied = {task_repository(t.get("src_resource")) for t in await client.execution_tasks(ex["id"])}
            if repositories <= copied:
                return ex
            activity.logger.info(
                "Harbor: execution %s of policy %s succeeded without a task for %s; not taking it",
                ex["id"],
                inp.policy_id,
                ", ".join(sorted(repositories - copied)),
            )
        running = [ex for ex in candidates if ex.get("status") == EXECUTION_IN_PROGRESS]
        if running:
            return running[0]
        ended = [f"{ex['id']} ({ex.get('status')})" for ex in candidates if ex.get("status") in EXECUTION_FAILED]
        if ended:
            activity.logger.info(
                "Harbor: executions %s of policy %s did not finish their copy; starting a new one",
                ", ".join(ended),
                inp.policy_id,
            )
        return None

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
