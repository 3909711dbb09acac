"""Payloads of the environment lock: who holds an environment, who waits, and what a holder is told.

Apart from workflows/types.py because the lock is its own small protocol between three parties (the
EnvironmentLock workflow, the `envlock.request` activity, and the workflows that move an environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LockHolder:
    """One run of a workflow that holds, or waits for, an environment.

    The run id matters: a Reset or a re-run of the same release is another run, and the lock skips or frees
    a run that has ended, whoever it was.
    """

    workflow_id: str
    run_id: str
    purpose: str = ""  # what the holder does there, for `state` and the UI ("release X moves testbed")
    since: str = ""  # when it was queued, then when it was granted (set by the lock workflow)
    behind: list[str] = field(default_factory=list)  # who held or waited ahead of it when it asked


@dataclass
class LockState:
    """The lock workflow's whole state: carried across continue-as-new, and its `state` query."""

    holder: LockHolder | None = None
    queue: list[LockHolder] = field(default_factory=list)
    grants: int = 0  # how many times the lock was granted, across runs
    freed: list[str] = field(default_factory=list)  # recent "ended without releasing" notes (bounded)


@dataclass
class LockInput:
    """Start (or continue) an EnvironmentLock; `state` is what a previous run carried over."""

    environment: str
    state: LockState | None = None
    idle_seconds: float = 3600.0  # the lock workflow ends after this long with nobody holding or waiting
    check_seconds: float = 60.0  # while others wait, how often the holder's run is checked to be running


@dataclass
class ReleaseOrder:
    """Signal to an EnvironmentLock: `holder` is done (or no longer waits)."""

    holder: LockHolder


@dataclass
class AcquireInput:
    """What `envlock.request` needs: which lock (its workflow id), and for which run of which workflow."""

    lock_id: str
    environment: str
    holder: LockHolder


@dataclass
class LockGrant:
    """Signal from an EnvironmentLock to a waiting run: it holds the environment now."""

    lock_id: str
    holder: LockHolder


@dataclass
class LockLease:
    """What a holder keeps while it holds an environment, to give it back."""

    lock_id: str
    environment: str
    holder: LockHolder
    waited_seconds: float = 0.0
    waited_for: list[str] = field(default_factory=list)  # the workflow ids ahead of it when it asked
