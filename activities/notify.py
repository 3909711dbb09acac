"""Outgoing notifications: a Slack-compatible webhook for gates waiting, decided, expired and failed releases.

The webhook URL is a secret (a Slack incoming-webhook URL is its own credential), so it is read from a
credential reference on the worker and appears in no payload, log line or error message. Each message
carries an `Idempotency-Key`, so a retried delivery can be recognised by the receiver.
"""

from __future__ import annotations

import httpx
from temporalio import activity

from activities.errors import BAD_REQUEST, NOT_CONFIGURED, fatal, retryable
from common.config import CredentialRef, FerryConfig
from workflows.types import Notification


def slack_message(n: Notification) -> dict:
    """Slack's incoming-webhook JSON: `text` for every client, a section block with the fields."""
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in n.fields.items()]
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": n.text}}]
    if fields:
        blocks.append({"type": "section", "fields": fields[:10]})  # Slack allows at most 10 fields
    return {
        "text": n.text,
        "blocks": blocks,
        "ferry": {"event": n.event, "release": n.release_id, "stage": n.stage, "key": n.key},
    }


class NotifyActivities:
    """Delivers notifications to the configured webhook."""

    def __init__(self, url: CredentialRef | None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), transport=transport)

    @classmethod
    def from_config(cls, cfg: FerryConfig, transport: httpx.AsyncBaseTransport | None = None) -> NotifyActivities:
        """From `notifications.webhook_url` of ferry.yaml."""
        return cls(cfg.notifications.webhook_url, transport)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    @activity.defn(name="notify.webhook")
    async def webhook(self, n: Notification) -> str:
        """POST the message; 5xx, 429 and transport errors retry, other 4xx are final. Returns the status."""
        if self.url is None:
            raise fatal("notifications.webhook_url is not configured on this worker", NOT_CONFIGURED)
        url = self.url.read()
        try:
            response = await self._client.post(url, json=slack_message(n), headers={"Idempotency-Key": n.key})
        except httpx.TransportError as e:
            # Never the URL: it is the secret.
            raise retryable(f"webhook ({self.url.describe()}): {type(e).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable(f"webhook ({self.url.describe()}): HTTP {response.status_code}")
        if not response.is_success:
            raise fatal(
                f"webhook ({self.url.describe()}) refused the message: HTTP {response.status_code}; "
                "check the URL the reference points to",
                BAD_REQUEST,
            )
        return str(response.status_code)
