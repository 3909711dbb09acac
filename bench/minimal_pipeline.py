"""How much commit-to-testbed time does the minimal pipeline save? Simulated minutes on the time-skipping server.

Real builds take minutes, so they are simulated: a bench-only workflow (`CISim`) models Ferry's CI and testbed
deploy with durable timers, and the time-skipping test server jumps over them. Its shape follows the real
pieces: change analysis is the real `activities.changes.affected_services` (run as an activity) over a
generated graph of 50 services and shared libraries; each service then runs the `ferry-ci` Tekton pipeline
of infra/tekton/pipeline.yaml, fetch-source -> (lint | unit-tests) -> bazel-build -> build-push, on a cluster
that runs at most `capacity` PipelineRuns at a time (started in name order, as CIWorkflow starts them); then
the SonarQube and scan gates of that service (in parallel, outside Tekton); then one testbed deploy.

Two runs of the same one-file change to a leaf service (nobody depends on it) are compared: the minimal
pipeline (only the affected service) against a full run of every service, in which every service whose inputs
did not change hits the Bazel remote cache and builds in seconds (lint and unit tests still run). The
commit-to-testbed time of each is the `workflow.now()` difference between the commit arriving and the
testbed deploy ending.

    python bench/minimal_pipeline.py [--capacity 10] [--no-cache]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NoReturn

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from _support import finish, quiet_sdk_logs, stop_on_sigterm, time_skipping_server
    from temporalio.worker import Worker

    from activities.changes import affected_services
    from workflows.types import ServiceSpec

NAME = "minimal_pipeline"


@dataclass
class Durations:
    """Simulated seconds of each step. The issue fixes lint, tests, build and "seconds" for a cache hit;
    the others are assumptions of this bench (the same in both runs, so they only dilute the ratio)."""

    analyze: float = 15  # assumed: fetch into the clone cache, diff, map files to services
    fetch: float = 20  # assumed: the PipelineRun's shallow fetch of one commit
    lint: float = 120  # issue: lint 2 min (runs beside the unit tests in ferry-ci)
    tests: float = 300  # issue: unit tests 5 min
    build: float = 480  # issue: build 8 min
    cache_hit: float = 10  # issue: a target whose inputs did not change comes from the Bazel cache in seconds
    push: float = 30  # assumed: kaniko image build + push of the built binary
    checks: float = 30  # assumed: SonarQube quality gate and Harbor scan gate, in parallel
    deploy: float = 90  # assumed: GitOps move of the testbed + Argo CD sync until Healthy


@dataclass
class AffectedInput:
    """The bench's change analysis: the service graph and the changed files."""

    services: list[ServiceSpec]
    changed_files: list[str]


@dataclass
class SimInput:
    """One simulated commit: which files changed, and whether CI runs the minimal set or everything."""

    services: list[ServiceSpec]
    changed_files: list[str]
    full: bool
    capacity: int
    cache: bool = True
    durations: Durations = field(default_factory=Durations)


@dataclass
class SimResult:
    """What the simulated CI did and how long it took, in simulated seconds."""

    affected: list[str]
    ran: list[str]
    cache_hits: int
    commit_to_testbed: float
    pipeline_seconds: float  # PipelineRun time summed over services: what the Tekton cluster spent


@activity.defn(name="bench.affected")
async def analyze(inp: AffectedInput) -> list[str]:
    """Ferry's own change analysis over the generated graph."""
    affected, _ = affected_services(inp.services, inp.changed_files)
    return affected


@workflow.defn(name="BenchCISim")
class CISim:
    """CI and testbed deploy of one commit, with every build step a durable timer of simulated length."""

    def __init__(self) -> None:
        self._free = 0
        self._pipeline_seconds = 0.0

    @workflow.run
    async def run(self, inp: SimInput) -> SimResult:
        """Analyze, run the pipelines within the cluster's capacity, check, deploy to testbed."""
        d = inp.durations
        started = workflow.now()
        affected: list[str] = await workflow.execute_activity(
            analyze,
            AffectedInput(services=inp.services, changed_files=inp.changed_files),
            start_to_close_timeout=timedelta(minutes=1),
        )
        await workflow.sleep(d.analyze)
        deployable = sorted(s.name for s in inp.services if s.kind == "service")
        ran = deployable if inp.full else affected
        misses = set(affected) if inp.cache else set(ran)
        self._free = inp.capacity
        await asyncio.gather(*(self._service(name, name in misses, d) for name in ran))
        await workflow.sleep(d.deploy)
        return SimResult(
            affected=affected,
            ran=ran,
            cache_hits=len(set(ran) - misses),
            commit_to_testbed=(workflow.now() - started).total_seconds(),
            pipeline_seconds=self._pipeline_seconds,
        )

    async def _service(self, name: str, cache_miss: bool, d: Durations) -> None:
        # Re-check after waking: one freed slot wakes every waiter, and only the first may take it.
        while self._free <= 0:
            await workflow.wait_condition(lambda: self._free > 0)
        self._free -= 1
        began = workflow.now()
        try:
            await workflow.sleep(d.fetch)
            await asyncio.gather(workflow.sleep(d.lint), workflow.sleep(d.tests))
            await workflow.sleep(d.build if cache_miss else d.cache_hit)
            await workflow.sleep(d.push)
        finally:
            self._free += 1
        self._pipeline_seconds += (workflow.now() - began).total_seconds()
        await workflow.sleep(d.checks)


def generate_graph(services: int = 50, libraries: int = 8, seed: int = 4) -> list[ServiceSpec]:
    """A monorepo of `services` services and `libraries` shared libraries, deterministic for a seed.

    Libraries may depend on earlier libraries; each service uses one to three libraries, and one service in
    five also depends on an earlier service (a client package), so some services are not leaves.
    """
    rng = random.Random(seed)
    libs = [f"lib-{i:02d}" for i in range(libraries)]
    graph = [
        ServiceSpec(
            name=lib,
            paths=[f"libs/{lib}/**"],
            depends_on=rng.sample(libs[:i], k=min(i, rng.randint(0, 2))),
            kind="library",
        )
        for i, lib in enumerate(libs)
    ]
    names = [f"svc-{i:02d}" for i in range(services)]
    for i, name in enumerate(names):
        deps = rng.sample(libs, k=rng.randint(1, 3))
        if i and rng.random() < 0.2:
            deps.append(rng.choice(names[:i]))
        graph.append(ServiceSpec(name=name, paths=[f"services/{name}/**"], depends_on=sorted(deps)))
    return graph


def leaf_service(graph: list[ServiceSpec]) -> str:
    """A service nobody depends on: the middle one in name order (neither first nor last to be scheduled)."""
    used = {dep for s in graph for dep in s.depends_on}
    leaves = sorted(s.name for s in graph if s.kind == "service" and s.name not in used)
    return leaves[len(leaves) // 2]


async def run(capacity: int, cache: bool) -> str:
    """Simulate both runs of the same commit and return the summary line."""
    graph = generate_graph()
    leaf = leaf_service(graph)
    changed = [f"services/{leaf}/src/handlers.py"]
    queue = f"bench-sim-{uuid.uuid4().hex[:6]}"
    async with (
        time_skipping_server() as env,
        Worker(env.client, task_queue=queue, workflows=[CISim], activities=[analyze]),
    ):
        results: dict[bool, SimResult] = {}
        for full in (False, True):
            results[full] = await env.client.execute_workflow(
                CISim.run,
                SimInput(services=graph, changed_files=changed, full=full, capacity=capacity, cache=cache),
                id=f"bench-sim-{'full' if full else 'minimal'}-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
            )
    minimal, full_run = results[False], results[True]
    if minimal.affected != [leaf] or minimal.ran != [leaf]:
        raise RuntimeError(f"a one-file change to leaf {leaf} affected {minimal.affected}, not just {leaf}")
    ratio = full_run.commit_to_testbed / minimal.commit_to_testbed
    cost = full_run.pipeline_seconds / minimal.pipeline_seconds
    hits = f"{full_run.cache_hits} Bazel cache hits" if cache else "no Bazel cache"
    return (
        f"{NAME}: full/minimal = {ratio:.1f}x (simulated commit-to-testbed of a one-file change to leaf service "
        f"{leaf}: minimal {minimal.commit_to_testbed / 60:.1f} min building {len(minimal.ran)} service vs full "
        f"{full_run.commit_to_testbed / 60:.1f} min building {len(full_run.ran)} ({hits}); {capacity} "
        f"concurrent PipelineRuns; Tekton time {minimal.pipeline_seconds / 60:.0f} vs "
        f"{full_run.pipeline_seconds / 60:.0f} pipeline-min = {cost:.0f}x; goal >= 10x)"
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse arguments, run, print the summary line and exit."""
    parser = argparse.ArgumentParser(prog="bench/minimal_pipeline.py", description=__doc__)
    parser.add_argument("--capacity", type=int, default=10, help="PipelineRuns the cluster runs at once (10)")
    parser.add_argument(
        "--no-cache", action="store_true", help="full run without Bazel cache: every service builds for 8 min"
    )
    args = parser.parse_args(argv)
    quiet_sdk_logs()
    stop_on_sigterm()
    finish(asyncio.run(run(args.capacity, not args.no_cache)))


if __name__ == "__main__":
    main()
