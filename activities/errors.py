"""Error classification shared by every activity.

Transport errors, 5xx and 429 are retryable (Retry-After respected); auth failures, 4xx validation errors,
failed gates and policy violations are non-retryable with a stable `type` and a message that tells the
operator what to do. Messages never contain secrets: they name the system, the request and the status, and
the start of the response body only with its secret-looking values redacted (common/redact.py).
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from temporalio.exceptions import ApplicationError

from common.redact import redact_text
from workflows.errors import bounded

# Stable error types: what an SRE filters on in the Temporal UI and what the workflow branches on.
AUTH_FAILED = "AuthFailed"
BAD_REQUEST = "BadRequest"
NOT_FOUND = "NotFound"
UPSTREAM_UNAVAILABLE = "UpstreamUnavailable"
QUALITY_GATE_FAILED = "QualityGateFailed"
VULNERABILITY_POLICY = "VulnerabilityPolicyViolation"
PIPELINE_RUN_FAILED = "PipelineRunFailed"
E2E_FAILED = "E2EFailed"
APPLICATION_DEGRADED = "ApplicationDegraded"
SYNC_FAILED = "SyncFailed"
REPLICATION_FAILED = "ReplicationFailed"
ARTIFACT_MISSING = "ArtifactMissing"
BROKEN_KUSTOMIZATION = "BrokenKustomization"
BAD_COMMIT = "BadCommit"
NOT_CONFIGURED = "NotConfigured"
NON_MONOTONIC_MOVE = "NonMonotonicMove"  # an environment would go back to an older app commit
ROLLOUT_REPLACED = "RolloutReplaced"  # the Rollout runs another change's images: nothing of ours to follow


def fatal(message: str, type: str, **details: object) -> ApplicationError:
    """A non-retryable failure: retrying cannot help, the operator must act."""
    return ApplicationError(bounded(message), details or None, type=type, non_retryable=True)


def retryable(message: str, type: str = UPSTREAM_UNAVAILABLE, delay: float | None = None) -> ApplicationError:
    """A transient failure: Temporal retries it (after `delay` seconds when the server asked for one)."""
    return ApplicationError(
        bounded(message),
        type=type,
        non_retryable=False,
        next_retry_delay=timedelta(seconds=delay) if delay else None,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def classify_response(system: str, response: httpx.Response, what: str) -> ApplicationError:
    """Turn a failed HTTP response into the right ApplicationError; `what` says what was being done."""
    status = response.status_code
    where = f"{system}: {what}: {response.request.method} {response.request.url.path} -> HTTP {status}"
    body = _short_body(response)
    if status == 429 or status >= 500:
        return retryable(f"{where}{body}", UPSTREAM_UNAVAILABLE, _retry_after(response))
    if status in (401, 403):
        return fatal(
            f"{where}: the credential was refused; check the credential reference for {system} in ferry.yaml "
            "and its permissions",
            AUTH_FAILED,
        )
    if status == 404:
        return fatal(f"{where}{body}", NOT_FOUND)
    return fatal(f"{where}{body}", BAD_REQUEST)


def classify_transport(system: str, error: httpx.TransportError, what: str) -> ApplicationError:
    """A connection failure or timeout is always retryable."""
    return retryable(f"{system}: {what}: {type(error).__name__} reaching {error.request.url.host}")


# How much of a body is redacted before the message keeps its first SHORT_BODY characters: redacting first
# means a cut can never split a secret so that the rule no longer recognises it.
_REDACT_WINDOW = 4096
SHORT_BODY = 300


def _short_body(response: httpx.Response) -> str:
    """The start of an upstream's response body for a failure message, with secret-looking values redacted.

    Failure messages are stored in Temporal's history and shown in the UI without a codec, so an upstream that
    echoes the request (its token, an Authorization header, a URL with user:password@) must not leak through.
    """
    try:
        text = response.text.strip()
    except Exception:  # noqa: BLE001 - undecodable bodies are just left out
        return ""
    return f": {redact_text(text[:_REDACT_WINDOW])[:SHORT_BODY]}" if text else ""
