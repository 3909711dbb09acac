"""Argo Rollouts activities: follow a Rollout to its next decision point, promote it, abort it.

Written from specs/argo-rollouts/NOTES-from-source.md: phases (Healthy, Progressing, Paused, Degraded),
pause reasons, "rely on status.phase only when status.observedGeneration equals metadata.generation", and the
JSON merge patches `kubectl argo rollouts promote|abort` send (status patches to the `status` subresource
first, to the main resource on NotFound). The Kubernetes API is reached with a bearer token
(`sites.<site>.kubernetes`); the Rollout is `argoproj.io/v1alpha1` `rollouts` in the environment's namespace.

Not in the notes, from the upstream controller and Argo CD's Rollout health check: a Rollout with
`spec.workloadRef` takes its pod template from the referenced Deployment, whose generation (not the
Rollout's) changes with the image; the controller has seen it once `status.workloadObservedGeneration`
equals the Deployment's `metadata.generation`. Without traffic routing the canary weight is the last
`setWeight` up to the current step (100 once promoted), as the controller computes it.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity

from activities import waiting
from activities.errors import BAD_REQUEST, NOT_FOUND, ROLLOUT_REPLACED, fatal
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import Endpoint
from workflows.types import RolloutPromoteInput, RolloutRef, RolloutState, RolloutWaitInput

GROUP_VERSION = "argoproj.io/v1alpha1"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
HEALTHY, PAUSED, DEGRADED, PROGRESSING = "Healthy", "Paused", "Degraded", "Progressing"


class RolloutsClient:
    """Typed calls of one cluster's Kubernetes API for Argo Rollouts (and the Deployments they reference)."""

    def __init__(
        self, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None = None, *, instance: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.instance = instance
        system = f"Kubernetes ({instance})" if instance else "Kubernetes"
        self.api = ApiClient(system, endpoint, auth="bearer", transport=transport)

    @staticmethod
    def _path(namespace: str, name: str) -> str:
        return f"/apis/{GROUP_VERSION}/namespaces/{quote(namespace, safe='')}/rollouts/{quote(name, safe='')}"

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        """The Rollout; a missing one is a non-retryable NOT_FOUND naming the config keys to check."""
        response = await self.api.request(
            "GET",
            self._path(namespace, name),
            f"read rollout {namespace}/{name}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        if response.status_code == 404:
            raise fatal(
                f"{self.api.system}: rollout {namespace}/{name} not found; check services.*.rollouts and "
                "environments.*.rollout.namespace in ferry.yaml, and that the GitOps environment defines it",
                NOT_FOUND,
            )
        return response.json()

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment a Rollout's workloadRef names, or None if it is not there (yet)."""
        response = await self.api.request(
            "GET",
            f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/deployments/{quote(name, safe='')}",
            f"read deployment {namespace}/{name}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        return response.json() if response.status_code != 404 else None

    async def patch(self, namespace: str, name: str, patch: dict[str, Any], what: str) -> dict[str, Any]:
        """A JSON merge patch of the Rollout object (spec, metadata)."""
        response = await self.api.request(
            "PATCH", self._path(namespace, name), what, content=json.dumps(patch), headers=MERGE_PATCH
        )
        return response.json()

    async def patch_status(
        self, namespace: str, name: str, status_patch: dict[str, Any], what: str, *, spec_patch: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A merge patch of the `status` subresource; on 404 (a controller without the subresource, pre-v0.10)
        one unified spec+status patch of the main resource, as the kubectl plugin does."""
        response = await self.api.request(
            "PATCH",
            self._path(namespace, name) + "/status",
            what,
            ok=lambda r: r.is_success or r.status_code == 404,
            content=json.dumps(status_patch),
            headers=MERGE_PATCH,
        )
        if response.status_code != 404:
            return response.json()
        unified = {**(spec_patch or {}), **status_patch}
        return await self.patch(namespace, name, unified, what)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


def _images(template: dict[str, Any] | None) -> list[str]:
    spec = (template or {}).get("spec") or {}
    return [str(c.get("image", "")) for c in (spec.get("containers") or []) if isinstance(c, dict)]


def step_kind(step: dict[str, Any]) -> str:
    """A canary step in a few words: "setWeight 20", "pause", "pause 10s", "analysis"..."""
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}"
    if "pause" in step:
        duration = (step.get("pause") or {}).get("duration")
        if duration is None:
            return "pause"
        return f"pause {duration}s" if isinstance(duration, int | float) else f"pause {duration}"
    return next(iter(step), "")


class _Rollout:
    """The parts of a Rollout (and its workload) that Ferry's decisions read."""

    def __init__(self, obj: dict[str, Any], workload: dict[str, Any] | None) -> None:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        self.name = str(meta.get("name") or "")
        self.generation = meta.get("generation")
        self.spec_paused = bool(spec.get("paused"))
        strategy = spec.get("strategy") or {}
        self.strategy = "blueGreen" if strategy.get("blueGreen") is not None else "canary"
        self.steps: list[dict[str, Any]] = list((strategy.get("canary") or {}).get("steps") or [])
        self.workload_ref = spec.get("workloadRef")
        self.workload = workload
        template = (workload or {}).get("spec", {}).get("template") if self.workload_ref else spec.get("template")
        self.images = _images(template)
        self.status = status
        self.phase = str(status.get("phase") or "")
        self.message = str(status.get("message") or "")
        self.pause_conditions = list(status.get("pauseConditions") or [])
        self.aborted = bool(status.get("abort"))
        self.current = str(status.get("currentPodHash") or "")
        self.stable = str(status.get("stableRS") or "")
        index = status.get("currentStepIndex")
        self.index = int(index) if isinstance(index, int) else 0

    @property
    def observed(self) -> bool:
        """The status describes this spec (and, with a workloadRef, this Deployment generation)."""
        if not self.status or str(self.status.get("observedGeneration", "")) != str(self.generation):
            return False
        if self.workload_ref is None:
            return True
        if self.workload is None:
            return False
        generation = (self.workload.get("metadata") or {}).get("generation")
        return str(self.status.get("workloadObservedGeneration", "")) == str(generation)

    def runs(self, images: list[str]) -> bool:
        """The pod template runs every wanted image."""
        return all(image in self.images for image in images)

    @property
    def promoted(self) -> bool:
        """The current pod template is the stable one."""
        return bool(self.current) and self.current == self.stable

    @property
    def paused(self) -> bool:
        """Paused and waiting for a promotion: pause conditions set (or paused by spec). A status whose pause
        conditions a promote just cleared may still say Paused until the controller reconciles: not paused."""
        return self.phase == PAUSED and (bool(self.pause_conditions) or self.spec_paused)

    @property
    def step(self) -> int:
        """status.currentStepIndex for a canary; 0 for blue-green."""
        return self.index if self.strategy == "canary" else 0

    def weight(self) -> int:
        """Traffic on the new revision, percent."""
        if self.aborted:
            return 0
        if self.promoted:
            return 100
        if self.strategy == "blueGreen":
            return 100 if (self.status.get("blueGreen") or {}).get("activeSelector") == self.current else 0
        if self.index >= len(self.steps):
            return 100
        for step in reversed(self.steps[: self.index + 1]):
            if "setWeight" in step:
                return int(step["setWeight"])
        return 0

    def state(self) -> RolloutState:
        """What the workflow sees."""
        kind = ""
        # While aborted the controller keeps the index at 0 (upstream canary.go): there is no current step.
        if self.strategy == "canary" and self.index < len(self.steps) and not self.promoted and not self.aborted:
            kind = step_kind(self.steps[self.index])
        elif self.strategy == "blueGreen" and self.paused:
            kind = "pause"
        return RolloutState(
            name=self.name,
            phase=self.phase or PROGRESSING,
            message=self.message,
            strategy=self.strategy,
            step=self.step,
            steps=len(self.steps),
            step_kind=kind,
            weight=self.weight(),
            pause_reasons=[str(c.get("reason", "")) for c in self.pause_conditions if isinstance(c, dict)],
            aborted=self.aborted,
            promoted=self.promoted,
            images=list(self.images),
        )

    def progress(self) -> dict[str, Any]:
        """Heartbeat details: enough to tell where a long wait stands."""
        return {
            "phase": self.phase,
            "step": self.step,
            "steps": len(self.steps),
            "weight": self.weight(),
            "observed": self.observed,
            "message": self.message,
        }


class RolloutsActivities(SiteClients[RolloutsClient, Endpoint]):
    """Argo Rollouts activities of one worker; `clients` maps an instance (a site) to its cluster's client."""

    system = "kubernetes"
    label = "Kubernetes (Argo Rollouts)"
    # How long a Rollout may run other images than the awaited ones, with its controller caught up, before the
    # wait gives up: Argo CD had already synced ours, so someone else's change (a newer release, a manual
    # rollback) replaced them. Following it would wait for a revision that will never come.
    replaced_after_seconds = 120.0

    @classmethod
    def build_client(cls, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, site: str) -> RolloutsClient:
        """Named after its site, so messages say which cluster."""
        return RolloutsClient(endpoint, transport, instance=site)

    async def _read(self, client: RolloutsClient, ref: RolloutRef) -> _Rollout:
        obj = await client.get_rollout(ref.namespace, ref.name)
        workload_ref = (obj.get("spec") or {}).get("workloadRef")
        workload = None
        if workload_ref is not None:
            if workload_ref.get("kind") != "Deployment":
                raise fatal(
                    f"{client.api.system}: rollout {ref.namespace}/{ref.name} references a "
                    f"{workload_ref.get('kind')}; Ferry follows Rollouts with spec.template or a workloadRef to a "
                    "Deployment",
                    BAD_REQUEST,
                )
            workload = await client.get_deployment(ref.namespace, str(workload_ref.get("name")))
        return _Rollout(obj, workload)

    @activity.defn(name="rollouts.wait")
    async def wait(self, inp: RolloutWaitInput) -> RolloutState:
        """Wait until the Rollout running `images` reaches a decision point: paused at a step after
        `after_step`, Healthy with the new revision promoted to stable, or Degraded/aborted.

        A status is only believed once the controller observed the current spec (the generation rule) and the
        pod template runs the wanted images, so neither the previous release's Healthy nor its abort can
        answer for this one; nor can an abort whose full promotion (`promote --full`) is still pending. The wait is
        stateless: after a worker restart the retry simply reads again.
        """
        client = self._client(inp.rollout.instance, "rollouts.wait")
        seen: _Rollout | None = None
        foreign_since: float | None = None

        async def decided() -> RolloutState | None:
            nonlocal seen, foreign_since
            seen = rollout = await self._read(client, inp.rollout)
            if not rollout.runs(inp.images):
                if rollout.observed:
                    now = time.monotonic()
                    foreign_since = foreign_since if foreign_since is not None else now
                    if now - foreign_since > self.replaced_after_seconds:
                        ref = inp.rollout
                        raise fatal(
                            f"{client.api.system}: rollout {ref.namespace}/{ref.name} runs "
                            f"{', '.join(rollout.images) or 'no image'}, not {', '.join(inp.images)}, for over "
                            f"{self.replaced_after_seconds:g}s: another change replaced this revision (see the "
                            "GitOps log); nothing left to follow",
                            ROLLOUT_REPLACED,
                        )
                return None  # Argo CD has not applied our template yet
            foreign_since = None
            if not rollout.observed:
                return None  # the controller has not seen our template yet
            if rollout.aborted and rollout.status.get("promoteFull"):
                return None  # a full promotion of the abort (a restore) the controller has not acted on yet
            if rollout.aborted or rollout.phase == DEGRADED:
                return rollout.state()
            if rollout.phase == HEALTHY and rollout.promoted:
                return rollout.state()
            if rollout.paused and rollout.step > inp.after_step:
                return rollout.state()
            return None

        def progress() -> dict[str, Any]:
            return seen.progress() if seen is not None else {}

        return await waiting.poll(decided, interval=self.poll_seconds, progress=progress)

    @activity.defn(name="rollouts.promote")
    async def promote(self, inp: RolloutPromoteInput) -> RolloutState:
        """`kubectl argo rollouts promote` (or `--full`) of a Rollout paused at `inp.step`.

        A no-op unless the controller's current status shows it paused at that step (a full promotion: not yet
        promoted), so running it twice, or after the controller moved on, promotes once. An aborted Rollout is
        only promoted in full (what `promote --full` does to an abort: the controller resumes it, skipping every
        step); a step promotion returns its state for the workflow to decide.
        """
        client = self._client(inp.rollout.instance, "rollouts.promote")
        ref = inp.rollout
        rollout = await self._read(client, ref)
        what = f"promote rollout {ref.namespace}/{ref.name} at step {inp.step}"
        if not rollout.observed:
            return rollout.state()
        current = rollout.state()
        if inp.images and sorted(current.images) != sorted(inp.images):
            return current  # another revision (a newer release's) is rolling out: not ours to promote
        if inp.full:
            if rollout.promoted or rollout.status.get("promoteFull"):
                return rollout.state()
            obj = await client.patch_status(
                ref.namespace, ref.name, {"status": {"promoteFull": True}}, what, spec_patch=None
            )
            activity.logger.info("Argo Rollouts: full promotion of %s/%s", ref.namespace, ref.name)
            return _Rollout(obj, rollout.workload).state()
        if rollout.aborted or not rollout.paused or rollout.step != inp.step:
            return rollout.state()
        spec_patch = {"spec": {"paused": False}} if rollout.spec_paused else None
        if spec_patch is not None:
            await client.patch(ref.namespace, ref.name, spec_patch, what)
        status_patch: dict[str, Any] | None = None
        if rollout.pause_conditions:
            status_patch = {"status": {"pauseConditions": None}}
        elif rollout.strategy == "canary" and rollout.steps:
            index = rollout.index + 1 if rollout.index < len(rollout.steps) else rollout.index
            status_patch = {"status": {"pauseConditions": None, "currentStepIndex": index}}
        obj: dict[str, Any] | None = None
        if status_patch is not None:
            obj = await client.patch_status(ref.namespace, ref.name, status_patch, what, spec_patch=spec_patch)
        activity.logger.info("Argo Rollouts: promoted %s/%s at step %d", ref.namespace, ref.name, inp.step)
        if obj is None:
            return (await self._read(client, ref)).state()
        return _Rollout(obj, rollout.workload).state()

    @activity.defn(name="rollouts.abort")
    async def abort(self, inp: RolloutRef) -> RolloutState:
        """`kubectl argo rollouts abort`: stop the update, the stable ReplicaSet serves everything.

        A no-op when already aborted or when nothing is in progress (the new revision is already stable:
        aborting would only mark a healthy Rollout Degraded). The GitOps revert that follows puts the template
        back to the stable one, which the controller fast-tracks to Healthy.
        """
        client = self._client(inp.instance, "rollouts.abort")
        rollout = await self._read(client, inp)
        if rollout.aborted or (rollout.observed and rollout.promoted and not rollout.spec_paused):
            return rollout.state()
        obj = await client.patch_status(
            inp.namespace,
            inp.name,
            {"status": {"abort": True}},
            f"abort rollout {inp.namespace}/{inp.name}",
            spec_patch=None,
        )
        activity.logger.info("Argo Rollouts: aborted %s/%s", inp.namespace, inp.name)
        return _Rollout(obj, rollout.workload).state()
