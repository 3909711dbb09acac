"""structlog set-up shared by workers and the CLI: one JSON line per event, with Temporal context.

As in PostHog's temporal logger, context is merged into every line so an SRE can grep one release across
both workers: the activity interceptor (common/observability.py) binds workflow_id, run_id, activity,
attempt, release, service and environment as structlog contextvars for the length of each activity, and a
processor adds the activity's ids even where nothing was bound. Standard-library records (the Temporal SDK's
own warnings, `activity.logger`) go through the same processors, so every line on stderr is JSON.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from temporalio import activity

from common.redact import REDACTED, is_secret_key


def _temporal_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    try:
        info = activity.info()
    except RuntimeError:
        return event
    event.setdefault("workflow_id", info.workflow_id)
    event.setdefault("run_id", info.workflow_run_id)
    event.setdefault("activity", info.activity_type)
    event.setdefault("attempt", info.attempt)
    return event


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of every key named like a secret (also inside dicts), so a careless field never leaks."""
    for key in list(event):
        if key != "event" and is_secret_key(key):
            event[key] = REDACTED
        elif isinstance(event[key], dict | list | tuple):
            event[key] = _redact(event[key])
    return event


class _StderrLoggerFactory:
    """PrintLogger on whatever sys.stderr is *now*: survives test capture swapping the stream."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __call__(self, *_: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=self._stream or sys.stderr)


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler that writes to the current sys.stderr (or a fixed stream), looked up at each record."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def configure_logging(
    level: str | None = None, json: bool | None = None, *, stream: TextIO | None = None, default_level: str = "INFO"
) -> None:
    """JSON lines on stderr; FERRY_LOG_LEVEL / FERRY_LOG_FORMAT (json|console) override the arguments.

    Safe to call again (the worker does once ferry.yaml is read): it replaces only its own handler.
    """
    level = (os.environ.get("FERRY_LOG_LEVEL") or level or default_level).upper()
    fmt = os.environ.get("FERRY_LOG_FORMAT")
    if fmt is not None:
        json = fmt != "console"
    elif json is None:
        json = True
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        level, numeric = "INFO", logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _temporal_context,
        redact_secrets,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_StderrLoggerFactory(stream),
        # Not cached: a reconfiguration (config read after start-up, tests) must reach loggers already used.
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler(stream)
    handler.set_name("ferry")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ferry"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # httpx logs every request's full URL at INFO; some URLs are secrets (a Slack webhook URL is its token).
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric))
