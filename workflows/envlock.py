"""EnvironmentLock: one move-sync-verify at a time per environment.

Several releases (of one branch past CI, of hotfix and release branches, rollbacks) can reach the same
environment at once. Without a lock they fight over its Argo CD applications (each re-requests its own
revision: a livelock), and one release's E2E runs while another re-syncs the environment to other images.
So a workflow that moves an environment first holds it: one EnvironmentLock workflow per environment of a
GitOps repo, a FIFO of holders, granted one at a time.

The protocol is deliberately small. A mover runs the `envlock.acquire` activity, which signals-with-start
this workflow with a `request` and polls the `state` query (heartbeating) until the mover holds it; when
done it runs `envlock.release`, which signals `release`. Nothing is sent back to the mover, so a waiting
release's history grows by one activity, however long it waits. A holder that ends without releasing
(terminated, timed out, Reset to an earlier point) is freed by the next waiter's activity, which checks the
holder's run with the Temporal client: the lock needs no timer per holder, and a live holder that holds
for a long time (a canary paused for a person) keeps the lock as long as it must.

What it does not do: authenticate. Anyone who can signal workflows can send `release`; that lets two
moves overlap, as they did before the lock, and cannot deploy anything by itself.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.lock_types import AcquireInput, LockHolder, LockInput, LockLease, LockState, ReleaseOrder
    from workflows.options import activity_options
    from workflows.types import EnvironmentSpec, ReleasePlan

MAX_HISTORY = 2_000  # continue as new past this many events: one lock serves releases for months
FREED_KEPT = 20
LONGEST_WAIT = timedelta(days=7)  # a wait for the lock: longer than any gate's deadline (72 h by default)


def lock_workflow_id(plan: ReleasePlan, env: EnvironmentSpec) -> str:
    """`envlock/{env}/{hash}`: the environment's name to read in the UI, and a hash of where it lives
    (GitOps repo, branch, path) so two GitOps repos with a `staging` each do not share a lock."""
    where = f"{plan.gitops_repo_url}\n{plan.gitops_branch}\n{env.path}".encode()
    return f"envlock/{env.name}/{hashlib.sha256(where).hexdigest()[:12]}"


def _same(a: LockHolder, b: LockHolder) -> bool:
    return a.workflow_id == b.workflow_id and a.run_id == b.run_id


@workflow.defn(name="EnvironmentLock")
class EnvironmentLock:
    """Grants one environment to one workflow run at a time, in the order they asked."""

    @workflow.init
    def __init__(self, inp: LockInput) -> None:
        self._inp = inp
        self._state = inp.state or LockState()
        self._changed = False

    @workflow.query
    def state(self) -> LockState:
        """Who holds the environment, since when and for what; who waits, in order."""
        return self._state

    @workflow.signal
    def request(self, holder: LockHolder) -> None:
        """Ask for the environment. Idempotent: a run that holds it or already waits keeps its place."""
        s = self._state
        if (s.holder is not None and _same(s.holder, holder)) or any(_same(q, holder) for q in s.queue):
            return
        holder.since = workflow.now().isoformat()
        s.queue.append(holder)
        self._grant()

    @workflow.signal
    def release(self, order: ReleaseOrder) -> None:
        """Give the environment back, or stop waiting for it. Idempotent: an unknown holder changes nothing."""
        s = self._state
        if s.holder is not None and _same(s.holder, order.holder):
            if order.reason:
                s.freed = [*s.freed, f"{s.holder.workflow_id}: {order.reason}"][-FREED_KEPT:]
            s.holder = None
        else:
            s.queue = [q for q in s.queue if not _same(q, order.holder)]
        self._grant()

    def _grant(self) -> None:
        s = self._state
        if s.holder is None and s.queue:
            s.holder = s.queue.pop(0)
            s.holder.since = workflow.now().isoformat()
            s.grants += 1
        self._changed = True

    @workflow.run
    async def run(self, inp: LockInput) -> LockState:
        """Serve requests until idle for `idle_seconds` (then end; the next request starts a new run)."""
        while True:
            self._changed = False
            idle = self._state.holder is None and not self._state.queue
            try:
                await workflow.wait_condition(
                    lambda: self._changed or workflow.info().is_continue_as_new_suggested(),
                    timeout=inp.idle_seconds if idle else None,
                )
            except TimeoutError:
                if self._state.holder is None and not self._state.queue:
                    return self._state
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() > MAX_HISTORY:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(LockInput(inp.environment, self._state, inp.idle_seconds))


async def hold(plan: ReleasePlan, env: EnvironmentSpec, purpose: str) -> LockLease:
    """Workflow code: wait until this run holds `env` (see the module docstring); returns the lease."""
    info = workflow.info()
    waits = activity_options(plan.activities, plan.onprem_queue, waits=True)
    # The wait lasts as long as the holders ahead take, and one of them may be a canary paused for a person:
    # the heartbeat timeout, not start-to-close, is what notices a dead worker here.
    waits["start_to_close_timeout"] = waits["schedule_to_close_timeout"] = LONGEST_WAIT
    # A cancelled mover waits for the activity to leave the queue (it signals `release` as it stops), so a
    # cancelled release is never granted the environment after it has gone.
    waits["cancellation_type"] = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
    lease: LockLease = await workflow.execute_activity(
        "envlock.acquire",
        AcquireInput(
            lock_id=lock_workflow_id(plan, env),
            environment=env.name,
            holder=LockHolder(workflow_id=info.workflow_id, run_id=info.run_id, purpose=purpose),
        ),
        result_type=LockLease,
        **waits,
    )
    return lease


async def give_back(plan: ReleasePlan, lease: LockLease) -> None:
    """Workflow code: release `lease` (idempotent, so a retried or repeated release is harmless)."""
    await workflow.execute_activity("envlock.release", lease, **activity_options(plan.activities, plan.onprem_queue))
