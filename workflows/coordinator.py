"""The BranchCoordinator workflow: one per repo and branch, so a burst of pushes never piles up releases.

`ferry release start` signals-with-start it with each commit. It keeps only the newest pending commit
(an older pending one is skipped), runs at most one release in CI at a time, and when a newer commit
arrives while a release is still in CI, tells that release it is superseded (its CI is cancelled, and so are
its Tekton runs). A release already past CI, waiting at a gate, is superseded only once a newer commit has
passed CI too, so there is always a candidate in front of the approvers. Releases run as child workflows
that outlive the coordinator's runs (ParentClosePolicy.ABANDON); they report back by signal. History stays
bounded: the coordinator continues as new once its history grows past `max_history` events.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.converter import value_to_type

    from workflows.gates import PATCH_VERIFIED
    from workflows.release import ReleaseWorkflow, release_workflow_id
    from workflows.types import (
        CommitSignal,
        CoordinatorInput,
        CoordinatorState,
        CoordinatorStatus,
        QueueEntry,
        ReleaseEvent,
        ReleaseInput,
        ReleasePlan,
        Supersede,
    )

RECENT = 50  # outcomes kept for `status` across continue-as-new


def coordinator_workflow_id(repo: str, branch: str) -> str:
    """`branch/{repo}/{branch}`: the one coordinator of a branch."""
    return f"branch/{repo}/{branch}"


@workflow.defn(name="BranchCoordinator")
class BranchCoordinator:
    """Serialises the releases of one branch: newest commit first, one CI at a time, no stale deploys."""

    @workflow.init
    def __init__(self, inp: CoordinatorInput) -> None:
        self._inp = inp
        self._state = inp.state or CoordinatorState()
        self._orders: list[tuple[QueueEntry, Supersede]] = []

    @workflow.query
    def status(self) -> CoordinatorStatus:
        """The pending commit, the active releases, recent outcomes and counters."""
        s = self._state
        return CoordinatorStatus(
            branch=self._inp.branch,
            pending=s.pending.commit if s.pending else "",
            active=list(s.active),
            recent=list(s.recent),
            counts=dict(s.counts),
            runs=s.runs,
            history_length=workflow.info().get_current_history_length(),
        )

    @workflow.signal
    def commit(self, sig: CommitSignal) -> None:
        """A new commit on the branch; a commit already known is ignored (a retried Buildkite step)."""
        s = self._state
        known = {e.commit for e in s.active} | {e.commit for e in s.recent}
        if sig.commit in known or (s.pending and s.pending.commit == sig.commit):
            return
        s.seq += 1
        self._count("received")
        if s.pending is not None:
            self._finish(
                QueueEntry(s.pending.commit, self._release_id(s.pending.commit), "skipped", seq=s.pending_seq),
                by=sig.commit,
                count="skipped",
            )
        s.pending, s.pending_seq = sig, s.seq
        for entry in s.active:
            if entry.state == "in_ci":
                self._supersede(entry, sig.commit)

    @workflow.signal
    def release_event(self, ev: ReleaseEvent) -> None:
        """A release reports: passed CI (older releases at gates may now be superseded) or ended."""
        s = self._state
        entry = next((e for e in s.active if e.release_id == ev.release_id), None)
        if entry is None:
            return
        if ev.event == "ci_passed" and entry.state == "in_ci":
            entry.state = "past_ci"
            for older in s.active:
                if older.seq < entry.seq and older.state == "past_ci":
                    self._supersede(older, entry.commit)
        elif ev.event == "ended":
            s.active.remove(entry)
            entry.outcome = ev.outcome
            self._finish(entry, by=entry.by, count=ev.outcome or "ended")

    @workflow.run
    async def run(self, inp: CoordinatorInput) -> None:
        """Start releases as commits arrive and pass on supersede orders; continue as new when large."""
        s = self._state
        while True:
            await workflow.wait_condition(lambda: bool(self._orders) or self._can_start() or self._too_long())
            while self._orders:
                entry, order = self._orders.pop(0)
                await self._send_supersede(entry, order)
            if self._can_start():
                # Take the commit off the queue before awaiting the start: commits arriving meanwhile must
                # see it in CI (and supersede it), not overwrite it as the pending one.
                sig, seq = s.pending, s.pending_seq
                s.pending = None
                await self._start(sig, seq)  # type: ignore[arg-type]
            if self._too_long() and not self._orders:
                await workflow.wait_condition(workflow.all_handlers_finished)
                s.runs += 1
                workflow.continue_as_new(CoordinatorInput(inp.repo, inp.branch, self._inp.plan, s, inp.max_history))

    # --- helpers ---

    def _can_start(self) -> bool:
        s = self._state
        return s.pending is not None and not any(e.state in ("in_ci", "superseding_ci") for e in s.active)

    def _too_long(self) -> bool:
        info = workflow.info()
        return info.get_current_history_length() > self._inp.max_history or info.is_continue_as_new_suggested()

    def _release_id(self, commit: str) -> str:
        return f"{self._inp.plan.app_repo}-{commit[:12]}"

    def _count(self, key: str) -> None:
        self._state.counts[key] = self._state.counts.get(key, 0) + 1

    def _finish(self, entry: QueueEntry, *, by: str, count: str) -> None:
        entry.by = by
        if entry.state != "ended":
            entry.state = "skipped" if count == "skipped" else "ended"
        self._count(count)
        self._state.recent = [*self._state.recent, entry][-RECENT:]

    def _supersede(self, entry: QueueEntry, by_commit: str) -> None:
        entry.by = by_commit
        entry.state = "superseding_ci" if entry.state == "in_ci" else "superseding"
        self._orders.append((entry, Supersede(by_commit=by_commit, by_release=self._release_id(by_commit))))

    async def _send_supersede(self, entry: QueueEntry, order: Supersede) -> None:
        handle = workflow.get_external_workflow_handle(release_workflow_id(self._inp.plan.app_repo, entry.commit))
        try:
            await handle.signal(ReleaseWorkflow.supersede, order)
        except FailureError:
            # The release ended meanwhile; its `ended` event (or its absence) settles the entry.
            if entry in self._state.active:
                self._state.active.remove(entry)
                self._finish(entry, by=order.by_commit, count="ended")

    async def _start(self, sig: CommitSignal, seq: int) -> None:
        if workflow.patched(PATCH_VERIFIED):
            pass  # a commit Signal cannot change the plan: each Release loads the workers' own (ferry.plan)
        elif sig.plan is not None:
            self._inp.plan = value_to_type(ReleasePlan, sig.plan)  # the newest ferry.yaml; continue-as-new keeps it
        plan = self._inp.plan
        release_id = self._release_id(sig.commit)
        entry = QueueEntry(sig.commit, release_id, "in_ci", seq=seq)
        self._state.active.append(entry)
        try:
            await workflow.start_child_workflow(
                ReleaseWorkflow.run,
                ReleaseInput(
                    release_id=release_id,
                    commit=sig.commit,
                    branch=sig.branch,
                    plan=plan,
                    base_commit=sig.base_commit,
                    only_services=sig.only_services,
                    message=sig.message,
                    author=sig.author,
                    build_url=sig.build_url,
                    coordinator_id=workflow.info().workflow_id,
                ),
                id=release_workflow_id(plan.app_repo, sig.commit),
                task_queue=plan.onprem_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            )
        except WorkflowAlreadyStartedError:
            # Released already, or started directly (`ferry release start --direct`): nothing to coordinate.
            self._state.active.remove(entry)
            self._orders = [(e, o) for e, o in self._orders if e is not entry]
            entry.state = "ended"
            self._finish(entry, by="", count="already_started")
            return
        self._count("started")
