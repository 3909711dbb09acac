"""`ferry replay`: replay a recorded history against today's workflow code before deploying it.

A replay that fails means the new code would break releases in flight (non-determinism): fix or version
the change before rolling the workers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter, default
from temporalio.worker import Replayer

from common.codec import data_converter
from common.config import FerryConfig, default_config_path, load_config
from starters.common import FAILED, OK, CommandError, client_for, existing_handle, print_json
from worker import WORKFLOWS


async def replay_history(history: WorkflowHistory, converter: DataConverter | None = None) -> str | None:
    """Replay one history; None if it replays cleanly, else the failure message.

    `converter` must be the one the workers used (with their encryption keys), or encrypted payloads
    cannot be read; plaintext histories replay with or without it.
    """
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter or default())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return str(result.replay_failure) if result.replay_failure else None


def _file_config(args: argparse.Namespace) -> FerryConfig | None:
    """--file needs no ferry.yaml, but uses its encryption keys when one is given or present."""
    given = getattr(args, "config", None)
    path = given or default_config_path()
    return load_config(path) if given or path.exists() else None


async def replay(cfg: FerryConfig | None, args: argparse.Namespace) -> int:
    """Replay a history from the server (WORKFLOW_ID) or from a JSON file (--file); --save records it."""
    if args.file:
        cfg = cfg or _file_config(args)
        path = Path(args.file)
        try:
            history = WorkflowHistory.from_json(args.workflow_id or path.stem, json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise CommandError(f"{path}: not a readable Temporal history JSON ({e})") from None
    else:
        if not args.workflow_id:
            raise CommandError("give a WORKFLOW_ID (or --file HISTORY.json)")
        assert cfg is not None
        client = await client_for(cfg)
        handle = await existing_handle(client, args.workflow_id)
        history = await handle.fetch_history()
        if args.save:
            Path(args.save).write_text(history.to_json())
    failure = await replay_history(history, data_converter(cfg.temporal.encryption) if cfg else None)
    if args.json:
        print_json(
            {
                "workflow_id": history.workflow_id,
                "events": len(history.events),
                "ok": failure is None,
                "failure": failure,
            }
        )
    elif failure:
        print(f"replay of {history.workflow_id} FAILED: {failure}")
    else:
        print(f"replay of {history.workflow_id} ok ({len(history.events)} events)")
    return OK if failure is None else FAILED
