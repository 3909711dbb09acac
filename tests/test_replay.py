"""Recorded histories (tests/histories/) must replay against today's workflow code.

A failure here means a change would break releases already in flight: version the change
(workflow.patched) instead of editing the old path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory

from starters.replay import replay_history

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_recorded() -> None:
    names = {p.stem for p in HISTORIES}
    assert {
        "release-to-production",
        "release-gate-policy",
        "release-canary",
        "release-canary-rolled-back",
        "ci-signed",
        # Verified decisions: plan and policy from the workers, signed identities, audited refusals.
        "release-verified-decisions",
        "release-verified-promotion",
        "rollback-verified",
        "rollback-whole-state",  # every service's pin as the target left it, the environment held meanwhile
        "envlock-fifo",  # four movers granted an environment one after another
    } <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    assert len(history.events) > 20
    assert await replay_history(history) is None
