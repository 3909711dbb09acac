"""The sandbox launcher's own mechanics: where a second sandbox's ports go, and how a failed start is reported."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import launcher
from sandbox.config import default_ports


def test_a_second_sandbox_gets_ports_outside_the_ephemeral_range_and_skips_a_busy_one() -> None:
    # A metrics port in the ephemeral range was once taken by an outgoing connection before the worker bound it.
    ephemeral = launcher._ephemeral_ports()
    seen = launcher.free_port_base(random.Random(7))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", default_ports(seen)["metrics-cloud"]))
        busy.listen()
        again = launcher.free_port_base(random.Random(7))  # the same draws: the first is now skipped
    assert again != seen
    for base in (seen, again):
        assert all(port not in ephemeral and port < 65536 for port in default_ports(base).values())


def _spawn(log: Path, code: str) -> int:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT).pid


def test_a_process_that_exits_while_starting_fails_at_once_with_its_last_line(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    pid = _spawn(log, "print('loading config'); print('cannot serve Prometheus on 127.0.0.1:1: in use'); exit(1)")
    began = time.monotonic()
    with pytest.raises(launcher.SandboxError) as failed:
        launcher._wait("cloud worker", lambda out: b"worker started" in out, 60, log, 0, pid)
    assert time.monotonic() - began < 30  # not the whole timeout
    assert str(failed.value) == (
        f"cloud worker exited while starting: cannot serve Prometheus on 127.0.0.1:1: in use; see {log}"
    )


def test_only_output_after_the_start_counts_as_ready(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("worker started\nstopped\n")  # a previous start's lines: the log is appended to
    pid = _spawn(log, "import time; time.sleep(30)")
    try:
        with pytest.raises(launcher.SandboxError, match=r"did not become ready within 1s: \(nothing logged\)"):
            launcher._wait("cloud worker", lambda out: b"worker started" in out, 1, log, log.stat().st_size, pid)
    finally:
        subprocess.run(["kill", str(pid)], check=False)


class FakeWorkers(launcher.Sandbox):
    """A sandbox whose workers are tiny scripts, so that their supervision is tested in a second, not in `up`'s 15."""

    code = "import time; print('worker started', flush=True); time.sleep(120)"

    def worker_command(self, site: str) -> list[str]:
        return [sys.executable, "-c", self.code]


def _fake_sandbox(tmp_path: Path, code: str | None = None) -> FakeWorkers:
    box = FakeWorkers(tmp_path)
    if code is not None:
        box.code = code
    box.logs.mkdir(parents=True)
    box._save({"ports": {}, "pids": {}})
    return box


def test_a_killed_sandbox_worker_is_restarted_by_its_supervisor_and_down_stops_both(tmp_path: Path) -> None:
    box = _fake_sandbox(tmp_path)
    try:
        first = box.start_worker("onprem")
        state = box.state()
        supervisor = state["pids"]["worker-onprem"]
        assert state["workers"]["onprem"]["supervisor"] == supervisor
        assert state["workers"]["onprem"]["child"] == first != supervisor
        assert box.is_up() and launcher._alive(first)

        box.stop_worker("onprem")  # SIGKILL: a worker crash
        assert not launcher._alive(first) and launcher._alive(supervisor)
        second = box.start_worker("onprem")  # does not start another: waits for the supervisor's restart
        assert second != first and launcher._alive(second)
        assert box.state()["pids"]["worker-onprem"] == supervisor
        assert box.state()["workers"]["onprem"]["child"] == second
        log = (box.logs / "worker-onprem.log").read_text()
        assert "killed by SIGKILL" in log and "restarting in 1 s" in log

        box.down(progress=lambda _: None)
        assert not launcher._alive(supervisor) and not launcher._alive(second)
        assert box.state()["pids"] == {} and not box.is_up()
    finally:
        box.down(progress=lambda _: None)


def test_a_worker_that_fails_while_starting_fails_start_worker_at_once_with_its_line(tmp_path: Path) -> None:
    for status in (1, 2):  # 1 would be restarted (so the supervisor is stopped), 2 never is (configuration)
        box = _fake_sandbox(
            tmp_path / str(status), f"print('ferry worker: sites.cloud: bad', flush=True); exit({status})"
        )
        began = time.monotonic()
        try:
            with pytest.raises(launcher.SandboxError) as failed:
                box.start_worker("cloud")
            assert time.monotonic() - began < 10
            log = box.logs / "worker-cloud.log"
            assert str(failed.value) == f"cloud worker exited while starting: ferry worker: sites.cloud: bad; see {log}"
            assert not launcher._alive(box.state()["pids"]["worker-cloud"])
        finally:
            box.down(progress=lambda _: None)
