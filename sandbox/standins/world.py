"""The one in-memory world every stand-in shares, and the scenario file that steers it.

The stand-ins interact the way the real systems do (a Tekton run pushes into Harbor-OnPrem and submits a
SonarQube analysis, a Harbor replication copies into Harbor-Cloud, Argo CD pulls images from its site's
Harbor), so they must share state. Time is simulated with an event queue that is advanced lazily on every
request (`tick`): no background tasks, identical behaviour over uvicorn and `httpx.ASGITransport`, and a
slow poller sees the same history as a fast one because chained events are timed from when the previous
event was due, not from when somebody happened to look.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from common.yamlsafe import load_yaml

NAMES = (
    "harbor-onprem",
    "harbor-cloud",
    "argocd-onprem",
    "argocd-cloud",
    "sonarqube",
    "tekton",
    "buildkite",
    "rancher",
    "kube",
)
SITES = ("onprem", "cloud")

# Severity strings from specs/harbor/NOTES-from-source.md (src/pkg/scan/vuln/severity.go), lowest first.
SEVERITIES = ("None", "Unknown", "Negligible", "Low", "Medium", "High", "Critical")
# ProjectStatusResponse.Status in specs/sonarqube/ws-qualitygates.proto.
GATE_STATUSES = ("OK", "WARN", "ERROR", "NONE")
# HealthStatus codes in specs/argocd/NOTES-from-source.md (gitops-engine/pkg/health/health.go).
HEALTH_STATUSES = ("Unknown", "Progressing", "Healthy", "Suspended", "Degraded", "Missing")
# Final build states a scenario may choose, from the build data model in specs/buildkite/apis_rest_api_builds.md.
E2E_RESULTS = ("passed", "failed", "canceled")
# The tasks of the simulated `ferry-ci` Pipeline, in order; a scenario may fail any of them.
PIPELINE_TASKS = ("lint", "unit-tests", "bazel-build", "image-build")


class ScenarioError(ValueError):
    """The scenario file is not valid; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Fault:
    """Faults injected into one stand-in's HTTP answers."""

    error_rate: float = 0.0
    status: int = 503
    latency_ms: float = 0.0
    down: bool = False
    retry_after: float | None = None

    @property
    def active(self) -> bool:
        """True when this fault changes anything at all."""
        return self.down or self.error_rate > 0 or self.latency_ms > 0


@dataclass(frozen=True)
class Scenario:
    """The parsed scenario file; missing file or keys mean everything is healthy."""

    faults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    quality_gate: Mapping[str, str] = field(default_factory=dict)
    vulnerabilities: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)
    pipeline_failures: Mapping[str, str] = field(default_factory=dict)
    health: Mapping[str, str] = field(default_factory=dict)
    e2e_result: str = "passed"
    replication_result: str = "Succeed"
    rancher: Mapping[str, Any] = field(default_factory=dict)  # see sandbox.standins.rancher.parse_rancher_scenario
    rollouts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # Rollout name -> {fail, fail_at_step}

    def fault_for(self, name: str) -> Fault:
        """The fault of one stand-in: its own keys override those of "*"."""
        merged = {**self.faults.get("*", {}), **self.faults.get(name, {})}
        return Fault(**merged)

    def gate_for(self, project_key: str) -> str:
        """Quality gate status of a SonarQube project: a service name equal to the key or ending it."""
        return _match_suffix(self.quality_gate, project_key, "OK")

    def vulnerabilities_for(self, repository: str) -> dict[str, int]:
        """Vulnerability counts by severity of a Harbor repository (matched by name or last segment)."""
        return {severity: len(ids) for severity, ids in self.cves_for(repository).items()}

    def cves_for(self, repository: str) -> dict[str, list[str]]:
        """CVE ids by severity of a Harbor repository (matched by name or last segment)."""
        found = self.vulnerabilities.get(repository) or self.vulnerabilities.get(repository.rsplit("/", 1)[-1], {})
        return {severity: list(ids) for severity, ids in found.items()}

    def failing_task(self, service: str) -> str | None:
        """The task in which this service's PipelineRun fails, or None."""
        return self.pipeline_failures.get(service)

    def rollout_failure(self, rollout: str) -> Mapping[str, Any] | None:
        """How an Argo Rollout's update fails ({fail: true} or {fail_at_step: N}), or None when it succeeds."""
        return self.rollouts.get(rollout)

    def health_for(self, app: str) -> str | None:
        """Forced health of an Argo CD application after sync, or None."""
        return self.health.get(app)


def _match_suffix(table: Mapping[str, str], key: str, default: str) -> str:
    if key in table:
        return table[key]
    # The longest suffix wins, so `api` and `webapi` in one scenario never shadow each other.
    for name in sorted(table, key=len, reverse=True):
        if key.endswith(name):
            return table[name]
    return default


_FAULT_KEYS = {"error_rate", "status", "latency_ms", "down", "retry_after"}
_TOP_KEYS = {
    "faults",
    "quality_gate",
    "vulnerabilities",
    "pipeline_failures",
    "health",
    "e2e",
    "replication",
    "rancher",
    "rollouts",
}


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; ScenarioError names the key and the problem."""
    if data is None:
        return Scenario()
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: must be a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ScenarioError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")

    def mapping(key: str) -> dict[str, Any]:
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise ScenarioError(f"{source}: {key}: must be a mapping")
        return {str(k): v for k, v in value.items()}

    faults = mapping("faults")
    for name, fault in faults.items():
        if name != "*" and name not in NAMES:
            raise ScenarioError(f"{source}: faults.{name}: unknown stand-in; names are * and {', '.join(NAMES)}")
        if not isinstance(fault, dict) or set(fault) - _FAULT_KEYS:
            raise ScenarioError(f"{source}: faults.{name}: must be a mapping of {sorted(_FAULT_KEYS)}")
        rate = fault.get("error_rate", 0)
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ScenarioError(f"{source}: faults.{name}.error_rate: must be a number from 0 to 1")
        status = fault.get("status", 503)
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ScenarioError(f"{source}: faults.{name}.status: must be an HTTP error status (400-599)")
        for key in ("latency_ms", "retry_after"):
            value = fault.get(key, 0)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise ScenarioError(f"{source}: faults.{name}.{key}: must be a non-negative number")
        if not isinstance(fault.get("down", False), bool):
            raise ScenarioError(f"{source}: faults.{name}.down: must be true or false")

    gates = mapping("quality_gate")
    for svc, status in gates.items():
        if status not in GATE_STATUSES:
            raise ScenarioError(f"{source}: quality_gate.{svc}: must be one of {', '.join(GATE_STATUSES)}")

    vulns = mapping("vulnerabilities")
    cves: dict[str, dict[str, list[str]]] = {}
    for repo, counts in vulns.items():
        if not isinstance(counts, dict) or any(s not in SEVERITIES for s in counts):
            raise ScenarioError(f"{source}: vulnerabilities.{repo}: must map severities ({', '.join(SEVERITIES)})")
        cves[repo] = {}
        for severity, found in counts.items():
            # A count makes that many findings with made-up ids; a list names the CVEs (for allow-lists).
            if isinstance(found, list) and all(isinstance(c, str) and c for c in found):
                cves[repo][severity] = list(found)
            elif isinstance(found, int) and not isinstance(found, bool) and found >= 0:
                rank = SEVERITIES.index(severity)
                cves[repo][severity] = [f"CVE-2000-{rank}{n:04d}" for n in range(1, found + 1)]
            else:
                raise ScenarioError(
                    f"{source}: vulnerabilities.{repo}.{severity}: a non-negative count or a list of CVE ids"
                )

    raw_failures = data.get("pipeline_failures") or []
    if isinstance(raw_failures, list):
        failures = {str(s): "unit-tests" for s in raw_failures}
    elif isinstance(raw_failures, dict):
        failures = {str(s): str(t or "unit-tests") for s, t in raw_failures.items()}
    else:
        raise ScenarioError(f"{source}: pipeline_failures: must be a list of services or service -> task")
    for svc, task in failures.items():
        if task not in PIPELINE_TASKS:
            raise ScenarioError(f"{source}: pipeline_failures.{svc}: task must be one of {', '.join(PIPELINE_TASKS)}")

    health = mapping("health")
    for app, status in health.items():
        if status not in HEALTH_STATUSES:
            raise ScenarioError(f"{source}: health.{app}: must be one of {', '.join(HEALTH_STATUSES)}")

    e2e = mapping("e2e")
    result = e2e.get("result", "passed")
    if result not in E2E_RESULTS:
        raise ScenarioError(f"{source}: e2e.result: must be one of {', '.join(E2E_RESULTS)}")

    replication = mapping("replication")
    repl = replication.get("result", "Succeed")
    if repl not in ("Succeed", "Failed"):
        raise ScenarioError(f"{source}: replication.result: must be Succeed or Failed")

    from sandbox.standins.rancher import parse_rancher_scenario

    rancher = parse_rancher_scenario(data.get("rancher"), source)

    rollouts = mapping("rollouts")
    for name, failure in rollouts.items():
        if not isinstance(failure, dict) or not failure or set(failure) - {"fail", "fail_at_step"}:
            raise ScenarioError(f"{source}: rollouts.{name}: must be {{fail: true}} or {{fail_at_step: N}}")
        if not isinstance(failure.get("fail", False), bool):
            raise ScenarioError(f"{source}: rollouts.{name}.fail: must be true or false")
        step = failure.get("fail_at_step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ScenarioError(f"{source}: rollouts.{name}.fail_at_step: must be a step index (0, 1, ...)")

    return Scenario(
        faults=faults,
        quality_gate=gates,
        vulnerabilities=cves,
        pipeline_failures=failures,
        health=health,
        e2e_result=result,
        replication_result=repl,
        rancher=rancher,
        rollouts=rollouts,
    )


# --- timestamps in the formats each upstream API uses ---


def iso_ms(t: float) -> str:
    """RFC 3339 with milliseconds and Z, as Harbor and Buildkite print times."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def iso_s(t: float) -> str:
    """RFC 3339 in whole seconds, as Kubernetes (Tekton) and Argo CD print times."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sonar_time(t: float) -> str:
    """SonarQube's `2023-05-25T10:34:21+0200` format (specs/sonarqube/task-example.json), in UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


class Event:
    """A scheduled state change; `cancel()` drops it (e.g. a cancelled PipelineRun's next task)."""

    __slots__ = ("due", "fn", "cancelled")

    def __init__(self, due: float, fn: Callable[[float], None]) -> None:
        self.due = due
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run this event."""
        self.cancelled = True


class World:
    """Shared state of all stand-ins, the simulated clock and the scenario.

    `speed` multiplies every simulated duration (0.05 makes a release near-instant in tests); fault
    latency is given in real milliseconds by the scenario and is not scaled. `seed` makes fault injection
    reproducible.
    """

    def __init__(
        self,
        scenario_path: Path | str | None = None,
        tokens: Mapping[str, str] | None = None,
        speed: float = 1.0,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from sandbox.standins.argocd import ArgoInstance
        from sandbox.standins.buildkite import BuildkiteState
        from sandbox.standins.harbor import HarborInstance
        from sandbox.standins.kube import KubeState
        from sandbox.standins.rancher import RancherState
        from sandbox.standins.rollouts import RolloutsState
        from sandbox.standins.sonarqube import SonarState
        from sandbox.standins.tekton import TektonState

        if speed <= 0:
            raise ValueError("speed must be > 0 (it multiplies simulated durations)")
        unknown = set(tokens or {}) - set(NAMES)
        if unknown:
            raise ValueError(f"tokens for unknown stand-in(s) {sorted(unknown)}; names are {', '.join(NAMES)}")
        self.speed = speed
        self.tokens: dict[str, str] = {k: v for k, v in (tokens or {}).items() if v}
        self.rng = random.Random(seed)
        self.clock = clock
        self.lock = threading.RLock()
        self.scenario_error: str | None = None
        self._events: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self._scenario_path = Path(scenario_path) if scenario_path is not None else None
        self._scenario_stamp: tuple[int, int] | None = None
        self._scenario = Scenario()
        self._load_scenario(strict=True)
        self.registry_hosts: dict[str, str] = {}

        self.harbor = {"onprem": HarborInstance(self, "onprem", auto_scan=True), "cloud": HarborInstance(self, "cloud")}
        self.harbor["onprem"].seed_replication_to("cloud")
        self.argocd = {site: ArgoInstance(self, site) for site in SITES}
        self.sonar = SonarState(self)
        self.tekton = TektonState(self)
        self.buildkite = BuildkiteState(self)
        self.rancher = RancherState(self)
        self.kube = KubeState(self)
        self.rollouts = RolloutsState(self)

    # --- clock and events ---

    def now(self) -> float:
        """Current wall-clock time in seconds since the epoch."""
        return self.clock()

    def after(self, seconds: float, fn: Callable[[float], None], *, base: float | None = None) -> Event:
        """Run `fn(due)` `seconds * speed` after `base` (default now), at the next tick past that time."""
        due = (self.now() if base is None else base) + seconds * self.speed
        event = Event(due, fn)
        with self.lock:
            heapq.heappush(self._events, (due, next(self._seq), event))
        return event

    def tick(self) -> None:
        """Apply every state change that is due, oldest first (including ones those changes schedule)."""
        with self.lock:
            self._load_scenario(strict=False)
            now = self.now()
            while self._events and self._events[0][0] <= now:
                _, _, event = heapq.heappop(self._events)
                if not event.cancelled:
                    event.fn(event.due)

    # --- scenario ---

    @property
    def scenario(self) -> Scenario:
        """The current scenario (the file is re-read when its mtime or size changed)."""
        with self.lock:
            self._load_scenario(strict=False)
            return self._scenario

    def _load_scenario(self, *, strict: bool) -> None:
        path = self._scenario_path
        if path is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._scenario_stamp:
            return
        self._scenario_stamp = stamp
        try:
            data = load_yaml(path.read_text(), str(path)) if stamp is not None else None
            self._scenario = parse_scenario(data, str(path))
            self.scenario_error = None
        except (OSError, yaml.YAMLError, ScenarioError, TypeError) as e:
            message = f"{path}: {e}" if not isinstance(e, ScenarioError) else str(e)
            if strict:
                raise ScenarioError(message) from None
            # A half-written or broken file while running: keep the last good scenario and say so.
            self.scenario_error = message
            print(f"standins: scenario not reloaded: {message}", file=sys.stderr)

    # --- registry hosts: which Harbor an image reference points at ---

    def set_registry_host(self, instance: str, host: str) -> None:
        """Tell the world that images named `host/...` live in Harbor `instance` ('onprem' or 'cloud')."""
        if instance not in self.harbor:
            raise ValueError(f"unknown Harbor instance {instance!r}; instances are {', '.join(self.harbor)}")
        self.registry_hosts[instance] = host

    def harbor_for_host(self, host: str) -> str | None:
        """The Harbor instance whose registry host is `host`, if the world knows one.

        Loopback names are equivalent (`localhost:18101` is `127.0.0.1:18101`), since ferry.yaml and the
        launcher may spell the same local address differently.
        """
        wanted = _normal_host(host)
        for instance, known in self.registry_hosts.items():
            if _normal_host(known) == wanted:
                return instance
        return None

    def snapshot(self) -> dict[str, Any]:
        """Everything, for the /_sandbox/state inspection path."""
        with self.lock:
            return {
                "speed": self.speed,
                "scenario_error": self.scenario_error,
                "registry_hosts": dict(self.registry_hosts),
                "harbor": {site: h.snapshot() for site, h in self.harbor.items()},
                "argocd": {site: a.snapshot() for site, a in self.argocd.items()},
                "sonarqube": self.sonar.snapshot(),
                "tekton": self.tekton.snapshot(),
                "buildkite": self.buildkite.snapshot(),
                "rancher": self.rancher.snapshot(),
                "kube": self.kube.snapshot(),
                "rollouts": self.rollouts.snapshot(),
            }


_LOOPBACK = {"localhost", "127.0.0.1", "0.0.0.0", "[::1]", "[::]"}


def _normal_host(host: str) -> str:
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name, port = host, ""
    return f"{'loopback' if name in _LOOPBACK else name}:{port}"


def tokens_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Tokens from FERRY_SANDBOX_TOKEN_<NAME> variables (e.g. FERRY_SANDBOX_TOKEN_HARBOR_ONPREM)."""
    out = {}
    for name in NAMES:
        value = environ.get("FERRY_SANDBOX_TOKEN_" + name.upper().replace("-", "_"))
        if value:
            out[name] = value
    return out


def split_image(image: str) -> tuple[str, str, str]:
    """`host[:port]/project/repo[/more]` -> (host, project, repository); ValueError if not that shape."""
    parts = image.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"image {image!r} is not registry/project/repository")
    return parts[0], parts[1], "/".join(parts[2:])
