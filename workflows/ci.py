"""The CI child workflow: change analysis -> minimal pipeline -> per affected service, in parallel,
Tekton run (lint, unit tests, build, image push), SonarQube quality gate and Harbor scan gate.

Deterministic: every system is reached through an activity on the `onprem` task queue, where source code
lives; the workflow only carries names, SHAs and digests.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.errors import failure_message
    from workflows.identity import load_plan
    from workflows.options import activity_options
    from workflows.types import (
        AnalyzeChangesInput,
        Artifact,
        ArtifactRef,
        ChangeSet,
        CIInput,
        CIResult,
        PipelinePlan,
        QualityGateInput,
        QualityGateResult,
        RenderPipelineInput,
        ScanGateInput,
        ScanResult,
        ServiceSpec,
        SignInput,
        SignResult,
        TektonRunInput,
        TektonRunResult,
    )

__all__ = ["CIWorkflow", "failure_message"]  # failure_message: imported from here by older modules

CI_FAILED = "CIFailed"
# CI runs that started with image signing sign each pushed image; older histories replay without it.
PATCH_SIGNING = "ci-signing-v1"
# A CI run started directly (no parent Release) runs on the workers' plan, not on its input's.
PATCH_OWN_PLAN = "ci-own-plan-v1"


@workflow.defn(name="CI")
class CIWorkflow:
    """Builds, checks and pushes exactly the services a commit affects."""

    def __init__(self) -> None:
        self._stage = "analyze"
        self._sign = False

    @workflow.query
    def stage(self) -> str:
        """Where CI is: analyze, pipeline, build, done."""
        return self._stage

    @workflow.run
    async def run(self, inp: CIInput) -> CIResult:
        """Run CI; raises ApplicationError(type=CIFailed) naming every failed service and check."""
        if workflow.info().parent is None and workflow.patched(PATCH_OWN_PLAN):
            # Started on its own, not by a Release (which loaded the workers' plan for it): the input's plan is
            # whatever the starter sent (which repo to build, where), so CI takes the workers' instead.
            inp.plan = await load_plan()
        plan = inp.plan
        self._sign = workflow.patched(PATCH_SIGNING) and plan.sign_images
        opts = activity_options(plan.activities, plan.onprem_queue)
        wait_opts = activity_options(plan.activities, plan.onprem_queue, waits=True)
        first_env = plan.environments[0].path if plan.environments else None
        changes: ChangeSet = await workflow.execute_activity(
            "changes.analyze",
            AnalyzeChangesInput(
                repo_url=plan.app_repo_url,
                commit=inp.commit,
                branch=inp.branch,
                default_branch=plan.app_default_branch,
                services=plan.services,
                base_commit=inp.base_commit,
                gitops_repo_url=plan.gitops_repo_url,
                gitops_branch=plan.gitops_branch,
                first_env_path=first_env,
                engine=plan.change_engine,
                global_paths=plan.global_paths,
                package_manifests=plan.package_manifests,
            ),
            result_type=ChangeSet,
            **opts,
        )
        # An explicit service list (validated by the CLI against ferry.yaml) overrides the diff.
        affected = sorted(inp.only_services) if inp.only_services else changes.affected
        if not affected:
            workflow.set_current_details("nothing to release: no deployable service changed")
            self._stage = "done"
            return CIResult(
                base_commit=changes.base_commit,
                changed_files=len(changes.changed_files),
                affected=[],
                reasons={},
                buildkite_pipeline="",
                pipelineruns={},
                artifacts=[],
                nothing_to_release=True,
                author_name=changes.author_name,
                author_email=changes.author_email,
                committed_at=changes.committed_at,
            )

        self._stage = "pipeline"
        pipeline: PipelinePlan = await workflow.execute_activity(
            "pipeline.render",
            RenderPipelineInput(
                release_id=inp.release_id,
                commit=inp.commit,
                branch=inp.branch,
                affected=affected,
                services=plan.services,
                registry=plan.onprem_registry,
                project=plan.onprem_project,
                namespace=plan.tekton_namespace,
                pipeline=plan.tekton_pipeline,
            ),
            result_type=PipelinePlan,
            **opts,
        )

        self._stage = "build"
        workflow.set_current_details(f"CI: building {', '.join(affected)}")
        specs = {s.name: s for s in plan.services}
        try:
            results = await asyncio.gather(
                *(self._build(inp, specs[name], pipeline.pipelineruns[name], wait_opts) for name in affected),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            # Superseded by a newer commit: stop the PipelineRuns on the cluster too, then end cancelled.
            self._stage = "cancelling"
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        "tekton.cancel",
                        TektonRunInput(
                            service=name, namespace=plan.tekton_namespace, manifest=pipeline.pipelineruns[name]
                        ),
                        result_type=str,
                        **opts,
                    )
                    for name in affected
                ),
                return_exceptions=True,
            )
            raise
        errors = [failure_message(r) for r in results if isinstance(r, BaseException)]
        if errors:
            raise ApplicationError("CI failed: " + " | ".join(errors), type=CI_FAILED, non_retryable=True)
        self._stage = "done"
        return CIResult(
            base_commit=changes.base_commit,
            changed_files=len(changes.changed_files),
            affected=affected,
            reasons={k: v for k, v in changes.reasons.items() if k in affected},
            buildkite_pipeline=pipeline.buildkite_yaml,
            pipelineruns=pipeline.pipelineruns,
            artifacts=[r for r in results if isinstance(r, Artifact)],
            author_name=changes.author_name,
            author_email=changes.author_email,
            committed_at=changes.committed_at,
        )

    async def _build(self, inp: CIInput, svc: ServiceSpec, manifest: dict, opts: dict) -> Artifact:
        plan = inp.plan
        try:
            run: TektonRunResult = await workflow.execute_activity(
                "tekton.run",
                TektonRunInput(service=svc.name, namespace=plan.tekton_namespace, manifest=manifest),
                result_type=TektonRunResult,
                **opts,
            )
        except ActivityError as e:
            raise ApplicationError(f"{svc.name}: Tekton pipeline failed: {failure_message(e)}") from e
        digest = run.results.get("IMAGE_DIGEST", "")
        if not digest.startswith("sha256:"):
            raise ApplicationError(f"{svc.name}: PipelineRun {run.name} returned no IMAGE_DIGEST result")
        ref = ArtifactRef(
            instance="onprem", project=plan.onprem_project, repository=svc.image or svc.name, digest=digest
        )
        checks = await asyncio.gather(
            workflow.execute_activity(
                "sonarqube.quality_gate",
                QualityGateInput(
                    service=svc.name,
                    project_key=svc.sonar_project or svc.name,
                    ce_task_id=run.results.get("SONAR_CE_TASK_ID", ""),
                ),
                result_type=QualityGateResult,
                **opts,
            ),
            workflow.execute_activity(
                "harbor.scan_gate",
                ScanGateInput(artifact=ref, block_severity=plan.block_severity),
                result_type=ScanResult,
                **opts,
            ),
            return_exceptions=True,
        )
        failed = [f"{svc.name}: {failure_message(c)}" for c in checks if isinstance(c, BaseException)]
        if failed:
            raise ApplicationError(" | ".join(failed))
        if self._sign:
            await workflow.execute_activity(
                "cosign.sign",
                SignInput(image=f"{plan.onprem_registry}/{plan.onprem_project}/{ref.repository}", digest=digest),
                result_type=SignResult,
                **opts,
            )
        return Artifact(service=svc.name, repository=ref.repository, digest=digest, tag=inp.commit[:12])
