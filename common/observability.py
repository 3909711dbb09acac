"""Where a worker's logs, metrics and traces go: built from ferry.yaml `observability:` in one place.

- `runtime_for(cfg, site)`: a Temporal SDK Runtime serving Prometheus on `observability.metrics.<site>`. The
  SDK's own metrics (prefixed `temporal_`) come with it, and so do the `ferry_*` release metrics that
  workflows record through `workflows/telemetry.py`.
- `interceptors_for(cfg)`: client interceptors; with tracing enabled, the SDK's OpenTelemetry
  `TracingInterceptor` (a client interceptor is also applied by every worker built on that client).
- `ActivityLogContext`: a worker interceptor binding structlog context for the length of each activity,
  so every line an activity writes names its workflow, release, service and environment.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput
from temporalio.worker import Interceptor as WorkerInterceptor

from common.config import ConfigError, FerryConfig, TracingSettings
from common.logging import configure_logging
from workflows.telemetry import GATE_BUCKETS, GATE_WAIT, STAGE_BUCKETS, STAGE_DURATION, release_from_workflow_id

log = structlog.get_logger("ferry.activity")

OTEL_EXTRA = "pip install 'ferry[otel]'"
_tracer_providers: list[Any] = []  # flushed by shutdown(): a worker exits with os._exit, past any atexit hook


def configure_logging_from(cfg: FerryConfig, *, default_level: str | None = None) -> None:
    """Log as `observability.logging` says (FERRY_LOG_LEVEL / FERRY_LOG_FORMAT still win on the machine)."""
    settings = cfg.observability.logging
    configure_logging(default_level or settings.level, settings.format == "json")


# --- metrics ---


def runtime_for(cfg: FerryConfig, site: str) -> Runtime | None:
    """A Runtime serving Prometheus /metrics for `site`'s worker, or None (the SDK default) when metrics are off.

    Create it once per process, before connecting: the Runtime is the client's, and the worker's through it.
    """
    address = cfg.observability.metrics.get(site)
    if not address:
        return None
    # The SDK's exporter takes a socket address, not a host name.
    bind = "127.0.0.1" + address[len("localhost") :] if address.startswith("localhost:") else address
    prometheus = PrometheusConfig(
        bind_address=bind,
        # Custom histograms default to millisecond-sized buckets; stages and gates are seconds to days.
        histogram_bucket_overrides={STAGE_DURATION: STAGE_BUCKETS, GATE_WAIT: GATE_BUCKETS},
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=prometheus, global_tags={"site": site}))
    except ValueError as e:  # the exporter binds at once: a port in use fails here, not at the first scrape
        raise ConfigError(f"observability.metrics.{site}: cannot serve Prometheus on {address}: {e}") from None


# --- tracing ---


def interceptors_for(
    cfg: FerryConfig, site: str | None = None, *, span_exporter: Any | None = None
) -> list[ClientInterceptor]:
    """Client interceptors for `cfg`: the OpenTelemetry TracingInterceptor when tracing is enabled, else none.

    `span_exporter` replaces the OTLP exporter (tests pass the SDK's InMemorySpanExporter).
    """
    tracing = cfg.observability.tracing
    if not tracing.enabled:
        return []
    return [_tracing_interceptor(tracing, site, span_exporter)]


def _tracing_interceptor(settings: TracingSettings, site: str | None, span_exporter: Any | None) -> ClientInterceptor:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError:
        raise ConfigError(
            f"observability.tracing.enabled needs OpenTelemetry on this machine: {OTEL_EXTRA} "
            "(opentelemetry-api, opentelemetry-sdk, opentelemetry-exporter-otlp)"
        ) from None
    if span_exporter is None:
        processor: Any = BatchSpanProcessor(_otlp_exporter(settings.otlp_endpoint))
    else:
        processor = SimpleSpanProcessor(span_exporter)  # exports at span end: what a test reads at once
    attributes = {"service.name": settings.service_name} | ({"ferry.site": site} if site else {})
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(processor)
    _tracer_providers.append(provider)
    return TracingInterceptor(provider.get_tracer("ferry"))


def _otlp_exporter(endpoint: str | None) -> Any:
    """OTLP over gRPC, or over HTTP when OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL says http/protobuf."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    try:
        if protocol and protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[no-redef]
    except ImportError:
        raise ConfigError(
            "observability.tracing exports over OTLP, which needs the package opentelemetry-exporter-otlp on "
            f"this machine: {OTEL_EXTRA} (or pip install opentelemetry-exporter-otlp)"
        ) from None
    # Without an endpoint the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, as every OTel SDK does.
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


def shutdown() -> None:
    """Flush and stop the tracer providers this process created (call before the worker or CLI exits)."""
    while _tracer_providers:
        _tracer_providers.pop().shutdown()


# --- activity log context ---


def activity_log_context(info: activity.Info, args: Sequence[Any]) -> dict[str, Any]:
    """The structlog fields of one activity attempt: ids from `info`, release/service/environment from its input.

    release: the input's `release_id`, else derived from the workflow id (`release/<repo>/<sha12>`,
    `ci/<repo>/<sha12>`); service and environment: input fields of those names, or of a dataclass field
    (`artifact.service`); stage: the activity type.
    """
    fields: dict[str, Any] = {
        "workflow_id": info.workflow_id,
        "run_id": info.workflow_run_id,
        "activity": info.activity_type,
        "attempt": info.attempt,
        "stage": info.activity_type,
    }
    inp = args[0] if args else None
    release = _field(inp, "release_id") or release_from_workflow_id(info.workflow_id or "")
    if release:
        fields["release"] = release
    for name in ("service", "environment"):
        value = _field(inp, name)
        if value:
            fields[name] = value
    return fields


def _field(inp: Any, name: str) -> str:
    """A non-empty string field of the input, or of one of its dataclass fields; '' when there is none."""
    value = _get(inp, name)
    if isinstance(value, str) and value:
        return value
    if dataclasses.is_dataclass(inp) and not isinstance(inp, type):
        for f in dataclasses.fields(inp):
            nested = getattr(inp, f.name)
            if dataclasses.is_dataclass(nested) and not isinstance(nested, type):
                value = getattr(nested, name, None)
                if isinstance(value, str) and value:
                    return value
    return ""


def _get(inp: Any, name: str) -> Any:
    if isinstance(inp, Mapping):
        return inp.get(name)
    return getattr(inp, name, None)


class ActivityLogContext(WorkerInterceptor):
    """Worker interceptor: every log line of an activity carries its workflow, release, service, environment."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLogInbound(next)


class _ActivityLogInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        fields = activity_log_context(activity.info(), input.args)
        with structlog.contextvars.bound_contextvars(**fields):
            log.debug("activity started")
            started = time.monotonic()
            try:
                result = await super().execute_activity(input)
            except ApplicationError as e:
                # Ferry's classified errors carry operator-safe messages (activities/errors.py).
                report = log.error if e.non_retryable else log.warning
                report(
                    "activity failed",
                    outcome="failed",
                    error_type=e.type or "",
                    error=e.message,
                    retryable=not e.non_retryable,
                    duration_seconds=_since(started),
                )
                raise
            except Exception as e:
                # An unclassified error's text may hold a URL with a token in it: its type only.
                log.warning(
                    "activity failed",
                    outcome="failed",
                    error_type=type(e).__name__,
                    retryable=True,
                    duration_seconds=_since(started),
                )
                raise
            except BaseException:
                log.info("activity cancelled", outcome="cancelled", duration_seconds=_since(started))
                raise
            log.info("activity finished", outcome="ok", duration_seconds=_since(started))
            return result


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
