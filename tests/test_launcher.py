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
