"""Kubernetes API stand-in: the clusters Terraform creates, as far as importing them into Rancher needs.

One server stands for any number of clusters, each under its own path prefix: the API of cluster `NAME` is
`{base}/clusters/NAME`, which is what a sandbox workspace outputs as the cluster's `api_endpoint` (a path
prefix in front of a Kubernetes API is what Rancher's own `/k8s/clusters/{id}` proxy looks like too). Any
cluster name is accepted: the cluster exists because Terraform said so.

Only what `kubectl apply --server-side` of Rancher's registration manifest uses is modelled: GET of one
object and server-side apply (`PATCH` with `application/apply-patch+yaml`, `fieldManager` required) of the
kinds in that manifest. The Kubernetes conventions (Status objects for errors, 201 when an apply creates,
200 when it updates, namespaced objects need their Namespace first, cluster-scoped objects ignore
`metadata.namespace`) follow the Kubernetes API conventions; no spec in `specs/` restates them. Applied
objects are handed to the Rancher stand-in, whose simulated agent connects once its Deployment and
credentials Secret are present.

Argo Rollouts are served here too (sandbox/standins/rollouts.py): the Argo CD stand-in puts the Rollouts it
synced, and the Deployments their `workloadRef` names, into the cluster named after its site (`cloud`).
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.yamlsafe import load_yaml
from sandbox.standins.world import iso_s

if TYPE_CHECKING:
    from sandbox.standins.world import World

AUTH_SCHEME = "bearer"
PUBLIC_PATHS: frozenset[str] = frozenset()
APPLY_PATCH = "application/apply-patch+yaml"

# (apiVersion, plural) -> (kind, namespaced): the kinds of Rancher's registration manifest and a few peers.
RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "namespaces"): ("Namespace", False),
    ("v1", "serviceaccounts"): ("ServiceAccount", True),
    ("v1", "secrets"): ("Secret", True),
    ("v1", "configmaps"): ("ConfigMap", True),
    ("v1", "services"): ("Service", True),
    ("rbac.authorization.k8s.io/v1", "clusterroles"): ("ClusterRole", False),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings"): ("ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io/v1", "roles"): ("Role", True),
    ("rbac.authorization.k8s.io/v1", "rolebindings"): ("RoleBinding", True),
    ("apps/v1", "deployments"): ("Deployment", True),
    ("apps/v1", "daemonsets"): ("DaemonSet", True),
    ("scheduling.k8s.io/v1", "priorityclasses"): ("PriorityClass", False),
    ("policy/v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True),
}

Key = tuple[str, str, str, str]  # apiVersion, plural, namespace ("" if cluster-scoped), name


def status_error(code: int, reason: str, message: str) -> JSONResponse:
    """A Kubernetes `Status` failure object."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    return JSONResponse({**body, "reason": reason, "code": code}, status_code=code)


def unauthorized() -> Response:
    """What a Kubernetes API server answers without a valid bearer token."""
    return status_error(401, "Unauthorized", "Unauthorized")


class KubeCluster:
    """The objects of one simulated cluster."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[Key, dict[str, Any]] = {}
        self.url = ""  # as the last request addressed it, e.g. http://127.0.0.1:18109/clusters/NAME

    def get(self, api_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None."""
        return self.objects.get((api_version, plural, namespace, name))


class KubeState:
    """Every simulated cluster, and how many applies (and real changes) each received."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.clusters: dict[str, KubeCluster] = {}
        self.applies = Counter[str]()
        self.changes = Counter[str]()
        self._resource_version = 0

    def cluster(self, name: str) -> KubeCluster:
        """The cluster called `name`, created on first use."""
        if name not in self.clusters:
            self.clusters[name] = KubeCluster(name)
        return self.clusters[name]

    def apply(self, cluster: KubeCluster, key: Key, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Server-side apply of a whole object as one field manager: the applied configuration becomes the
        object (server-set metadata kept). Returns the object and whether it was created."""
        self.applies[cluster.name] += 1
        existing = cluster.objects.get(key)
        now = self.world.now()
        applied = copy.deepcopy(obj)
        meta = applied.setdefault("metadata", {})
        if not key[2]:
            meta.pop("namespace", None)  # cluster-scoped: the server clears it
        if existing is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=iso_s(now), generation=1)
            self._stamp(applied)
            cluster.objects[key] = applied
            self.changes[cluster.name] += 1
            return applied, True
        server = {k: existing["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "resourceVersion")}
        candidate = copy.deepcopy(applied)
        candidate["metadata"].update(server)
        if candidate != existing:
            candidate["metadata"]["generation"] = server["generation"] + 1
            self._stamp(candidate)
            cluster.objects[key] = candidate
            self.changes[cluster.name] += 1
        return cluster.objects[key], False

    def _stamp(self, obj: dict[str, Any]) -> None:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        return {
            name: {
                "objects": sorted(
                    f"{obj.get('kind')} {'/'.join(filter(None, (k[2], k[3])))}" for k, obj in c.objects.items()
                ),
                "applies": self.applies[name],
                "changes": self.changes[name],
            }
            for name, c in sorted(self.clusters.items())
        }


def build_app(world: World) -> Starlette:
    """The ASGI app of the Kubernetes API stand-in."""
    kube = world.kube

    def resolve(request: Request) -> tuple[KubeCluster, Key, str] | Response:
        p = request.path_params
        api_version = f"{p['group']}/{p['version']}" if "group" in p else "v1"
        plural = p["plural"]
        known = RESOURCES.get((api_version, plural))
        if known is None:
            return status_error(
                404, "NotFound", f"the server could not find the requested resource ({request.url.path})"
            )
        kind, namespaced = known
        namespace = p.get("namespace", "")
        if namespaced != bool(namespace):
            return status_error(
                404, "NotFound", f"the server could not find the requested resource ({request.url.path})"
            )
        cluster = kube.cluster(p["cluster"])
        cluster.url = str(request.base_url).rstrip("/") + f"/clusters/{cluster.name}"
        return cluster, (api_version, plural, namespace, p["name"]), kind

    def not_found(key: Key) -> JSONResponse:
        group = key[0].split("/")[0] if "/" in key[0] else ""
        resource = f"{key[1]}.{group}" if group else key[1]
        return status_error(404, "NotFound", f'{resource} "{key[3]}" not found')

    async def get(request: Request) -> Response:
        resolved = resolve(request)
        if isinstance(resolved, Response):
            return resolved
        cluster, key, _ = resolved
        obj = cluster.objects.get(key)
        return JSONResponse(obj) if obj is not None else not_found(key)

    async def apply(request: Request) -> Response:
        resolved = resolve(request)
        if isinstance(resolved, Response):
            return resolved
        cluster, key, kind = resolved
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != APPLY_PATCH:
            return status_error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types (stand-in): "
                f"{APPLY_PATCH}; got {content_type or 'none'}",
            )
        if not request.query_params.get("fieldManager"):
            return status_error(400, "BadRequest", "PATCH, fieldManager is required for apply requests")
        try:
            obj = load_yaml(await request.body(), "apply configuration")
        except yaml.YAMLError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            return status_error(400, "BadRequest", "the apply configuration is not a YAML/JSON object")
        if obj.get("apiVersion") != key[0] or obj.get("kind") != kind:
            return status_error(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) or kind ({obj.get('kind')}) does not "
                f"match the request ({key[0]}, {kind})",
            )
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != key[3]:
            return status_error(400, "BadRequest", "the name of the object does not match the name on the URL")
        if key[2] and meta.get("namespace", key[2]) != key[2]:
            return status_error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        with world.lock:
            if key[2] and cluster.get("v1", "namespaces", "", key[2]) is None:
                return status_error(404, "NotFound", f'namespaces "{key[2]}" not found')
            if key[2]:
                meta["namespace"] = key[2]
            stored, created = kube.apply(cluster, key, obj)
            world.rancher.agent_objects_changed(cluster)
            return JSONResponse(stored, status_code=201 if created else 200)

    async def version(request: Request) -> Response:
        kube.cluster(request.path_params["cluster"])
        return JSONResponse({"major": "1", "minor": "30", "gitVersion": "v1.30.0-ferry-sandbox", "platform": "linux"})

    async def no_route(request: Request, exc: Exception) -> Response:
        return status_error(404, "NotFound", f"the server could not find the requested resource ({request.url.path})")

    async def no_method(request: Request, exc: Exception) -> Response:
        return status_error(405, "MethodNotAllowed", f"{request.method} is not supported by the stand-in here")

    from sandbox.standins.rollouts import routes as rollout_routes

    base = "/clusters/{cluster}"
    core, groups = f"{base}/api/v1", f"{base}/apis/{{group}}/{{version}}"
    # Argo Rollouts (argoproj.io/v1alpha1 rollouts, with their status subresource) before the generic paths.
    routes = [Route(f"{base}/version", version, methods=["GET"]), *rollout_routes(world)]
    for prefix in (core, groups):
        for path in (f"{prefix}/{{plural}}/{{name}}", f"{prefix}/namespaces/{{namespace}}/{{plural}}/{{name}}"):
            routes += [Route(path, get, methods=["GET"]), Route(path, apply, methods=["PATCH"])]
    return Starlette(routes=routes, exception_handlers={404: no_route, 405: no_method})
