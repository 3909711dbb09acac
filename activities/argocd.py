"""Argo CD activity: sync an application to an exact GitOps revision and wait until it is Synced and Healthy.

Written from specs/argocd/swagger.json (paths, ApplicationSyncRequest, Application status) and
specs/argocd/NOTES-from-source.md (status strings, refusals, bearer auth), since the swagger has no enums.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity

from activities import waiting
from activities.errors import (
    APPLICATION_DEGRADED,
    AUTH_FAILED,
    NOT_FOUND,
    SYNC_FAILED,
    fatal,
)
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import Endpoint
from workflows.types import ArgoSyncInput, ArgoSyncResult

SYNCED = "Synced"
HEALTHY = "Healthy"
DEGRADED = "Degraded"
MISSING = "Missing"
OPERATION_ACTIVE = frozenset({"Running", "Terminating"})
OPERATION_FAILED = frozenset({"Failed", "Error"})
OPERATION_SUCCEEDED = "Succeeded"
# util/argo/argo.go ErrAnotherOperationInProgress (FailedPrecondition). The spec does not say which HTTP
# status the gateway gives it (grpc-gateway maps FailedPrecondition to 400), so the message text decides.
IN_PROGRESS_TEXT = "another operation is already in progress"


def _in_progress(response: httpx.Response) -> bool:
    if response.status_code < 400 or response.status_code >= 500:
        return False
    with contextlib.suppress(ValueError):
        body = response.json()
        text = " ".join(str(body.get(k, "")) for k in ("error", "message")) if isinstance(body, dict) else ""
        return IN_PROGRESS_TEXT in text.lower()
    return IN_PROGRESS_TEXT in response.text.lower()


class ArgoCDClient:
    """Typed calls of one Argo CD API server (bearer token, per docs/developer-guide/api-docs.md)."""

    def __init__(
        self, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None = None, *, instance: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.instance = instance
        system = f"Argo CD ({instance})" if instance else "Argo CD"
        self.api = ApiClient(system, endpoint, auth="bearer", transport=transport)

    async def get_app(self, name: str, *, refresh: bool = False) -> dict[str, Any]:
        """The Application; `refresh` asks for a normal refresh (re-read git) first."""
        response = await self.api.request(
            "GET",
            f"/api/v1/applications/{quote(name, safe='')}",
            f"read application {name}",
            ok=lambda r: r.is_success or r.status_code in (403, 404),
            params={"refresh": "normal"} if refresh else None,
        )
        if response.status_code in (403, 404):
            # api-docs.md: Argo CD answers 403 rather than 404 when RBAC hides whether an app exists.
            raise fatal(
                f"{self.api.system}: application '{name}' not found or not visible to this token "
                f"(HTTP {response.status_code}); check services.*.argocd_apps in ferry.yaml and the token's "
                "RBAC (applications, get)",
                NOT_FOUND if response.status_code == 404 else AUTH_FAILED,
            )
        return response.json()

    async def sync(self, name: str, revision: str) -> bool:
        """Request a sync to `revision`; False when another operation is in progress (nothing requested)."""
        response = await self.api.request(
            "POST",
            f"/api/v1/applications/{quote(name, safe='')}/sync",
            f"sync application {name} to {revision}",
            ok=lambda r: r.is_success or _in_progress(r),
            json={"revision": revision},
        )
        return response.is_success

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


def _operation_revision(state: dict[str, Any]) -> str:
    """The revision an operation synced (syncResult) or was asked to sync (operation.sync)."""
    result = (state.get("syncResult") or {}).get("revision")
    asked = ((state.get("operation") or {}).get("sync") or {}).get("revision")
    return str(result or asked or "")


class _App:
    """The parts of an Application the sync decision reads."""

    def __init__(self, body: dict[str, Any]) -> None:
        status = body.get("status") or {}
        self.sync_status = str((status.get("sync") or {}).get("status") or "Unknown")
        self.revision = str((status.get("sync") or {}).get("revision") or "")
        self.health = str((status.get("health") or {}).get("status") or "Unknown")
        self.health_message = str((status.get("health") or {}).get("message") or "")
        state = status.get("operationState") or {}
        self.phase = str(state.get("phase") or "")
        self.operation_message = str(state.get("message") or "")
        self.operation_revision = _operation_revision(state)
        # A requested operation sits in the top-level `operation` field until the controller finishes it, so
        # while it is set, operationState may still describe the previous operation.
        self.pending = bool(body.get("operation"))
        self.images = [str(i) for i in ((status.get("summary") or {}).get("images") or [])]

    @property
    def busy(self) -> bool:
        return self.pending or self.phase in OPERATION_ACTIVE

    def synced_at(self, revision: str) -> bool:
        return self.sync_status == SYNCED and self.revision == revision

    def carries(self, images: list[str]) -> bool:
        """Synced (at whatever revision) and running every one of `images`: a later commit kept our pins."""
        return bool(images) and self.sync_status == SYNCED and set(images) <= set(self.images)

    def progress(self) -> dict[str, str]:
        return {
            "sync": self.sync_status,
            "revision": self.revision,
            "health": self.health,
            "phase": "Pending" if self.pending else self.phase,
        }


class ArgoCDActivities(SiteClients[ArgoCDClient, Endpoint]):
    """Argo CD activities of one worker; `clients` maps an instance ('onprem'/'cloud') to its client."""

    system = "argocd"
    label = "Argo CD"

    @classmethod
    def build_client(cls, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, site: str) -> ArgoCDClient:
        """Named after its site, since a release reaches this system on both sites and messages must say which."""
        return ArgoCDClient(endpoint, transport, instance=site)

    @activity.defn(name="argocd.sync")
    async def sync(self, inp: ArgoSyncInput) -> ArgoSyncResult:
        """Sync `app` to exactly `revision` and wait for Synced there and Healthy; no sync if already so.

        Health while waiting: Progressing (rollout under way), Missing (resources not created yet right after
        a sync), Suspended (e.g. a paused rollout or suspended job) and Unknown all mean "keep waiting"; the
        activity's start-to-close timeout bounds the wait, and progressive delivery (Argo Rollouts pauses) is
        driven by the rollouts activities, not here. Only Degraded after the sync at our revision fails.
        `revision` must be a full commit SHA (what gitops.move returns): Argo CD reports resolved SHAs in
        status.sync.revision, so a branch name or short SHA would never compare equal.

        An app Synced at another revision that runs every one of `inp.images` counts as ours deployed: a
        later GitOps commit (say, a person's config change that auto-sync picked up) kept our pins, and
        syncing back to `revision` would undo it.

        `wait_healthy=False` (an app whose Argo Rollouts the rollouts activities follow): done once Synced at
        the revision with the sync operation Succeeded, whatever the health except Degraded (fails as above)
        and Missing (the resources are not there yet: keep waiting).
        """
        client = self._client(inp.instance, "argocd.sync")
        first = _App(await client.get_app(inp.app, refresh=True))
        requested = False
        seen = first

        def done(app: _App) -> ArgoSyncResult:
            return ArgoSyncResult(
                app=inp.app,
                revision=app.revision,
                sync_status=app.sync_status,
                health=app.health,
                images=app.images,
            )

        async def settled() -> ArgoSyncResult | None:
            nonlocal requested, seen, first
            if first is not None:
                app, first = first, None
            else:
                app = _App(await client.get_app(inp.app))
            seen = app
            if app.busy:
                return None  # ours, or another one we must let finish before asking for ours
            if requested and app.operation_revision == inp.revision and app.phase in OPERATION_FAILED:
                raise fatal(
                    f"Argo CD ({inp.instance}): sync of {inp.app} to {inp.revision} ended {app.phase}: "
                    f"{app.operation_message or 'no message'}. Fix the manifests at that GitOps revision "
                    "(see the app's sync status in Argo CD) and retry",
                    SYNC_FAILED,
                )
            if app.synced_at(inp.revision) or app.carries(inp.images):
                if app.health == HEALTHY:
                    if app.revision != inp.revision:
                        activity.logger.info(
                            "Argo CD: %s runs %s, which keeps every image of %s: deployed",
                            inp.app,
                            app.revision,
                            inp.revision,
                        )
                    return done(app)
                if app.health == DEGRADED:
                    raise fatal(
                        f"Argo CD ({inp.instance}): {inp.app} is Degraded after syncing to {app.revision}: "
                        f"{app.health_message or 'no health message'}. Inspect the unhealthy resources in "
                        "Argo CD; fix forward or roll back the GitOps commit",
                        APPLICATION_DEGRADED,
                    )
                if not inp.wait_healthy and app.health != MISSING and app.phase in (OPERATION_SUCCEEDED, ""):
                    return done(app)  # "" : synced there without any recorded operation
                return None  # Progressing / Missing / Suspended / Unknown: see the docstring
            if requested and app.phase == OPERATION_SUCCEEDED and app.operation_revision == inp.revision:
                return None  # our sync finished; the comparison has not caught up yet
            # Not at our revision, nothing running: ask (again, if another operation took our turn).
            requested = await client.sync(inp.app, inp.revision)
            if requested:
                activity.logger.info("Argo CD: requested sync of %s to %s", inp.app, inp.revision)
            return None

        return await waiting.poll(settled, interval=self.poll_seconds, progress=lambda: seen.progress())
