"""The ReleaseRecord a Release leaves in its memo: the facts `ferry report` needs, computed from the status.

Pure (no workflow calls), so it is tested directly and the report never has to replay a history.
"""

from __future__ import annotations

from datetime import datetime

from workflows.types import EnvironmentRecord, ReleaseRecord, ReleaseStatus


def stage_seconds(timings: dict[str, dict[str, str]]) -> dict[str, float]:
    """stage -> seconds between its start and end, for the stages that ended."""
    out: dict[str, float] = {}
    for stage, t in timings.items():
        if t.get("started") and t.get("ended"):
            seconds = (datetime.fromisoformat(t["ended"]) - datetime.fromisoformat(t["started"])).total_seconds()
            out[stage] = max(0.0, seconds)
    return out


def release_record(
    status: ReleaseStatus,
    environments: dict[str, EnvironmentRecord],
    *,
    started_at: str,
    ended_at: str,
    error_type: str = "",
) -> ReleaseRecord:
    """What the release did, per environment and stage; `error_type` names the failure's type, if any."""
    failed_stage = ""
    if status.outcome == "failed":
        failed_stage = status.error.split(":", 1)[0]
    elif status.outcome == "rolled_back":
        failed_stage = status.rollback_cause.split(":", 1)[0]
    return ReleaseRecord(
        release_id=status.release_id,
        commit=status.commit,
        branch=status.branch,
        services=list(status.services),
        outcome=status.outcome,
        committed_at=status.ci.committed_at if status.ci else "",
        started_at=started_at,
        ended_at=ended_at,
        environments={name: environments[name] for name in environments},
        stages=stage_seconds(status.timings),
        failed_stage=failed_stage,
        error_type=error_type,
        cause=status.rollback_cause or status.error,
    )
