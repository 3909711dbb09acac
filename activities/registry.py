"""Which activities each site's worker registers, built from ferry.yaml with the site's clients only.

`onprem`: the workers' plan, gate policies and identity checks (activities/approvals.py), git (change
analysis, pipeline rendering, GitOps moves), Tekton, SonarQube, Harbor-OnPrem (scan
gate, replication, policy check), cosign sign and verify, Argo CD-OnPrem, Buildkite and the notification
webhook. `cloud`: Harbor-Cloud (confirm a replicated digest, policy check), cosign verify and Argo CD-Cloud.
A system that a site does not configure is simply not registered there. Argo Rollouts (`rollouts.wait`,
`rollouts.promote`, `rollouts.abort`) run on the worker of a site with a `kubernetes` endpoint.
The issue tracker (`tracker.open_issue`, feedback on a rollback) is registered on `feedback.site`'s worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from activities.approvals import ApprovalActivities
from activities.argocd import ArgoCDActivities
from activities.bazel import BazelRunner
from activities.buildkite import BuildkiteActivities
from activities.changes import ChangeActivities
from activities.gitops import GitOpsActivities
from activities.gitrepo import GitWorkspace
from activities.harbor import HarborActivities
from activities.notify import NotifyActivities
from activities.pipeline import PipelineActivities
from activities.rancher import RancherActivities
from activities.rollouts import RolloutsActivities
from activities.sonarqube import SonarQubeActivities
from activities.supply_chain import CosignActivities, PolicyActivities
from activities.tekton import TektonActivities
from activities.terraform import TerraformActivities
from activities.tracker import TrackerActivities
from common.config import FerryConfig

# Activities of each system that belong to each site: the rest of a class's methods run elsewhere.
ONPREM_HARBOR = ("scan_gate", "replicate")
CLOUD_HARBOR = ("confirm",)


@dataclass
class SiteActivities:
    """The activity callables of one site's worker, and what to close at shutdown."""

    functions: list[Callable[..., Any]]
    closers: list[Any] = field(default_factory=list)

    @classmethod
    def from_config(
        cls,
        cfg: FerryConfig,
        site: str,
        transport: httpx.AsyncBaseTransport | None = None,
        config_path: Path | None = None,
    ) -> SiteActivities:
        """Build the activities of `site`; `transport` lets tests route HTTP to in-process stand-ins.

        `config_path`: the ferry.yaml the worker loaded, re-read by the onprem worker's plan and policy
        activities at each call so that an approver added there counts at the next gate without a restart.
        """
        conf = cfg.sites.get(site)
        functions: list[Callable[..., Any]] = []
        closers: list[Any] = []
        if conf is None:
            return cls(functions, closers)
        if conf.harbor is not None:
            harbor = HarborActivities.from_config(cfg, site, transport=transport)
            names = ONPREM_HARBOR if site == "onprem" else CLOUD_HARBOR
            functions += [getattr(harbor, n) for n in names]
            closers.append(harbor)
        if conf.harbor is not None:
            policy = PolicyActivities.from_config(cfg, site, transport=transport)
            functions.append(policy.check_image)
            closers.append(policy)
        if cfg.signing.public_key is not None or cfg.signing.key is not None:
            cosign = CosignActivities.from_config(cfg)
            functions.append(cosign.verify)
            if site == "onprem":
                functions.append(cosign.sign)
        if any(ws.site == site for ws in cfg.provisioning.workspaces.values()):
            terraform = TerraformActivities.from_config(cfg, site)
            functions += [terraform.inspect, terraform.init, terraform.plan, terraform.apply]
            functions += [terraform.output, terraform.drift]
        if conf.rancher is not None:
            rancher = RancherActivities.from_config(cfg, site, transport=transport)
            functions += [rancher.import_cluster, rancher.install_app]
            closers.append(rancher)
        if conf.argocd is not None:
            argocd = ArgoCDActivities.from_config(cfg, site, transport=transport)
            functions.append(argocd.sync)
            closers.append(argocd)
        if conf.kubernetes is not None:
            # The cluster API of the site's Argo Rollouts: follow, promote and abort progressive deliveries.
            rollouts = RolloutsActivities.from_config(cfg, site, transport=transport)
            functions += [rollouts.wait, rollouts.promote, rollouts.abort]
            closers.append(rollouts)
        if site == "onprem":
            workspace = GitWorkspace(Path(cfg.workdir).expanduser() / "git")
            bazel = cfg.change_analysis.bazel
            runner = BazelRunner(
                bazel.binary,
                output_user_root=Path(cfg.workdir).expanduser() / "bazel",
                startup_flags=bazel.startup_flags,
                query_flags=bazel.query_flags,
                batch=bazel.batch,
                max_idle_secs=bazel.max_idle_secs,
                timeout=bazel.timeout_seconds,
            )
            functions.append(ChangeActivities(workspace, runner).analyze)
            # The workflows run here: their plan, gate policies and identity checks come from this worker.
            approvals = ApprovalActivities.from_config(cfg, config_path, transport=transport)
            functions += [approvals.plan, approvals.policy, approvals.verify]
            closers.append(approvals)
            gitops = GitOpsActivities(workspace)
            functions += [gitops.move, gitops.deployed, gitops.state_at, gitops.revert]
            functions.append(PipelineActivities().render)
            if conf.tekton is not None:
                tekton = TektonActivities.from_config(cfg, site, transport=transport)
                functions += [tekton.run, tekton.cancel]
                closers.append(tekton)
            if conf.sonarqube is not None:
                sonar = SonarQubeActivities.from_config(cfg, site, transport=transport)
                functions.append(sonar.quality_gate)
                closers.append(sonar)
            if cfg.notifications.webhook_url is not None:
                notify = NotifyActivities.from_config(cfg, transport=transport)
                functions.append(notify.webhook)
                closers.append(notify)
            if conf.buildkite is not None:
                bk = BuildkiteActivities.from_config(cfg, site, transport=transport)
                functions.append(bk.e2e)
                closers.append(bk)
        if cfg.feedback.tracker != "none" and cfg.feedback.site == site:
            tracker = TrackerActivities.from_config(cfg, transport=transport)
            functions.append(tracker.open_issue)
            closers.append(tracker)
        return cls(functions, closers)

    async def aclose(self) -> None:
        """Close every client's connection pool."""
        for closer in self.closers:
            await closer.aclose()
