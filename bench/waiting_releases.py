"""What do 1,000 releases parked at a gate cost the worker, and how fast do they drain once approved?

A dev server and a separate worker process (the on-prem and cloud workers, as worker.py builds them, with
instant stand-in activities) are started here. The worker's resident memory is read from /proc/<pid>/status
(VmRSS) after one warm-up release (no release waiting), then with N real `Release` workflows parked at the
staging gate. Then every release is approved concurrently (bounded), production too as soon as it waits
there, and the drain time runs until the last release has succeeded.

    python bench/waiting_releases.py [--releases 1000] [--concurrency 25] [--max-cached N] [--pollers N] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from _support import (
    approve_when_waiting,
    bench_plan,
    cpu_seconds,
    dev_server,
    die_with_parent,
    finish,
    memory_mib,
    quiet_sdk_logs,
    server_address,
    signed_decision,
    stop_on_sigterm,
)
from temporalio.client import Client, WorkflowHandle

from workflows.release import ReleaseWorkflow, release_workflow_id
from workflows.types import ReleaseInput, ReleasePlan

NAME = "waiting_releases"
RUNNING = "ExecutionStatus = 'Running'"
DONE = "ExecutionStatus = 'Completed'"
T = TypeVar("T")
Log = Callable[[str], None]
SUPPORT = Path(__file__).resolve().parent / "_support.py"


class WorkerProcess:
    """The worker in its own process, so its RSS is the workers' alone (not the driver's or the server's)."""

    def __init__(self, address: str, onprem: str, cloud: str, max_cached: int | None, pollers: int | None) -> None:
        cmd = [sys.executable, str(SUPPORT), "worker", "--address", address, "--onprem", onprem, "--cloud", cloud]
        if max_cached is not None:
            cmd += ["--max-cached", str(max_cached)]
        if pollers is not None:
            cmd += ["--pollers", str(pollers)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker printed `ready` (its pollers are up)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"the worker process exited with {self.proc.returncode}")
        raise TimeoutError("the worker process did not start")

    def rss(self) -> dict[str, float]:
        """VmRSS and VmHWM of the worker process in MiB."""
        return memory_mib(self.proc.pid)

    def cpu(self) -> float:
        """CPU seconds the worker process has used."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def release_input(plan: ReleasePlan) -> ReleaseInput:
    """A release of a fresh random commit (so every workflow id is new)."""
    commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    return ReleaseInput(release_id=f"bench-{commit[:10]}", commit=commit, branch="main", plan=plan)


async def start(client: Client, plan: ReleasePlan) -> WorkflowHandle:
    """Start one release on the on-prem queue."""
    inp = release_input(plan)
    return await client.start_workflow(
        ReleaseWorkflow.run, inp, id=release_workflow_id(plan.app_repo, inp.commit), task_queue=plan.onprem_queue
    )


async def drive_to_end(handle: WorkflowHandle) -> None:
    """Approve staging, then production as soon as it waits, then check the outcome (the warm-up release)."""
    await approve_when_waiting(handle, "staging", poll=0.01)
    await approve_when_waiting(handle, "production", poll=0.01)
    result = await handle.result()
    if result.outcome != "succeeded":
        raise RuntimeError(f"{handle.id} ended {result.outcome}: {result.error}")


async def count(client: Client, condition: str) -> int:
    """How many Release workflows match a visibility condition."""
    return (await client.count_workflows(f"WorkflowType = 'Release' AND {condition}")).count


async def at_gate(client: Client, stage: str) -> list[str]:
    """Ids of the releases running and parked at a gate (the ReleaseStage search attribute says so)."""
    query = f"WorkflowType = 'Release' AND {RUNNING} AND ReleaseStage = 'gate:{stage}'"
    return [w.id async for w in client.list_workflows(query)]


async def bounded(limit: int, jobs: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Await coroutines with at most `limit` in flight; the first failure cancels the rest."""
    sem = asyncio.Semaphore(limit)

    async def one(job: Coroutine[Any, Any, T]) -> T:
        async with sem:
            return await job

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(j)) for j in jobs]
    return [t.result() for t in tasks]


async def drain(client: Client, handles: list[WorkflowHandle], concurrency: int, log: Log) -> tuple[float, float]:
    """Approve staging for every parked release and production for each as soon as it waits there; returns
    seconds until every staging approval was accepted and until every release had succeeded.

    The driver finds releases waiting at production by visibility (one list query per round) rather than by
    asking each release, so that it adds little load of its own to the server it measures.
    """
    sem = asyncio.Semaphore(concurrency)
    # Each approver signs on their own machine: signing is not part of the drain the bench times.
    signed = {(h.id, stage): signed_decision(h.id, stage) for h in handles for stage in ("staging", "production")}
    log(f"{len(signed)} approvals signed")
    t0 = time.monotonic()

    async def approve(handle: WorkflowHandle, stage: str) -> None:
        async with sem:
            await approve_when_waiting(handle, stage, check_parked=False, poll=0.2, signed=signed[handle.id, stage])

    async def staging() -> float:
        await bounded(concurrency, [approve(h, "staging") for h in handles])
        log(f"all {len(handles)} staging approvals accepted after {time.monotonic() - t0:.1f} s")
        return time.monotonic() - t0

    async with asyncio.TaskGroup() as group:
        past_staging = group.create_task(staging())
        pending = {h.id: h for h in handles}
        while (done := await count(client, DONE)) < len(handles) + 1:  # + the warm-up release
            for wid in await at_gate(client, "production"):
                if wid in pending:
                    group.create_task(approve(pending.pop(wid), "production"))
            if time.monotonic() - t0 > 900:
                raise TimeoutError(f"only {done - 1} of {len(handles)} releases completed")
            await asyncio.sleep(0.25)
    return past_staging.result(), time.monotonic() - t0


async def run(releases: int, concurrency: int, max_cached: int | None, pollers: int | None, log: Log) -> str:
    """Park, measure, drain; return the summary line."""
    async with dev_server() as server:
        client = server.client
        suffix = uuid.uuid4().hex[:6]
        onprem, cloud = f"bench-onprem-{suffix}", f"bench-cloud-{suffix}"
        plan = bench_plan(onprem, cloud)
        worker = WorkerProcess(server_address(client), onprem, cloud, max_cached, pollers)
        try:
            worker.wait_ready()
            # One release end to end first: the worker has imported, sandboxed and run everything once.
            await drive_to_end(await start(client, plan))
            await asyncio.sleep(1.0)
            idle = worker.rss()
            log(f"worker ready, one release done: RSS {idle['VmRSS']:.0f} MiB")

            t0 = time.monotonic()
            handles = await bounded(concurrency, [start(client, plan) for _ in range(releases)])
            log(f"{releases} releases started in {time.monotonic() - t0:.1f} s")
            while (parked := await count(client, f"{RUNNING} AND ReleaseStage = 'gate:staging'")) < releases:
                if time.monotonic() - t0 > 900:
                    raise TimeoutError(f"only {parked} of {releases} releases reached the staging gate")
                await asyncio.sleep(0.5)
            park_s = time.monotonic() - t0
            await asyncio.sleep(2.0)  # let the worker settle (completed CI children leave the cache)
            waiting = worker.rss()
            log(f"{releases} parked at the staging gate after {park_s:.1f} s: RSS {waiting['VmRSS']:.0f} MiB")

            cpu0 = cpu_seconds(server.pid), worker.cpu()
            past_staging_s, drain_s = await drain(client, handles, concurrency, log)
            server_cpu, worker_cpu = cpu_seconds(server.pid) - cpu0[0], worker.cpu() - cpu0[1]
            after = worker.rss()
            log(f"drained in {drain_s:.1f} s: RSS {after['VmRSS']:.0f} MiB, peak {after['VmHWM']:.0f} MiB")
            log(f"CPU during the drain: dev server {server_cpu:.0f} s, worker {worker_cpu:.0f} s")
        finally:
            worker.stop()
    cache = f"max_cached_workflows={max_cached}" if max_cached is not None else "max_cached_workflows=1000 (default)"
    per_release = (waiting["VmRSS"] - idle["VmRSS"]) * 1024 / releases
    return (
        f"{NAME}: worker RSS {waiting['VmRSS']:.0f} MiB with {releases} releases parked at a gate vs "
        f"{idle['VmRSS']:.0f} MiB without (+{per_release:.0f} KiB each; peak {after['VmHWM']:.0f} MiB); after bulk "
        f"approval ({concurrency} updates in flight) all past staging in {past_staging_s:.1f} s, all in production "
        f"in {drain_s:.1f} s (CPU: dev server {server_cpu:.0f} s, worker {worker_cpu:.0f} s); "
        f"parking took {park_s:.0f} s; {cache}; goal < 400 MB RSS, drain <= 60 s"
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse arguments, run, print the summary line and exit."""
    parser = argparse.ArgumentParser(prog="bench/waiting_releases.py", description=__doc__)
    parser.add_argument("--releases", type=int, default=1000, help="releases parked at the gate (default 1000)")
    parser.add_argument("--concurrency", type=int, default=25, help="starts/approvals in flight (default 25)")
    parser.add_argument("--max-cached", type=int, default=None, help="worker max_cached_workflows (default SDK's)")
    parser.add_argument("--pollers", type=int, default=None, help="worker pollers per task kind (default SDK's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    quiet_sdk_logs()
    stop_on_sigterm()

    def log(text: str) -> None:
        if args.verbose:
            print(f"{NAME}: {text}", file=sys.stderr, flush=True)

    finish(asyncio.run(run(args.releases, args.concurrency, args.max_cached, args.pollers, log)))


if __name__ == "__main__":
    main()
