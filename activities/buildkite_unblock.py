"""Who Buildkite itself says unblocked a block step: the only "from Buildkite" identity a worker trusts.

`BUILDKITE_UNBLOCKER*` variables come from the caller's environment and anyone can set them. This reads the
build from the Buildkite REST API instead (specs/buildkite/apis_rest_api_builds.md, job data model: a block
step is a `manual` job whose `state` is `unblocked` and whose `unblocked_by` names the user), and the user's
teams from the teams API. The caller still decides whether that build, commit and step are the ones it asked
about; this only refuses what Buildkite does not vouch for.

Teams are read now, not as they were when the step was unblocked: the API keeps no history of membership.
"""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.exceptions import ApplicationError

from activities.buildkite import BuildkiteClient
from activities.errors import fatal

# Not retryable: Buildkite answered, and it does not say that this person unblocked this step.
UNBLOCK_NOT_VERIFIED = "UnblockNotVerified"


@dataclass
class Unblock:
    """Who Buildkite says unblocked a block step, and of which build."""

    user_id: str
    name: str
    email: str
    teams: list[str]
    commit: str
    branch: str
    pipeline: str
    build_number: int
    step_key: str
    job_id: str
    unblocked_at: str


async def read_unblock(
    client: BuildkiteClient,
    pipeline: str,
    build_number: int,
    job_id: str | None = None,
    *,
    step_key: str | None = None,
    with_teams: bool,
) -> Unblock:
    """The unblock of a block step of build `build_number` of `pipeline`, as the Buildkite API records it.

    The step is the job `job_id`, or the one job whose `step_key` is `step_key` (with both, the job must be
    that step). Raises a non-retryable `UnblockNotVerified` when the build or job does not exist, the job is
    not a block step, it is not unblocked, or nobody is named as its unblocker; transport errors and 5xx stay
    retryable.
    """
    if job_id is None and step_key is None:
        raise ValueError("read_unblock needs the job id or the step key of the block step")
    which = f"job {job_id}" if job_id is not None else f"step '{step_key}'"
    where = f"Buildkite build {build_number} of pipeline {pipeline}, {which}"

    def refused(why: str) -> ApplicationError:
        return fatal(f"{where}: {why}; the approval is not trusted", UNBLOCK_NOT_VERIFIED, pipeline=pipeline)

    build = await client.get_build_of(pipeline, build_number)
    if build is None:
        raise refused("the build does not exist")
    jobs = [j for j in build.get("jobs") or [] if isinstance(j, dict)]
    if job_id is not None:
        job = next((j for j in jobs if j.get("id") == job_id), None)
        if job is None:
            raise refused("the build has no such job (give the id of this build's block step)")
        if step_key is not None and job.get("step_key") != step_key:
            raise refused(f"the job is step {job.get('step_key')!r}, not {step_key!r}")
    else:
        matching = [j for j in jobs if j.get("step_key") == step_key]
        if len(matching) != 1:
            raise refused(f"the build has {len(matching)} jobs of that step, not one")
        job = matching[0]
    if job.get("type") != "manual":
        raise refused(f"the job is a {job.get('type')!r} job, not a block step")
    if job.get("state") != "unblocked":
        raise refused(f"the block step is {job.get('state')!r}, not unblocked: unblock it in Buildkite first")
    by = job.get("unblocked_by")
    if not isinstance(by, dict) or not by.get("id"):
        raise refused("Buildkite names nobody as its unblocker")
    user_id = str(by["id"])
    return Unblock(
        user_id=user_id,
        name=str(by.get("name") or ""),
        email=str(by.get("email") or ""),
        teams=await client.team_slugs_of(user_id) if with_teams else [],
        commit=str(build.get("commit") or ""),
        branch=str(build.get("branch") or ""),
        pipeline=pipeline,
        build_number=build_number,
        step_key=str(job.get("step_key") or ""),
        job_id=str(job.get("id") or ""),
        unblocked_at=str(job.get("unblocked_at") or ""),
    )
