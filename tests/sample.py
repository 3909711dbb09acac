"""A complete ferry.yaml for unit and workflow tests: the sandbox's, with fixed URLs and env credentials."""

from __future__ import annotations

from typing import Any

from sandbox.config import STANDINS, default_ports, sandbox_config


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
    ports = default_ports()
    all_urls = {name: f"http://127.0.0.1:{ports[name]}" for name in STANDINS} | (urls or {})
    credentials = {name: {"env": "FERRY_TEST_TOKEN_" + name.upper().replace("-", "_")} for name in STANDINS}
    from signing import ALLOWED_SIGNERS, KEY_DIR  # tests/ is on sys.path (conftest)

    return sandbox_config(
        urls=all_urls,
        credentials=credentials,
        app_repo=app_repo,
        gitops_repo=gitops_repo,
        temporal_address=temporal_address,
        ui_url=None,
        workdir="/tmp/ferry-test-workdir",
        poll_seconds=poll_seconds,
        attempts=attempts,
        signatures={"allowed_signers": str(ALLOWED_SIGNERS), "key_dir": str(KEY_DIR)},
    )
