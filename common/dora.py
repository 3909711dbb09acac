"""DORA metrics, stage times and SLOs from the ReleaseRecords that Release workflows leave in their memo.

Pure: records and a window in, a `Report` out; no I/O, no clock. `ferry report` (starters/report_cmds.py)
reads the records from visibility and prints or renders what `compute` returns; the lead's end-to-end test and
any other consumer get the same numbers from the same function.

Counting rules (what the report's --help explains):
- An environment deployment is one release's move into one environment (`EnvironmentRecord.moved_at` set).
  Each event counts in the window by its own time: a deployment is *verified* at `deployed_at`, *started* at
  `moved_at`, *failed* at `failed_at`. A release that started before the window and deployed inside it counts.
- A release's own figures (outcome, stage times, its CI run) count in the window its release *ended* in;
  releases still running are listed, never counted as failures.
- Percentiles: median is the usual one (mean of the two middle values for an even count); p95 is the
  nearest-rank p95 (the smallest sample with at least 95% of the samples at or below it), so it is always a
  duration that really happened.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from workflows.types import EnvironmentRecord, ReleaseRecord

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
MONTH = 30 * DAY

BANDS = ("elite", "high", "medium", "low")
BAND_SOURCE = (
    "DORA performance clusters of the 2023 Accelerate State of DevOps Report; the report gives ranges per "
    "cluster with gaps between them, Ferry closes each gap at the faster cluster's bound"
)
# (band, bound): the first band whose bound the value beats. Deployment frequency is "higher is better" (per
# day, at least the bound); the others are "lower is better" (below the bound; the rate: at most the bound).
DEPLOYMENT_FREQUENCY_BANDS = (("elite", 1.0), ("high", 1 / 7), ("medium", 1 / 30))  # daily / weekly / monthly
LEAD_TIME_BANDS = (("elite", DAY), ("high", WEEK), ("medium", MONTH))  # < 1 day / < 1 week / < 1 month
CHANGE_FAILURE_BANDS = (("elite", 0.05), ("high", 0.10), ("medium", 0.15))  # <= 5% / 10% / 15%
TIME_TO_RESTORE_BANDS = (("elite", HOUR), ("high", DAY), ("medium", WEEK))  # < 1 hour / < 1 day / < 1 week
BAND_RULES = {
    "deployment_frequency": "elite >= 1/day (on demand), high >= 1/week, medium >= 1/month, low below",
    "lead_time": "median: elite < 1 day, high < 1 week, medium < 1 month, low longer",
    "change_failure_rate": "elite <= 5%, high <= 10%, medium <= 15%, low above",
    "time_to_restore": "median: elite < 1 hour, high < 1 day, medium < 1 week, low longer",
}

LEAD_TIME_BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 15 min", 15 * 60.0),
    ("15 min - 1 h", HOUR),
    ("1 h - 1 d", DAY),
    ("1 d - 1 w", WEEK),
    ("1 w - 30 d", MONTH),
    (">= 30 d", math.inf),
)

# Pipeline availability: a CI run is *available* when it reached a verdict (passed, or failed because the change
# failed a check); it is *unavailable* when it failed with one of these error types: the platform (Tekton,
# SonarQube, Harbor, git, credentials, config) could not run it. Any other failure type is a verdict: the lead's
# CIFailed wraps failed tests, quality gates and CVE gates. Superseded or cancelled CI runs are neither.
INFRASTRUCTURE_ERROR_TYPES = frozenset(
    {
        "UpstreamUnavailable",
        "AuthFailed",
        "NotConfigured",
        "NotFound",
        "ReplicationFailed",
        "ArtifactMissing",
        "Timeout",
        "TimeoutError",
    }
)
NO_VERDICT_OUTCOMES = frozenset({"superseded", "cancelled", "canceled", "terminated"})
CI_STAGE = "ci"


@dataclass(frozen=True)
class Window:
    """The half-open interval [since, until) the report covers (aware datetimes, UTC)."""

    since: datetime
    until: datetime

    @property
    def days(self) -> float:
        """Length in days, the denominator of deployment frequency."""
        return (self.until - self.since).total_seconds() / DAY

    def holds(self, at: datetime | None) -> bool:
        """Is `at` inside the window?"""
        return at is not None and self.since <= at < self.until


@dataclass
class SloTargets:
    """The platform SLOs (platform architecture, section 10.3): deployment success > 99%, P95 deploy time
    < 10 min, CI pipeline availability > 99.5%. Comparisons are strict, as written there."""

    deployment_success_rate: float = 0.99
    p95_deploy_seconds: float = 600.0
    pipeline_availability: float = 0.995


@dataclass
class Bucket:
    """One bar of a histogram: samples below `upper_seconds` (and at or above the previous bucket's bound)."""

    label: str
    upper_seconds: float | None  # None: unbounded (JSON has no infinity)
    count: int


@dataclass
class DeploymentFrequency:
    """Deployments verified in the window, per day of the window, and per UTC day."""

    deployments: int
    per_day: float
    band: str
    daily: dict[str, int] = field(default_factory=dict)  # YYYY-MM-DD -> deployments verified that day


@dataclass
class LeadTime:
    """committed_at -> deployed_at of the deployments verified in the window (commits with a known time)."""

    samples: int
    median_seconds: float | None
    p95_seconds: float | None
    band: str | None
    histogram: list[Bucket] = field(default_factory=list)


@dataclass
class ChangeFailureRate:
    """Deployments started in the window that failed verification or were rolled back / deployments started."""

    started: int
    failed: int
    rate: float | None
    band: str | None


@dataclass
class TimeToRestore:
    """failed_at -> restored_at of the failures in the window; `unrestored` failures have no restore yet."""

    samples: int
    median_seconds: float | None
    band: str | None
    unrestored: int = 0


@dataclass
class DoraMetrics:
    """The four DORA metrics of one scope: an environment, a service in an environment, or all of them."""

    scope: str
    deployment_frequency: DeploymentFrequency
    lead_time: LeadTime
    change_failure_rate: ChangeFailureRate
    time_to_restore: TimeToRestore


@dataclass
class StageTime:
    """How long one stage took over the releases that ended in the window; a gate's time is waiting time."""

    stage: str
    gate: bool
    count: int
    median_seconds: float
    p95_seconds: float
    total_seconds: float


@dataclass
class SloResult:
    """One SLO: target, value, and whether it was met; `met` is None when there was nothing to measure."""

    name: str
    description: str
    comparison: str  # ">" or "<": value must be strictly above / below the target
    target: float
    value: float | None
    unit: str  # ratio | seconds
    met: bool | None
    samples: int
    by_environment: dict[str, float | None] = field(default_factory=dict)


@dataclass
class RunningRelease:
    """A release that has not ended: listed, not counted."""

    release_id: str
    started_at: str
    services: list[str]
    stage: str = ""


@dataclass
class Report:
    """Everything `ferry report` shows, for one window and filter."""

    since: str
    until: str
    days: float
    service: str | None
    environment: str | None
    headline_environment: str
    band_source: str
    band_rules: dict[str, str]
    headline: DoraMetrics
    overall: DoraMetrics
    environments: dict[str, DoraMetrics]
    services: dict[str, dict[str, DoraMetrics]]
    stages: list[StageTime]
    slos: list[SloResult]
    outcomes: dict[str, int]
    releases: int
    running: list[RunningRelease]


# --- parsing ---


def parse_time(value: str) -> datetime | None:
    """An ISO 8601 timestamp of a record as an aware UTC datetime; None for "" or garbage (never raises:
    a report must not die on one odd record)."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def record_from_dict(data: Mapping[str, Any]) -> ReleaseRecord:
    """A ReleaseRecord from its memo JSON; keys this version does not know are ignored, so a record written by
    a newer Ferry still reports."""
    values = _known(ReleaseRecord, data)
    values["environments"] = {
        name: EnvironmentRecord(**_known(EnvironmentRecord, env or {}))
        for name, env in (data.get("environments") or {}).items()
    }
    for key in ("release_id", "commit", "branch", "outcome", "committed_at", "started_at", "ended_at"):
        values.setdefault(key, "")
    values.setdefault("services", [])
    return ReleaseRecord(**values)


# --- statistics ---


def median(values: Sequence[float]) -> float | None:
    """The median, or None without samples."""
    return float(statistics.median(values)) if values else None


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile, or None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[math.ceil(0.95 * len(ordered)) - 1])


def band_at_least(value: float, bands: Sequence[tuple[str, float]]) -> str:
    """Higher is better: the first band whose bound `value` reaches."""
    return next((name for name, bound in bands if value >= bound), "low")


def band_below(value: float | None, bands: Sequence[tuple[str, float]], inclusive: bool = False) -> str | None:
    """Lower is better: the first band whose bound `value` stays below (or at, when inclusive)."""
    if value is None:
        return None
    return next((name for name, bound in bands if value < bound or (inclusive and value <= bound)), "low")


def histogram(values: Iterable[float], buckets: Sequence[tuple[str, float]] = LEAD_TIME_BUCKETS) -> list[Bucket]:
    """Counts per bucket (each bucket holds the values below its bound and at or above the previous one)."""
    counts = [0] * len(buckets)
    for v in values:
        counts[next(i for i, (_, upper) in enumerate(buckets) if v < upper)] += 1
    pairs = zip(buckets, counts, strict=True)
    return [Bucket(label, None if math.isinf(upper) else upper, n) for (label, upper), n in pairs]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


# --- the computation ---


@dataclass
class _Deployment:
    """One release's move into one environment, with parsed times."""

    release: ReleaseRecord
    environment: str
    services: list[str]
    committed: datetime | None
    moved: datetime | None
    deployed: datetime | None
    failed: datetime | None
    restored: datetime | None
    rolled_back: bool
    final: bool  # the release ended, so a move without a verdict will never get one

    @property
    def bad(self) -> bool:
        return self.failed is not None or self.rolled_back

    @property
    def verified(self) -> bool:
        return self.deployed is not None and not self.bad


def _deployments(records: Sequence[ReleaseRecord]) -> list[_Deployment]:
    out = []
    for r in records:
        committed = parse_time(r.committed_at)
        for name, env in r.environments.items():
            moved = parse_time(env.moved_at)
            if moved is None:
                continue
            out.append(
                _Deployment(
                    release=r,
                    environment=name,
                    services=sorted(env.digests) or list(r.services),
                    committed=committed,
                    moved=moved,
                    deployed=parse_time(env.deployed_at),
                    failed=parse_time(env.failed_at),
                    restored=parse_time(env.restored_at),
                    rolled_back=env.rolled_back,
                    final=not _is_running(r),
                )
            )
    return out


def _is_running(r: ReleaseRecord) -> bool:
    return r.outcome == "running" or not r.ended_at


def _days(window: Window) -> list[str]:
    first, last = window.since.date(), (window.until - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)] if last >= first else []


def dora_metrics(scope: str, deployments: Sequence[_Deployment], window: Window) -> DoraMetrics:
    """The four metrics over the given environment deployments."""
    verified = [d for d in deployments if d.verified and window.holds(d.deployed)]
    daily = dict.fromkeys(_days(window), 0)
    for d in verified:
        assert d.deployed is not None
        key = d.deployed.date().isoformat()
        daily[key] = daily.get(key, 0) + 1
    per_day = len(verified) / window.days if window.days > 0 else 0.0
    frequency = DeploymentFrequency(len(verified), per_day, band_at_least(per_day, DEPLOYMENT_FREQUENCY_BANDS), daily)

    leads = [s for d in verified if (s := _seconds(d.committed, d.deployed)) is not None]
    lead_median = median(leads)
    lead = LeadTime(len(leads), lead_median, p95(leads), band_below(lead_median, LEAD_TIME_BANDS), histogram(leads))

    started = [d for d in deployments if window.holds(d.moved)]
    failed = sum(1 for d in started if d.bad)
    rate = failed / len(started) if started else None
    cfr = ChangeFailureRate(len(started), failed, rate, band_below(rate, CHANGE_FAILURE_BANDS, inclusive=True))

    failures = [d for d in deployments if window.holds(d.failed)]
    restores = [s for d in failures if (s := _seconds(d.failed, d.restored)) is not None]
    restore_median = median(restores)
    restore = TimeToRestore(
        len(restores),
        restore_median,
        band_below(restore_median, TIME_TO_RESTORE_BANDS),
        unrestored=sum(1 for d in failures if d.restored is None),
    )
    return DoraMetrics(scope, frequency, lead, cfr, restore)


def _env_scoped(stage: str, environments: set[str]) -> str | None:
    """The environment a stage like `gate:production` belongs to, or None (ci, replicate:<site>)."""
    _, _, suffix = stage.partition(":")
    return suffix if suffix in environments else None


def stage_times(records: Sequence[ReleaseRecord], environments: set[str], only_env: str | None) -> list[StageTime]:
    """Per stage, in the order releases run them: count, median, p95; gates (`gate:*`) are waiting time."""
    samples: dict[str, list[float]] = {}
    for r in records:
        for stage, seconds in r.stages.items():
            env = _env_scoped(stage, environments)
            if only_env is not None and env is not None and env != only_env:
                continue
            samples.setdefault(stage, []).append(float(seconds))
    return [
        StageTime(
            stage=stage,
            gate=stage.startswith("gate:"),
            count=len(values),
            median_seconds=median(values) or 0.0,
            p95_seconds=p95(values) or 0.0,
            total_seconds=float(sum(values)),
        )
        for stage, values in samples.items()
    ]


def is_ci_run(r: ReleaseRecord) -> bool:
    """Did this release run CI? (It has CI's stage time, or it failed in CI.)"""
    return CI_STAGE in r.stages or r.failed_stage == CI_STAGE


def ci_unavailable(r: ReleaseRecord) -> bool:
    """Did this release's CI fail because the platform could not run it (see INFRASTRUCTURE_ERROR_TYPES)?"""
    return r.failed_stage == CI_STAGE and r.error_type in INFRASTRUCTURE_ERROR_TYPES


def slos(
    deployments: Sequence[_Deployment],
    ended: Sequence[ReleaseRecord],
    window: Window,
    targets: SloTargets,
) -> list[SloResult]:
    """Deployment success rate, p95 deploy time and pipeline availability against their targets."""
    started = [d for d in deployments if window.holds(d.moved)]
    envs = sorted({d.environment for d in started})

    # A move has a verdict once verified or failed, or once its release ended without verifying it.
    def decided(ds: Iterable[_Deployment]) -> list[_Deployment]:
        return [d for d in ds if d.verified or d.bad or d.final]

    def success(ds: Sequence[_Deployment]) -> float | None:
        ds = decided(ds)
        return sum(1 for d in ds if d.verified) / len(ds) if ds else None

    def deploy_p95(ds: Sequence[_Deployment]) -> tuple[float | None, int]:
        times = [s for d in ds if d.verified and (s := _seconds(d.moved, d.deployed)) is not None]
        return p95(times), len(times)

    rate = success(started)
    deploy_time, deploy_samples = deploy_p95(started)
    ci = [r for r in ended if is_ci_run(r) and r.outcome not in NO_VERDICT_OUTCOMES]
    down = sum(1 for r in ci if ci_unavailable(r))
    availability = (len(ci) - down) / len(ci) if ci else None
    return [
        SloResult(
            name="deployment_success_rate",
            description="environment deployments verified without failure or rollback / deployments decided",
            comparison=">",
            target=targets.deployment_success_rate,
            value=rate,
            unit="ratio",
            met=None if rate is None else rate > targets.deployment_success_rate,
            samples=len(decided(started)),
            by_environment={e: success([d for d in started if d.environment == e]) for e in envs},
        ),
        SloResult(
            name="p95_deploy_time",
            description="p95 of moved_at -> deployed_at (GitOps commit to verified) per environment deployment",
            comparison="<",
            target=targets.p95_deploy_seconds,
            value=deploy_time,
            unit="seconds",
            met=None if deploy_time is None else deploy_time < targets.p95_deploy_seconds,
            samples=deploy_samples,
            by_environment={e: deploy_p95([d for d in started if d.environment == e])[0] for e in envs},
        ),
        SloResult(
            name="pipeline_availability",
            description="CI runs that reached a verdict / CI runs (infrastructure failures are the difference)",
            comparison=">",
            target=targets.pipeline_availability,
            value=availability,
            unit="ratio",
            met=None if availability is None else availability > targets.pipeline_availability,
            samples=len(ci),
        ),
    ]


def compute(
    records: Sequence[ReleaseRecord],
    window: Window,
    *,
    service: str | None = None,
    environment: str | None = None,
    headline_environment: str | None = None,
    environment_order: Sequence[str] = (),
    current_stages: Mapping[str, str] | None = None,
    targets: SloTargets | None = None,
) -> Report:
    """The whole report over `records` (any superset of the window's releases: filtering happens here).

    `service` keeps releases that include it and, per environment, its deployments; `environment` keeps that
    environment's deployments and stages (release-wide figures such as CI stay). `headline_environment` is the
    scope of the four big numbers (default: the filter, else `production` when present, else all environments).
    `environment_order` is the promotion order of ferry.yaml, for tables and charts.
    `current_stages` maps running release ids to their current stage (the ReleaseStage search attribute).
    """
    targets = targets or SloTargets()
    if service:
        records = [r for r in records if service in r.services]
    all_envs = {name for r in records for name in r.environments}
    deployments = _deployments(records)
    if service:
        deployments = [d for d in deployments if service in d.services]
    if environment:
        deployments = [d for d in deployments if d.environment == environment]
    order = _env_order(environment_order, records)
    env_names = sorted({d.environment for d in deployments}, key=order)
    environments = {e: dora_metrics(e, [d for d in deployments if d.environment == e], window) for e in env_names}
    services: dict[str, dict[str, DoraMetrics]] = {}
    for s in [service] if service else sorted({s for d in deployments for s in d.services}):
        mine = [d for d in deployments if s in d.services]
        services[s] = {
            e: dora_metrics(f"{s}@{e}", [d for d in mine if d.environment == e], window)
            for e in sorted({d.environment for d in mine}, key=order)
        }
    overall = dora_metrics("all environments", deployments, window)
    headline_env = environment or headline_environment or ("production" if "production" in environments else "")
    headline = environments.get(headline_env) or (dora_metrics(headline_env, [], window) if headline_env else overall)

    ended = [r for r in records if not _is_running(r) and window.holds(parse_time(r.ended_at))]
    outcomes: dict[str, int] = {}
    for r in ended:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    stages_now = current_stages or {}
    running = [
        RunningRelease(r.release_id, r.started_at, list(r.services), stages_now.get(r.release_id, ""))
        for r in sorted((r for r in records if _is_running(r)), key=lambda r: r.started_at)
        if (started := parse_time(r.started_at)) is None or started < window.until
    ]
    return Report(
        since=window.since.isoformat(),
        until=window.until.isoformat(),
        days=window.days,
        service=service,
        environment=environment,
        headline_environment=headline.scope,
        band_source=BAND_SOURCE,
        band_rules=dict(BAND_RULES),
        headline=headline,
        overall=overall,
        environments=environments,
        services=services,
        stages=stage_times(ended, all_envs, environment),
        slos=slos(deployments, ended, window, targets),
        outcomes=dict(sorted(outcomes.items())),
        releases=len(ended),
        running=running,
    )


def _env_order(configured: Sequence[str], records: Sequence[ReleaseRecord]) -> Callable[[str], tuple[int, int, str]]:
    """A sort key: environments in the configured promotion order, then in the order releases moved into
    them (a record lists its environments as the release reached them), then by name."""
    seen: dict[str, int] = {}
    for r in records:
        for i, name in enumerate(r.environments):
            seen[name] = min(seen.get(name, i), i)
    rank = {name: i for i, name in enumerate(configured)}
    return lambda env: (rank.get(env, len(rank)), seen.get(env, 0), env)
