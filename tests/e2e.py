"""Support for end-to-end tests: a real sandbox (dev server, stand-ins over HTTP, worker processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from common.config import FerryConfig, load_config
from common.temporal import connect
from sandbox.launcher import Sandbox, free_port_base
from sandbox.repos import commit_change, log, read_file_at
from workflows.release import ReleaseWorkflow, release_workflow_id
from workflows.types import ReleaseStatus

FERRY = str(Path(sys.executable).parent / "ferry")


@dataclass
class Run:
    """A finished `ferry` command."""

    code: int
    out: str
    err: str


@dataclass
class E2E:
    """A running sandbox and the handles a test needs on it."""

    box: Sandbox
    cfg: FerryConfig
    client: Client

    @property
    def app_repo(self) -> Path:
        return self.box.root / "repos" / "app.git"

    @property
    def gitops_repo(self) -> Path:
        return self.box.root / "repos" / "gitops.git"

    def ferry(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """Run the real `ferry` console script against this sandbox."""
        proc = subprocess.run(
            [FERRY, "--config", str(self.box.config_path), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **(env or {})},
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        """Push a commit to the example monorepo's main branch."""
        return commit_change(self.app_repo, files, message)

    def head(self) -> str:
        """The app repo's main."""
        return log(self.app_repo)[0][0]

    def scenario(self, data: dict) -> None:
        """Replace the stand-ins' scenario (they re-read it on change)."""
        self.box.scenario_path.write_text(yaml.safe_dump(data))

    def handle(self, commit: str) -> WorkflowHandle:
        return self.client.get_workflow_handle_for(
            ReleaseWorkflow.run, release_workflow_id(self.cfg.repos.app.short_name, commit)
        )

    async def wait_started(self, commit: str, timeout: float = 60) -> None:
        """Wait until the coordinator has started the release of `commit`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.handle(commit).describe()
                return
            except RPCError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"release of {commit[:12]} never started") from None
            await asyncio.sleep(0.1)

    async def status(self, commit: str) -> ReleaseStatus:
        return await self.handle(commit).query(ReleaseWorkflow.status)

    async def wait_stage(self, commit: str, stage: str, timeout: float = 120) -> ReleaseStatus:
        """Poll the release until it reaches `stage`; fail fast if it ends first."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                status = await self.status(commit)
            except Exception:  # noqa: BLE001 - not started yet
                status = None
            if status is not None:
                if status.stage == stage:
                    return status
                if status.outcome != "running":
                    raise AssertionError(f"release ended {status.outcome} at {status.stage}: {status.error}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"release never reached {stage} (at {status.stage if status else None})")
            await asyncio.sleep(0.2)

    def kustomization(self, env: str, rev: str = "main") -> dict:
        return yaml.safe_load(read_file_at(self.gitops_repo, rev, f"{env}/kustomization.yaml"))

    def pinned(self, env: str, service: str) -> str | None:
        """The digest the environment's kustomization pins for `service`."""
        for image in self.kustomization(env).get("images") or []:
            if image["name"] == service:
                return image.get("digest")
        return None

    def gitops_commits(self, release_id: str) -> list[str]:
        """The GitOps commit messages (first line) made for a release."""
        return [m.splitlines()[0] for _, m in log(self.gitops_repo) if f"Ferry-Release: {release_id}" in m]

    def api(self, standin: str, path: str) -> httpx.Response:
        """GET a stand-in's API with its sandbox credential."""
        token = (self.box.root / "secrets" / standin).read_text().strip()
        auth = ("robot$ferry", token) if standin.startswith("harbor") else None
        headers = {} if auth else {"Authorization": f"Bearer {token}"}
        return httpx.get(self.box.url(standin) + path, auth=auth, headers=headers, timeout=10)

    def webhook_messages(self) -> list[dict]:
        """What the sandbox's webhook receiver got."""
        return httpx.get(f"http://127.0.0.1:{self.box.ports['receiver']}/_sandbox/messages", timeout=10).json()

    def release_id(self, commit: str) -> str:
        return f"{self.cfg.repos.app.short_name}-{commit[:12]}"

    async def approve_all(self, commit: str) -> None:
        """Approve both gates as the configured approvers, through the CLI."""
        for stage, user in (("staging", "quinn"), ("production", "rita")):
            await self.wait_stage(commit, f"gate:{stage}")
            run = self.ferry("approve", self.release_id(commit), "--stage", stage, "--as", user)
            assert run.code == 0, run.err


async def start_sandbox(root: Path) -> E2E:
    """Bring a sandbox up on free ports, fast: short polls, short heartbeats, quick stand-ins."""
    # Retries: 70 s past an attempt's own 60 s, enough to ride out the one-minute outage test_e2e makes.
    box = Sandbox(
        root,
        speed=0.1,
        poll_seconds=0.1,
        attempts=0,
        retry_budget_seconds=70,
        heartbeat_seconds=3,
        start_to_close_seconds=60,
    )
    await asyncio.to_thread(box.up, free_port_base(), lambda _: None)
    cfg = load_config(box.config_path)
    client = await connect(cfg.temporal)
    return E2E(box, cfg, client)
