"""What moving an environment to a set of images means, shared by Release (forward) and Rollback (back).

Pure functions of the plan: the kustomization pins (each image from the environment's own Harbor, by
digest) and the Argo CD applications that deploy those services there.
"""

from __future__ import annotations

from workflows.types import Artifact, EnvironmentSpec, ImagePin, ReleasePlan


def image_pins(env: EnvironmentSpec, artifacts: list[Artifact]) -> list[ImagePin]:
    """The `images:` entries that put `artifacts` in `env`, pulled from that environment's registry."""
    return [
        ImagePin(
            name=a.repository,
            new_name=f"{env.harbor_registry}/{env.harbor_project}/{a.repository}",
            digest=a.digest,
        )
        for a in artifacts
    ]


def argocd_apps(plan: ReleasePlan, env: EnvironmentSpec, artifacts: list[Artifact]) -> list[str]:
    """The distinct Argo CD applications of `env` that deploy the services of `artifacts`, sorted."""
    specs = {s.name: s for s in plan.services}
    return sorted({specs[a.service].argocd_apps[env.name] for a in artifacts})
