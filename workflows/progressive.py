"""Progressive delivery and recovery, shared by Release (forward, automatic rollback) and Rollback (manual).

Forward: after Argo CD synced an environment, each service that runs as an Argo Rollout there is followed
step by step (`rollouts.wait` returns at every pause), and each paused step is promoted per the
environment's policy. A Rollout that aborts (failed analysis) or turns Degraded fails the verification.

Back: `restore` is the one path by which an environment returns to earlier images, whether a release
reverted its own GitOps commit or a person ran `ferry rollback`: sync Argo CD at the commit that holds the
earlier pins, then see every Rollout Healthy and fully promoted on those images (a Rollout whose template
returns to its stable image is Healthy at once; an older image that is not stable is promoted in full).

Workflow code: no I/O, time from `workflow.now()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.options import activity_options
    from workflows.types import (
        ArgoSyncInput,
        ArgoSyncResult,
        Artifact,
        EnvironmentSpec,
        ImagePin,
        ReleasePlan,
        RolloutProgress,
        RolloutPromoteInput,
        RolloutRef,
        RolloutState,
        RolloutWaitInput,
    )

ROLLOUT_FAILED = "RolloutFailed"
# A restore promotes in full; a Rollout still not Healthy after this many full promotions is a failure
# for a person to look at (and keeps the history from looping).
RESTORE_PROMOTIONS = 3


def rollout_refs(env: EnvironmentSpec, services: list[str]) -> dict[str, RolloutRef]:
    """service -> its Rollout in `env`, for the given services that run as a Rollout there."""
    return {
        svc: RolloutRef(instance=env.site, namespace=env.rollout_namespace, name=env.rollouts[svc])
        for svc in sorted(services)
        if svc in env.rollouts
    }


def image_of(pin: ImagePin) -> str:
    """How a pinned image appears in a pod template: newName@digest."""
    return f"{pin.new_name}@{pin.digest}"


def app_images(
    plan: ReleasePlan, env: EnvironmentSpec, artifacts: list[Artifact], pins: list[ImagePin]
) -> dict[str, list[str]]:
    """Argo CD app of `env` -> the images (newName@digest) that `pins` put in it, sorted."""
    specs = {s.name: s for s in plan.services}
    by_name = {p.name: image_of(p) for p in pins}
    apps: dict[str, set[str]] = {}
    for a in artifacts:
        if a.repository in by_name:
            apps.setdefault(specs[a.service].argocd_apps[env.name], set()).add(by_name[a.repository])
    return {app: sorted(images) for app, images in apps.items()}


def service_images(env: EnvironmentSpec, artifacts: list[Artifact], pins: list[ImagePin]) -> dict[str, list[str]]:
    """service -> the images its pods run after `pins` (matched by the image's repository name)."""
    by_name = {p.name: image_of(p) for p in pins}
    return {a.service: [by_name[a.repository]] if a.repository in by_name else [] for a in artifacts}


def _show(progress: RolloutProgress, state: RolloutState) -> None:
    progress.strategy = state.strategy
    progress.phase = "Aborted" if state.aborted else state.phase
    progress.step, progress.steps, progress.weight = state.step, state.steps, state.weight
    progress.message = state.message


def _failed(
    env: EnvironmentSpec, ref: RolloutRef, state: RolloutState, reached: RolloutState | None
) -> ApplicationError:
    # An aborted canary is back at step 0 (the controller resets it): say how far it had got before.
    if reached is not None and reached.strategy == "canary":
        where = f" after step {reached.step}/{reached.steps} ({reached.step_kind})"
    elif state.strategy == "blueGreen":
        where = " (blue-green)"
    else:
        where = ""
    return ApplicationError(
        f"Argo Rollout {ref.namespace}/{ref.name} in {env.name} "
        f"{'aborted' if state.aborted else state.phase}{where}: {state.message or 'no message'}",
        {"rollout": ref.name, "step": state.step, "phase": state.phase},
        type=ROLLOUT_FAILED,
        non_retryable=True,
    )


# A promotion decision: given the paused state, wait as the policy says and return who promoted ("soak 30s").
Decide = Callable[[RolloutState], Awaitable[str]]


async def follow_rollout(
    plan: ReleasePlan,
    env: EnvironmentSpec,
    ref: RolloutRef,
    images: list[str],
    progress: RolloutProgress,
    decide: Decide,
) -> RolloutState:
    """Follow one Rollout to Healthy on `images`, promoting each pause once `decide` returns.

    Raises ApplicationError(RolloutFailed) when the Rollout aborts or is Degraded; `progress` (shown by the
    `status` query) is updated at every step.
    """
    waits = activity_options(plan.activities, env.task_queue, waits=True)
    calls = activity_options(plan.activities, env.task_queue)
    after = -1
    reached: RolloutState | None = None
    while True:
        state: RolloutState = await workflow.execute_activity(
            "rollouts.wait",
            RolloutWaitInput(rollout=ref, images=images, after_step=after),
            result_type=RolloutState,
            **waits,
        )
        _show(progress, state)
        if state.aborted or state.phase == "Degraded":
            raise _failed(env, ref, state, reached)
        if state.phase == "Healthy" and state.promoted:
            return state
        reached, after = state, state.step
        if state.step_kind.startswith("pause "):
            continue  # a timed pause (`pause: {duration}`): the controller resumes it by itself
        by = await decide(state)
        promoted: RolloutState = await workflow.execute_activity(
            "rollouts.promote",
            RolloutPromoteInput(rollout=ref, step=state.step, images=images),
            result_type=RolloutState,
            **calls,
        )
        _show(progress, promoted)
        what = f"step {state.step} ({state.step_kind})" if state.strategy == "canary" else "blue-green switch"
        progress.promoted_steps.append(f"{what} promoted by {by} at {workflow.now().isoformat()}")


async def abort_rollouts(plan: ReleasePlan, env: EnvironmentSpec, refs: dict[str, RolloutRef]) -> None:
    """Abort the Rollouts (traffic back to stable at once); a no-op for one that is not progressing."""
    calls = activity_options(plan.activities, env.task_queue)
    for ref in refs.values():
        await workflow.execute_activity("rollouts.abort", ref, result_type=RolloutState, **calls)


async def sync_apps(
    plan: ReleasePlan,
    env: EnvironmentSpec,
    commit: str,
    apps: list[str],
    app_status: dict[str, str],
    *,
    rollouts: bool,
    images: dict[str, list[str]] | None = None,
) -> None:
    """Sync `apps` of `env` at exactly `commit`; `app_status` receives "Synced/Healthy@sha" per app.

    With `rollouts` the sync does not wait for Healthy: a paused canary step is Suspended until promoted.
    `images`: app -> the images the move put in it, so an app at a later commit that kept them is not synced
    back (see argocd.sync).
    """
    waits = activity_options(plan.activities, env.task_queue, waits=True)
    for app in apps:
        synced: ArgoSyncResult = await workflow.execute_activity(
            "argocd.sync",
            ArgoSyncInput(
                instance=env.site,
                app=app,
                revision=commit,
                wait_healthy=not rollouts,
                images=(images or {}).get(app, []),
            ),
            result_type=ArgoSyncResult,
            **waits,
        )
        app_status[app] = f"{synced.sync_status}/{synced.health}@{synced.revision[:12]}"


async def restore(
    plan: ReleasePlan,
    env: EnvironmentSpec,
    commit: str,
    apps: list[str],
    rollouts: dict[str, tuple[RolloutRef, list[str]]],
    app_status: dict[str, str],
) -> None:
    """Sync `apps` of `env` at `commit` and wait until every Rollout is Healthy and promoted on its images.

    `rollouts`: service -> (its Rollout, the images it must run after the restore; empty: nothing to check).
    `app_status` receives "Synced/Healthy@sha" per app, for the caller's `status` query.
    """
    waits = activity_options(plan.activities, env.task_queue, waits=True)
    calls = activity_options(plan.activities, env.task_queue)
    await sync_apps(plan, env, commit, apps, app_status, rollouts=bool(rollouts))
    for ref, images in rollouts.values():
        if not images:
            continue  # the service ran nothing before: the revert removed it, nothing to see healthy
        for attempt in range(RESTORE_PROMOTIONS + 1):
            state: RolloutState = await workflow.execute_activity(
                "rollouts.wait", RolloutWaitInput(rollout=ref, images=images), result_type=RolloutState, **waits
            )
            if state.phase == "Healthy" and state.promoted:
                break
            if (state.phase == "Degraded" and not state.aborted) or attempt == RESTORE_PROMOTIONS:
                raise _failed(env, ref, state, None)
            # Paused, or still aborted from the failed release: the restore goes all the way at once.
            await workflow.execute_activity(
                "rollouts.promote",
                RolloutPromoteInput(rollout=ref, step=state.step, full=True, images=images),
                result_type=RolloutState,
                **calls,
            )
