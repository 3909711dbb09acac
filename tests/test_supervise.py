"""sandbox/supervise.py: the sandbox's stand-in for systemd's Restart=on-failure, run as its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox import supervise

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--backoff-initial", "0.1", "--backoff-max", "0.4"]  # the schedule of the defaults (1 s .. 30 s), faster


def alive(pid: int) -> bool:
    """Running, and not a zombie."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def until(check: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"never: {what}")


class Run:
    """A supervisor process started by a test, its log and status file."""

    def __init__(self, tmp: Path, options: list[str], child: str) -> None:
        self.log = tmp / "supervise.log"
        self.status = tmp / "status.json"
        script = tmp / "child.py"
        script.write_text(child)
        cmd = [sys.executable, "-m", "sandbox.supervise", "--name", "child", "--status-file", str(self.status)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, *options, "--", sys.executable, str(script), str(tmp)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        self.children: list[int] = []

    def text(self) -> str:
        return self.log.read_text()

    def child(self) -> int | None:
        try:
            pid = json.loads(self.status.read_text())["child"]
        except (OSError, ValueError, KeyError):
            return None
        if isinstance(pid, int) and alive(pid):
            if pid not in self.children:
                self.children.append(pid)
            return pid
        return None

    def cleanup(self) -> None:
        for pid in [*self.children, self.proc.pid]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.cleanup()


# Exits 1 on its first two runs (a counter file beside it), then stays up and says so.
FLAKY = """
import sys, time
from pathlib import Path
counter = Path(sys.argv[1]) / "runs"
runs = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(runs))
if runs <= 2:
    print(f"run {runs}: cannot connect", flush=True)
    sys.exit(1)
print(f"run {runs}: up", flush=True)
time.sleep(120)
"""


def test_a_crashing_child_is_restarted_with_backoff_until_it_stays_up_and_sigterm_stops_both(
    tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(tmp_path, [*FAST, "--fast-seconds", "0.5"], FLAKY)
    runs.append(run)
    until(lambda: "run 3: up" in run.text(), "the third run stays up")
    child = until(run.child, "the status file names the running child")
    assert isinstance(child, int) and child != run.proc.pid and run.proc.poll() is None
    text = run.text()
    assert text.count("exit status 1 after") == 2
    assert "restarting in 0.1 s (restart 1)" in text and "restarting in 0.2 s (restart 2)" in text  # doubling
    assert json.loads(run.status.read_text())["restarts"] == 2

    # Killed (as the sandbox's stop_worker does): restarted, and the backoff starts over after a stable run.
    time.sleep(0.6)
    os.kill(child, signal.SIGKILL)
    until(lambda: run.child() not in (None, child), "a new child after the kill")
    assert "killed by SIGKILL" in run.text() and "restarting in 0.1 s (restart 3)" in run.text()
    newer = run.child()
    assert newer is not None

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=10) == 0
    assert not alive(newer)
    assert "SIGTERM: stopping child" in run.text() and "supervisor stopped" in run.text()
    assert json.loads(run.status.read_text())["child"] is None


def test_a_child_that_always_crashes_makes_it_give_up_with_a_clear_message(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, [*FAST, "--max-fast-crashes", "3"], "import sys; print('no config', flush=True); sys.exit(3)")
    runs.append(run)
    assert run.proc.wait(timeout=20) == supervise.GAVE_UP
    text = run.text()
    assert text.count("no config") == 3 and text.count("restarting in") == 2
    assert "giving up: it crashed 3 times in a row, each within 10 s of starting" in text
    assert "Fix the cause" in text


def test_a_clean_exit_or_a_no_restart_status_is_not_restarted(tmp_path: Path, runs: list[Run]) -> None:
    clean = Run(tmp_path, FAST, "print('done', flush=True)")
    runs.append(clean)
    assert clean.proc.wait(timeout=10) == 0
    assert "exited cleanly; not restarting" in clean.text() and "restarting in" not in clean.text()

    other = tmp_path / "other"
    other.mkdir()
    config = Run(other, [*FAST, "--no-restart-on", "2"], "import sys; sys.exit(2)")
    runs.append(config)
    assert config.proc.wait(timeout=10) == 2
    assert "exit status 2" in config.text() and "restart cannot help" in config.text()


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path, runs: list[Run]) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    run = Run(tmp_path, [*FAST, "--stop-timeout", "0.5"], stubborn)
    runs.append(run)
    until(lambda: "up" in run.text().split("as pid", 1)[-1], "the child is up")
    child = until(run.child, "a child")
    assert isinstance(child, int)
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=10) == 0
    assert "did not stop in time; killing its process group" in run.text()
    until(lambda: not alive(child), "the child is gone")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_the_child_does_not_outlive_a_killed_supervisor(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, FAST, "import time; print('up', flush=True); time.sleep(60)")
    runs.append(run)
    child = until(run.child, "a child")
    assert isinstance(child, int)
    run.proc.kill()
    run.proc.wait(timeout=10)
    until(lambda: not alive(child), "the orphan got SIGTERM")


def test_defaults_and_usage() -> None:
    policy = supervise.Policy()
    assert (policy.backoff_initial, policy.backoff_max, policy.max_fast_crashes) == (1.0, 30.0, 5)
    args, cmd = supervise.parse_args(["--name", "w", "--no-restart-on", "2", "--", "python", "worker.py"])
    assert cmd == ["python", "worker.py"] and args.no_restart_on == [2] and args.backoff_initial == 1.0
    with pytest.raises(SystemExit, match="the `--` is required"):
        supervise.parse_args(["python", "worker.py"])
    assert supervise.describe(-9) == "killed by SIGKILL" and supervise.describe(3) == "exit status 3"
