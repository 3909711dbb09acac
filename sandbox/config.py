"""The sandbox's ferry.yaml: the example monorepo's services, stand-in URLs, groups and demo approvers."""

from __future__ import annotations

from typing import Any

from sandbox.standins.world import NAMES

# The stand-ins' names, in port order (18101, 18102, ...).
STANDINS = NAMES
ENVIRONMENTS = ("testbed", "staging", "production")

# The demo's approvers: QA decides staging, the release manager decides production.
DEMO_USERS = {"staging": "quinn", "production": "rita"}
# Everyone the sandbox knows, with the email its Buildkite stand-in knows them by; each gets an SSH signing key
# (`.sandbox/keys/<name>`) listed in `.sandbox/allowed_signers` under both names. mallory is in no group.
PEOPLE = {name: f"{name}@example.com" for name in ("quinn", "quentin", "rita", "raj", "mallory")}


def default_ports(base: int = 7233) -> dict[str, int]:
    """Temporal on `base`, its UI on base+1000 (the dev server's defaults), stand-ins from 18101."""
    offset = base - 7233
    ports = {"temporal": base, "temporal-ui": base + 1000}
    ports.update({name: 18101 + offset + i for i, name in enumerate(STANDINS)})
    ports["receiver"] = 18151 + offset
    ports["codec-server"] = 18161 + offset
    ports.update({f"metrics-{site}": 18171 + offset + i for i, site in enumerate(("onprem", "cloud"))})
    return ports


def sandbox_metrics(temporal_address: str) -> dict[str, str]:
    """`observability.metrics` of the sandbox: each worker's Prometheus on its port of `default_ports`.

    Derived from the Temporal port, so `--port-base` moves them with the rest (and `up` checks they are free).
    """
    port = temporal_address.rpartition(":")[2]
    ports = default_ports(int(port)) if port.isdigit() else default_ports()
    found = {site: ports[f"metrics-{site}"] for site in ("onprem", "cloud")}
    return {site: f"127.0.0.1:{p}" for site, p in found.items() if 0 < p < 65536}


# The Argo Rollouts of production (infra/gitops/production/rollouts/): service -> Rollout, and their namespace.
PRODUCTION_ROLLOUTS = {"api": "api", "web": "web"}
PRODUCTION_NAMESPACE = "shop-production"


def example_services() -> dict[str, Any]:
    """`services:` of the example monorepo: four services and `common`, a library two of them use."""

    def svc(name: str, depends_on: list[str] | None = None) -> dict[str, Any]:
        return {
            "paths": [f"services/{name}/**"],
            "depends_on": depends_on or [],
            "image": name,
            "argocd_apps": {env: f"shop-{env}" for env in ENVIRONMENTS},
        }

    return {
        "api": svc("api", ["common"]),
        "web": svc("web"),
        "worker": svc("worker", ["common"]),
        "billing": svc("billing"),
        "common": {"kind": "library", "paths": ["libs/common/**"]},
    }


def sandbox_config(
    *,
    urls: dict[str, str],
    credentials: dict[str, dict[str, str]],
    app_repo: str,
    gitops_repo: str,
    temporal_address: str,
    ui_url: str | None,
    workdir: str,
    poll_seconds: float = 0.2,
    attempts: int = 5,
    retry_budget_seconds: float = 90,
    heartbeat_seconds: float = 20,
    start_to_close_seconds: float = 600,
    replication_policy_id: int = 1,
    signing: dict[str, Any] | None = None,
    webhook_url: dict[str, str] | None = None,
    progressive: bool = True,
    soak_minutes: float = 0.05,
    tracker_url: str | None = None,
    tracker_token: dict[str, str] | None = None,
    tracker: str = "github",
    encryption_key: dict[str, str] | None = None,
    signatures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """ferry.yaml (as a dict) for stand-ins at `urls`; `credentials` maps stand-in -> credential reference.

    With `signing` (the `signing:` section), CI signs images and staging and production require a signature;
    with `webhook_url` (a credential reference), gates and failures are announced there; with
    `encryption_key` (a credential reference), every Temporal payload is encrypted with it (key id `sandbox`).

    With `tracker_url` and `tracker_token` (the sandbox receiver's URL and a credential reference), a production
    rollback opens an issue there: `tracker` "github" (default) or "gitlab", project acme/shop.

    With `signatures` (the `approvals.signatures` section: allowed_signers and the CLI's key_dir), decisions
    signed by the sandbox's people verify; without it only Buildkite proofs can decide.

    With `progressive` (default), production's api and web are Argo Rollouts on the cloud cluster (the kube
    stand-in at /clusters/cloud), promoted automatically after `soak_minutes` at each pause.
    """
    signed = signing is not None

    def endpoint(name: str, **extra: Any) -> dict[str, Any]:
        return {"url": urls[name], "credential": credentials[name], **extra}

    return {
        "temporal": {
            "address": temporal_address,
            "namespace": "default",
            "ui_url": ui_url,
            **(
                {"encryption": {"active_key": "sandbox", "keys": {"sandbox": encryption_key}}} if encryption_key else {}
            ),
        },
        "sites": {
            "onprem": {
                "harbor": endpoint(
                    "harbor-onprem", username="robot$ferry", replication_policies={"cloud": replication_policy_id}
                ),
                "argocd": endpoint("argocd-onprem"),
                "sonarqube": endpoint("sonarqube"),
                "tekton": endpoint("tekton"),
                "buildkite": endpoint("buildkite", organization="acme", e2e_pipeline="e2e"),
                "rancher": endpoint("rancher"),
            },
            "cloud": {
                "harbor": endpoint("harbor-cloud", username="robot$ferry"),
                "argocd": endpoint("argocd-cloud"),
                # One Rancher manages both domains; each site's worker imports the clusters it can reach.
                "rancher": endpoint("rancher"),
                # The cloud cluster's API (kube stand-in), where Argo CD-Cloud's syncs run the Rollouts.
                **(
                    {"kubernetes": {**endpoint("kube"), "url": urls["kube"] + "/clusters/cloud"}} if progressive else {}
                ),
            },
        },
        "repos": {"app": {"url": app_repo, "name": "shop"}, "gitops": {"url": gitops_repo}},
        "services": {
            name: {**raw, "rollouts": {"production": PRODUCTION_ROLLOUTS[name]}}
            if progressive and name in PRODUCTION_ROLLOUTS
            else raw
            for name, raw in example_services().items()
        },
        "environments": {
            "testbed": {"site": "onprem", "path": "testbed", "e2e": True},
            "staging": {
                "site": "cloud",
                "path": "staging",
                "gate": "staging",
                "policy": {"require_signature": signed},
            },
            "production": {
                "site": "cloud",
                "path": "production",
                "gate": "production",
                "policy": {"block_severity": "High", "require_signature": signed},
                **(
                    {"rollout": {"namespace": PRODUCTION_NAMESPACE, "promotion": "auto", "soak_minutes": soak_minutes}}
                    if progressive
                    else {}
                ),
            },
        },
        "groups": {"qa": ["quinn", "quentin"], "release-managers": ["rita", "raj"]},
        "gates": {
            "staging": {"groups": ["qa"]},
            "production": {"groups": ["release-managers"], "forbid_commit_author": True},
        },
        "approvals": {
            "freeze_override_groups": ["release-managers"],
            "trust_buildkite_teams": True,
            **({"signatures": signatures} if signatures else {}),
        },
        "signing": signing or {},
        "notifications": {"webhook_url": webhook_url} if webhook_url else {},
        "feedback": (
            {"tracker": tracker, "url": tracker_url, "project": "acme/shop", "token": tracker_token, "site": "onprem"}
            if tracker_url and tracker_token
            else {}
        ),
        "timeouts": {
            "activity_attempts": attempts,
            "retry_budget_seconds": retry_budget_seconds,
            "retry_initial_seconds": 0.2,
            "retry_max_seconds": 2.0,
            "heartbeat_seconds": heartbeat_seconds,
            "activity_start_to_close_seconds": start_to_close_seconds,
            "poll_seconds": poll_seconds,
        },
        "workdir": workdir,
        "sandbox": True,
        "observability": {"metrics": sandbox_metrics(temporal_address)},
    }
