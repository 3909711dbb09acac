"""commit_storm: 100 commits pushed to one branch in 10 s, on the real sandbox (dev server, stand-ins over HTTP,
both workers as processes). How many CI runs start, how fast superseded runs end (their Tekton runs
cancelled), and how long until the newest commit runs in testbed.

    python bench/commit_storm.py [--commits 100] [--seconds 10]

Prints one line: commits per CI run started, with the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from common.config import load_config  # noqa: E402
from common.temporal import connect  # noqa: E402
from sandbox.launcher import Sandbox, free_port_base  # noqa: E402
from sandbox.repos import commit_change  # noqa: E402
from starters.release_cmds import release_input_from_args, submit_commit  # noqa: E402
from workflows.coordinator import BranchCoordinator  # noqa: E402
from workflows.release import ReleaseWorkflow, release_workflow_id  # noqa: E402


async def main(n: int, seconds: float) -> None:
    root = Path(tempfile.mkdtemp(prefix="ferry-storm-"))
    box = Sandbox(root, speed=0.1, poll_seconds=0.1, attempts=10, heartbeat_seconds=3, start_to_close_seconds=60)
    box.up(free_port_base(), progress=lambda _: None)
    try:
        cfg = load_config(box.config_path)
        client = await connect(cfg.temporal)
        commits = [
            commit_change(root / "repos" / "app.git", {"services/web/storm.txt": f"{i}\n"}, f"web: storm {i}")
            for i in range(n)
        ]
        sent: dict[str, float] = {}
        start = time.monotonic()
        for i, commit in enumerate(commits):
            delay = start + i * seconds / n - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            args = argparse.Namespace(
                from_buildkite=False, commit=commit, branch="main", message="storm", repo=None, base=None, service=[]
            )
            await submit_commit(client, release_input_from_args(cfg, args))
            sent[commit] = time.time()
        pushed = time.monotonic() - start
        newest = client.get_workflow_handle_for(ReleaseWorkflow.run, release_workflow_id("shop", commits[-1]))
        while True:
            try:
                status = await newest.query(ReleaseWorkflow.status)
                if "ended" in status.timings.get("deploy:testbed", {}):
                    break
                if status.outcome not in ("running",):
                    raise RuntimeError(f"newest release ended {status.outcome}: {status.error}")
            except RuntimeError:
                raise
            except Exception:  # noqa: BLE001 - not started yet
                pass
            await asyncio.sleep(0.1)
        testbed_after = (
            datetime.fromisoformat(status.timings["deploy:testbed"]["ended"]).timestamp() - sent[commits[-1]]
        )
        queue = await client.get_workflow_handle_for(BranchCoordinator.run, "branch/shop/main").query(
            BranchCoordinator.status
        )
        ends = []
        for entry in queue.recent:
            if entry.outcome == "superseded" and entry.by in sent:
                desc = await client.get_workflow_handle(release_workflow_id("shop", entry.commit)).describe()
                if desc.close_time is not None:
                    ends.append(desc.close_time.astimezone(UTC).timestamp() - sent[entry.by])
        started = queue.counts.get("started", 0)
        print(
            f"commit_storm: commits/CI runs = {n / max(started, 1):.1f}x ({n} commits in {pushed:.1f} s -> "
            f"{started} CI runs started, {queue.counts.get('skipped', 0)} skipped, "
            f"{queue.counts.get('superseded', 0)} superseded; superseded runs ended "
            f"{statistics.median(ends) if ends else 0:.2f} s (median) / {max(ends, default=0):.2f} s (max) after "
            f"the superseding push; newest commit in testbed {testbed_after:.1f} s after its push)"
        )
    finally:
        box.down(purge=True, progress=lambda _: None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    a = parser.parse_args()
    asyncio.run(main(a.commits, a.seconds))
