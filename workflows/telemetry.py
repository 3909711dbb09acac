"""Log lines and release metrics from workflow code, safe under replay and inside the workflow sandbox.

Workflow code cannot log like an activity: a worker that replays a history (after a restart, a cache
eviction, `ferry replay`) runs the same code again, and every line or metric it wrote would be written
twice. `log` writes nothing while replaying; the metrics go through `workflow.metric_meter()`, which the
SDK already suppresses during replay, and carry namespace, task_queue and workflow_type on top of the labels
given here. The worker's runtime exports them (Prometheus when `observability.metrics.<site>` is set).
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import structlog

STAGE_DURATION = "ferry_stage_duration_seconds"
GATE_WAIT = "ferry_gate_wait_seconds"
RELEASES = "ferry_releases_total"
ROLLBACKS = "ferry_rollbacks_total"

# Bucket bounds (seconds) the Prometheus runtime uses for the two histograms: stages take seconds to an hour
# or two; gates wait minutes to a week (approvals.deadline_hours defaults to 72).
STAGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
GATE_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 259200.0, 604800.0)

_WORKFLOW_ID_PREFIXES = ("release/", "ci/")

_logger = structlog.get_logger("ferry.workflow")


def release_from_workflow_id(workflow_id: str) -> str:
    """`release/<repo>/<sha12>` or `ci/<repo>/<sha12>` -> the release id `<repo>-<sha12>`; '' for other ids."""
    if not workflow_id.startswith(_WORKFLOW_ID_PREFIXES):
        return ""
    parts = workflow_id.split("/")
    return f"{parts[1]}-{parts[2]}" if len(parts) == 3 and parts[1] and parts[2] else ""


def log(event: str, *, level: str = "info", **fields: Any) -> None:
    """Write one structlog line with workflow_id, run_id, workflow type and `fields`; nothing during replay."""
    if workflow.unsafe.is_replaying():
        return
    info = workflow.info()
    context: dict[str, Any] = {"workflow_id": info.workflow_id, "run_id": info.run_id, "workflow": info.workflow_type}
    release = release_from_workflow_id(info.workflow_id)
    if release:
        context["release"] = release
    # The timestamp processor reads the wall clock, which the sandbox forbids; the line is not workflow state.
    with workflow.unsafe.sandbox_unrestricted():
        getattr(_logger, level)(event, **(context | fields))


def stage_finished(stage: str, seconds: float, environment: str = "") -> None:
    """Record how long a stage (ci, deploy:staging, ...) took; call where the workflow ends its timing."""
    meter = workflow.metric_meter()
    histogram = meter.create_histogram_float(STAGE_DURATION, "Time a release spent in a stage", "s")
    histogram.record(max(0.0, seconds), {"stage": stage, "environment": environment})


def gate_waited(environment: str, seconds: float) -> None:
    """Record how long a gate waited for its decision (approved, rejected or expired)."""
    meter = workflow.metric_meter()
    histogram = meter.create_histogram_float(GATE_WAIT, "Time a release waited at an approval gate", "s")
    histogram.record(max(0.0, seconds), {"environment": environment})


def release_ended(outcome: str, environment: str) -> None:
    """Count a release that ended (succeeded, failed, rejected, expired, superseded, ...) at `environment`."""
    counter = workflow.metric_meter().create_counter(RELEASES, "Releases that ended, by outcome")
    counter.add(1, {"outcome": outcome, "environment": environment})


def rolled_back(environment: str) -> None:
    """Count an automatic or manual rollback of an environment."""
    counter = workflow.metric_meter().create_counter(ROLLBACKS, "Environment rollbacks")
    counter.add(1, {"environment": environment})
