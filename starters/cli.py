"""The `ferry` command line: start, follow, decide, inspect, retry and replay releases; run the sandbox."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from temporalio.service import RPCError

from common.config import ConfigError, load_config
from starters.common import FAILED, OK, UNREACHABLE, USAGE, CommandError
from starters.identity import add_identity_arguments

EXIT_CODES = """exit codes:
  0  done (release succeeded, nothing to release, decision accepted)
  1  the release failed or was rejected, or a decision was refused
  2  bad input: arguments, ferry.yaml, SHA, service, unknown release
  3  Temporal (or the sandbox) cannot be reached, or (release start) the app repository, to check the commit
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line error (argparse's own convention, kept explicit)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(USAGE)


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with its --help."""
    p = _Parser(
        prog="ferry",
        description="Ferry: durable releases from an on-prem commit to cloud production, on Temporal.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="ferry.yaml (default: $FERRY_CONFIG or ./ferry.yaml)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    rel = sub.add_parser("release", help="start releases").add_subparsers(dest="action", required=True)
    start = rel.add_parser(
        "start",
        help="release a commit (CI, testbed, gates, staging, production)",
        description="Hand a commit to its branch coordinator (signal-with-start), which releases the newest commit "
        "of the branch, one CI at a time; idempotent. --direct starts the release itself.",
    )
    start.add_argument("--repo", help="app repo name or URL (must be the one in ferry.yaml; default: it)")
    start.add_argument("--commit", help="full 40-hex SHA")
    start.add_argument("--branch", help="branch the commit is on")
    start.add_argument("--message", help="commit message, shown in the E2E build")
    start.add_argument("--base", help="diff against this SHA (default: last released commit or merge base)")
    start.add_argument("--service", action="append", help="release exactly this service (repeatable)")
    start.add_argument(
        "--from-buildkite",
        action="store_true",
        help="read BUILDKITE_COMMIT, BUILDKITE_BRANCH, BUILDKITE_MESSAGE, BUILDKITE_BUILD_URL, ... from the step",
    )
    start.add_argument("--wait", action="store_true", help="follow the stages; exit 1 if the release fails")
    start.add_argument(
        "--direct",
        action="store_true",
        help="start the release itself instead of handing the commit to the branch coordinator (hotfixes)",
    )
    start.add_argument(
        "--until", metavar="STAGE", help="follow until the release reaches STAGE (e.g. gate:staging), then exit 0"
    )
    start.add_argument("--json", action="store_true", help="machine-readable output")

    for name, verb in (("approve", "open"), ("reject", "reject")):
        d = sub.add_parser(
            name,
            help=f"{verb} a gate of a release (or a provisioning)",
            description=f"{verb.capitalize()} a gate. The workers verify who decides: `--as USER` signs the "
            "decision with USER's SSH key (checked against the workers' allowed_signers file); --from-buildkite, "
            "in a step after a block step, has the workers ask the Buildkite API who unblocked it. Who may decide "
            "is the workers' ferry.yaml (gate groups, four-eyes, required approvals), loaded when the gate opened.",
        )
        d.add_argument("release", nargs="?", help="release id (shop-<sha12>), commit SHA or workflow id")
        d.add_argument("--stage", required=True, help="the gated environment, e.g. staging or production")
        add_identity_arguments(d, "decides")
        d.add_argument("--comment", default="", help="kept in the audit and shown by status")
        if name == "approve":
            d.add_argument(
                "--override-freeze",
                action="store_true",
                help="move now although a freeze window is open (freeze_override_groups; needs --comment)",
            )
        d.add_argument("--json", action="store_true")

    pr = sub.add_parser(
        "promote",
        help="promote a paused Argo Rollout step of a release (environments with promotion: approval)",
        description="Promote the paused canary step (or blue-green switch) of the Rollout the release waits on "
        "in an environment whose rollout.promotion is `approval`. Who may: the members of the environment's gate "
        "groups and the release managers (approvals.freeze_override_groups). Identity as for `ferry approve`.",
    )
    pr.add_argument("release", help="release id (shop-<sha12>), commit SHA or workflow id")
    pr.add_argument("--stage", required=True, help="the environment whose Rollouts are paused, e.g. production")
    add_identity_arguments(pr, "promotes")
    pr.add_argument("--comment", default="", help="kept in the audit")
    pr.add_argument("--json", action="store_true")

    au = sub.add_parser("audit", help="every decision on a release: who, when, gate, channel, comment, refusals")
    au.add_argument("release", help="release id (shop-<sha12>), commit SHA or workflow id")
    au.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="a release's stage, services, digests, gates and timings")
    st.add_argument("release", help="release id (shop-<sha12>), commit SHA or workflow id")
    st.add_argument("--json", action="store_true")

    qu = sub.add_parser("queue", help="a branch's coordinator: pending commit, active releases, recent outcomes")
    qu.add_argument("--branch", default="main")
    qu.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="recent releases and what waits for whom")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--json", action="store_true")

    rt = sub.add_parser(
        "retry",
        help="reset a failed release to just before its failed step (as Reset in the Temporal UI)",
        description="Completed stages (CI, earlier environment moves, approvals) are kept, not run again.",
    )
    rt.add_argument("release")
    rt.add_argument("--wait", action="store_true", help="follow the retried release to its end")
    rt.add_argument("--json", action="store_true")

    rp = sub.add_parser("replay", help="replay a recorded history against today's workflow code")
    rp.add_argument("workflow_id", nargs="?", help="workflow id on the server (e.g. release/shop/<sha12>)")
    rp.add_argument("--file", help="replay a history JSON file instead (as saved by --save or the Temporal UI)")
    rp.add_argument("--save", help="also write the fetched history to this JSON file")
    rp.add_argument("--json", action="store_true")

    rb = sub.add_parser(
        "rollback",
        help="put an environment back on an earlier release (audited)",
        description="Move ENV back to the images of an earlier release, past the forward-only check, with a "
        "comment recorded in the audit and in the GitOps commit (Ferry-Rollback trailer).",
    )
    rb.add_argument("environment")
    rb.add_argument("--to", required=True, metavar="RELEASE", help="release id (shop-<sha12>), SHA or workflow id")
    rb.add_argument("--comment", required=True, help="why; kept in the audit and the Ferry-Rollback trailer")
    add_identity_arguments(rb, "rolls back")
    rb.add_argument("--wait", action="store_true", help="follow the rollback to its end")
    rb.add_argument("--json", action="store_true")

    pv = sub.add_parser("provision", help="Terraform workspaces of both domains, Rancher import, platform apps")
    pva = pv.add_subparsers(dest="action", required=True, parser_class=_Parser)
    pp = pva.add_parser("plan", help="plan workspaces (no apply); shows what would change")
    pp.add_argument("workspaces", nargs="+", metavar="WORKSPACE")
    pp.add_argument("--json", action="store_true")
    pa = pva.add_parser(
        "apply",
        help="plan and apply workspaces; a plan that destroys or replaces waits for `ferry approve provision/WS "
        "--stage apply`",
    )
    pa.add_argument("workspaces", nargs="+", metavar="WORKSPACE")
    pa.add_argument("--auto-approve", action="store_true", help="no gate for plans that neither destroy nor replace")
    pa.add_argument("--wait", action="store_true", help="follow to the end; exit 1 unless applied")
    pa.add_argument("--json", action="store_true")
    ps = pva.add_parser("status", help="last provisioning and drift check of each workspace")
    ps.add_argument("workspace", nargs="?")
    ps.add_argument("--json", action="store_true")
    pd = pva.add_parser("drift-schedule", help="create or update the periodic drift check of every workspace")
    pd.add_argument("--json", action="store_true")

    sb = sub.add_parser("sandbox", help="the embedded platform: Temporal dev server, stand-ins, repos, workers")
    sba = sb.add_subparsers(dest="action", required=True)
    up = sba.add_parser("up", help="start it (a no-op if it is up)")
    up.add_argument("--port-base", type=int, default=7233, help="Temporal port; the UI is +1000 (default 7233)")
    up.add_argument("--speed", type=float, default=1.0, help="scale of simulated durations (0.1 = 10x faster)")
    down = sba.add_parser("down", help="stop every sandbox process")
    down.add_argument("--purge", action="store_true", help="also delete repos, history and secrets")
    sba.add_parser("status", help="what runs, where")

    demo = sub.add_parser("demo", help="one release of a one-service change to production, on the sandbox")
    demo.add_argument("--port-base", type=int, default=7233)
    demo.add_argument("--timeout", type=float, default=300, help="seconds to wait for each stage")

    from starters import report_cmds

    report_cmds.add_parser(sub)

    from starters import codec_server

    codec_server.add_parser(sub)

    wk = sub.add_parser("worker", help="run a worker (same as `python worker.py`)")
    wk.add_argument("--site", choices=("onprem", "cloud"), required=True)
    return p


async def _dispatch(args: argparse.Namespace) -> int:
    from starters import release_cmds, replay

    if args.command == "demo":
        from starters import demo

        return await demo.run(args)
    if args.command == "replay" and args.file:
        return await replay.replay(None, args)
    cfg = load_config(args.config)
    if args.command == "release":
        return await release_cmds.start(cfg, args)
    if args.command in ("approve", "reject"):
        return await release_cmds.decide(cfg, args, approve=args.command == "approve")
    if args.command == "status":
        return await release_cmds.status(cfg, args)
    if args.command == "audit":
        return await release_cmds.audit(cfg, args)
    if args.command == "promote":
        return await release_cmds.promote(cfg, args)
    if args.command == "list":
        return await release_cmds.list_releases(cfg, args)
    if args.command == "report":
        from starters import report_cmds

        return await report_cmds.report(cfg, args)
    if args.command == "queue":
        return await release_cmds.queue(cfg, args)
    if args.command == "retry":
        return await release_cmds.retry(cfg, args)
    if args.command == "replay":
        return await replay.replay(cfg, args)
    if args.command == "rollback":
        from starters import rollback_cmds

        return await rollback_cmds.rollback(cfg, args)
    if args.command == "provision":
        from starters import provision_cmds

        action = {
            "plan": provision_cmds.plan,
            "apply": provision_cmds.apply,
            "status": provision_cmds.status,
            "drift-schedule": provision_cmds.schedule_drift,
        }[args.action]
        return await action(cfg, args)
    raise CommandError(f"unknown command {args.command}")


def _sandbox(args: argparse.Namespace) -> int:
    from sandbox.launcher import Sandbox, default_dir

    box = Sandbox(default_dir(), speed=getattr(args, "speed", 1.0))
    if args.action == "up":
        box.up(port_base=args.port_base)
    elif args.action == "down":
        box.down(purge=args.purge)
    else:
        state = box.state()
        if not state:
            print(f"no sandbox in {box.root}")
            return FAILED
        for name, port in state["ports"].items():
            print(f"  {name:<14} http://127.0.0.1:{port}")
        for name, pid in state.get("pids", {}).items():
            print(f"  {name:<14} pid {pid}")
        print("up" if box.is_up() else "down")
        return OK if box.is_up() else FAILED
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ferry` console script."""
    args = build_parser().parse_args(argv)
    from common.logging import configure_logging

    # Log lines go to stderr as JSON, warnings and up (FERRY_LOG_LEVEL=INFO for more): stdout is the answer.
    configure_logging(default_level="WARNING")
    try:
        if args.command == "worker":
            import worker

            return worker.main(["--site", args.site] + (["--config", str(args.config)] if args.config else []))
        if args.command == "sandbox":
            return _sandbox(args)
        if args.command == "codec-server":
            from starters import codec_server

            return codec_server.serve(load_config(args.config), args)
        return asyncio.run(_dispatch(args))
    except ConfigError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return USAGE
    except CommandError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except RPCError as e:
        print(f"ferry: Temporal refused the request: {e.message}", file=sys.stderr)
        return UNREACHABLE
    except Exception as e:  # noqa: BLE001 - the sandbox launcher's errors are already user-facing
        from sandbox.launcher import SandboxError

        if isinstance(e, SandboxError):
            print(f"ferry: sandbox: {e}", file=sys.stderr)
            return 3
        raise


def entry() -> None:
    """Console-script entry: exit without interpreter finalization.

    The Temporal SDK's Rust runtime keeps native threads; letting CPython finalize while they wind down can
    abort the process (PyGILState_Release) after the work is done, turning a success into exit -6.
    """
    code = main()
    from common.observability import shutdown

    shutdown()  # flush spans (tracing on) before the hard exit below
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
