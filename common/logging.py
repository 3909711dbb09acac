"""structlog set-up shared by workers and the CLI: one JSON line per event, with Temporal context.

As in PostHog's temporal logger, a processor merges the current workflow/activity context (workflow id,
run id, activity type, attempt) into every line, so an SRE can grep one release across both workers.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog
from temporalio import activity


def _temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    try:
        info = activity.info()
    except RuntimeError:
        return event
    event.setdefault("workflow_id", info.workflow_id)
    event.setdefault("run_id", info.workflow_run_id)
    event.setdefault("activity", info.activity_type)
    event.setdefault("attempt", info.attempt)
    return event


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    """JSON lines on stderr (FERRY_LOG_FORMAT=console for humans); level from FERRY_LOG_LEVEL."""
    level = (level or os.environ.get("FERRY_LOG_LEVEL", "INFO")).upper()
    if json is None:
        json = os.environ.get("FERRY_LOG_FORMAT", "json") == "json"
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    # httpx logs every request's full URL at INFO; some URLs are secrets (a Slack webhook URL is its token).
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _temporal_context,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
