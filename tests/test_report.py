"""`ferry report`: DORA metrics, stage times and SLOs from ReleaseRecords (common/dora.py, by hand), then the
command over real visibility (memos upserted by a stand-in `Release` workflow) with --json and --html."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from sample import sample_config
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common.config import parse_config
from common.dora import (
    CHANGE_FAILURE_BANDS,
    DEPLOYMENT_FREQUENCY_BANDS,
    LEAD_TIME_BANDS,
    TIME_TO_RESTORE_BANDS,
    Window,
    band_at_least,
    band_below,
    compute,
    p95,
    record_from_dict,
)
from starters import report_cmds
from starters.cli import build_parser, main
from starters.common import UNREACHABLE, USAGE, CommandError
from workflows import search
from workflows.types import RELEASE_RECORD_MEMO, EnvironmentRecord, ReleaseRecord

WINDOW = Window(datetime(2025, 5, 1, tzinfo=UTC), datetime(2025, 5, 8, tzinfo=UTC))  # 7 days


def at(day: int, hh: int, mm: int = 0, month: int = 5) -> str:
    return datetime(2025, month, day, hh, mm, tzinfo=UTC).isoformat()


def env(
    moved: str, deployed: str = "", failed: str = "", restored: str = "", services: tuple[str, ...] = ("api",)
) -> EnvironmentRecord:
    return EnvironmentRecord(
        moved_at=moved,
        deployed_at=deployed,
        failed_at=failed,
        restored_at=restored,
        rolled_back=bool(failed),
        digests={s: f"sha256:{s}" for s in services},
    )


def records() -> list[ReleaseRecord]:
    """Eight releases around the window 2025-05-01 .. 2025-05-08 (UTC)."""
    return [
        # R1: api+web to production on May 1.
        ReleaseRecord(
            "shop-r1", "c1", "main", ["api", "web"], "succeeded", at(1, 9), at(1, 10), at(1, 14),
            environments={
                "testbed": env(at(1, 10, 30), at(1, 10, 40), services=("api", "web")),
                "staging": env(at(1, 11, 30), at(1, 11, 45), services=("api", "web")),
                "production": env(at(1, 13), at(1, 13, 20), services=("api", "web")),
            },
            stages={"ci": 1200, "deploy:testbed": 600, "gate:staging": 1800, "deploy:staging": 900,
                    "gate:production": 2400, "deploy:production": 1200},
        ),
        # R2: api; production waited 22 h at its gate, deployed May 3.
        ReleaseRecord(
            "shop-r2", "c2", "main", ["api"], "succeeded", at(2, 8), at(2, 9), at(3, 9),
            environments={
                "testbed": env(at(2, 9, 20), at(2, 9, 25)),
                "staging": env(at(2, 10), at(2, 10, 10)),
                "production": env(at(3, 8), at(3, 8, 30)),
            },
            stages={"ci": 900, "deploy:testbed": 300, "gate:staging": 1200, "deploy:staging": 600,
                    "gate:production": 79200, "deploy:production": 1800},
        ),
        # R3: web; CI failed because Tekton could not be reached (infrastructure).
        ReleaseRecord(
            "shop-r3", "c3", "main", ["web"], "failed", at(3, 10), at(3, 10, 5), at(3, 10, 30),
            stages={"ci": 1500}, failed_stage="ci", error_type="UpstreamUnavailable",
        ),
        # R4: web; CI failed its checks (a verdict: the pipeline worked).
        ReleaseRecord(
            "shop-r4", "c4", "main", ["web"], "failed", at(4, 9), at(4, 10), at(4, 10, 10),
            stages={"ci": 600}, failed_stage="ci", error_type="CIFailed",
        ),
        # R5: api; production Degraded at 14:20, reverted, Healthy again at 14:50.
        ReleaseRecord(
            "shop-r5", "c5", "main", ["api"], "rolled_back", at(5, 8), at(5, 9), at(5, 15),
            environments={
                "testbed": env(at(5, 9, 20), at(5, 9, 30)),
                "staging": env(at(5, 10), at(5, 10, 15)),
                "production": env(at(5, 14), failed=at(5, 14, 20), restored=at(5, 14, 50)),
            },
            stages={"ci": 1200, "deploy:testbed": 600, "gate:staging": 1500, "deploy:staging": 900,
                    "gate:production": 12000, "deploy:production": 1200},
            failed_stage="verify:production", error_type="ApplicationDegraded",
        ),
        # R6: web; still running (waiting at the staging gate), verified in testbed already.
        ReleaseRecord(
            "shop-r6", "c6", "main", ["web"], "running", at(7, 9), at(7, 10), "",
            environments={"testbed": env(at(7, 10, 30), at(7, 10, 40), services=("web",))},
            stages={"ci": 1800},
        ),
        # R7: ended long before the window: counts nowhere.
        ReleaseRecord(
            "shop-r7", "c7", "main", ["api"], "succeeded", at(19, 8, month=4), at(19, 9, month=4),
            at(20, 9, month=4),
            environments={"production": env(at(20, 8, month=4), at(20, 8, 10, month=4))},
            stages={"ci": 99999},
        ),
        # R8: api; started the evening before the window, reached production inside it (May 1 01:10).
        ReleaseRecord(
            "shop-r8", "c8", "main", ["api"], "succeeded", at(30, 19, month=4), at(30, 20, month=4), at(1, 1, 15),
            environments={
                "testbed": env(at(30, 20, 30, month=4), at(30, 20, 40, month=4)),
                "staging": env(at(30, 21, month=4), at(30, 21, 10, month=4)),
                "production": env(at(1, 1), at(1, 1, 10)),
            },
            stages={"ci": 600, "gate:production": 13800, "deploy:production": 600},
        ),
    ]  # fmt: skip


def test_dora_metrics_of_production_by_hand() -> None:
    report = compute(records(), WINDOW, headline_environment="production", current_stages={"shop-r6": "gate:staging"})
    prod = report.headline
    assert report.headline_environment == "production" and prod is report.environments["production"]
    # Verified in production inside the window: R8 (May 1 01:10), R1 (May 1 13:20), R2 (May 3 08:30); R5 failed,
    # R7 is in April. 3 deployments / 7 days = 0.4286/day: at least weekly, not daily -> high.
    f = prod.deployment_frequency
    assert (f.deployments, f.band) == (3, "high") and f.per_day == pytest.approx(3 / 7)
    assert f.daily == {
        "2025-05-01": 2, "2025-05-02": 0, "2025-05-03": 1, "2025-05-04": 0,
        "2025-05-05": 0, "2025-05-06": 0, "2025-05-07": 0,
    }  # fmt: skip
    # Lead times: R1 09:00 -> 13:20 = 15600 s; R8 Apr 30 19:00 -> May 1 01:10 = 22200 s; R2 May 2 08:00 ->
    # May 3 08:30 = 88200 s. Median 22200 (6h10m < 1 day -> elite); nearest-rank p95 of 3 = the 3rd = 88200.
    lt = prod.lead_time
    assert (lt.samples, lt.median_seconds, lt.p95_seconds, lt.band) == (3, 22200, 88200, "elite")
    # Histogram: 15600 and 22200 fall in "1 h - 1 d", 88200 in "1 d - 1 w".
    assert {b.label: b.count for b in lt.histogram if b.count} == {"1 h - 1 d": 2, "1 d - 1 w": 1}
    # Started in production in the window (moved_at): R8, R1, R2, R5 = 4; failed/rolled back: R5 -> 25% -> low.
    cfr = prod.change_failure_rate
    assert (cfr.started, cfr.failed, cfr.rate, cfr.band) == (4, 1, 0.25, "low")
    # Restore: R5 14:20 -> 14:50 = 1800 s; median 1800 < 1 h -> elite; nothing left unrestored.
    ttr = prod.time_to_restore
    assert (ttr.samples, ttr.median_seconds, ttr.band, ttr.unrestored) == (1, 1800, "elite", 0)


def test_dora_metrics_of_other_scopes_by_hand() -> None:
    report = compute(records(), WINDOW, environment_order=["testbed", "staging", "production"])
    assert list(report.environments) == ["testbed", "staging", "production"]
    testbed = report.environments["testbed"]
    # Verified in testbed in the window: R1, R2, R5 and the running R6 (its testbed deployment happened);
    # R8's was on Apr 30. Lead times 6000 (R1), 5100 (R2), 5400 (R5), 6000 (R6): median (5400+6000)/2 = 5700.
    assert testbed.deployment_frequency.deployments == 4
    assert (testbed.lead_time.median_seconds, testbed.lead_time.p95_seconds) == (5700, 6000)
    assert (testbed.change_failure_rate.rate, testbed.change_failure_rate.band) == (0.0, "elite")
    assert (testbed.time_to_restore.median_seconds, testbed.time_to_restore.band) == (None, None)
    # Staging: R1 11:45 (9900 s), R2 10:10 (7800 s), R5 10:15 (8100 s): median 8100.
    assert report.environments["staging"].lead_time.median_seconds == 8100
    # Over all environments: 4 + 3 + 3 = 10 verified / 7 days = 1.43/day -> elite; 1 failure in 11 starts.
    overall = report.overall
    assert overall.deployment_frequency.deployments == 10 and overall.deployment_frequency.band == "elite"
    assert overall.change_failure_rate.rate == pytest.approx(1 / 11) and overall.change_failure_rate.band == "high"
    # Per service: web went to production only with R1 (1 in 7 days = exactly weekly -> high); api with R1, R2, R8.
    assert report.services["web"]["production"].deployment_frequency.deployments == 1
    assert report.services["web"]["production"].deployment_frequency.band == "high"
    assert report.services["api"]["production"].deployment_frequency.deployments == 3
    assert report.services["api"]["production"].change_failure_rate.failed == 1
    assert list(report.services["web"]) == ["testbed", "staging", "production"]  # R6 web testbed, R1 all three


def test_stage_times_outcomes_and_running_by_hand() -> None:
    report = compute(records(), WINDOW, current_stages={"shop-r6": "gate:staging"})
    stages = {s.stage: s for s in report.stages}
    # Ended in the window: R1, R2, R3, R4, R5, R8 (R6 runs, R7 ended in April).
    # ci: 1200, 900, 1500, 600, 1200, 600 -> sorted 600 600 900 1200 1200 1500: median 1050, p95 (6th) 1500.
    assert (stages["ci"].count, stages["ci"].median_seconds, stages["ci"].p95_seconds) == (6, 1050, 1500)
    # gate:production waits: 2400, 79200, 12000, 13800 -> median (12000+13800)/2 = 12900, p95 79200.
    gate = stages["gate:production"]
    assert (gate.gate, gate.count, gate.median_seconds, gate.p95_seconds) == (True, 4, 12900, 79200)
    assert not stages["deploy:production"].gate
    assert [s.stage for s in report.stages][:3] == ["ci", "deploy:testbed", "gate:staging"]  # order run
    assert report.outcomes == {"failed": 2, "rolled_back": 1, "succeeded": 3} and report.releases == 6
    assert [(r.release_id, r.stage, r.services) for r in report.running] == [("shop-r6", "gate:staging", ["web"])]


def test_slos_by_hand() -> None:
    slos = {s.name: s for s in compute(records(), WINDOW).slos}
    # Deployments started in the window: 4 testbed + 3 staging + 4 production = 11, all decided; verified 10.
    success = slos["deployment_success_rate"]
    assert success.value == pytest.approx(10 / 11) and success.met is False and success.samples == 11
    assert success.by_environment == {"testbed": 1.0, "staging": 1.0, "production": 0.75}
    # Deploy times (moved -> verified): testbed 600, 300, 600, 600; staging 900, 600, 900; production 1200,
    # 1800, 600. Sorted, the nearest-rank p95 of 10 is the 10th: 1800 s = 30 min, not < 10 min.
    deploy = slos["p95_deploy_time"]
    assert (deploy.value, deploy.met, deploy.samples) == (1800, False, 10)
    assert deploy.by_environment == {"testbed": 600, "staging": 900, "production": 1800}
    # CI runs among the ended releases: 6; R3 failed for an infrastructure reason, R4's failure is a verdict.
    availability = slos["pipeline_availability"]
    assert availability.value == pytest.approx(5 / 6) and availability.met is False and availability.samples == 6


def test_slos_met_and_superseded_ci_is_not_a_run() -> None:
    fast = [
        ReleaseRecord(
            f"shop-f{i}", f"f{i}", "main", ["api"], "succeeded", at(2, 8), at(2, 9), at(2, 10),
            environments={"production": env(at(2, 9, 10), at(2, 9, 15))}, stages={"ci": 300},
        )
        for i in range(3)
    ] + [
        ReleaseRecord("shop-s", "s", "main", ["api"], "superseded", at(2, 8), at(2, 9), at(2, 9, 5),
                      stages={"ci": 100}, failed_stage="ci", error_type="UpstreamUnavailable"),
    ]  # fmt: skip
    slos = {s.name: s for s in compute(fast, WINDOW).slos}
    assert (slos["deployment_success_rate"].value, slos["deployment_success_rate"].met) == (1.0, True)
    assert (slos["p95_deploy_time"].value, slos["p95_deploy_time"].met) == (300, True)
    assert (slos["pipeline_availability"].samples, slos["pipeline_availability"].met) == (3, True)


def test_an_empty_window_has_no_data_not_zeroes() -> None:
    report = compute([], WINDOW)
    m = report.headline
    assert m.deployment_frequency.deployments == 0 and m.deployment_frequency.band == "low"
    assert sum(m.deployment_frequency.daily.values()) == 0 and len(m.deployment_frequency.daily) == 7
    assert (m.lead_time.median_seconds, m.lead_time.band) == (None, None)
    assert (m.change_failure_rate.rate, m.change_failure_rate.band) == (None, None)
    assert (m.time_to_restore.median_seconds, m.time_to_restore.band) == (None, None)
    assert [s.met for s in report.slos] == [None, None, None]
    assert (report.stages, report.outcomes, report.running, report.environments) == ([], {}, [], {})
    text = report_cmds.render_text(report)
    assert "no data" in text and "Running (0" in text


def test_filters() -> None:
    web = compute(records(), WINDOW, service="web", headline_environment="production")
    # Releases with web: R1, R3, R4 ended; R6 running. Only web's deployments count.
    assert web.outcomes == {"failed": 2, "succeeded": 1}
    assert web.headline.deployment_frequency.deployments == 1  # R1
    assert web.environments["testbed"].deployment_frequency.deployments == 2  # R1, R6
    assert set(web.services) == {"web"}
    assert {s.name: s.samples for s in web.slos}["pipeline_availability"] == 3  # R1, R3, R4
    staging = compute(records(), WINDOW, environment="staging")
    assert staging.headline_environment == "staging" and list(staging.environments) == ["staging"]
    assert staging.overall.deployment_frequency.deployments == 3
    # Stages of other environments are dropped, release-wide ones (ci) stay.
    assert [s.stage for s in staging.stages] == ["ci", "gate:staging", "deploy:staging"]
    assert {s.name: s.by_environment for s in staging.slos}["deployment_success_rate"] == {"staging": 1.0}


@pytest.mark.parametrize(
    ("value", "bands", "expected"),
    [
        (1.0, DEPLOYMENT_FREQUENCY_BANDS, "elite"),
        (0.99, DEPLOYMENT_FREQUENCY_BANDS, "high"),
        (1 / 30, DEPLOYMENT_FREQUENCY_BANDS, "medium"),
        (0.01, DEPLOYMENT_FREQUENCY_BANDS, "low"),
    ],
)
def test_frequency_band_bounds(value: float, bands: tuple, expected: str) -> None:
    assert band_at_least(value, bands) == expected


def test_lower_is_better_band_bounds() -> None:
    day, hour = 86400.0, 3600.0
    assert [band_below(v, LEAD_TIME_BANDS) for v in (day - 1, day, 7 * day, 30 * day)] == [
        "elite", "high", "medium", "low",
    ]  # fmt: skip
    assert [band_below(v, CHANGE_FAILURE_BANDS, inclusive=True) for v in (0.05, 0.051, 0.15, 0.16)] == [
        "elite", "high", "medium", "low",
    ]  # fmt: skip
    assert [band_below(v, TIME_TO_RESTORE_BANDS) for v in (hour - 1, hour, day, 7 * day)] == [
        "elite", "high", "medium", "low",
    ]  # fmt: skip
    assert p95([5.0]) == 5.0 and p95(list(range(1, 21))) == 19 and p95([]) is None


def test_records_from_memo_json_ignore_unknown_keys() -> None:
    data = {
        "release_id": "shop-x", "commit": "c", "branch": "main", "services": ["api"], "outcome": "succeeded",
        "committed_at": at(1, 9), "started_at": at(1, 10), "ended_at": at(1, 11), "added_later": 1,
        "environments": {"production": {"moved_at": at(1, 10), "deployed_at": at(1, 10, 5), "new_field": True}},
        "stages": {"ci": 60},
    }  # fmt: skip
    record = record_from_dict(data)
    assert record.environments["production"].deployed_at == at(1, 10, 5)
    assert compute([record], WINDOW).headline.deployment_frequency.deployments == 1


def test_text_output_names_everything() -> None:
    text = report_cmds.render_text(compute(records(), WINDOW, headline_environment="production"))
    for needle in ("Deployment frequency", "0.43/day (3 deployments)", "median 6h 10m", "25% (1 of 4)", "high",
                   "gate:production (waiting)", "pipeline_availability", "83.3%", "MISSED", "shop-r6"):  # fmt: skip
        assert needle in text, needle


@pytest.mark.parametrize("text", ["yesterday", "7x", "2025-13-01"])
def test_bad_window_arguments_are_usage_errors(text: str) -> None:
    now = datetime(2025, 5, 8, tzinfo=UTC)
    with pytest.raises(CommandError) as err:
        report_cmds.window_from_args(argparse.Namespace(since=text, until=None), now)
    assert err.value.code == USAGE and "--since" in str(err.value)
    with pytest.raises(CommandError):
        report_cmds.window_from_args(argparse.Namespace(since="1d", until="2d"), now)  # since after until
    window = report_cmds.window_from_args(argparse.Namespace(since="36h", until="2025-05-07"), now)
    assert (window.since, window.until) == (now - timedelta(hours=36), datetime(2025, 5, 7, tzinfo=UTC))


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ferry.yaml"
    config.write_text(yaml.safe_dump(sample_config(temporal_address="127.0.0.1:9")))
    assert main(["--config", str(config), "report", "--since", "soon"]) == USAGE
    assert main(["--config", str(config), "report", "--service", "ghost"]) == USAGE
    assert "ferry.yaml defines" in capsys.readouterr().err
    assert main(["--config", str(config), "report", "--since", "1d"]) == UNREACHABLE
    assert "cannot reach Temporal" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["report", "--help"])
    assert done.value.code == 0 and "lead time for changes" in capsys.readouterr().out


# --- the command over real visibility ---


@workflow.defn(name="Release", sandboxed=False)
class RecordingRelease:
    """Stands in for the Release workflow: leaves a ReleaseRecord in its memo and ends (or keeps running)."""

    @workflow.run
    async def run(self, record: dict) -> None:
        workflow.upsert_memo({RELEASE_RECORD_MEMO: record})
        if record["outcome"] == "running":
            await workflow.wait_condition(lambda: False)


@pytest_asyncio.fixture(scope="module")
async def dev_env(temporal_cli: str) -> AsyncIterator[WorkflowEnvironment]:
    """The dev server: the time-skipping test server does not implement ListWorkflowExecutions (visibility),
    which `ferry report` reads."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli, search_attributes=search.ALL, dev_server_log_level="error"
    )
    try:
        yield env
    finally:
        await env.shutdown()


def live_records(now: datetime) -> list[dict]:
    """Three production deployments in the last two days (one rolled back) and one running release."""

    def t(hours_ago: float) -> str:
        return (now - timedelta(hours=hours_ago)).isoformat()

    def rec(i: int, outcome: str, environments: dict, **kw: object) -> dict:
        base = {"release_id": f"shop-live{i}", "commit": f"{i:040d}", "branch": "main", "services": ["api"],
                "outcome": outcome, "committed_at": t(40 - i), "started_at": t(39 - i), "ended_at": t(30 - i),
                "environments": environments, "stages": {"ci": 600, "gate:production": 3600}}  # fmt: skip
        return base | kw

    prod = {"moved_at": t(31), "deployed_at": t(30.9), "digests": {"api": "sha256:a"}}
    return [
        rec(1, "succeeded", {"production": prod}),
        rec(2, "succeeded", {"production": prod}),
        rec(
            3,
            "rolled_back",
            {"production": {"moved_at": t(31), "failed_at": t(30.8), "restored_at": t(30.5), "rolled_back": True}},
        ),
        rec(4, "failed", {}, failed_stage="ci", error_type="CIFailed"),
        rec(5, "running", {}, ended_at=""),
    ]


async def test_report_over_visibility(
    dev_env: WorkflowEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = dev_env.client
    now = datetime.now(UTC)
    async with Worker(client, task_queue="report-test", workflows=[RecordingRelease]):
        for record in live_records(now):
            wf_id = f"release/shop/{record['release_id'][5:]}"
            if record["outcome"] == "running":
                await client.start_workflow(RecordingRelease.run, record, id=wf_id, task_queue="report-test")
            else:
                await client.execute_workflow(RecordingRelease.run, record, id=wf_id, task_queue="report-test")
        # A release ended from outside before it wrote a record (no worker polls its queue): counted by status.
        stuck = await client.start_workflow(
            RecordingRelease.run, {"outcome": "running"}, id="release/shop/terminated1", task_queue="nobody"
        )
        await stuck.terminate("test")
        await _visible(client, 6)

        cfg = parse_config(sample_config(temporal_address=dev_env.client.service_client.config.target_host))
        html_file = tmp_path / "report.html"
        args = build_parser().parse_args(["report", "--since", "3d", "--json", "--html", str(html_file)])
        assert await report_cmds.report(cfg, args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "ferry.report/v1" and doc["headline_environment"] == "production"
    prod = doc["headline"]
    # Verified in production: live1, live2 -> 2 in 3 days; live3 rolled back: 1 of 3 started.
    assert prod["deployment_frequency"]["deployments"] == 2
    assert prod["deployment_frequency"]["per_day"] == pytest.approx(2 / 3)
    assert prod["change_failure_rate"]["failed"] == 1 and prod["change_failure_rate"]["started"] == 3
    # Lead time: commit (40-i h ago) -> verified 30.9 h ago: 8.1 h for live1, 7.1 h for live2; median 7.6 h.
    assert prod["lead_time"]["median_seconds"] == pytest.approx(7.6 * 3600, abs=1)
    # Restore: failed 30.8 h ago, restored 30.5 h ago: 0.3 h.
    assert prod["time_to_restore"]["median_seconds"] == pytest.approx(0.3 * 3600, abs=1)
    assert doc["outcomes"] == {"failed": 1, "rolled_back": 1, "succeeded": 2, "workflow_terminated": 1}
    assert doc["unrecorded"] == ["shop-terminated1"]
    assert [r["release_id"] for r in doc["running"]] == ["shop-live5"]
    slos = {s["name"]: s for s in doc["slos"]}
    assert slos["pipeline_availability"]["value"] == 1.0  # live4's CI failure is a verdict
    assert {s["stage"]: s["count"] for s in doc["stages"]} == {"ci": 4, "gate:production": 4}

    page = html_file.read_text()
    assert page.count("<svg") >= 4
    for name in ("Deployment frequency", "Lead time for changes", "Change failure rate", "Time to restore"):
        assert name in page
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?://", page, re.IGNORECASE)
    assert "<script" not in page.lower()  # no script at all: the charts are plain SVG
    assert not re.search(r"(?:href|src)\s*=\s*[\"']https?://", page)  # nothing to fetch


async def _visible(client, count: int) -> None:
    """Visibility is eventually consistent: wait until the list shows every workflow and none is running but
    the one meant to."""
    for _ in range(100):
        listed = [wf async for wf in client.list_workflows("WorkflowType = 'Release'")]
        if len(listed) >= count and sum(wf.status == WorkflowExecutionStatus.RUNNING for wf in listed) == 1:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("workflows did not show in visibility")
