"""What does Ferry's orchestration cost on top of the work itself? Real Release vs a bare workflow.

On ONE dev server started here, the real `Release` workflow (with its `CI` child, gates, status bookkeeping,
search-attribute upserts and dataclass payloads) runs against instant stand-in activities, interleaved with
a bare workflow that runs the same number of no-op activities on the same task queues and waits for the
same number of gates at the same points, opened by the same `approve` update. Both are driven the same way,
one release at a time; the ratio of median wall times per release is the overhead.

    python bench/orchestration_overhead.py [--runs 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from _support import (
        InstantSystems,
        approve_when_waiting,
        bench_config,
        bench_plan,
        dev_server,
        finish,
        median_ms,
        quiet_sdk_logs,
        release_workers,
        stop_on_sigterm,
    )
    from temporalio.client import Client

    from workflows.options import activity_options
    from workflows.release import ReleaseWorkflow, release_workflow_id
    from workflows.types import ActivitySettings, Decision, ReleaseInput, ReleasePlan

NAME = "orchestration_overhead"


@dataclass
class BareInput:
    """Task queues of the no-op activities, one list per segment; a gate separates two segments."""

    segments: list[list[str]]
    gates: list[str]
    settings: ActivitySettings


@workflow.defn(name="BenchBareRelease")
class BareRelease:
    """The least a release could be: N activities and K gates, nothing else."""

    def __init__(self) -> None:
        self._waiting = ""
        self._approved: set[str] = set()

    @workflow.update
    def approve(self, decision: Decision) -> str:
        """Open the waiting gate."""
        self._approved.add(decision.stage)
        return decision.stage

    @approve.validator
    def _validate(self, decision: Decision) -> None:
        if self._waiting != decision.stage:
            raise ValueError(f"gate '{decision.stage}' is not waiting yet")  # same refusal as the real gate

    @workflow.run
    async def run(self, inp: BareInput) -> int:
        """Run every segment's activities in order, waiting for a gate between segments."""
        done = 0
        for i, queues in enumerate(inp.segments):
            if i:
                gate = inp.gates[i - 1]
                self._waiting = gate
                await workflow.wait_condition(lambda gate=gate: gate in self._approved)
                self._waiting = ""
            for queue in queues:
                done = await workflow.execute_activity(
                    "bench.noop", done, result_type=int, **activity_options(inp.settings, queue)
                )
        return done


@activity.defn(name="bench.noop")
async def noop(n: int) -> int:
    """The bare workflow's activity: does nothing."""
    return n + 1


async def one_real(
    client: Client, plan: ReleasePlan, gates: list[str], on_gate: Callable[[], None] | None = None
) -> float:
    """Run one real release to the end, approving each gate as soon as it waits; wall seconds."""
    commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    inp = ReleaseInput(release_id=f"bench-{commit[:8]}", commit=commit, branch="main", plan=plan)
    started = time.perf_counter()
    handle = await client.start_workflow(
        ReleaseWorkflow.run, inp, id=release_workflow_id(plan.app_repo, commit), task_queue=plan.onprem_queue
    )
    for gate in gates:
        await approve_when_waiting(handle, gate)
        if on_gate is not None:
            on_gate()
    result = await handle.result()
    elapsed = time.perf_counter() - started
    if result.outcome != "succeeded":
        raise RuntimeError(f"real release ended {result.outcome}: {result.error}")
    return elapsed


async def one_bare(client: Client, plan: ReleasePlan, bare: BareInput) -> float:
    """Run one bare release, approving its gates the same way; wall seconds."""
    started = time.perf_counter()
    handle = await client.start_workflow(
        BareRelease.run, bare, id=f"bare/{uuid.uuid4().hex}", task_queue=plan.onprem_queue
    )
    for gate in bare.gates:
        await approve_when_waiting(handle, gate)
    done = await handle.result()
    elapsed = time.perf_counter() - started
    expected = sum(len(s) for s in bare.segments)
    if done != expected:
        raise RuntimeError(f"bare workflow ran {done} activities, expected {expected}")
    return elapsed


async def shape_of_real(client: Client, plan: ReleasePlan, systems: InstantSystems, gates: list[str]) -> BareInput:
    """Run one real release while recording its activity calls; the bare workflow copies that shape."""
    systems.record, systems.order = True, []
    cuts: list[int] = []
    # How many activities ran before each gate was approved: the bare workflow's gates go there.
    await one_real(client, plan, gates, on_gate=lambda: cuts.append(len(systems.order)))
    systems.record = False
    order = [queue for _, queue in systems.order]
    bounds = [0, *cuts, len(order)]
    return BareInput(
        segments=[order[a:b] for a, b in zip(bounds, bounds[1:], strict=False)],
        gates=gates,
        settings=plan.activities,
    )


async def run(runs: int, warmup: int) -> str:
    """Start the dev server and workers, measure, and return the summary line."""
    async with dev_server() as server:
        client = server.client
        suffix = uuid.uuid4().hex[:6]
        onprem, cloud = f"bench-onprem-{suffix}", f"bench-cloud-{suffix}"
        plan = bench_plan(onprem, cloud)
        gates = [e.name for e in plan.environments if e.gate]
        systems = InstantSystems(config=bench_config(onprem, cloud))
        async with release_workers(
            client, onprem, cloud, systems, extra_workflows=[BareRelease], extra_activities=[noop]
        ):
            bare = await shape_of_real(client, plan, systems, gates)
            for _ in range(warmup):
                await one_real(client, plan, gates)
                await one_bare(client, plan, bare)
            real_s: list[float] = []
            bare_s: list[float] = []
            for i in range(runs):
                # Alternate which goes first so neither always runs on a warmer (or busier) server.
                if i % 2 == 0:
                    real_s.append(await one_real(client, plan, gates))
                    bare_s.append(await one_bare(client, plan, bare))
                else:
                    bare_s.append(await one_bare(client, plan, bare))
                    real_s.append(await one_real(client, plan, gates))
    real_ms, bare_ms = median_ms(real_s), median_ms(bare_s)
    n_acts = sum(len(s) for s in bare.segments)
    real_calls = sum(systems.counts.values())
    if real_calls != n_acts * (1 + warmup + runs):  # every real release made as many calls as the bare one
        raise RuntimeError(f"real releases made {real_calls} activity calls, not {n_acts} each")
    return (
        f"{NAME}: real/bare = {real_ms / bare_ms:.2f}x (median wall time per release: Release+CI {real_ms:.0f} ms, "
        f"bare {bare_ms:.0f} ms; {n_acts} instant activities and {len(gates)} update-approved gates each; "
        f"{runs} of each interleaved on one dev server; goal <= 1.3x)"
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse arguments, run, print the summary line and exit."""
    parser = argparse.ArgumentParser(prog="bench/orchestration_overhead.py", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="measured releases of each kind (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured releases of each kind first")
    args = parser.parse_args(argv)
    quiet_sdk_logs()
    stop_on_sigterm()
    finish(asyncio.run(run(args.runs, args.warmup)))


if __name__ == "__main__":
    main()
