"""`ferry demo`: one release of a one-service change, commit to production, on the sandbox.

What a person would do by hand, printed as the commands they would type: bring the sandbox up, push a
change to one service of the example monorepo, start its release, approve both gates as the configured
approvers, then show what runs where and that the digest is identical on both Harbor instances.
"""

from __future__ import annotations

import argparse
import datetime as dt

import httpx

from common.config import load_config
from common.yamlsafe import load_yaml
from sandbox.config import DEMO_USERS
from sandbox.launcher import Sandbox, default_dir
from sandbox.repos import commit_change, read_file_at
from starters import release_cmds
from starters.cli import build_parser
from starters.common import FAILED, OK, CommandError, client_for
from workflows.release import ReleaseWorkflow, release_workflow_id
from workflows.types import ReleaseStatus

SERVICE = "web"


def _say(text: str) -> None:
    print(text, flush=True)


def _harbor_has(sandbox: Sandbox, instance: str, repository: str, digest: str) -> bool:
    token = (sandbox.root / "secrets" / instance).read_text().strip()
    url = f"{sandbox.url(instance)}/api/v2.0/projects/ferry/repositories/{repository}/artifacts/{digest}"
    return httpx.get(url, auth=("robot$ferry", token), timeout=10).status_code == 200


async def run(args: argparse.Namespace) -> int:
    """Run the demo; exit OK only when the release reached production."""
    sandbox = Sandbox(default_dir())
    sandbox.up(port_base=args.port_base, progress=lambda m: _say(f"[sandbox] {m}"))
    cfg = load_config(sandbox.config_path)
    app_repo = cfg.repos.app.url
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    commit = commit_change(
        sandbox.root / "repos" / "app.git",
        {f"services/{SERVICE}/CHANGELOG.md": f"- demo change at {now}\n"},
        f"{SERVICE}: demo change at {now}",
    )
    ferry = f"ferry --config {sandbox.config_path}"
    _say(f"\n[git] pushed {commit[:12]} to {app_repo} (changes services/{SERVICE} only)")
    _say(f"$ {ferry} release start --commit {commit} --branch main")
    # Through the CLI's own parser, so the demo starts a release exactly as the command would.
    start_args = build_parser().parse_args(
        ["release", "start", "--commit", commit, "--branch", "main", "--message", f"{SERVICE}: demo change"]
    )
    await release_cmds.start(cfg, start_args)
    client = await client_for(cfg)
    wf_id = release_workflow_id(cfg.repos.app.short_name, commit)
    release_id = f"{cfg.repos.app.short_name}-{commit[:12]}"
    for stage in ("staging", "production"):
        status = await release_cmds.wait_for_stage(client, wf_id, f"gate:{stage}", timeout=args.timeout)
        if stage == "staging":
            _say(f"[ci] built {', '.join(status.services)}; testbed deployed and E2E passed ({status.e2e_url})")
        user = DEMO_USERS[stage]
        _say(f"\n$ {ferry} approve {release_id} --stage {stage} --as {user} --comment 'demo: looks good'")
        decide = build_parser().parse_args(
            ["approve", release_id, "--stage", stage, "--as", user, "--comment", "demo: looks good"]
        )
        await release_cmds.decide(cfg, decide, approve=True)  # type: ignore[arg-type]
    handle = client.get_workflow_handle_for(ReleaseWorkflow.run, wf_id)
    try:
        final: ReleaseStatus = await handle.result()
    except Exception as e:  # noqa: BLE001 - reported below with the release's own status
        status = await handle.query(ReleaseWorkflow.status)
        raise CommandError(f"release failed: {getattr(status, 'error', e)}", FAILED) from None

    _say("\n=== summary ===")
    _say(f"release {release_id}: {final.outcome}")
    if final.rollback_cause:
        _say(f"  rolled back because {final.rollback_cause}")
        _say(f"  issue: {final.feedback_issue or '(none opened)'}")
    for env in cfg.environments:
        kustomization = load_yaml(
            read_file_at(sandbox.root / "repos" / "gitops.git", "main", f"{env}/kustomization.yaml"),
            f"{env}/kustomization.yaml",
        )
        images = {
            i["name"]: f"{i.get('newName', i['name'])}@{i.get('digest', i.get('newTag', '?'))}"
            for i in kustomization.get("images") or []
        }
        _say(f"  {env:<11} {SERVICE}: {images.get(SERVICE, '(not deployed)')}")
    for service, rollout in final.environments[-1].rollouts.items():
        steps = "; ".join(rollout.promoted_steps) or "first revision, stable at once"
        _say(f"  production {service}: Argo Rollout {rollout.strategy}, {rollout.phase} ({steps})")
    digest = final.digests[SERVICE]
    onprem = _harbor_has(sandbox, "harbor-onprem", SERVICE, digest)
    cloud = _harbor_has(sandbox, "harbor-cloud", SERVICE, digest)
    same = "identical on Harbor-OnPrem and Harbor-Cloud" if onprem and cloud else "NOT on both Harbor instances"
    _say(f"  digest {digest}: {same}")
    signers = cfg.approvals.signatures
    for gate in final.gates:
        how = "; ".join(gate.verified_by) or "-"
        _say(f"  gate {gate.stage:<10} {gate.state}, verified by the onprem worker: {how}")
    if signers is not None:
        _say(
            f"    (each approval was signed with the approver's SSH key in {signers.key_dir} and checked with "
            f"ssh-keygen -Y verify against {signers.allowed_signers}; the gate policy came from the workers' "
            "ferry.yaml, not from the command that started the release)"
        )
    _say(f"  Temporal UI: {release_cmds.ui_link(cfg, wf_id)}")
    _say(f"  DORA report: {ferry} report --since 1d --html report.html")
    return OK if final.outcome == "succeeded" and onprem and cloud else FAILED
