"""The minimal dynamic pipeline: one Tekton PipelineRun per affected service, and its Buildkite view.

Only the services a commit affects are built. The PipelineRuns are what Ferry's `tekton.run` creates; the
Buildkite YAML is the same plan for teams that drive Tekton from Buildkite (`buildkite-agent pipeline
upload`). Rendering is a pure function of its input, so names are deterministic: a retried activity or a
replayed workflow asks for the same PipelineRun, which is what makes creating it idempotent.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml
from temporalio import activity

from activities.errors import BAD_COMMIT, NOT_CONFIGURED, fatal
from workflows.types import PipelinePlan, RenderPipelineInput, ServiceSpec

# Kubernetes object names may be 253 characters, but Tekton copies the PipelineRun name into the
# `tekton.dev/pipelineRun` label of its TaskRuns and Pods, and label values stop at 63.
MAX_NAME = 63
_HASH = 8

# The PipelineRun binds the `source` workspace that infra/tekton/pipeline.yaml declares: a fresh volume
# per run (docs/pipelineruns.md, "Specifying Workspaces", volumeClaimTemplate).
SOURCE_WORKSPACE: dict[str, Any] = {
    "name": "source",
    "volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
}


def _shorten(text: str, limit: int, allowed_end: str) -> str:
    if len(text) <= limit:
        return text
    # Deterministic: the hash of the untruncated text keeps two long names that share a prefix apart.
    digest = hashlib.sha256(text.encode()).hexdigest()[:_HASH]
    head = text[: limit - _HASH - 1]
    while head and not re.match(allowed_end, head[-1]):
        head = head[:-1]
    return f"{head}-{digest}" if head else digest


def dns_label(text: str, limit: int = MAX_NAME) -> str:
    """`text` as an RFC 1123 label (lowercase alphanumerics and '-', alphanumeric ends), at most `limit`."""
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "x"
    return _shorten(cleaned, limit, r"[a-z0-9]")


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value: [A-Za-z0-9_.-], alphanumeric ends, at most 63 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", text)
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return _shorten(cleaned, MAX_NAME, r"[A-Za-z0-9]")


def pipelinerun_name(commit: str, service: str) -> str:
    """ferry-<sha12>-<service>, shortened with a hash to fit a DNS label when the service name is long."""
    return dns_label(f"ferry-{commit[:12]}-{service}")


def _check_commit(commit: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{12,40}", commit or ""):
        raise fatal(
            f"commit {commit!r} is not a commit SHA; pass the full SHA that change analysis returned", BAD_COMMIT
        )
    return commit.lower()


def pipelinerun_manifest(inp: RenderPipelineInput, svc: ServiceSpec) -> dict[str, Any]:
    """The Tekton v1 PipelineRun that runs the `ferry-ci` Pipeline for one service at one commit."""
    commit = _check_commit(inp.commit)
    sha12 = commit[:12]
    params = {
        "service": svc.name,
        "commit": commit,
        "branch": inp.branch,
        "image": f"{inp.registry}/{inp.project}/{svc.image or svc.name}",
        "tag": sha12,
        "sonar-project": svc.sonar_project or svc.name,
        "paths": ",".join(svc.paths),
    }
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {
            "name": pipelinerun_name(commit, svc.name),
            "namespace": inp.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "ferry",
                "ferry.dev/release": label_value(inp.release_id),
                "ferry.dev/service": label_value(svc.name),
                "ferry.dev/commit": sha12,
            },
            # Labels are lossy (63 chars, restricted alphabet); annotations keep the exact values.
            "annotations": {
                "ferry.dev/release": inp.release_id,
                "ferry.dev/branch": inp.branch,
                "ferry.dev/commit": commit,
            },
        },
        "spec": {
            "pipelineRef": {"name": inp.pipeline},
            "params": [{"name": k, "value": v} for k, v in params.items()],
            "workspaces": [SOURCE_WORKSPACE],
        },
    }


def _no_interpolation(value: Any) -> Any:
    # `pipeline upload` substitutes $VAR and ${VAR}; `$$` is its escape for a literal `$`
    # (agent_cli_reference_pipeline.md, "Escaping the $ character").
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: _no_interpolation(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_interpolation(v) for v in value]
    return value


def buildkite_yaml(inp: RenderPipelineInput, manifests: dict[str, dict[str, Any]]) -> str:
    """Steps for `buildkite-agent pipeline upload`: one command step per service, keyed `ci-<service>`.

    Each step creates that service's PipelineRun from `pipelinerun-<service>.yaml`, which the uploading
    step writes from PipelinePlan.pipelineruns next to the upload. Steps have no `depends_on` between them,
    so Buildkite runs them in parallel, as Ferry does.
    """
    steps = [
        {
            "label": f":tekton: CI {service}",
            "key": f"ci-{service}",
            "command": f"kubectl create -f pipelinerun-{service}.yaml",
            "env": {
                "FERRY_RELEASE": inp.release_id,
                "FERRY_SERVICE": service,
                "FERRY_COMMIT": manifest["metadata"]["annotations"]["ferry.dev/commit"],
                "FERRY_PIPELINERUN": manifest["metadata"]["name"],
                "FERRY_NAMESPACE": inp.namespace,
            },
        }
        for service, manifest in manifests.items()
    ]
    return yaml.safe_dump(_no_interpolation({"steps": steps}), sort_keys=False, width=1000)


def render_pipeline(inp: RenderPipelineInput) -> PipelinePlan:
    """Render the PipelineRuns and the Buildkite steps for `inp.affected`, in that order.

    A name that is not a configured service (or is a library, which has nothing to build) is a fatal
    NOT_CONFIGURED: the release plan and the analysis disagree, and retrying cannot fix that.
    """
    specs = {s.name: s for s in inp.services}
    manifests: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(inp.affected):
        svc = specs.get(name)
        if svc is None or svc.kind != "service":
            what = "it is not in the release plan" if svc is None else "it is a library, which has no image"
            raise fatal(f"cannot build {name!r}: {what}; check services in ferry.yaml", NOT_CONFIGURED)
        manifests[name] = pipelinerun_manifest(inp, svc)
    return PipelinePlan(buildkite_yaml=buildkite_yaml(inp, manifests), pipelineruns=manifests)


class PipelineActivities:
    """Pipeline rendering as an activity (no dependencies: pure, so trivially idempotent)."""

    @activity.defn(name="pipeline.render")
    async def render(self, inp: RenderPipelineInput) -> PipelinePlan:
        """Render the minimal pipeline; the same input always gives the same plan."""
        return render_pipeline(inp)
