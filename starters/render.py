"""Human-readable rendering of a release's status for the terminal."""

from __future__ import annotations

from workflows.types import ReleaseStatus


def short(digest: str) -> str:
    """sha256:abcdef123456… for tables."""
    return digest[:19] + "…" if len(digest) > 20 else digest


def render_status(s: ReleaseStatus, ui_link: str = "") -> str:
    """A compact, complete view: outcome, stage, services and digests, environments, gates, audit."""
    lines = [
        f"release   {s.release_id}  ({s.commit[:12]} on {s.branch})",
        f"outcome   {s.outcome}",
        f"stage     {s.stage}",
    ]
    if s.rollback_cause:
        lines.append(f"rolled back because {s.rollback_cause}")
    elif s.error:
        lines.append(f"error     {s.error}")
    if s.feedback_issue:
        lines.append(f"issue     {s.feedback_issue}")
    if s.e2e_url:
        lines.append(f"e2e build {s.e2e_url}")
    if s.ci is not None and s.ci.nothing_to_release:
        lines.append("services  none: nothing to release")
    elif s.services:
        lines.append("services")
        for name in s.services:
            reason = s.ci.reasons.get(name, "") if s.ci else ""
            lines.append(f"  {name:<12} {s.digests.get(name, '(not built)'):<75} {reason}")
    lines.append("environments")
    for env in s.environments:
        apps = ", ".join(f"{a} {v}" for a, v in env.apps.items())
        commit = f" gitops {env.gitops_commit[:12]}" if env.gitops_commit else ""
        lines.append(f"  {env.name:<12} {env.state:<10}{commit} {apps}".rstrip())
        if env.revert_commit:
            lines.append(f"  {'':<12} reverted by gitops {env.revert_commit[:12]}")
        for service, r in env.rollouts.items():
            where = f"step {r.step}/{r.steps}, weight {r.weight}%" if r.strategy == "canary" else r.strategy
            note = f": {r.message}" if r.message else ""
            lines.append(f"  {'':<12} rollout {service} ({r.name}) {r.phase} at {where}{note}")
            for promoted in r.promoted_steps:
                lines.append(f"  {'':<14} {promoted}")
    if s.gates:
        lines.append("gates")
        for g in s.gates:
            who = f" by {g.decided_by}" if g.decided_by else ""
            comment = f' "{g.comment}"' if g.comment else ""
            policy = f" (policy {g.policy_version})" if g.policy_version else ""
            lines.append(f"  {g.stage:<12} {g.state}{who}{comment}{policy}")
            if g.unverified:
                lines.append(f"  {'':<12} WARNING: decided without a verified identity (approvals.trust_unverified)")
            for a in s.audit:
                if a.stage == g.stage and a.action != "refused" and a.method:
                    lines.append(f"  {'':<12} {a.action} by {a.user}: {a.method}")
    refusals = [a for a in s.audit if a.action == "refused"]
    if refusals:
        lines.append("refused decisions")
        for a in refusals:
            via = f" via {a.channel}" + (f" ({a.method})" if a.method else "")
            lines.append(f"  {a.at} {a.user} (as claimed) at {a.stage}{via}: {a.reason}")
    if s.timings:
        lines.append("timings")
        for stage, t in sorted(s.timings.items(), key=lambda item: item[1].get("started", "")):
            lines.append(f"  {stage:<20} {t.get('started', '')} -> {t.get('ended', '…')}")
    if ui_link:
        lines.append(f"ui        {ui_link}")
    return "\n".join(lines)
