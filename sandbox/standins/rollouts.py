"""Argo Rollouts stand-in: the Rollout controller of each simulated cluster, served by the kube stand-in.

Written from specs/argo-rollouts/ (phases, pause reasons, "trust status.phase only when observedGeneration
equals metadata.generation", the promote and abort merge patches of the kubectl plugin). Where those notes
are silent the stand-in follows the upstream controller and says so in a comment.

The Argo CD stand-in hands over the Rollouts (and the Deployments their `workloadRef` names) it rendered
for an application after every successful sync; the Deployment goes to the kube stand-in's store, where a
client reads it as `apps/v1 deployments`. Each Rollout then runs a small simulated controller on
`world.after` timers: a changed pod template is noticed a moment later (until then status describes the
previous spec, which is what the generation rules let a client detect), then canary steps (setWeight,
pause, analysis) or the blue-green preview/pause/cut-over, ending with the new ReplicaSet stable and phase
Healthy. A scenario (`rollouts: {NAME: {fail: true} | {fail_at_step: N}}`) makes the analysis fail, so the
controller aborts; putting the template back to the stable one (a GitOps revert) fast-tracks it back to
Healthy without steps, as the real controller does.

HTTP (under `/clusters/{cluster}/apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts/{name}`): GET of the
object (and of its `status` subresource), and PATCH with `application/merge-patch+json` (RFC 7386) of the
object (metadata labels/annotations, spec; status is ignored there, as on any resource with a status
subresource) and of `/status` (only status), which is what `kubectl argo rollouts promote|abort` send.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins.world import iso_s

if TYPE_CHECKING:
    from sandbox.standins.world import Event, World

GROUP = "argoproj.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Rollout"
PLURAL = "rollouts"
MERGE_PATCH = "application/merge-patch+json"
# Set by the controller's workload resolver to the referenced Deployment's generation (upstream
# pkg/apis/rollouts annotations; not in the spec notes): with a workloadRef, a new image changes the
# Deployment's generation, not the Rollout's, and status.workloadObservedGeneration follows this value.
WORKLOAD_GENERATION = "rollout.argoproj.io/workload-generation"

OBSERVE_SECONDS = 0.2  # the controller notices a changed spec or pod template
STEP_SECONDS = 0.3  # one canary step (setWeight: the new pods are ready), or the blue-green preview scale-up
ANALYSIS_SECONDS = 0.5  # an AnalysisRun from start to its verdict
REACT_SECONDS = 0.1  # the controller reacting to a promote/abort patch

# Argo CD's health order, most to least healthy (specs/argocd/docs_operator-manual_health.md).
HEALTH_ORDER = ("Healthy", "Suspended", "Progressing", "Missing", "Degraded", "Unknown")

Key = tuple[str, str, str]  # cluster, namespace, name


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pod_hash(template: dict[str, Any]) -> str:
    """A stable rollouts-pod-template-hash of a pod template (the controller uses an FNV hash; any stable one
    serves, since clients only compare hashes)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def template_images(template: dict[str, Any] | None) -> list[str]:
    """The container images of a pod template, in order."""
    spec = (template or {}).get("spec") or {}
    return [str(c.get("image", "")) for c in (spec.get("containers") or []) if isinstance(c, dict)]


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def duration_seconds(value: Any) -> float | None:
    """A pause duration: an integer of seconds, or a string such as "10s", "5m", "1h"; None if absent."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value).strip())
    if not match:
        return None
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def argocd_health(obj: dict[str, Any], workload_generation: int | None = None) -> dict[str, str]:
    """Argo CD's built-in Rollout health check (resource_customizations/argoproj.io/Rollout/health.lua):
    Progressing until the controller observed the spec (and the workload's generation), then the phase,
    with Paused shown as Suspended."""
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    waiting = {"status": "Progressing", "message": "Waiting for rollout spec update to be observed"}
    if not status or str(status.get("observedGeneration", "")) != str(meta.get("generation")):
        return waiting
    if (obj.get("spec") or {}).get("workloadRef") is not None:
        annotated = (meta.get("annotations") or {}).get(WORKLOAD_GENERATION)
        if annotated is not None and str(status.get("workloadObservedGeneration", "")) != str(annotated):
            return waiting
    phase = status.get("phase")
    if not phase:
        return {"status": "Progressing", "message": "Waiting for rollout to finish: status has not been reconciled."}
    return {"status": "Suspended" if phase == "Paused" else phase, "message": str(status.get("message") or "")}


class RolloutSim:
    """One Rollout object and its simulated controller."""

    def __init__(self, state: RolloutsState, key: Key) -> None:
        self.state = state
        self.world = state.world
        self.key = key
        self.obj: dict[str, Any] = {}
        self.revision = 0  # rollout.argoproj.io/revision of currentPodHash
        self.revisions: dict[str, list[str]] = {}  # pod hash -> images
        self.analysis: dict[str, Any] | None = None  # the AnalysisRun of the current step / pre-promotion
        self.paused_at: int | None = None  # the step whose pause the controller set
        self.pause_started = 0.0
        self.weight = 0  # canary traffic share (informational: without traffic routing it is a replica ratio)
        self._event: Event | None = None

    # --- what the API shows ---

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.key[2]

    @property
    def spec(self) -> dict[str, Any]:
        """spec (as applied, plus client patches)."""
        return self.obj.setdefault("spec", {})

    @property
    def status(self) -> dict[str, Any]:
        """status (the controller's)."""
        return self.obj.setdefault("status", {})

    def to_json(self) -> dict[str, Any]:
        """The object as the API returns it."""
        return copy.deepcopy(self.obj)

    @property
    def strategy(self) -> str:
        """canary or blueGreen."""
        return "blueGreen" if (self.spec.get("strategy") or {}).get("blueGreen") is not None else "canary"

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The canary steps ([] for blue-green)."""
        canary = (self.spec.get("strategy") or {}).get("canary") or {}
        return list(canary.get("steps") or [])

    # --- changes from outside: Argo CD applying manifests, clients patching ---

    def apply(self, manifest: dict[str, Any], workload_generation: int | None, at: float) -> None:
        """Argo CD applied the rendered manifest: a changed spec is a new generation; the controller sees it
        (and a changed workload) OBSERVE_SECONDS later."""
        meta = manifest.get("metadata") or {}
        if not self.obj:
            self.obj = {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {
                    "name": self.name,
                    "namespace": self.key[1],
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": iso_s(at),
                    "generation": 0,
                },
                "spec": {},
                "status": {},
            }
        live = self.obj["metadata"]
        live["labels"] = dict(meta.get("labels") or {})
        annotations = {k: v for k, v in (live.get("annotations") or {}).items() if k.startswith("rollout.argoproj.io/")}
        annotations.update(meta.get("annotations") or {})
        spec = copy.deepcopy(manifest.get("spec") or {})
        if "paused" not in spec and "paused" in self.spec:
            spec["paused"] = self.spec["paused"]  # set by a client, not in git: an apply leaves it alone
        if spec != self.obj.get("spec") or live["generation"] == 0:
            self.obj["spec"] = spec
            live["generation"] += 1
        if workload_generation is not None:
            # The resolver annotates as soon as the Deployment changes; the status catches up on reconcile.
            annotations[WORKLOAD_GENERATION] = str(workload_generation)
        live["annotations"] = annotations
        self.state.stamp(self.obj)
        self.schedule(OBSERVE_SECONDS, base=at)

    def patch(self, patch: dict[str, Any], *, subresource: bool) -> None:
        """A merge patch from a client: `/status` changes only status, the object only metadata and spec."""
        if subresource:
            self.obj["status"] = merge_patch(self.status, patch.get("status") or {})
        else:
            before = copy.deepcopy(self.spec)
            meta = patch.get("metadata") or {}
            for field in ("labels", "annotations"):
                if field in meta:
                    self.obj["metadata"][field] = merge_patch(self.obj["metadata"].get(field) or {}, meta[field])
            if "spec" in patch:
                self.obj["spec"] = merge_patch(self.spec, patch["spec"])
            if self.spec != before:
                self.obj["metadata"]["generation"] += 1
        self.state.stamp(self.obj)
        self.schedule(REACT_SECONDS)

    def schedule(self, seconds: float, *, base: float | None = None) -> None:
        """Run the controller `seconds` (scaled by world.speed) after `base`; one pending run at a time."""
        if self._event is not None:
            self._event.cancel()
        self._event = self.world.after(seconds, self.reconcile, base=base)

    # --- the controller ---

    def resolve(self) -> tuple[dict[str, Any] | None, int | None, str]:
        """The pod template (spec.template, or the workloadRef Deployment's), the workload's generation, and
        what is wrong if neither can be found."""
        ref = self.spec.get("workloadRef")
        if ref is None:
            template = self.spec.get("template")
            return (template, None, "") if template else (None, None, "spec.template or spec.workloadRef is required")
        if ref.get("kind") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
            return None, None, f"workloadRef kind {ref.get('kind')} is not supported by the stand-in (Deployment only)"
        cluster = self.world.kube.cluster(self.key[0])
        deployment = cluster.get("apps/v1", "deployments", self.key[1], str(ref.get("name")))
        if deployment is None:
            return None, None, f'workload Deployment "{ref.get("name")}" not found'
        template = (deployment.get("spec") or {}).get("template") or {}
        return template, int(deployment["metadata"]["generation"]), ""

    def reconcile(self, at: float) -> None:
        """One pass of the controller: observe the spec, then make at most one transition."""
        self._event = None
        status = self.status
        status["observedGeneration"] = str(self.obj["metadata"]["generation"])
        template, workload_generation, problem = self.resolve()
        if workload_generation is not None:
            self.obj["metadata"].setdefault("annotations", {})[WORKLOAD_GENERATION] = str(workload_generation)
            status["workloadObservedGeneration"] = str(workload_generation)
        if template is None:
            self._set_phase("Degraded", f"InvalidSpec: {problem}")
            status["conditions"] = [
                {"type": "InvalidSpec", "status": "True", "reason": "InvalidSpec", "message": problem}
            ]
            self.state.stamp(self.obj)
            return
        status.pop("conditions", None)
        current = pod_hash(template)
        if current != status.get("currentPodHash"):
            self._new_revision(current, template, at)
        elif status.get("promoteFull") and current != status.get("stableRS"):
            # A full promotion skips the remaining steps, analyses and pauses. Not in the spec notes: the
            # upstream controller also leaves an aborted state on it (`promote --full` resumes an abort).
            self._promoted(at)
        elif status.get("abort"):
            if not status.get("abortedAt"):
                self._abort(at, "")  # a client's abort patch
        elif self.spec.get("paused"):
            self._set_phase("Paused", "manually paused")
        elif current == status.get("stableRS"):
            self._promoted(at)
        elif self.strategy == "canary":
            self._canary(at)
        else:
            self._blue_green(at)
        self.state.stamp(self.obj)

    def _set_phase(self, phase: str, message: str = "") -> None:
        self.status["phase"] = phase
        self.status["message"] = message

    def _clear_pause(self) -> None:
        self.status.pop("pauseConditions", None)
        self.status["controllerPause"] = False
        self.paused_at = None

    def _new_revision(self, current: str, template: dict[str, Any], at: float) -> None:
        status = self.status
        self.revisions[current] = template_images(template)
        status["currentPodHash"] = current
        self._clear_pause()
        self.analysis = None
        status.pop("promoteFull", None)
        status.get("canary", {}).pop("currentStepAnalysisRunStatus", None)
        stable = status.get("stableRS")
        if stable and current != stable:
            self.revision += 1
            status["abort"] = False  # a new pod template leaves the aborted state (upstream controller)
            status.pop("abortedAt", None)
            self.weight = 0
            if self.strategy == "canary":
                status["currentStepIndex"] = 0
                self._set_phase("Progressing", "waiting for all steps to complete")
            else:
                self._set_phase("Progressing", "active service cutover pending")
            self.schedule(STEP_SECONDS, base=at)
            return
        # First revision, or back to the stable one (e.g. a GitOps revert after an abort): upstream skips every
        # step ("fast-track rollback"), clears the abort and is Healthy on the stable ReplicaSet right away.
        if not stable:
            self.revision = 1
        status["abort"] = False
        status.pop("abortedAt", None)
        self._promoted(at)

    def _promoted(self, at: float) -> None:
        status = self.status
        current = status["currentPodHash"]
        status["stableRS"] = current
        status.pop("promoteFull", None)
        status["abort"] = False
        status.pop("abortedAt", None)
        self._clear_pause()
        self.analysis = None
        self.weight = 100
        if self.strategy == "canary":
            if self.steps:
                status["currentStepIndex"] = len(self.steps)
        else:
            status["blueGreen"] = {"activeSelector": current, "previewSelector": current}
        self._set_phase("Healthy")

    def _failure(self) -> tuple[bool, int | None]:
        """(fail the analysis, fail at this step index) from the scenario for this Rollout."""
        failure = self.world.scenario.rollout_failure(self.name)
        if failure is None:
            return False, None
        return bool(failure.get("fail")), failure.get("fail_at_step")

    def _analysis_message(self, templates: list[dict[str, Any]]) -> str:
        """Upstream's wording for a failed metric, naming the first metric of the first template."""
        metric, limit = "analysis", 0
        for ref in templates:
            template = self.state.analysis_templates.get((self.key[0], self.key[1], str(ref.get("templateName"))))
            metrics = ((template or {}).get("spec") or {}).get("metrics") or []
            if metrics:
                metric, limit = str(metrics[0].get("name", metric)), int(metrics[0].get("failureLimit", 0) or 0)
                break
            metric = str(ref.get("templateName") or metric)
        return f'Metric "{metric}" assessed Failed due to failed ({limit + 1}) > failureLimit ({limit})'

    def _abort(self, at: float, reason: str) -> None:
        status = self.status
        status["abort"] = True
        status["abortedAt"] = iso_s(at)
        self._clear_pause()
        self.weight = 0
        if self.strategy == "canary" and self.steps:
            # Not in the spec notes: upstream puts the step index back to 0 while aborted.
            status["currentStepIndex"] = 0
        message = f"RolloutAborted: Rollout aborted update to revision {self.revision}"
        self._set_phase("Degraded", f"{message}: {reason}" if reason else message)
        status["conditions"] = [
            {"type": "Progressing", "status": "False", "reason": "RolloutAborted", "message": status["message"]}
        ]

    def _run_analysis(self, at: float, marker: Any, templates: list[dict[str, Any]], fail: bool) -> str | None:
        """Start (or look at) the AnalysisRun for `marker` (a step index, or "pre"); its verdict, None while it runs."""
        status = self.status
        where, field = (
            ("canary", "currentStepAnalysisRunStatus")
            if self.strategy == "canary"
            else ("blueGreen", "prePromotionAnalysisRunStatus")
        )
        if self.analysis is None or self.analysis["marker"] != marker:
            name = f"{self.name}-{status['currentPodHash']}-{self.revision}-{marker}"
            # Timed like world.after computes it, so the verdict event finds the run due.
            due = at + ANALYSIS_SECONDS * self.world.speed
            self.analysis = {"marker": marker, "name": name, "phase": "Running", "due": due}
            status.setdefault(where, {})[field] = {"name": name, "status": "Running"}
            self.schedule(ANALYSIS_SECONDS, base=at)
            return None
        if self.analysis["phase"] == "Running":
            if at < self.analysis["due"]:
                self.schedule((self.analysis["due"] - at) / self.world.speed, base=at)
                return None
            self.analysis["phase"] = "Failed" if fail else "Successful"
            run = {"name": self.analysis["name"], "status": self.analysis["phase"]}
            if fail:
                run["message"] = self._analysis_message(templates)
            status.setdefault(where, {})[field] = run
        return str(self.analysis["phase"])

    def _canary(self, at: float) -> None:
        status = self.status
        steps = self.steps
        index = int(status.get("currentStepIndex") or 0)
        if index >= len(steps):
            self._promoted(at)
            return
        fail_analysis, fail_at = self._failure()
        step = steps[index]
        if fail_at is not None and index == fail_at and "analysis" not in step:
            # A step that is not an analysis fails as a background analysis would: the controller aborts.
            self._abort(at, self._analysis_message([]))
            return
        if "setWeight" in step:
            self.weight = int(step["setWeight"])
            status["currentStepIndex"] = index + 1
            self._set_phase("Progressing", "waiting for all steps to complete")
            self.schedule(STEP_SECONDS, base=at)
        elif "pause" in step:
            self._canary_pause(at, index, duration_seconds((step.get("pause") or {}).get("duration")))
        elif "analysis" in step:
            templates = list((step.get("analysis") or {}).get("templates") or [])
            phase = self._run_analysis(at, index, templates, fail_analysis or fail_at == index)
            if phase is None:
                self._set_phase("Progressing", "waiting for all steps to complete")
            elif phase == "Failed":
                self._abort(at, status["canary"]["currentStepAnalysisRunStatus"]["message"])
            else:
                status["currentStepIndex"] = index + 1
                self.schedule(STEP_SECONDS, base=at)
        else:
            # setCanaryScale, experiment, traffic routes...: not simulated, they complete at once.
            status["currentStepIndex"] = index + 1
            self.schedule(STEP_SECONDS, base=at)

    def _canary_pause(self, at: float, index: int, duration: float | None) -> None:
        status = self.status
        if status.get("pauseConditions") and self.paused_at == index:
            expires = self.pause_started + (duration or 0) * self.world.speed
            if duration is not None and at >= expires:
                self._clear_pause()
                status["currentStepIndex"] = index + 1
                self._set_phase("Progressing", "waiting for all steps to complete")
                self.schedule(STEP_SECONDS, base=at)
                return
            self._set_phase("Paused", "CanaryPauseStep")
            if duration is not None:
                self.schedule(duration, base=self.pause_started)
            return
        if status.get("controllerPause") and self.paused_at == index:
            # A promote cleared the pause conditions of the step the controller paused at: step done.
            self._clear_pause()
            status["currentStepIndex"] = index + 1
            self._set_phase("Progressing", "waiting for all steps to complete")
            self.schedule(STEP_SECONDS, base=at)
            return
        status["pauseConditions"] = [{"reason": "CanaryPauseStep", "startTime": iso_s(at)}]
        status["controllerPause"] = True
        self.paused_at, self.pause_started = index, at
        self._set_phase("Paused", "CanaryPauseStep")
        if duration is not None:
            self.schedule(duration, base=at)

    def _blue_green(self, at: float) -> None:
        status = self.status
        strategy = (self.spec.get("strategy") or {}).get("blueGreen") or {}
        current = status["currentPodHash"]
        bg = status.setdefault("blueGreen", {})
        if bg.get("previewSelector") != current:
            bg["previewSelector"] = current  # the preview ReplicaSet is up and behind the preview Service
            self._set_phase("Progressing", "active service cutover pending")
            self.schedule(STEP_SECONDS, base=at)
            return
        fail_analysis, fail_at = self._failure()
        fail = fail_analysis or fail_at is not None
        pre = strategy.get("prePromotionAnalysis")
        analysis = "Successful"
        if pre is not None:
            analysis = self._run_analysis(at, "pre", list(pre.get("templates") or []), fail) or "Running"
            if analysis == "Failed":
                self._abort(at, bg["prePromotionAnalysisRunStatus"]["message"])
                return
        elif fail:
            self._abort(at, self._analysis_message([]))
            return
        if strategy.get("autoPromotionEnabled", True) is False:
            if status.get("pauseConditions"):
                self._set_phase("Paused", "BlueGreenPause")
                return
            if not status.get("controllerPause"):
                status["pauseConditions"] = [{"reason": "BlueGreenPause", "startTime": iso_s(at)}]
                status["controllerPause"] = True
                self.paused_at = 0
                self._set_phase("Paused", "BlueGreenPause")
                return
        if analysis != "Successful":
            self._set_phase("Progressing", "waiting for analysis to complete")
            return
        self._promoted(at)  # promoted (pause cleared) or automatic: switch the active Service

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        status = self.status
        return {
            "phase": status.get("phase"),
            "step": status.get("currentStepIndex"),
            "weight": self.weight,
            "stable": self.revisions.get(status.get("stableRS", ""), []),
            "current": self.revisions.get(status.get("currentPodHash", ""), []),
            "aborted": bool(status.get("abort")),
        }


class RolloutsState:
    """Every Rollout of every simulated cluster, and the AnalysisTemplates their failures are named from."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.rollouts: dict[Key, RolloutSim] = {}
        self.analysis_templates: dict[Key, dict[str, Any]] = {}
        self._resource_version = 0

    def stamp(self, obj: dict[str, Any]) -> None:
        """A new resourceVersion for a changed object."""
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)

    def get(self, key: Key) -> RolloutSim | None:
        """One Rollout, or None."""
        return self.rollouts.get(key)

    def deploy(self, cluster: str, namespace: str, objects: list[dict[str, Any]], at: float) -> list[Key]:
        """What Argo CD applies after a sync to `cluster`: every Rollout of `objects`, the Deployment each
        references and the AnalysisTemplates. `namespace` is for objects without one. Returns the Rollouts."""
        kube = self.world.kube.cluster(cluster)

        def where(obj: dict[str, Any]) -> tuple[str, str]:
            meta = obj.get("metadata") or {}
            return str(meta.get("namespace") or namespace), str(meta.get("name") or "")

        deployments = {
            where(o): o for o in objects if o.get("apiVersion") == "apps/v1" and o.get("kind") == "Deployment"
        }
        keys: list[Key] = []
        for obj in objects:
            if obj.get("apiVersion") == API_VERSION and obj.get("kind") == "AnalysisTemplate":
                self.analysis_templates[(cluster, *where(obj))] = copy.deepcopy(obj)
        for obj in objects:
            if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
                continue
            ns, name = where(obj)
            ref = (obj.get("spec") or {}).get("workloadRef") or {}
            workload_generation = None
            deployment = deployments.get((ns, str(ref.get("name")))) if ref.get("kind") == "Deployment" else None
            if deployment is not None:
                manifest = copy.deepcopy(deployment)
                manifest.setdefault("metadata", {})["namespace"] = ns
                stored, _ = self.world.kube.apply(kube, ("apps/v1", "deployments", ns, str(ref["name"])), manifest)
                workload_generation = int(stored["metadata"]["generation"])
            key = (cluster, ns, name)
            sim = self.rollouts.get(key)
            if sim is None:
                sim = self.rollouts[key] = RolloutSim(self, key)
            sim.apply(obj, workload_generation, at)
            keys.append(key)
        return keys

    def health(self, key: Key) -> dict[str, str]:
        """Argo CD's health of one Rollout (Missing if it does not exist)."""
        sim = self.rollouts.get(key)
        if sim is None:
            return {"status": "Missing", "message": f"rollout {key[1]}/{key[2]} not found"}
        health = argocd_health(sim.obj)
        if health["status"] != "Healthy":
            health["message"] = f"Rollout {key[2]}: {health['message']}".rstrip(": ")
        return health

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        out: dict[str, Any] = {}
        for (cluster, ns, name), sim in sorted(self.rollouts.items()):
            out.setdefault(cluster, {})[f"{ns}/{name}"] = sim.snapshot()
        return out


def worst_health(*healths: dict[str, str]) -> dict[str, str]:
    """The least healthy of several health results (Argo CD's app health rule)."""
    return max(healths, key=lambda h: HEALTH_ORDER.index(h["status"]) if h["status"] in HEALTH_ORDER else 0)


# --- HTTP, mounted by the kube stand-in ---


def routes(world: World) -> list[Route]:
    """The Rollout paths of the kube stand-in's API (they go before its generic object routes)."""
    from sandbox.standins.kube import status_error

    state = world.rollouts

    def find(request: Request) -> RolloutSim | Response:
        p = request.path_params
        sim = state.get((p["cluster"], p["namespace"], p["name"]))
        if sim is None:
            return status_error(404, "NotFound", f'{PLURAL}.{GROUP} "{p["name"]}" not found')
        return sim

    async def get(request: Request) -> Response:
        with world.lock:
            found = find(request)
            return found if isinstance(found, Response) else JSONResponse(found.to_json())

    async def patch(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != MERGE_PATCH:
            # Custom resources take no strategic merge patch; JSON patch and apply are not modelled here.
            return status_error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types (stand-in): {MERGE_PATCH}; "
                f"got {content_type or 'none'}",
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return status_error(400, "BadRequest", "the merge patch is not a JSON object")
        problem = _invalid(body)
        if problem:
            return status_error(422, "Invalid", f'{KIND}.{GROUP} "{request.path_params["name"]}" is invalid: {problem}')
        with world.lock:
            found = find(request)
            if isinstance(found, Response):
                return found
            found.patch(body, subresource=request.url.path.endswith("/status"))
            return JSONResponse(found.to_json())

    base = "/clusters/{cluster}/apis/" + API_VERSION + "/namespaces/{namespace}/" + PLURAL + "/{name}"
    return [
        Route(base, get, methods=["GET"]),
        Route(base, patch, methods=["PATCH"]),
        Route(base + "/status", get, methods=["GET"]),
        Route(base + "/status", patch, methods=["PATCH"]),
    ]


def _invalid(patch: dict[str, Any]) -> str:
    """What the CRD's OpenAPI schema would refuse in the fields the plugin patches ('' if fine)."""
    spec, status = patch.get("spec") or {}, patch.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        return "spec and status must be objects"
    if spec.get("paused") is not None and not isinstance(spec["paused"], bool):
        return "spec.paused: Invalid value: must be a boolean"
    for field in ("abort", "promoteFull"):
        if status.get(field) is not None and not isinstance(status[field], bool):
            return f"status.{field}: Invalid value: must be a boolean"
    index = status.get("currentStepIndex")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        return "status.currentStepIndex: Invalid value: must be a non-negative integer"
    if status.get("pauseConditions") is not None and not isinstance(status["pauseConditions"], list):
        return "status.pauseConditions: Invalid value: must be a list"
    return ""
