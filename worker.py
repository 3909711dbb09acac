"""A Ferry worker for one site: `python worker.py --site onprem|cloud [--config ferry.yaml]`.

The onprem worker runs the workflows and the activities of the systems inside the data centre (git, Tekton,
SonarQube, Harbor-OnPrem, Argo CD-OnPrem, Buildkite); the cloud worker runs only the activities of the
cloud systems (Harbor-Cloud, Argo CD-Cloud). Each holds the clients, and reads the credentials, of its own
site only: a cloud worker starts without on-prem credentials and vice versa.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import timedelta
from pathlib import Path

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.envlock import LockActivities
from activities.registry import SiteActivities
from common.config import SITES, ConfigError, FerryConfig, default_config_path, load_config
from common.logging import configure_logging
from common.observability import ActivityLogContext, configure_logging_from, interceptors_for, runtime_for
from common.observability import shutdown as shutdown_observability
from common.temporal import connect
from workflows.ci import CIWorkflow
from workflows.coordinator import BranchCoordinator
from workflows.envlock import EnvironmentLock
from workflows.provision import DriftWorkflow, ProvisionWorkflow
from workflows.release import ReleaseWorkflow
from workflows.rollback import RollbackWorkflow

log = structlog.get_logger("ferry.worker")

WORKFLOWS = [
    ReleaseWorkflow,
    CIWorkflow,
    BranchCoordinator,
    RollbackWorkflow,
    ProvisionWorkflow,
    DriftWorkflow,
    EnvironmentLock,
]


async def run_worker(
    cfg: FerryConfig, site: str, client: Client | None = None, config_path: Path | None = None
) -> None:
    """Run the worker of `site` until cancelled (SIGTERM/SIGINT stop it gracefully).

    Without `client`, it connects with the site's observability: Prometheus on `observability.metrics.<site>`
    and, when enabled, tracing. A given client keeps its own runtime and interceptors.
    """
    client = client or await connect(
        cfg.temporal, runtime=runtime_for(cfg, site), interceptors=interceptors_for(cfg, site)
    )
    acts = SiteActivities.from_config(cfg, site, config_path=config_path)
    functions = list(acts.functions)
    if site == "onprem":  # the environment locks run on the onprem queue, next to the workflows they serve
        functions += LockActivities(cfg.task_queue(site), check_seconds=cfg.timeouts.heartbeat_seconds).functions
    worker = Worker(
        client,
        task_queue=cfg.task_queue(site),
        workflows=WORKFLOWS if site == "onprem" else [],
        activities=functions,
        graceful_shutdown_timeout=timedelta(seconds=5),
        interceptors=[ActivityLogContext()],
    )
    log.info("worker started", site=site, task_queue=cfg.task_queue(site), activities=len(functions))
    try:
        await worker.run()
    finally:
        await acts.aclose()
        log.info("worker stopped", site=site)
        shutdown_observability()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the worker, stop cleanly on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Run a Ferry worker for one network domain (task queue).",
    )
    parser.add_argument("--site", choices=SITES, required=True, help="which site's systems this worker reaches")
    parser.add_argument("--config", type=Path, default=None, help="ferry.yaml (default: $FERRY_CONFIG or ./ferry.yaml)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"ferry worker: {e}", file=sys.stderr)
        return 2
    configure_logging_from(cfg)

    async def _run() -> None:
        path = (args.config or default_config_path()).resolve()
        task = asyncio.create_task(run_worker(cfg, args.site, config_path=path))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(_run())
    except ConfigError as e:  # e.g. an encryption key that is missing or malformed, found when connecting
        print(f"ferry worker: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
