"""Argo CD stand-in: the `/api/v1/applications` subset Ferry uses, for the on-prem and the cloud instance.

Written from specs/argocd/ (swagger.json for paths and shapes, NOTES-from-source.md for the status codes
and refusals, docs_operator-manual_health.md for how image pull failures make an app Degraded). A sync
really reads the GitOps repo at the requested revision (`git show REV:PATH/kustomization.yaml`), checks
that kustomize could build it, and reports the images it pins; health then comes from whether THIS site's
Harbor stand-in holds those images, or from the scenario.

Error answers are grpc-gateway's JSON (`runtimeError`: error, code, message, details) with the usual
grpc-gateway code -> HTTP mapping (NotFound 404, InvalidArgument and FailedPrecondition 400,
PermissionDenied 403, Unauthenticated 401); the NOTES give the gRPC codes, not the HTTP statuses.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.yamlsafe import load_yaml, load_yaml_all
from sandbox.standins.rollouts import worst_health
from sandbox.standins.world import iso_s, split_image

if TYPE_CHECKING:
    from sandbox.standins.world import World

AUTH_SCHEME = "bearer"
PUBLIC_PATHS: frozenset[str] = frozenset()
NAMESPACE = "argocd"

SYNC_SECONDS = 0.5  # operation Running -> Succeeded/Failed
ROLLOUT_SECONDS = 0.5  # health Progressing after a successful sync
HISTORY_LIMIT = 10  # spec.revisionHistoryLimit default
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

# gRPC codes used by the Argo CD API server.
INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION, UNAUTHENTICATED = 3, 5, 7, 9, 16
_HTTP = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, PERMISSION_DENIED: 403, FAILED_PRECONDITION: 400, UNAUTHENTICATED: 401}


def grpc_error(code: int, message: str) -> JSONResponse:
    """A grpc-gateway error body."""
    return JSONResponse({"error": message, "code": code, "message": message, "details": []}, status_code=_HTTP[code])


def unauthorized() -> Response:
    """What the Argo CD API server answers without a valid bearer token."""
    return grpc_error(UNAUTHENTICATED, "no session information")


class SyncError(Exception):
    """The target state cannot be generated; the message is what Argo CD shows in operationState."""


# --- reading the GitOps repo ---


def _repo_dir(repo_url: str) -> Path:
    if repo_url.startswith("file://"):
        return Path(repo_url.removeprefix("file://"))
    if "://" in repo_url or repo_url.startswith("git@"):
        raise SyncError(
            f"ComparisonError: repository {repo_url} is not a local path: the Argo CD stand-in reads local git "
            "repositories only (a path or file:// URL)"
        )
    return Path(repo_url)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _show(repo: Path, sha: str, path: str) -> str | None:
    out = _git(repo, "show", f"{sha}:{path}")
    return out.stdout if out.returncode == 0 else None


def _kind(repo: Path, sha: str, path: str) -> str | None:
    out = _git(repo, "cat-file", "-t", f"{sha}:{path}" if path else f"{sha}^{{tree}}")
    return out.stdout.strip() if out.returncode == 0 else None


@dataclass
class Target:
    """The generated target state: the resolved commit, the kustomization's image overrides, and the
    workload objects (Deployments, Argo Rollouts, AnalysisTemplates) as kustomize would render them."""

    revision: str
    images: list[dict[str, Any]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)


def read_target(repo_url: str, revision: str, path: str) -> Target:
    """Resolve `revision` and validate `path`'s kustomization (recursively), as `kustomize build` would fail.

    Raises SyncError with the message Argo CD shows when manifest generation fails.
    """
    repo = _repo_dir(repo_url)
    if not repo.exists():
        raise SyncError(f"ComparisonError: repository not found: {repo_url}")
    resolved = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if resolved.returncode != 0:
        raise SyncError(f"ComparisonError: unable to resolve '{revision}' to a commit SHA")
    sha = resolved.stdout.strip()
    root = posixpath.normpath(path.strip("/") or ".")
    if root.startswith(".."):
        raise SyncError(f"ComparisonError: path {path} is outside the repository")
    root = "" if root == "." else root
    objects: list[dict[str, Any]] = []
    kustomization = _load_kustomization(repo, sha, root, depth=0, objects=objects)
    images = kustomization.get("images") or []
    return Target(sha, images, [o for o in objects if (o.get("apiVersion"), o.get("kind")) in RENDERED_KINDS])


# What a sync hands to the cluster stand-ins (sandbox/standins/rollouts.py); other kinds are only validated.
RENDERED_KINDS = {
    ("apps/v1", "Deployment"),
    ("argoproj.io/v1alpha1", "Rollout"),
    ("argoproj.io/v1alpha1", "AnalysisTemplate"),
}


def _load_kustomization(
    repo: Path, sha: str, folder: str, depth: int, objects: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Validate `folder`'s kustomization (recursively) and append the objects it renders to `objects`.

    Rendering covers what the stand-ins simulate: resources and components (Components are included like
    resources), then this level's `namespace` and `images` transformers. Patches, labels and generators are
    not applied: nothing the stand-ins simulate depends on them.
    """
    where = folder or "."
    if depth > 8:
        raise SyncError(f"ComparisonError: kustomize build {where} failed: resources nest too deep (cycle?)")
    text, name = None, None
    for candidate in KUSTOMIZATION_FILES:
        name = posixpath.join(folder, candidate) if folder else candidate
        text = _show(repo, sha, name)
        if text is not None:
            break
    if text is None:
        raise SyncError(
            f"ComparisonError: kustomize build {where} failed: unable to find one of {list(KUSTOMIZATION_FILES)} "
            f"in directory '{where}' at revision {sha[:12]}"
        )
    fail = f"ComparisonError: kustomize build {where} failed: {name}"
    try:
        data = load_yaml(text, name or where)
    except yaml.YAMLError as e:
        raise SyncError(f"{fail}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise SyncError(f"{fail}: must be a YAML mapping")
    resources = data.get("resources") or []
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise SyncError(f"{fail}: 'resources' must be a list of paths")
    images = data.get("images") or []
    if not isinstance(images, list) or not all(isinstance(i, dict) and i.get("name") for i in images):
        raise SyncError(f"{fail}: 'images' must be a list of mappings with a 'name'")
    components = data.get("components") or []
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise SyncError(f"{fail}: 'components' must be a list of paths")
    mine: list[dict[str, Any]] = []
    for resource in [*resources, *components]:
        if "://" in resource or resource.startswith(("github.com/", "git@")):
            continue  # remote bases are not fetched by the stand-in
        target = posixpath.normpath(posixpath.join(folder, resource))
        if target.startswith(".."):
            raise SyncError(f"{fail}: resource {resource} is outside the repository")
        target = "" if target == "." else target
        kind = _kind(repo, sha, target)
        if kind == "tree":
            _load_kustomization(repo, sha, target, depth + 1, mine)
        elif kind == "blob":
            try:
                docs = load_yaml_all(_show(repo, sha, target) or "", target)
            except yaml.YAMLError as e:
                raise SyncError(f"{fail}: resource {resource}: invalid YAML: {e}") from None
            mine += [d for d in docs if isinstance(d, dict)]
        else:
            raise SyncError(f"{fail}: accumulating resources: '{resource}' does not exist at revision {sha[:12]}")
    if objects is not None:
        namespace = data.get("namespace")
        for obj in mine:
            if namespace and isinstance(obj.get("metadata"), dict):
                obj["metadata"]["namespace"] = str(namespace)
            _set_images(obj, images)
        objects += mine
    return data


def _set_images(node: Any, images: list[dict[str, Any]]) -> None:
    """kustomize's images transformer: rewrite `image` of every `containers`/`initContainers` entry, in any kind."""
    if isinstance(node, list):
        for item in node:
            _set_images(item, images)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                if isinstance(container, dict) and isinstance(container.get("image"), str):
                    container["image"] = _retag(container["image"], images)
        else:
            _set_images(value, images)


def _retag(image: str, images: list[dict[str, Any]]) -> str:
    """One image reference after the `images:` entry naming it (name, name:tag or name@digest) is applied."""
    name, sep, rest = image.partition("@")
    if not sep:
        head, colon, tag = name.rpartition(":")
        if colon and "/" not in tag:
            name, sep, rest = head, ":", tag
    for entry in images:
        if entry.get("name") == name:
            if entry.get("digest"):
                sep, rest = "@", str(entry["digest"])
            elif entry.get("newTag"):
                sep, rest = ":", str(entry["newTag"])
            return f"{entry.get('newName') or name}{sep}{rest}"
    return image


def image_ref(entry: dict[str, Any]) -> str:
    """How a kustomization `images:` entry appears in the running pods (newName@digest, or :newTag)."""
    name = entry.get("newName") or entry["name"]
    if entry.get("digest"):
        return f"{name}@{entry['digest']}"
    if entry.get("newTag"):
        return f"{name}:{entry['newTag']}"
    return name


# --- state ---


@dataclass
class Deployed:
    """What the last successful sync put on the cluster (and the Argo Rollouts among it)."""

    revision: str
    images: list[str]
    finished_at: float
    rollouts: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class App:
    """An Application and its simulated controller state."""

    obj: dict[str, Any]
    sync_status: str = "OutOfSync"
    sync_revision: str = ""
    op_state: dict[str, Any] | None = None
    operation: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    deployed: Deployed | None = None
    next_history_id: int = 0

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.obj["metadata"]["name"]

    @property
    def running(self) -> bool:
        """True while a sync operation is in progress."""
        return self.op_state is not None and self.op_state["phase"] == "Running"


class ArgoInstance:
    """The applications of one Argo CD (site 'onprem' or 'cloud')."""

    def __init__(self, world: World, site: str) -> None:
        self.world = world
        self.site = site
        self.name = f"argocd-{site}"
        self.apps: dict[str, App] = {}
        self._rv = 0

    def _bump(self, app: App) -> None:
        self._rv += 1
        app.obj["metadata"]["resourceVersion"] = str(self._rv)

    def create_app(
        self,
        name: str,
        repo_url: str,
        path: str,
        target_revision: str = "HEAD",
        *,
        project: str = "default",
        namespace: str = "default",
        server: str = "https://kubernetes.default.svc",
    ) -> App:
        """Create (or return the existing) application; a shortcut for sandbox setup and tests."""
        spec = {
            "project": project,
            "source": {"repoURL": repo_url, "path": path, "targetRevision": target_revision},
            "destination": {"server": server, "namespace": namespace},
        }
        app, _ = self.upsert({"metadata": {"name": name}, "spec": spec}, upsert=False)
        return app

    def upsert(self, obj: dict[str, Any], *, upsert: bool) -> tuple[App, bool]:
        """Create an app; an existing one with an equal spec is returned as it is, a different spec needs
        `upsert` (ValueError otherwise). Returns (app, created)."""
        name = obj["metadata"]["name"]
        spec = obj["spec"]
        spec.setdefault("project", "default")
        existing = self.apps.get(name)
        if existing is not None:
            if existing.obj["spec"] == spec:
                return existing, False
            if not upsert:
                raise ValueError("existing application spec is different, use upsert flag to force update")
            existing.obj["spec"] = spec
            self._bump(existing)
            return existing, False
        meta = {
            "name": name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": iso_s(self.world.now()),
            "generation": 1,
            "labels": obj["metadata"].get("labels") or {},
        }
        app = App({"metadata": meta, "spec": spec})
        self.apps[name] = app
        self._bump(app)
        return app, True

    async def sync(self, app: App, revision: str | None, *, dry_run: bool = False, prune: bool = False) -> None:
        """Start a sync operation to `revision` (default: the app's targetRevision)."""
        world = self.world
        source = app.obj["spec"].get("source") or {}
        wanted = revision or source.get("targetRevision") or "HEAD"
        started = world.now()
        app.operation = {
            "sync": {"revision": wanted, "prune": prune, "dryRun": dry_run},
            "initiatedBy": {"username": "admin"},
        }
        mine = app.op_state = {
            "operation": app.operation,
            "phase": "Running",
            "message": "",
            "startedAt": iso_s(started),
        }
        self._bump(app)
        try:
            target: Target | SyncError = await asyncio.to_thread(
                read_target, source.get("repoURL", ""), wanted, source.get("path", "")
            )
        except SyncError as e:
            target = e

        def finish(at: float) -> None:
            state = app.op_state
            if state is not mine:
                return
            state["finishedAt"] = iso_s(at)
            app.operation = None
            if isinstance(target, SyncError):
                state.update(phase="Failed", message=str(target))
                self._bump(app)
                return
            state.update(
                phase="Succeeded",
                message="successfully synced (all tasks run)",
                syncResult={"revision": target.revision, "source": source, "resources": []},
            )
            if not dry_run:
                app.sync_status, app.sync_revision = "Synced", target.revision
                namespace = str((app.obj["spec"].get("destination") or {}).get("namespace") or "default")
                # The app's site is the cluster it deploys to; its Rollouts run there from now on.
                rollouts = world.rollouts.deploy(self.site, namespace, target.objects, at)
                app.deployed = Deployed(target.revision, [image_ref(i) for i in target.images], at, rollouts)
                app.history.append(
                    {
                        "id": app.next_history_id,
                        "revision": target.revision,
                        "source": source,
                        "deployStartedAt": iso_s(started),
                        "deployedAt": iso_s(at),
                        "initiatedBy": {"username": "admin"},
                    }
                )
                app.next_history_id += 1
                del app.history[:-HISTORY_LIMIT]
            self._bump(app)

        with world.lock:
            # Timed from when the manifests were generated: a slow git read never makes a sync look instant.
            world.after(SYNC_SECONDS, finish)

    # --- health, computed live like the controller does on every reconcile ---

    def health(self, app: App) -> dict[str, Any]:
        """status.health: Progressing while syncing or rolling out, then Healthy/Degraded (or the scenario's)."""
        now = self.world.now()
        if app.running:
            return {"status": "Progressing", "message": "sync operation in progress"}
        deployed = app.deployed
        if deployed is None:
            return {"status": "Missing"}
        if now < deployed.finished_at + ROLLOUT_SECONDS * self.world.speed:
            return {"status": "Progressing", "message": "waiting for rollout to finish: 0 of 1 updated replicas"}
        forced = self.world.scenario.health_for(app.name)
        if forced is not None:
            return {"status": forced, "message": f"{forced} (sandbox scenario health.{app.name})"}
        for image in deployed.images:
            problem = self.pull_problem(image)
            if problem:
                return {"status": "Degraded", "message": problem}
        # Argo Rollouts through Argo CD's Rollout health check (Paused -> Suspended); the worst one wins.
        return worst_health({"status": "Healthy"}, *(self.world.rollouts.health(key) for key in deployed.rollouts))

    def pull_problem(self, image: str) -> str | None:
        """Why a pod of this site could not pull `image`, or None if it can."""
        world = self.world
        name, digest = image.split("@", 1) if "@" in image else (image, "")
        if not digest and ":" in name.rsplit("/", 1)[-1]:
            name, tag = name.rsplit(":", 1)
        else:
            tag = ""
        try:
            host, project, repository = split_image(name)
        except ValueError:
            return None  # a short name such as `nginx` comes from a public registry the stand-in does not model
        instance = world.harbor_for_host(host)
        if instance is None:
            if self.site in world.registry_hosts:
                return None  # a registry other than the sandbox Harbors: assumed pullable
            instance = self.site  # in-process use without known hosts: the site's own Harbor
        if instance != self.site:
            return f"ImagePullBackOff: {image}: registry {host} (harbor-{instance}) is not reachable from {self.site}"
        if not world.harbor[instance].has_image(project, repository, digest or tag or "latest"):
            return f"ImagePullBackOff: {image} not found in harbor-{instance}"
        return None

    def to_json(self, app: App) -> dict[str, Any]:
        """The Application as the API returns it."""
        status: dict[str, Any] = {
            "sync": {
                "status": app.sync_status,
                "revision": app.sync_revision,
                "comparedTo": {
                    "source": app.obj["spec"].get("source"),
                    "destination": app.obj["spec"].get("destination"),
                },
            },
            "health": self.health(app),
            "history": list(app.history),
            "summary": {"images": list(app.deployed.images) if app.deployed else []},
            "sourceType": "Kustomize",
            "reconciledAt": iso_s(self.world.now()),
        }
        if app.op_state is not None:
            status["operationState"] = app.op_state
        out = {**app.obj, "status": status}
        if app.operation is not None:
            out["operation"] = app.operation
        return out

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state."""
        return {
            name: {
                "sync": app.sync_status,
                "revision": app.sync_revision,
                "health": self.health(app)["status"],
                "phase": (app.op_state or {}).get("phase"),
                "images": app.deployed.images if app.deployed else [],
            }
            for name, app in sorted(self.apps.items())
        }


# --- HTTP layer ---


def build_app(world: World, site: str) -> Starlette:
    """The ASGI app of Argo CD `site`."""
    argo = world.argocd[site]

    async def body_of(request: Request) -> dict[str, Any] | None:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def find(request: Request) -> App | JSONResponse:
        name = request.path_params["name"]
        app = argo.apps.get(name)
        if app is None:
            return grpc_error(NOT_FOUND, f'applications.argoproj.io "{name}" not found')
        project = request.query_params.get("project") or request.query_params.get("projects")
        if project and app.obj["spec"].get("project") != project:
            # api-docs.md: exists but in another project -> 403, so existence does not leak.
            return grpc_error(PERMISSION_DENIED, "permission denied")
        return app

    async def list_apps(request: Request) -> Response:
        params = request.query_params
        projects = set(params.getlist("projects") + params.getlist("project"))
        items = [
            argo.to_json(app)
            for name, app in sorted(argo.apps.items())
            if (not params.get("name") or name == params["name"])
            and (not projects or app.obj["spec"].get("project") in projects)
            and (not params.get("repo") or (app.obj["spec"].get("source") or {}).get("repoURL") == params["repo"])
        ]
        return JSONResponse({"metadata": {"resourceVersion": str(argo._rv)}, "items": items})

    async def create(request: Request) -> Response:
        body = await body_of(request)
        if body is None:
            return grpc_error(INVALID_ARGUMENT, "the body is not a JSON object")
        name = (body.get("metadata") or {}).get("name")
        spec = body.get("spec")
        if not name or not isinstance(spec, dict):
            return grpc_error(INVALID_ARGUMENT, "application metadata.name and spec are required")
        source = spec.get("source")
        if not isinstance(source, dict) or not source.get("repoURL"):
            return grpc_error(
                INVALID_ARGUMENT,
                f"application spec for {name} is invalid: InvalidSpecError: spec.source.repoURL is required",
            )
        if not isinstance(spec.get("destination"), dict):
            return grpc_error(
                INVALID_ARGUMENT,
                f"application spec for {name} is invalid: InvalidSpecError: Destination server missing from app spec",
            )
        try:
            with world.lock:
                app, _ = argo.upsert(body, upsert=request.query_params.get("upsert") == "true")
        except ValueError as e:
            return grpc_error(INVALID_ARGUMENT, str(e))
        return JSONResponse(argo.to_json(app))

    async def get(request: Request) -> Response:
        # `refresh` (normal/hard) is accepted; the stand-in always answers with freshly computed state.
        found = find(request)
        return found if isinstance(found, JSONResponse) else JSONResponse(argo.to_json(found))

    async def sync(request: Request) -> Response:
        found = find(request)
        if isinstance(found, JSONResponse):
            return found
        body = await body_of(request)
        if body is None:
            return grpc_error(INVALID_ARGUMENT, "the body is not a JSON object")
        if found.running:
            # util/argo/argo.go ErrAnotherOperationInProgress (FailedPrecondition).
            return grpc_error(FAILED_PRECONDITION, "another operation is already in progress")
        await argo.sync(
            found, body.get("revision") or None, dry_run=bool(body.get("dryRun")), prune=bool(body.get("prune"))
        )
        return JSONResponse(argo.to_json(found))

    async def rollback(request: Request) -> Response:
        found = find(request)
        if isinstance(found, JSONResponse):
            return found
        body = await body_of(request) or {}
        if (found.obj["spec"].get("syncPolicy") or {}).get("automated"):
            return grpc_error(FAILED_PRECONDITION, "rollback cannot be initiated when auto-sync is enabled")
        entry = next((h for h in found.history if str(h["id"]) == str(body.get("id"))), None)
        if entry is None:
            return grpc_error(
                INVALID_ARGUMENT, f"application {found.name} does not have deployment with id {body.get('id')}"
            )
        if found.running:
            return grpc_error(FAILED_PRECONDITION, "another operation is already in progress")
        await argo.sync(found, entry["revision"], dry_run=bool(body.get("dryRun")), prune=bool(body.get("prune")))
        return JSONResponse(argo.to_json(found))

    async def no_route(request: Request, exc: Exception) -> Response:
        return grpc_error(NOT_FOUND, f"Not Found: the Argo CD stand-in has no {request.method} {request.url.path}")

    return Starlette(
        routes=[
            Route("/api/v1/applications", list_apps, methods=["GET"]),
            Route("/api/v1/applications", create, methods=["POST"]),
            Route("/api/v1/applications/{name}", get, methods=["GET"]),
            Route("/api/v1/applications/{name}/sync", sync, methods=["POST"]),
            Route("/api/v1/applications/{name}/rollback", rollback, methods=["POST"]),
        ],
        exception_handlers={404: no_route, 405: no_route},
    )
