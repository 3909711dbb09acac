"""EnvironmentLock: one move-sync-verify at a time per environment.

Several releases (of one branch past CI, of hotfix and release branches, rollbacks) can reach the same
environment at once. Without a lock they fight over its Argo CD applications (each re-requests its own
revision: a livelock), and one release's E2E runs while another re-syncs the environment to other images.
So a workflow that moves an environment first holds it: one EnvironmentLock workflow per environment of a
GitOps repo, a FIFO of holders, granted one at a time.

The protocol, as Temporal's mutex sample has it:
- a mover signals the lock a `request` (when the lock is not running, the `envlock.request` activity
  signals-with-start it instead: only a client call can start a workflow), then waits for the lock's
  `envlock_granted` Signal. Nothing polls: a hundred releases queued behind a paused canary cost the
  server nothing while they wait, and each hand-over takes one Signal.
- when done, the mover signals `release` (a Signal from workflow code: no activity).
- the lock grants the next in line by signalling it; a mover whose run has ended (terminated, timed out,
  Reset) cannot take the Signal, so the lock notes it and grants the one after. While others wait, the lock
  checks the holder the same way (an `envlock_check` Signal, which only a running run accepts: after
  `check_seconds`, then twice as long each time, at most every 15 minutes) and frees a holder that ended
  without releasing. A live holder keeps the lock as long as it must: a canary paused for a person is
  still a move under way.

What it does not do: authenticate. Anyone who can signal workflows can send `release`; that lets two moves
overlap, as they did before the lock, and cannot deploy anything by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from workflows.lock_types import AcquireInput, LockGrant, LockHolder, LockInput, LockLease, LockState, ReleaseOrder
    from workflows.options import activity_options
    from workflows.types import EnvironmentSpec, ReleasePlan

MAX_HISTORY = 2_000  # continue as new past this many events: one lock serves releases for months
FREED_KEPT = 20
MAX_CHECK_SECONDS = 900.0  # the longest a holder that ended without releasing keeps others waiting
LONGEST_WAIT = timedelta(days=7)  # a wait for the lock: longer than any gate's deadline (72 h by default)
LOCK_WAIT_EXPIRED = "EnvironmentLockWaitExpired"
GRANTED = "envlock_granted"
CHECK = "envlock_check"


def lock_workflow_id(plan: ReleasePlan, env: EnvironmentSpec) -> str:
    """`envlock/{env}/{hash}`: the environment's name to read in the UI, and a hash of where it lives
    (GitOps repo, branch, path) so two GitOps repos with a `staging` each do not share a lock."""
    where = f"{plan.gitops_repo_url}\n{plan.gitops_branch}\n{env.path}".encode()
    return f"envlock/{env.name}/{hashlib.sha256(where).hexdigest()[:12]}"


def _same(a: LockHolder | None, b: LockHolder) -> bool:
    return a is not None and a.workflow_id == b.workflow_id and a.run_id == b.run_id


@workflow.defn(name="EnvironmentLock")
class EnvironmentLock:
    """Grants one environment to one workflow run at a time, in the order they asked."""

    @workflow.init
    def __init__(self, inp: LockInput) -> None:
        self._inp = inp
        self._state = inp.state or LockState()
        self._changed = False
        self._regrant = False  # the holder asked again (a retried request): tell it again
        self._checked_since = ""  # the holder (by its grant time) that `_checks` counts checks of
        self._checks = 0

    @workflow.query
    def state(self) -> LockState:
        """Who holds the environment, since when and for what; who waits, in order."""
        return self._state

    @workflow.signal
    def request(self, holder: LockHolder) -> None:
        """Ask for the environment. Idempotent: a run that holds it or already waits keeps its place."""
        s = self._state
        if _same(s.holder, holder):
            self._regrant = True
        elif not any(_same(q, holder) for q in s.queue):
            holder.since = workflow.now().isoformat()
            holder.behind = [h.workflow_id for h in ([s.holder] if s.holder else []) + s.queue]
            s.queue.append(holder)
        self._changed = True

    @workflow.signal
    def release(self, order: ReleaseOrder) -> None:
        """Give the environment back, or stop waiting for it. Idempotent: an unknown holder changes nothing."""
        s = self._state
        if _same(s.holder, order.holder):
            s.holder = None
        else:
            s.queue = [q for q in s.queue if not _same(q, order.holder)]
        self._changed = True

    def _note(self, holder: LockHolder, what: str) -> None:
        self._state.freed = [*self._state.freed, f"{holder.workflow_id} ({holder.run_id}): {what}"][-FREED_KEPT:]

    async def _tell(self, holder: LockHolder, signal: str, *args: object) -> bool:
        """Signal `holder`'s run; False when it cannot take it (that run has ended)."""
        try:
            await workflow.get_external_workflow_handle(holder.workflow_id, run_id=holder.run_id).signal(signal, *args)
        except (FailureError, ApplicationError):
            return False
        return True

    async def _grant(self) -> None:
        s = self._state
        if s.holder is not None and self._regrant:
            self._regrant = False
            if not await self._tell(s.holder, GRANTED, LockGrant(workflow.info().workflow_id, s.holder)):
                self._note(s.holder, "ended while holding (found on a repeated request)")
                s.holder = None
        while s.holder is None and s.queue:
            nxt = s.queue.pop(0)
            nxt.since = workflow.now().isoformat()
            s.holder = nxt
            if await self._tell(nxt, GRANTED, LockGrant(workflow.info().workflow_id, nxt)):
                s.grants += 1
            else:
                self._note(nxt, "ended before its turn came")
                s.holder = None

    @workflow.run
    async def run(self, inp: LockInput) -> LockState:
        """Serve requests until idle for `idle_seconds` (then end; the next request starts a new run)."""
        s = self._state
        while True:
            self._changed = False
            await self._grant()
            if self._changed:
                continue  # a signal arrived while we were granting: look again before sleeping
            idle = s.holder is None and not s.queue
            waiting = s.holder is not None and bool(s.queue)
            if s.holder is None or s.holder.since != self._checked_since:
                self._checked_since, self._checks = s.holder.since if s.holder else "", 0
            # Each check is a Signal in the holder's history: soon at first (a terminated release is freed
            # within a minute or two), then rarer, so a canary paused for 72 hours gets a few hundred, not
            # thousands.
            check = min(inp.check_seconds * 2**self._checks, MAX_CHECK_SECONDS)
            timeout = inp.idle_seconds if idle else check if waiting else None
            try:
                await workflow.wait_condition(
                    lambda: self._changed or workflow.info().is_continue_as_new_suggested(), timeout=timeout
                )
            except TimeoutError:
                if s.holder is None and not s.queue:
                    return s
                if s.holder is not None and s.queue:
                    self._checks += 1
                    if not await self._tell(s.holder, CHECK):
                        self._note(s.holder, "ended without releasing")
                        s.holder = None
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() > MAX_HISTORY:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    LockInput(inp.environment, s, idle_seconds=inp.idle_seconds, check_seconds=inp.check_seconds)
                )


class LockHolderMixin:
    """What a workflow that moves environments needs to hold one: the grant Signal, hold and give back.

    Mixed into Release and Rollback; the Signals are named `envlock_*` so they do not clash with theirs.
    """

    _envlock_grants: dict[str, LockGrant] | None = None

    def _lock_grants(self) -> dict[str, LockGrant]:
        if self._envlock_grants is None:
            self._envlock_grants = {}
        return self._envlock_grants

    @workflow.signal(name=GRANTED)
    def _envlock_granted(self, grant: LockGrant) -> None:
        """From an EnvironmentLock: this run now holds the environment (the lock signals this very run)."""
        # Not checked against workflow.info(): a history replayed from a file runs under another id.
        self._lock_grants()[grant.lock_id] = grant

    @workflow.signal(name=CHECK)
    def _envlock_check(self) -> None:
        """From an EnvironmentLock: "are you still running?" Taking the Signal is the answer."""

    async def _hold(self, plan: ReleasePlan, env: EnvironmentSpec, purpose: str) -> LockLease:
        """Wait until this run holds `env`; returns the lease to give back. Cancelled: leaves the queue."""
        info = workflow.info()
        lock_id = lock_workflow_id(plan, env)
        holder = LockHolder(workflow_id=info.workflow_id, run_id=info.run_id, purpose=purpose)
        grants = self._lock_grants()
        grants.pop(lock_id, None)
        asked = workflow.now()
        try:
            await self._ask(plan, lock_id, env.name, holder)
            await workflow.wait_condition(lambda: lock_id in grants, timeout=LONGEST_WAIT)
        except TimeoutError:
            await self._give_back(LockLease(lock_id=lock_id, environment=env.name, holder=holder))
            raise ApplicationError(
                f"waited {LONGEST_WAIT.days} days to hold {env.name} (lock {lock_id}); see who holds it in the "
                "lock workflow's `state` query",
                type=LOCK_WAIT_EXPIRED,
                non_retryable=True,
            ) from None
        except asyncio.CancelledError:
            await self._give_back(LockLease(lock_id=lock_id, environment=env.name, holder=holder))
            raise
        grant = grants.pop(lock_id)
        return LockLease(
            lock_id=lock_id,
            environment=env.name,
            holder=holder,
            waited_seconds=(workflow.now() - asked).total_seconds(),
            waited_for=list(grant.holder.behind),
        )

    async def _ask(self, plan: ReleasePlan, lock_id: str, environment: str, holder: LockHolder) -> None:
        try:
            # The lock usually runs already (it ends only after an hour idle): a Signal from here asks it
            # without an activity's round trip.
            await workflow.get_external_workflow_handle(lock_id).signal("request", holder)
        except (FailureError, ApplicationError):
            # Not running: only a client call can start it (signal-with-start), so an activity asks.
            await workflow.execute_activity(
                "envlock.request",
                AcquireInput(lock_id=lock_id, environment=environment, holder=holder),
                **activity_options(plan.activities, plan.onprem_queue),
            )

    async def _give_back(self, lease: LockLease) -> None:
        """Release `lease` (or leave the queue); a lock that is gone has nobody to tell.

        Awaited, not sent and forgotten: a run that ends in the same workflow task as its release Signal
        loses the Signal, and the lock would then wait for the next waiter's check to free it."""
        with contextlib.suppress(FailureError, ApplicationError):
            await workflow.get_external_workflow_handle(lease.lock_id).signal(
                "release", ReleaseOrder(holder=lease.holder)
            )
