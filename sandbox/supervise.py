"""`python -m sandbox.supervise [options] -- CMD [ARG...]`: keep one process running, restarting it when it fails.

What systemd's `Restart=on-failure` or a Kubernetes Deployment does for a real deployment (infra/deploy/), in a
few lines of Python for the sandbox, where the workers run on a developer's machine:

- runs CMD with the supervisor's stdout/stderr (one log), in its own process group, and (on Linux) with a
  parent-death signal so it gets SIGTERM should the supervisor itself be killed;
- when CMD exits non-zero or is killed by a signal: logs the status and restarts it after a backoff that starts
  at 1 s and doubles up to 30 s; a run that lasted `--fast-seconds` or longer resets the backoff;
- gives up, with a message that says so, after `--max-fast-crashes` crashes in a row that each came within
  `--fast-seconds` of the start (a worker that cannot start is not helped by starting it forever);
- does not restart a clean exit (status 0) or a status listed in `--no-restart-on` (worker.py exits 2 on a
  configuration error: restarting cannot fix the file), and exits with that status;
- on SIGTERM or SIGINT forwards the signal to CMD, waits up to `--stop-timeout` for it to exit (then kills its
  process group), and exits 0.

`--status-file` gets a JSON object {supervisor, child, restarts, started_at} on every (re)start, so whoever
started the supervisor knows the current child's pid (the sandbox's `stop_worker` kills that one to
simulate a crash). The supervisor logs JSON lines whose logger is `supervise[NAME]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 0.05  # how often waits look at the stop flag (signals only set it)
GAVE_UP = 1  # exit status after too many fast crashes
CANNOT_START = 127  # exit status when CMD cannot be executed at all (as a shell says)


@dataclass(frozen=True)
class Policy:
    """When and how fast to restart."""

    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    fast_seconds: float = 10.0
    max_fast_crashes: int = 5
    stop_timeout: float = 20.0
    no_restart_on: frozenset[int] = field(default_factory=frozenset)


def describe(returncode: int) -> str:
    """`exit status 1` or `killed by SIGKILL`, from a Popen returncode."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send the child SIGTERM when its parent (this supervisor) dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


class Supervisor:
    """Run `cmd` until told to stop, restarting it as `policy` says."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        name: str = "",
        policy: Policy = Policy(),
        status_file: Path | None = None,
        out: TextIO = sys.stderr,
    ) -> None:
        if not cmd:
            raise ValueError("no command to supervise")
        self.cmd = list(cmd)
        self.name = name or Path(cmd[0]).name
        self.policy = policy
        self.status_file = status_file
        self.out = out
        self.restarts = 0
        self.stop_signal: int | None = None

    # --- signals ---

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT only set a flag; the main loop forwards them (no work inside a handler)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    # --- main loop ---

    def run(self) -> int:
        """Supervise until stopped, given up, or the child ends in a way that must not be restarted."""
        backoff = self.policy.backoff_initial
        fast_crashes = 0
        while self.stop_signal is None:
            try:
                child = self._start()
            except OSError as e:
                self.log(f"cannot start {self.cmd[0]}: {e}; not restarting")
                return CANNOT_START
            began = time.monotonic()
            returncode = self._wait(child)
            if returncode is None:
                return self._stop(child)
            ran = time.monotonic() - began
            self._write_status(None)
            what = f"{self.name} (pid {child.pid}) {describe(returncode)} after {ran:.1f} s"
            if returncode == 0:
                self.log(f"{what}: it exited cleanly; not restarting")
                return 0
            if returncode in self.policy.no_restart_on:
                self.log(f"{what}: that status says a restart cannot help (--no-restart-on); not restarting")
                return returncode
            if ran >= self.policy.fast_seconds:
                fast_crashes, backoff = 0, self.policy.backoff_initial  # it had been up: start over
            else:
                fast_crashes += 1
            if fast_crashes >= self.policy.max_fast_crashes:
                self.log(
                    f"{what}; giving up: it crashed {fast_crashes} times in a row, each within "
                    f"{self.policy.fast_seconds:g} s of starting. Fix the cause (its output above), then start "
                    "it again"
                )
                return GAVE_UP
            self.restarts += 1
            self.log(f"{what}; restarting in {backoff:g} s (restart {self.restarts})")
            if not self._sleep(backoff):
                break
            backoff = min(backoff * 2, self.policy.backoff_max)
        self.log(f"stopped on {signal.Signals(self.stop_signal or signal.SIGTERM).name} (no {self.name} running)")
        return 0

    def _start(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            process_group=0,  # its own group: a kill of the group takes its subprocesses along
            preexec_fn=_parent_death_signal(),  # single-threaded: a preexec_fn is safe here
        )
        self.log(f"started {self.name} as pid {child.pid}" + (f" (restart {self.restarts})" if self.restarts else ""))
        self._write_status(child.pid)
        return child

    def _wait(self, child: subprocess.Popen[bytes]) -> int | None:
        """The child's returncode, or None as soon as a stop was asked for."""
        while True:
            try:
                return child.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if self.stop_signal is not None:
                    return None

    def _sleep(self, seconds: float) -> bool:
        """Sleep; False (at once) when a stop was asked for meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_signal is not None:
                return False
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        return self.stop_signal is None

    def _stop(self, child: subprocess.Popen[bytes]) -> int:
        sig = self.stop_signal or signal.SIGTERM
        name = signal.Signals(sig).name
        self.log(f"{name}: stopping {self.name} (pid {child.pid}), waiting up to {self.policy.stop_timeout:g} s")
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)
        try:
            returncode = child.wait(timeout=self.policy.stop_timeout)
        except subprocess.TimeoutExpired:
            self.log(f"{self.name} (pid {child.pid}) did not stop in time; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            returncode = child.wait()
        self._write_status(None)
        self.log(f"{self.name} (pid {child.pid}) {describe(returncode)}; supervisor stopped")
        return 0

    # --- output ---

    def log(self, message: str) -> None:
        """One JSON line on the supervisor's stderr (the same log as the child's output, which is JSON lines
        too: whoever reads a worker's log reads one format), its logger `supervise[NAME]`."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = {"event": message, "logger": f"supervise[{self.name}]", "level": "warning", "timestamp": stamp + "Z"}
        print(json.dumps(line), file=self.out, flush=True)

    def _write_status(self, child: int | None) -> None:
        if self.status_file is None:
            return
        status = {"supervisor": os.getpid(), "child": child, "restarts": self.restarts, "started_at": time.time()}
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(self.status_file)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Options before `--`, the supervised command after it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m sandbox.supervise [options] -- CMD [ARG...]  (the `--` is required)")
    split = argv.index("--")
    options, cmd = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m sandbox.supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="", help="what to call the process in messages (default: CMD's name)")
    parser.add_argument("--status-file", type=Path, help="write {supervisor, child, restarts} JSON here")
    parser.add_argument("--backoff-initial", type=float, default=1.0, help="first restart delay (s)")
    parser.add_argument("--backoff-max", type=float, default=30.0, help="the delay doubles up to this (s)")
    parser.add_argument("--fast-seconds", type=float, default=10.0, help="a crash sooner than this is fast")
    parser.add_argument("--max-fast-crashes", type=int, default=5, help="give up after this many in a row")
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="SIGTERM to kill on stop (s)")
    parser.add_argument(
        "--no-restart-on", type=int, action="append", default=[], help="an exit status never restarted (repeat)"
    )
    args = parser.parse_args(options)
    if not cmd:
        parser.error("no command after `--`")
    if args.max_fast_crashes < 1 or args.backoff_initial < 0 or args.backoff_max < args.backoff_initial:
        parser.error("need --max-fast-crashes >= 1 and 0 <= --backoff-initial <= --backoff-max")
    return args, cmd


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and supervise."""
    args, cmd = parse_args(argv)
    policy = Policy(
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        fast_seconds=args.fast_seconds,
        max_fast_crashes=args.max_fast_crashes,
        stop_timeout=args.stop_timeout,
        no_restart_on=frozenset(args.no_restart_on),
    )
    supervisor = Supervisor(cmd, name=args.name, policy=policy, status_file=args.status_file)
    supervisor.install_signal_handlers()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
