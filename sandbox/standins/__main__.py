"""`python -m sandbox.standins`: serve the stand-ins over HTTP for the sandbox and end-to-end tests."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from sandbox.standins import NAMES, ScenarioError, World, build_apps, serve, tokens_from_env

DESCRIPTION = """\
Serve local stand-ins of Harbor (on-prem and cloud), Argo CD (on-prem and cloud), SonarQube, Tekton,
Buildkite, Rancher and the Kubernetes API of the clusters Rancher imports. They speak the same HTTP APIs
as the real systems, share one in-memory world (a Tekton run pushes to harbor-onprem, replication copies to
harbor-cloud, Argo CD reads the GitOps repo, applying Rancher's registration manifest to a cluster connects
it) and inject faults from a scenario file that is re-read whenever it changes.

Prints one line "standins ready" on stdout once every server listens; stops on SIGINT/SIGTERM.
"""

EPILOG = f"""\
stand-in names: {", ".join(NAMES)}

tokens: when FERRY_SANDBOX_TOKEN_<NAME> is set (e.g. FERRY_SANDBOX_TOKEN_HARBOR_ONPREM), that stand-in
  requires it (Harbor: as the basic-auth password; SonarQube: bearer or basic login; others:
  "Authorization: Bearer <token>") and answers 401 otherwise. Unset: every request is accepted.

scenario file (YAML; missing file or keys = all healthy):
  faults:                                 # per stand-in name, or "*" for all
    "*": {{error_rate: 0.3, status: 503, latency_ms: 0, retry_after: 1}}
    argocd-cloud: {{down: true}}            # every request 503
  quality_gate: {{api: ERROR}}              # sonar project key equal to / ending with it -> OK|WARN|ERROR|NONE
  vulnerabilities: {{api: {{Critical: 1, High: 2}}}}   # Harbor repository -> counts by severity
  pipeline_failures: [web]                # or {{web: bazel-build}}: task lint|unit-tests|bazel-build|image-build
  health: {{shop-production: Degraded}}     # Argo CD app -> health after sync
  e2e: {{result: failed}}                   # passed (default) | failed | canceled
  replication: {{result: Failed}}           # Succeed (default) | Failed
  rollouts:                               # Argo Rollout name -> how its next update fails (aborted, Degraded)
    api: {{fail_at_step: 2}}                # canary step index: an analysis there fails, any other step aborts
    web: {{fail: true}}                     # its first analysis (canary step or blue-green pre-promotion)
  rancher:
    reject_chart: {{harbor: "chart harbor 9.9.9 not found in repo"}}  # install/upgrade -> 404 with that reason
    install_errors: {{harbor: 1}}           # the next N install/upgrade actions of the chart -> 503
    helm_failures: {{nexus: "timed out"}}   # the Helm operation itself ends failed

harbor-onprem starts with registry 1 (harbor-cloud) and replication policy 1 "ferry-to-cloud" (filter
  ferry/**), as a platform team would have configured it; artifacts pushed to it are scanned on push.

kube serves the Kubernetes API of any number of clusters, cluster NAME at /clusters/NAME (use that URL as
  the cluster's api_endpoint); Rancher marks an imported cluster active once its registration manifest's
  agent Deployment and credentials Secret were applied there. It also serves the Argo Rollouts (argoproj.io/
  v1alpha1 rollouts, GET and merge-patch PATCH incl. /status) that Argo CD synced to cluster `onprem`/`cloud`.

inspection: GET /_sandbox/state on any stand-in returns the whole world as JSON (no faults, no auth).

example:
  python -m sandbox.standins --scenario scenario.yaml --ports \\
    harbor-onprem=18101,harbor-cloud=18102,argocd-onprem=18103,argocd-cloud=18104,sonarqube=18105,tekton=18106,\\
buildkite=18107,rancher=18108,kube=18109
"""


def _pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"{what}: expected NAME=VALUE[,NAME=VALUE...], got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _ports(text: str) -> dict[str, int]:
    pairs = _pairs(text, "--ports")
    unknown = set(pairs) - set(NAMES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stand-in(s) {sorted(unknown)}; names: {', '.join(NAMES)}")
    try:
        return {k: int(v) for k, v in pairs.items()}
    except ValueError:
        raise argparse.ArgumentTypeError("ports must be integers") from None


def _registries(text: str) -> dict[str, str]:
    pairs = _pairs(text, "--registry")
    unknown = set(pairs) - {"onprem", "cloud"}
    if unknown:
        raise argparse.ArgumentTypeError(f"instances are onprem and cloud, got {sorted(unknown)}")
    return pairs


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m sandbox.standins",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ports", type=_ports, required=True, help="NAME=PORT,... for each stand-in to serve (port 0 picks a free one)"
    )
    p.add_argument("--scenario", type=Path, default=None, help="scenario YAML file (may not exist yet)")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="multiplier of every simulated duration (0.05 = near-instant); default 1.0",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; default 127.0.0.1")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault-injection random generator")
    p.add_argument(
        "--registry",
        type=_registries,
        default={},
        help="onprem=HOST:PORT,cloud=HOST:PORT: registry host of each Harbor as image names spell "
        "it (default: the address each Harbor stand-in is served on)",
    )
    return p


async def _main(args: argparse.Namespace) -> None:
    world = World(args.scenario, tokens=tokens_from_env(), speed=args.speed, seed=args.seed)
    for instance, host in args.registry.items():
        world.set_registry_host(instance, host)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)

    def ready(ports: dict[str, int]) -> None:
        listing = " ".join(f"{name}={port}" for name, port in ports.items())
        print(f"standins: listening on {args.host}: {listing}", file=sys.stderr, flush=True)
        print("standins ready", flush=True)

    with contextlib.suppress(asyncio.CancelledError):
        await serve(build_apps(world), args.ports, host=args.host, on_ready=ready)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    if args.speed <= 0:
        parser().error("--speed must be > 0")
    try:
        asyncio.run(_main(args))
    except (ScenarioError, OSError, ValueError) as e:
        print(f"standins: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
