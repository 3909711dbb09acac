"""Payloads of the environment lock: who holds an environment, who waits, and what a holder gets back.

Apart from workflows/types.py because the lock is its own small protocol between three parties (the
EnvironmentLock workflow, the `envlock.*` activities, and the workflows that move an environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LockHolder:
    """One run of a workflow that holds, or waits for, an environment.

    The run id matters: a Reset or a re-run of the same release is another run, and the lock frees a run
    that has ended whoever it was.
    """

    workflow_id: str
    run_id: str
    purpose: str = ""  # what the holder does there, for `status` and the UI ("release X moves testbed")
    since: str = ""  # when it was granted (or queued), set by the lock workflow


@dataclass
class LockState:
    """The lock workflow's whole state: carried across continue-as-new, and its `state` query."""

    holder: LockHolder | None = None
    queue: list[LockHolder] = field(default_factory=list)
    grants: int = 0  # how many times the lock was granted, across runs
    freed: list[str] = field(default_factory=list)  # recent "holder ended without releasing" notes (bounded)


@dataclass
class LockInput:
    """Start (or continue) an EnvironmentLock; `state` is what a previous run carried over."""

    environment: str
    state: LockState | None = None
    idle_seconds: float = 3600.0  # the lock workflow ends after this long with nobody holding or waiting


@dataclass
class ReleaseOrder:
    """Signal to an EnvironmentLock: `holder` is done (or no longer waits); `reason` is for the record."""

    holder: LockHolder
    reason: str = ""


@dataclass
class AcquireInput:
    """What `envlock.acquire` needs: which lock (its workflow id), and for which run of which workflow."""

    lock_id: str
    environment: str
    holder: LockHolder
    idle_seconds: float = 3600.0


@dataclass
class LockLease:
    """The answer of `envlock.acquire`: the caller holds the environment until it gives the lease back."""

    lock_id: str
    environment: str
    holder: LockHolder
    waited_seconds: float = 0.0
    waited_for: list[str] = field(default_factory=list)  # the workflow ids that held it while we waited
