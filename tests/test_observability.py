"""Observability: JSON log lines with release context, Prometheus release metrics, replay safety, tracing.

A tiny probe workflow uses workflows/telemetry.py the way the Release workflow does, on a worker whose
Runtime serves Prometheus (common/observability.runtime_for); the test scrapes that endpoint, replays the
recorded history, and reads the captured log lines.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import httpx
    import pytest
    import pytest_asyncio
    import structlog
    from sample import sample_config
    from temporalio.client import Client
    from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
    from temporalio.worker import Replayer, Worker

    from common.config import ConfigError, FerryConfig, parse_config
    from common.logging import REDACTED, configure_logging, redact_secrets
    from common.observability import ActivityLogContext, activity_log_context, interceptors_for, runtime_for
    from sandbox.config import default_ports, sandbox_metrics
    from workflows import telemetry
    from workflows.types import Artifact, E2EInput

TASK_QUEUE = "observability-probe"


@dataclass
class ProbeInput:
    """The probe's input: names the activity input's service and environment, and a secret to keep out."""

    service: str
    environment: str
    token: str


@activity.defn(name="probe.deploy")
async def probe_deploy(inp: ProbeInput) -> str:
    """Logs like a Ferry activity; fails its first attempt so the retry's `attempt` shows in the lines."""
    structlog.get_logger("probe").info("deploying", password="hunter2", headers={"Authorization": "Bearer abc"})
    if activity.info().attempt == 1:
        raise ApplicationError("stand-in busy, retry", type="ProbeBusy")
    return f"{inp.service} on {inp.environment}"


@workflow.defn(name="TelemetryProbe")
class TelemetryProbe:
    """Records every Ferry metric once and writes two log lines, as the Release workflow will."""

    @workflow.run
    async def run(self, inp: ProbeInput) -> str:
        telemetry.log("probe started", stage="deploy:staging", environment=inp.environment, api_token=inp.token)
        started = workflow.now()
        result = await workflow.execute_activity(
            probe_deploy,
            inp,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3),
        )
        await workflow.sleep(timedelta(seconds=30))
        telemetry.stage_finished("deploy:staging", (workflow.now() - started).total_seconds(), inp.environment)
        telemetry.gate_waited("production", 7200.0)
        telemetry.release_ended("succeeded", "production")
        telemetry.rolled_back("staging")
        telemetry.log("probe ended", outcome="succeeded")
        return result


# --- fixtures ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_server() -> str:
    candidate = Path(sys.executable).parent / "temporal-test-server"
    found = str(candidate) if candidate.exists() else shutil.which("temporal-test-server")
    if not found:
        pytest.fail("temporal-test-server not found: run `make setup`")
    return found


def _config(**observability: Any) -> FerryConfig:
    data = sample_config()
    data["observability"] = observability
    return parse_config(data)


@pytest.fixture(scope="module")
def logs() -> Iterator[io.StringIO]:
    """Every structlog and stdlib log line of this module, as ferry's workers write them (JSON)."""
    saved = structlog.get_config()
    root_level = logging.getLogger().level
    buffer = io.StringIO()
    configure_logging("DEBUG", json=True, stream=buffer)
    yield buffer
    structlog.configure(**saved)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "ferry"]:
        root.removeHandler(handler)
    root.setLevel(root_level)


@pytest.fixture(scope="module")
def metrics_cfg() -> FerryConfig:
    """ferry.yaml with the onprem worker's metrics on a free port."""
    return _config(metrics={"onprem": f"127.0.0.1:{_free_port()}"})


@pytest_asyncio.fixture(scope="module")
async def env(metrics_cfg: FerryConfig) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server whose client (and so its workers) uses the Prometheus runtime of the onprem site."""
    runtime = runtime_for(metrics_cfg, "onprem")
    assert runtime is not None
    environment = await WorkflowEnvironment.start_time_skipping(
        runtime=runtime, test_server_existing_path=_test_server()
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest_asyncio.fixture(scope="module")
async def probe_run(env: WorkflowEnvironment, logs: io.StringIO) -> dict[str, Any]:
    """One probe release, run to the end on a worker with the activity log interceptor."""
    workflow_id = f"release/shop/{uuid.uuid4().hex[:12]}"
    async with Worker(
        env.client,
        task_queue=TASK_QUEUE,
        workflows=[TelemetryProbe],
        activities=[probe_deploy],
        interceptors=[ActivityLogContext()],
    ):
        handle = await env.client.start_workflow(
            TelemetryProbe.run, ProbeInput("api", "staging", "s3cr3t-value"), id=workflow_id, task_queue=TASK_QUEUE
        )
        result = await handle.result()
    return {"workflow_id": workflow_id, "run_id": handle.result_run_id, "result": result, "handle": handle}


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines written so far (every line must be JSON)."""
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def scrape(cfg: FerryConfig) -> dict[str, float]:
    """`name{labels}` -> value of every ferry_* sample on the onprem worker's /metrics."""
    text = httpx.get(f"http://{cfg.observability.metrics['onprem']}/metrics", timeout=5).text
    assert "temporal_" in text, "the SDK's own metrics are served, prefixed temporal_"
    return {
        key: float(value)
        for key, value in (line.rsplit(" ", 1) for line in text.splitlines())
        if key.startswith("ferry_")
    }


def sample(samples: dict[str, float], name: str, **labels: str) -> list[float]:
    """Values of `name` whose labels include `labels`."""
    found = []
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric == name and all(have.get(k) == v for k, v in labels.items()):
            found.append(value)
    return found


# --- metrics ---


async def test_release_metrics_are_served_with_their_labels(
    probe_run: dict[str, Any], metrics_cfg: FerryConfig
) -> None:
    assert probe_run["result"] == "api on staging"
    samples = scrape(metrics_cfg)
    common = {"workflow_type": "TelemetryProbe", "task_queue": TASK_QUEUE, "site": "onprem"}

    stage = {"stage": "deploy:staging", "environment": "staging", **common}
    assert sample(samples, "ferry_stage_duration_seconds_count", **stage) == [1.0]
    [seconds] = sample(samples, "ferry_stage_duration_seconds_sum", **stage)
    assert 30 <= seconds < 60  # the 30 s timer plus the activity and its retry, in skipped time
    assert sample(samples, "ferry_stage_duration_seconds_bucket", le="15", **stage) == [0.0]
    assert sample(samples, "ferry_stage_duration_seconds_bucket", le="60", **stage) == [1.0]

    gate = {"environment": "production", **common}
    assert sample(samples, "ferry_gate_wait_seconds_count", **gate) == [1.0]
    assert sample(samples, "ferry_gate_wait_seconds_sum", **gate) == [7200.0]
    assert sample(samples, "ferry_gate_wait_seconds_bucket", le="3600", **gate) == [0.0]
    assert sample(samples, "ferry_gate_wait_seconds_bucket", le="7200", **gate) == [1.0]

    assert sample(samples, "ferry_releases_total", outcome="succeeded", environment="production", **common) == [1.0]
    assert sample(samples, "ferry_rollbacks_total", environment="staging", **common) == [1.0]


async def test_replay_writes_no_log_line_and_counts_nothing_again(
    probe_run: dict[str, Any], env: WorkflowEnvironment, metrics_cfg: FerryConfig, logs: io.StringIO
) -> None:
    workflow_lines = [line for line in lines(logs) if line.get("workflow") == "TelemetryProbe"]
    assert [line["event"] for line in workflow_lines] == ["probe started", "probe ended"]
    before_lines, before_metrics = len(lines(logs)), scrape(metrics_cfg)

    history = await probe_run["handle"].fetch_history()
    replayer = Replayer(workflows=[TelemetryProbe], runtime=env.client.service_client.config.runtime)
    replayed = await replayer.replay_workflow(history)

    assert replayed.replay_failure is None  # the whole run, telemetry calls included, executed again
    written = lines(logs)[before_lines:]  # the SDK's own DEBUG line about evicting the replayed run may be there
    assert [line for line in written if "workflow" in line or line.get("workflow_id") == probe_run["workflow_id"]] == []
    assert scrape(metrics_cfg) == before_metrics


# --- logs ---


async def test_workflow_lines_carry_ids_and_release(probe_run: dict[str, Any], logs: io.StringIO) -> None:
    [started] = [line for line in lines(logs) if line["event"] == "probe started"]
    assert started["workflow_id"] == probe_run["workflow_id"]
    assert started["run_id"] == probe_run["run_id"]
    assert started["release"] == "shop-" + probe_run["workflow_id"].rsplit("/", 1)[1]
    assert (started["stage"], started["environment"], started["level"]) == ("deploy:staging", "staging", "info")
    assert started["api_token"] == REDACTED
    assert "s3cr3t-value" not in logs.getvalue()


async def test_activity_lines_carry_context_and_hide_secrets(probe_run: dict[str, Any], logs: io.StringIO) -> None:
    mine = [line for line in lines(logs) if line.get("activity") == "probe.deploy"]
    deploying = [line for line in mine if line["event"] == "deploying"]
    assert [line["attempt"] for line in deploying] == [1, 2]
    release = "shop-" + probe_run["workflow_id"].rsplit("/", 1)[1]
    for line in deploying:
        assert line["workflow_id"] == probe_run["workflow_id"]
        assert line["run_id"] == probe_run["run_id"]
        assert (line["release"], line["service"], line["environment"]) == (release, "api", "staging")
        assert line["stage"] == "probe.deploy"
        assert line["password"] == REDACTED
        assert line["headers"] == {"Authorization": REDACTED}
    assert "hunter2" not in logs.getvalue() and "Bearer abc" not in logs.getvalue()

    failed = [line for line in mine if line["event"] == "activity failed"]
    assert [(f["attempt"], f["error_type"], f["retryable"], f["level"]) for f in failed] == [
        (1, "ProbeBusy", True, "warning")
    ]
    finished = [line for line in mine if line["event"] == "activity finished"]
    assert [(f["attempt"], f["outcome"]) for f in finished] == [(2, "ok")]


def test_context_prefers_the_inputs_release_and_reads_nested_fields() -> None:
    info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id="provision/tf-cloud",
        workflow_run_id="r1",
        activity_type="buildkite.e2e",
        attempt=3,
    )
    inp = E2EInput(release_id="shop-0123456789ab", commit="c" * 40, branch="main", environment="testbed")
    fields = activity_log_context(info, [inp])
    assert (fields["release"], fields["environment"]) == ("shop-0123456789ab", "testbed")
    assert (fields["workflow_id"], fields["run_id"], fields["activity"], fields["attempt"]) == (
        "provision/tf-cloud",
        "r1",
        "buildkite.e2e",
        3,
    )

    @dataclass
    class Nested:
        artifact: Artifact
        environment: str = ""

    art = Artifact(service="web", repository="shop/web", digest="sha256:" + "1" * 64)
    fields = activity_log_context(info, [Nested(artifact=art)])
    assert fields["service"] == "web" and "environment" not in fields and "release" not in fields
    assert telemetry.release_from_workflow_id("ci/shop/0123456789ab") == "shop-0123456789ab"
    assert telemetry.release_from_workflow_id("branch/shop/main") == ""


def test_redaction_covers_secret_like_keys_at_any_depth() -> None:
    event = {
        "event": "calling",
        "Authorization": "Bearer x",
        "harbor_password": "p",
        "api_key": "k",
        "client_secret": "s",
        "nested": {"refresh_token": "t", "ok": "visible", "list": [{"X-Api-Key": "k2"}]},
        "service": "api",
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["service"] == "api" and out["nested"]["ok"] == "visible" and out["event"] == "calling"
    assert [out[k] for k in ("Authorization", "harbor_password", "api_key", "client_secret")] == [REDACTED] * 4
    assert out["nested"]["refresh_token"] == REDACTED and out["nested"]["list"] == [{"X-Api-Key": REDACTED}]


def test_httpx_stays_at_warning(logs: io.StringIO) -> None:
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING  # request URLs can be secrets
    logging.getLogger("temporalio.probe").warning("sdk says %s", "hello")
    [line] = [line for line in lines(logs) if line["event"] == "sdk says hello"]
    assert line["logger"] == "temporalio.probe" and line["level"] == "warning"  # stdlib records are JSON too


# --- tracing ---


async def test_tracing_spans_cover_workflow_and_activity(env: WorkflowEnvironment) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    cfg = _config(tracing={"enabled": True, "service_name": "ferry-test"})
    # The environment's own interceptor stays: it lets the test server skip the probe's timer while we wait.
    config = env.client.config()
    config["interceptors"] = [*config["interceptors"], *interceptors_for(cfg, "onprem", span_exporter=exporter)]
    client = Client(**config)
    async with Worker(client, task_queue=TASK_QUEUE + "-traced", workflows=[TelemetryProbe], activities=[probe_deploy]):
        handle = await client.start_workflow(
            TelemetryProbe.run,
            ProbeInput("web", "testbed", "t"),
            id=f"release/shop/{uuid.uuid4().hex[:12]}",
            task_queue=TASK_QUEUE + "-traced",
        )
        assert await handle.result() == "web on testbed"
    spans = exporter.get_finished_spans()
    names = {s.name for s in spans}
    expected = {
        "StartWorkflow:TelemetryProbe",
        "RunWorkflow:TelemetryProbe",
        "StartActivity:probe.deploy",
        "RunActivity:probe.deploy",
    }
    assert expected <= names
    assert {s.resource.attributes["service.name"] for s in spans} == {"ferry-test"}
    assert len({s.context.trace_id for s in spans}) == 1  # one trace from the start to the activity


def test_tracing_off_means_no_interceptor_and_missing_otlp_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert interceptors_for(_config()) == []
    cfg = _config(tracing={"enabled": True, "otlp_endpoint": "http://collector:4317"})
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp"):
        interceptors_for(cfg)


# --- configuration ---


def test_metrics_off_by_default_and_a_busy_port_is_a_config_error() -> None:
    assert runtime_for(_config(), "onprem") is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            ConfigError, match=f"observability.metrics.cloud: cannot serve Prometheus on 127.0.0.1:{port}"
        ):
            runtime_for(_config(metrics={"cloud": f"127.0.0.1:{port}"}), "cloud")


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [({"mars": "127.0.0.1:9464"}, "unknown site 'mars'"), ({"onprem": "prometheus:9464"}, "must be ip:port")],
)
def test_bad_metrics_addresses_are_named(metrics: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as err:
        _config(metrics=metrics)
    assert "observability.metrics" in str(err.value)


def test_sandbox_serves_metrics_on_its_own_ports() -> None:
    for base in (7233, 12000):
        ports = default_ports(base)
        metrics = sandbox_metrics(f"127.0.0.1:{base}")
        assert metrics == {site: f"127.0.0.1:{ports[f'metrics-{site}']}" for site in ("onprem", "cloud")}
        assert len(set(ports.values())) == len(ports)  # no port is handed out twice
    assert parse_config(sample_config()).observability.metrics == sandbox_metrics("localhost:7233")
