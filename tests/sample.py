"""A complete ferry.yaml for tests, as a dict, pointing at whatever URLs and repos a test supplies."""

from __future__ import annotations

from typing import Any


def sample_config(
    *,
    app_repo: str = "/tmp/app.git",
    gitops_repo: str = "/tmp/gitops.git",
    urls: dict[str, str] | None = None,
    temporal_address: str = "localhost:7233",
    poll_seconds: float = 0.05,
    attempts: int = 4,
) -> dict[str, Any]:
    """ferry.yaml as a dict: four services and a shared library, three environments, two gates."""
    u = {
        "harbor-onprem": "http://127.0.0.1:18101",
        "harbor-cloud": "http://127.0.0.1:18102",
        "argocd-onprem": "http://127.0.0.1:18103",
        "argocd-cloud": "http://127.0.0.1:18104",
        "sonarqube": "http://127.0.0.1:18105",
        "tekton": "http://127.0.0.1:18106",
        "buildkite": "http://127.0.0.1:18107",
        **(urls or {}),
    }

    def apps() -> dict[str, str]:
        # One umbrella Argo CD application per environment, as in the sandbox.
        return {env: f"shop-{env}" for env in ("testbed", "staging", "production")}

    return {
        "temporal": {"address": temporal_address, "namespace": "default"},
        "sites": {
            "onprem": {
                "harbor": {
                    "url": u["harbor-onprem"],
                    "username": "robot$ferry",
                    "credential": {"env": "FERRY_TEST_HARBOR_ONPREM_TOKEN"},
                    "replication_policies": {"cloud": 1},
                },
                "argocd": {"url": u["argocd-onprem"], "credential": {"env": "FERRY_TEST_ARGOCD_ONPREM_TOKEN"}},
                "sonarqube": {"url": u["sonarqube"], "credential": {"env": "FERRY_TEST_SONAR_TOKEN"}},
                "tekton": {"url": u["tekton"], "credential": {"env": "FERRY_TEST_K8S_TOKEN"}},
                "buildkite": {
                    "url": u["buildkite"],
                    "credential": {"env": "FERRY_TEST_BUILDKITE_TOKEN"},
                    "organization": "acme",
                    "e2e_pipeline": "e2e",
                },
            },
            "cloud": {
                "harbor": {
                    "url": u["harbor-cloud"],
                    "username": "robot$ferry",
                    "credential": {"env": "FERRY_TEST_HARBOR_CLOUD_TOKEN"},
                },
                "argocd": {"url": u["argocd-cloud"], "credential": {"env": "FERRY_TEST_ARGOCD_CLOUD_TOKEN"}},
            },
        },
        "repos": {"app": {"url": app_repo, "name": "shop"}, "gitops": {"url": gitops_repo}},
        "services": {
            "api": {"paths": ["services/api/**"], "depends_on": ["common"], "image": "api", "argocd_apps": apps()},
            "web": {"paths": ["services/web/**"], "image": "web", "argocd_apps": apps()},
            "worker": {
                "paths": ["services/worker/**"],
                "depends_on": ["common"],
                "image": "worker",
                "argocd_apps": apps(),
            },
            "billing": {
                "paths": ["services/billing/**"],
                "image": "billing",
                "argocd_apps": apps(),
            },
            "common": {"kind": "library", "paths": ["libs/common/**"]},
        },
        "environments": {
            "testbed": {"site": "onprem", "path": "testbed", "e2e": True},
            "staging": {"site": "cloud", "path": "staging", "gate": "staging"},
            "production": {"site": "cloud", "path": "production", "gate": "production"},
        },
        "groups": {"qa": ["quinn"], "release-managers": ["rita"]},
        "gates": {"staging": {"groups": ["qa"]}, "production": {"groups": ["release-managers"]}},
        "timeouts": {
            "activity_attempts": attempts,
            "retry_initial_seconds": 0.1,
            "retry_max_seconds": 0.5,
            "heartbeat_seconds": 10,
            "poll_seconds": poll_seconds,
        },
    }
