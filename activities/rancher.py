"""Rancher activities: import a cluster Terraform created, and install platform services from the app catalog.

Import, from specs/rancher/NOTES-rancher-v3.md: find the cluster by name (`GET /v3/clusters?name=`) or create
an imported one (`POST /v3/clusters` with driver "imported", as rancher2's Terraform provider does); get its
registration token (`<clusterId>:default-token`, then `<clusterId>:system`) or create one (a 409 means another
attempt made it); wait until the token's controller has filled it in; read the manifest at `manifestUrl` and
apply it to the new cluster's Kubernetes API; wait until the cluster's state is `active`. Rancher's own
`command` is `kubectl apply -f <manifestUrl>`; Ferry does the same apply over HTTP with server-side apply, so
the worker needs no kubectl and a second apply changes nothing.

Apps: the notes do not cover the app catalog, so this follows Rancher 2.5+'s steve API as Rancher's source
defines it (pkg/api/steve/catalog/types/rest.go, pkg/api/steve/catalog/operation.go,
pkg/apis/catalog.cattle.io/v1/helm.go): `POST /k8s/clusters/{id}/v1/catalog.cattle.io.clusterrepos/{repo}
?action=install|upgrade` answers 201 with the helm operation's name; the app (the Helm release) is
`/k8s/clusters/{id}/v1/catalog.cattle.io.apps/{namespace}/{name}` with `spec.chart.metadata.version`,
`spec.version` (the release revision) and `spec.info.status` (Helm's statuses: deployed, failed,
pending-install, pending-upgrade, ...).

Secrets: the Rancher API token is read per request by ApiClient; the registration token (it is in the
manifest URL and the manifest) and the cluster's kubeconfig credentials are read on the worker during the
call, never put in payloads, heartbeats or messages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import yaml
from temporalio import activity

from activities import waiting
from activities.errors import (
    AUTH_FAILED,
    BAD_REQUEST,
    NOT_CONFIGURED,
    NOT_FOUND,
    classify_response,
    fatal,
    retryable,
)
from activities.http import ApiClient
from activities.site_clients import SiteClients
from common.config import Endpoint
from common.yamlsafe import load_yaml, load_yaml_all
from workflows.provision_types import (
    AppSpec,
    ClusterInfo,
    RancherAppInput,
    RancherAppResult,
    RancherCluster,
    RancherImportInput,
)

ACTIVE = "active"
GONE = frozenset({"removing", "removed"})
TOKEN_NAMES = ("default-token", "system")  # NOTES: clusterRegistrationTokenNames of the rancher2 provider
FIELD_MANAGER = "ferry"
APPLY_PATCH = "application/apply-patch+yaml"
HELM_TIMEOUT = "600s"  # ChartInstallAction.timeout is a metav1.Duration, i.e. a Go duration string
DEPLOYED, FAILED = "deployed", "failed"
PENDING = frozenset({"pending-install", "pending-upgrade", "pending-rollback", "uninstalling"})
# Not in activities/errors.py yet: the Helm operation of an install/upgrade ended failed.
APP_INSTALL_FAILED = "AppInstallFailed"
VERBS = {"installed": "install", "upgraded": "upgrade"}

# The kinds a registration manifest holds, and where their API is: (apiVersion, kind) -> (plural, namespaced).
# Rancher's manifest uses only these; an unknown kind fails clearly instead of guessing its path (no discovery).
KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("scheduling.k8s.io/v1", "PriorityClass"): ("priorityclasses", False),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
}
# Apply order: what others refer to first (Rancher's manifest lists RBAC before the Namespace).
ORDER = {"Namespace": 0, "PriorityClass": 1, "ServiceAccount": 2, "Secret": 2, "ConfigMap": 2, "ClusterRole": 3}
ORDER |= {"Role": 3, "ClusterRoleBinding": 4, "RoleBinding": 4}


def _redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _reason(response: httpx.Response) -> str:
    """Rancher's or Kubernetes' `message`, else the start of the body."""
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])[:300]
    return response.text.strip()[:300] or "no reason given"


def _transient(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _delay(system: str, response: httpx.Response, what: str) -> float | None:
    delay = classify_response(system, response, what).next_retry_delay
    return delay.total_seconds() if delay else None


class RancherClient:
    """Typed calls of one Rancher server: the v3 API and the steve API of its clusters, bearer-token auth.

    `kube_transport` is the transport for the imported clusters' Kubernetes APIs (tests route both to
    stand-ins); their credentials come from each cluster's kubeconfig on the worker.
    """

    def __init__(self, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None = None, *, instance: str = ""):
        self.instance = instance
        self.system = f"Rancher ({instance})" if instance else "Rancher"
        self.api = ApiClient(self.system, endpoint, auth="bearer", transport=transport)
        self.kube_transport = transport
        self.timeout = endpoint.timeout_seconds

    # --- v3: clusters and registration tokens ---

    async def find_cluster(self, name: str) -> dict[str, Any] | None:
        """The cluster named `name`, or None; more than one is an error an operator must resolve."""
        response = await self.api.request("GET", "/v3/clusters", f"find cluster {name}", params={"name": name})
        found = [c for c in response.json().get("data") or [] if c.get("name") == name]
        if len(found) > 1:
            ids = ", ".join(str(c.get("id")) for c in found)
            raise fatal(
                f"{self.system}: {len(found)} clusters are named '{name}' ({ids}); Ferry cannot tell which one to "
                "import into. Delete the extra ones in Rancher (Cluster Management) and retry",
                BAD_REQUEST,
            )
        return found[0] if found else None

    async def get_cluster(self, cluster_id: str) -> dict[str, Any] | None:
        """The cluster with this id, or None if Rancher has no such cluster."""
        response = await self.api.request(
            "GET",
            f"/v3/clusters/{quote(cluster_id, safe='')}",
            f"read cluster {cluster_id}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        return response.json() if response.is_success else None

    async def create_cluster(self, name: str) -> dict[str, Any] | None:
        """Create an imported cluster; None if one of that name appeared meanwhile (another attempt made it).

        Rancher's answer to a duplicate name is not in the notes: 409, or 422 with code NotUnique, both mean it.
        """

        def taken(r: httpx.Response) -> bool:
            if r.status_code == 409:
                return True
            with contextlib.suppress(ValueError):
                return r.status_code == 422 and r.json().get("code") == "NotUnique"
            return False

        response = await self.api.request(
            "POST",
            "/v3/clusters",
            f"create imported cluster {name}",
            ok=lambda r: r.is_success or taken(r),
            json={
                "type": "cluster",
                "name": name,
                "driver": "imported",
                "description": "Imported by Ferry (provisioning)",
                "labels": {"ferry.dev/managed-by": "ferry"},
            },
        )
        return response.json() if response.is_success else None

    async def registration_token(self, cluster_id: str) -> dict[str, Any] | None:
        """The cluster's registration token (default-token, else system), or None."""
        for name in TOKEN_NAMES:
            token_id = f"{cluster_id}:{name}"
            response = await self.api.request(
                "GET",
                f"/v3/clusterregistrationtokens/{quote(token_id, safe='')}",
                f"read registration token {token_id}",
                ok=lambda r: r.is_success or r.status_code == 404,
            )
            if response.is_success:
                return response.json()
        return None

    async def create_registration_token(self, cluster_id: str) -> dict[str, Any] | None:
        """Create `<clusterId>:default-token`; None if it already exists (the caller reads it again)."""
        response = await self.api.request(
            "POST",
            "/v3/clusterregistrationtokens",
            f"create registration token of cluster {cluster_id}",
            ok=lambda r: r.is_success or r.status_code == 409,
            json={"type": "clusterRegistrationToken", "clusterId": cluster_id, "name": TOKEN_NAMES[0]},
        )
        return response.json() if response.is_success else None

    async def manifest(self, cluster_id: str, token: dict[str, Any]) -> str:
        """The registration manifest of the cluster.

        Read from this worker's Rancher endpoint at the path of `manifestUrl` (Rancher builds that URL on its
        server-url setting, which may be a name this worker does not use); when server-url is unset the URL is
        empty and the path is built as the notes say: /v3/import/<token>_<clusterId>.yaml. The token is in the
        path, so errors are written here, without the path.
        """
        secret = str(token.get("token") or "")
        url = str(token.get("manifestUrl") or "")
        path = urlsplit(url).path if url else f"/v3/import/{secret}_{cluster_id}.yaml"
        secret = secret or path.rsplit("/", 1)[-1].split("_")[0]
        what = f"read the registration manifest of cluster {cluster_id}"
        response = await self.api.request("GET", path, what, ok=lambda r: True)
        if response.is_success:
            return response.text
        reason = _redact(_reason(response), secret)
        message = f"{self.system}: {what}: HTTP {response.status_code}: {reason}"
        if _transient(response):
            raise retryable(message, delay=_delay(self.system, response, what))
        raise fatal(
            f"{message}. Check that the cluster's registration token in Rancher is still valid "
            "(Cluster Management > the cluster > Registration) and retry",
            AUTH_FAILED if response.status_code in (401, 403) else BAD_REQUEST,
        )

    # --- steve through the cluster proxy: app catalog ---

    def _steve(self, cluster_id: str) -> str:
        return f"/k8s/clusters/{quote(cluster_id, safe='')}/v1"

    async def get_app(self, cluster_id: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The app (Helm release) `namespace/name` on the cluster, or None."""
        response = await self.api.request(
            "GET",
            f"{self._steve(cluster_id)}/catalog.cattle.io.apps/{quote(namespace, safe='')}/{quote(name, safe='')}",
            f"read app {namespace}/{name} on cluster {cluster_id}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        return response.json() if response.is_success else None

    async def get_operation(self, cluster_id: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The helm operation `namespace/name`, or None (operations are cleaned up eventually)."""
        response = await self.api.request(
            "GET",
            f"{self._steve(cluster_id)}/catalog.cattle.io.operations/{quote(namespace, safe='')}/"
            f"{quote(name, safe='')}",
            f"read helm operation {namespace}/{name} on cluster {cluster_id}",
            ok=lambda r: r.is_success or r.status_code == 404,
        )
        return response.json() if response.is_success else None

    async def chart_action(self, cluster_id: str, verb: str, app: AppSpec) -> dict[str, Any]:
        """POST ?action=install|upgrade of `app` from its cluster repo; the chartActionOutput on success.

        4xx is fatal and names chart, version and Rancher's reason; 5xx and 429 are retryable.
        """
        chart = {
            "chartName": app.chart,
            "version": app.version,
            "releaseName": app.name,
            # What Rancher's UI sets, so the app shows where it came from.
            "annotations": {
                "catalog.cattle.io/ui-source-repo-type": "cluster",
                "catalog.cattle.io/ui-source-repo": app.repo,
            },
            "values": app.values,
        }
        body = {"charts": [chart], "namespace": app.namespace, "wait": True, "timeout": HELM_TIMEOUT}
        what = (
            f"{verb} of chart {app.chart} {app.version} (repo {app.repo}) as {app.namespace}/{app.name} "
            f"on cluster {cluster_id}"
        )
        response = await self.api.request(
            "POST",
            f"{self._steve(cluster_id)}/catalog.cattle.io.clusterrepos/{quote(app.repo, safe='')}",
            what,
            ok=lambda r: True,
            params={"action": verb},
            json=body,
        )
        if response.is_success:
            return response.json()
        status, reason = response.status_code, _reason(response)
        if _transient(response):
            raise retryable(
                f"{self.system}: {what}: HTTP {status}: {reason}", delay=_delay(self.system, response, what)
            )
        if status in (401, 403):
            raise fatal(
                f"{self.system}: {what}: refused (HTTP {status}: {reason}); check the credential reference of "
                f"sites.{self.instance or '<site>'}.rancher in ferry.yaml and that its user may install apps there",
                AUTH_FAILED,
            )
        raise fatal(
            f"{self.system}: {what} was refused: HTTP {status}: {reason}. Check chart '{app.chart}' version "
            f"'{app.version}' of provisioning.workspaces.*.apps in ferry.yaml against the '{app.repo}' repository "
            "in Rancher (Apps > Repositories)",
            NOT_FOUND if status == 404 else BAD_REQUEST,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


# --- the imported cluster's Kubernetes API ---


@dataclass
class KubeAuth:
    """How to reach one cluster's API: headers and TLS settings from its kubeconfig (never logged)."""

    headers: dict[str, str]
    verify: bool | ssl.SSLContext = True
    secrets: tuple[str, ...] = ()


def _named(cfg: dict[str, Any], section: str, name: Any, inner: str, path: str) -> dict[str, Any]:
    entries = [e for e in cfg.get(section) or [] if isinstance(e, dict)]
    if name is None and len(entries) == 1:
        return entries[0].get(inner) or {}
    for entry in entries:
        if entry.get("name") == name:
            return entry.get(inner) or {}
    raise fatal(f"kubeconfig {path}: no {inner} named '{name}' under {section}", NOT_CONFIGURED)


def _data_or_file(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / Path(entry[key]).expanduser()).read_bytes()
    return None


@contextlib.contextmanager
def _temp_files(*blobs: bytes) -> Iterator[list[str]]:
    """Private temporary files for ssl.load_cert_chain, which only reads files; removed right after."""
    paths = []
    try:
        for blob in blobs:
            fd, name = tempfile.mkstemp(prefix="ferry-kube-")
            paths.append(name)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
        yield paths
    finally:
        for name in paths:
            with contextlib.suppress(OSError):
                os.unlink(name)


def kube_auth(kubeconfig_path: str) -> KubeAuth:
    """Credentials and TLS settings of the kubeconfig's current context, read on the worker now.

    Supports bearer tokens (token, tokenFile), basic auth, client certificates and CA certificates (files or
    *-data, relative paths taken from the kubeconfig's folder as kubectl does). Exec and auth-provider plugins
    are not run: the message says so.
    """
    where = Path(kubeconfig_path).expanduser()
    try:
        cfg = load_yaml(where.read_text(), f"kubeconfig {kubeconfig_path}")
    except OSError as e:
        raise fatal(
            f"kubeconfig {kubeconfig_path} (cluster kubeconfig_path) cannot be read on this worker: {e.strerror}",
            NOT_CONFIGURED,
        ) from None
    except yaml.YAMLError:
        raise fatal(f"kubeconfig {kubeconfig_path} is not valid YAML", NOT_CONFIGURED) from None
    if not isinstance(cfg, dict):
        raise fatal(f"kubeconfig {kubeconfig_path} is not a kubeconfig (a YAML mapping)", NOT_CONFIGURED)
    base = where.parent
    contexts = [c for c in cfg.get("contexts") or [] if isinstance(c, dict)]
    current = cfg.get("current-context")
    context = next((c.get("context") or {} for c in contexts if c.get("name") == current), None)
    if context is None:
        context = (contexts[0].get("context") or {}) if len(contexts) == 1 else {}
    cluster = _named(cfg, "clusters", context.get("cluster"), "cluster", kubeconfig_path)
    user = _named(cfg, "users", context.get("user"), "user", kubeconfig_path)
    if user.get("exec") or user.get("auth-provider"):
        raise fatal(
            f"kubeconfig {kubeconfig_path}: the user authenticates with an exec/auth-provider plugin, which Ferry "
            "does not run; give it a token or a client certificate for the import",
            NOT_CONFIGURED,
        )
    try:
        headers: dict[str, str] = {}
        secrets: list[str] = []
        token = user.get("token") or (
            (base / Path(user["tokenFile"]).expanduser()).read_text().strip() if user.get("tokenFile") else ""
        )
        if token:
            headers["Authorization"] = f"Bearer {token}"
            secrets.append(token)
        elif user.get("username"):
            pair = f"{user['username']}:{user.get('password') or ''}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            secrets += [str(user.get("password") or ""), base64.b64encode(pair.encode()).decode()]
        ca = _data_or_file(cluster, "certificate-authority", base)
        cert = _data_or_file(user, "client-certificate", base)
        key = _data_or_file(user, "client-key", base)
    except (OSError, ValueError, KeyError) as e:
        reason = e.strerror if isinstance(e, OSError) else "a file or *-data value cannot be read"
        raise fatal(f"kubeconfig {kubeconfig_path}: {reason}", NOT_CONFIGURED) from None
    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    if ca is None and cert is None:
        return KubeAuth(headers, not insecure, tuple(secrets))
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        if ca is not None and not insecure:
            ctx.load_verify_locations(cadata=ca.decode())
        if cert is not None:
            with _temp_files(cert, key or cert) as (cert_file, key_file):
                ctx.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, ValueError):
        raise fatal(f"kubeconfig {kubeconfig_path}: its certificates or key cannot be loaded", NOT_CONFIGURED) from None
    return KubeAuth(headers, ctx, tuple(secrets))


def parse_manifest(text: str, cluster_id: str) -> list[dict[str, Any]]:
    """The objects of a registration manifest (List kinds flattened), in apply order."""
    try:
        docs = load_yaml_all(text, f"registration manifest of cluster {cluster_id}")
    except yaml.YAMLError:
        raise fatal(
            f"Rancher: the registration manifest of cluster {cluster_id} is not valid YAML; check the Rancher "
            "server's logs and retry",
            BAD_REQUEST,
        ) from None
    objects: list[dict[str, Any]] = []
    for doc in docs:
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            objects += [i for i in doc["items"] if isinstance(i, dict)]
        elif isinstance(doc, dict):
            objects.append(doc)
    for obj in objects:
        kind = (str(obj.get("apiVersion")), str(obj.get("kind")))
        if kind not in KINDS or not (obj.get("metadata") or {}).get("name"):
            raise fatal(
                f"Rancher: the registration manifest of cluster {cluster_id} has a {kind[1]} ({kind[0]}) that Ferry "
                "does not know how to apply; register the cluster by hand with the registration command Rancher "
                "shows (Cluster Management > the cluster > Registration), then retry",
                BAD_REQUEST,
            )
    return sorted(objects, key=lambda o: ORDER.get(str(o["kind"]), 5))


class KubeClient:
    """Server-side apply of objects to one cluster's Kubernetes API (what `kubectl apply --server-side` does)."""

    def __init__(
        self,
        cluster: ClusterInfo,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        timeout: float = 30.0,
        extra_secrets: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        auth = kube_auth(cluster.kubeconfig_path) if cluster.kubeconfig_path else KubeAuth({})
        self._secrets = auth.secrets + extra_secrets
        self._client = httpx.AsyncClient(
            base_url=cluster.api_endpoint.rstrip("/"),
            headers=auth.headers,
            verify=auth.verify,
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    async def apply(self, obj: dict[str, Any]) -> None:
        """Create or update `obj`; applying the same object again is a no-op on the server."""
        api_version, kind = str(obj["apiVersion"]), str(obj["kind"])
        plural, namespaced = KINDS[(api_version, kind)]
        meta = dict(obj.get("metadata") or {})
        name = str(meta["name"])
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            namespace = str(meta.get("namespace") or "default")
            meta["namespace"] = namespace
            path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}/{quote(name, safe='')}"
            label = f"{kind} {namespace}/{name}"
        else:
            meta.pop("namespace", None)
            path = f"{prefix}/{plural}/{quote(name, safe='')}"
            label = f"{kind} {name}"
        where = f"Kubernetes API of cluster {self.cluster.name} ({self.cluster.api_endpoint}): apply {label}"
        try:
            response = await self._client.patch(
                path,
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                content=json.dumps({**obj, "metadata": meta}).encode(),
                headers={"Content-Type": APPLY_PATCH},
            )
        except httpx.TransportError as e:
            raise retryable(f"{where}: {type(e).__name__} reaching {e.request.url.host}") from None
        if response.is_success:
            return
        status = response.status_code
        message = f"{where}: HTTP {status}: {_redact(_reason(response), *self._secrets)}"
        if _transient(response):
            raise retryable(message, delay=_delay("Kubernetes", response, where))
        if status in (401, 403):
            source = (
                f"the kubeconfig {self.cluster.kubeconfig_path}" if self.cluster.kubeconfig_path else "no kubeconfig"
            )
            raise fatal(
                f"{message}; the credentials were refused (this worker used {source}): set the cluster's "
                "kubeconfig_path to a kubeconfig whose user may create cluster-wide RBAC, Secrets and Deployments",
                AUTH_FAILED,
            )
        raise fatal(f"{message}. Check the cluster's API and Rancher's registration manifest, then retry", BAD_REQUEST)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


# --- apps ---


@dataclass
class _Release:
    """The parts of a steve App (a Helm release) the install decision reads."""

    chart: str
    version: str
    revision: int
    status: str
    description: str
    values: dict[str, Any]

    @classmethod
    def of(cls, body: dict[str, Any] | None) -> _Release | None:
        if body is None:
            return None
        spec = body.get("spec") or {}
        meta = (spec.get("chart") or {}).get("metadata") or {}
        info = spec.get("info") or {}
        status = info.get("status") or ((body.get("metadata") or {}).get("state") or {}).get("name") or "unknown"
        return cls(
            chart=str(meta.get("name") or ""),
            version=str(meta.get("version") or ""),
            revision=int(spec.get("version") or 0),
            status=str(status),
            description=str(info.get("description") or ""),
            values=spec.get("values") or {},
        )


def _contains(actual: Any, wanted: Any) -> bool:
    """True when every value Ferry asks for is set so; keys Rancher or the chart added are ignored."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in wanted.items())
    return actual == wanted


class RancherActivities(SiteClients[RancherClient, Endpoint]):
    """Rancher activities of one worker; `clients` maps a site ('onprem'/'cloud') to its Rancher."""

    system = "rancher"
    label = "Rancher"

    @classmethod
    def build_client(cls, endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, site: str) -> RancherClient:
        """Named after its site: each site has its own Rancher and messages must say which."""
        return RancherClient(endpoint, transport, instance=site)

    @activity.defn(name="rancher.import_cluster")
    async def import_cluster(self, inp: RancherImportInput) -> RancherCluster:
        """Import `inp.cluster` into the site's Rancher and wait until Rancher reports it `active`.

        Idempotent: an existing cluster of that name is reused, an active one is returned without writing
        anything, the token is created only if missing, and the manifest is applied with server-side apply.
        A retried attempt resumes from its heartbeat (cluster id, manifest applied) and only waits.
        """
        client = self._client(inp.site, "rancher.import_cluster")
        name = inp.cluster.name
        last = waiting.last_heartbeat()
        resumed: dict[str, Any] = last if isinstance(last, dict) and last.get("name") == name else {}
        cluster = await client.get_cluster(str(resumed["cluster_id"])) if resumed.get("cluster_id") else None
        if cluster is None:
            resumed = {}
            cluster = await client.find_cluster(name)
        if cluster is None:
            cluster = await client.create_cluster(name) or await client.find_cluster(name)
            if cluster is None:
                raise retryable(f"{client.system}: cluster '{name}' was created concurrently but is not listed yet")
            activity.logger.info("%s: created imported cluster %s (%s)", client.system, name, cluster.get("id"))
        cid = str(cluster["id"])
        seen = {"state": str(cluster.get("state") or ""), "message": str(cluster.get("transitioningMessage") or "")}
        self._check_not_gone(client, name, cid, seen["state"])
        if seen["state"] == ACTIVE:
            return RancherCluster(id=cid, name=name, state=ACTIVE)

        if not resumed.get("applied"):
            waiting.heartbeat({"name": name, "cluster_id": cid, "applied": False})
            token = await self._registration_token(client, name, cid)
            secret = str(token.get("token") or "")
            objects = parse_manifest(await client.manifest(cid, token), cid)
            kube = KubeClient(inp.cluster, client.kube_transport, timeout=client.timeout, extra_secrets=(secret,))
            try:
                for obj in objects:
                    await kube.apply(obj)
            finally:
                await kube.aclose()
            activity.logger.info("%s: applied the registration manifest to cluster %s (%s)", client.system, name, cid)

        async def active() -> RancherCluster | None:
            body = await client.get_cluster(cid)
            if body is None:
                raise fatal(
                    f"{client.system}: cluster '{name}' ({cid}) was deleted from Rancher while Ferry waited for it to "
                    "become active; run the provisioning again to import it anew",
                    NOT_FOUND,
                )
            seen.update(state=str(body.get("state") or ""), message=str(body.get("transitioningMessage") or ""))
            self._check_not_gone(client, name, cid, seen["state"])
            return RancherCluster(id=cid, name=name, state=ACTIVE) if seen["state"] == ACTIVE else None

        # Rancher has no failed state for an import that never connects (the agent just keeps trying), so the
        # activity's start-to-close timeout bounds this wait; the heartbeat shows state and message meanwhile.
        return await waiting.poll(
            active,
            interval=self.poll_seconds,
            progress=lambda: {"name": name, "cluster_id": cid, "applied": True, **seen},
        )

    @staticmethod
    def _check_not_gone(client: RancherClient, name: str, cid: str, state: str) -> None:
        if state in GONE:
            raise fatal(
                f"{client.system}: cluster '{name}' ({cid}) is being removed from Rancher (state {state}); wait until "
                "it is gone, then run the provisioning again",
                BAD_REQUEST,
            )

    async def _registration_token(self, client: RancherClient, name: str, cid: str) -> dict[str, Any]:
        """The cluster's registration token once its controller has filled it in (created if missing)."""

        async def ready() -> dict[str, Any] | None:
            token = await client.registration_token(cid)
            if token is None:
                token = await client.create_registration_token(cid)
            if token is not None and (token.get("manifestUrl") or token.get("token")):
                return token
            return None

        return await waiting.poll(
            ready,
            interval=self.poll_seconds,
            progress=lambda: {"name": name, "cluster_id": cid, "applied": False, "waiting_for": "registration token"},
        )

    @activity.defn(name="rancher.install_app")
    async def install_app(self, inp: RancherAppInput) -> RancherAppResult:
        """Install `inp.app` on the cluster, or upgrade it to the wanted version, and wait until it is deployed.

        Already deployed at the wanted version (with the wanted values set) -> `unchanged`, nothing written;
        absent -> `installed`; another version, or a failed release -> `upgraded`. While another Helm
        operation runs on the release, it waits for it and then decides. A retried attempt resumes from its
        heartbeat (the action it requested and the revision to exceed) and does not request it twice; if that
        heartbeat was lost, it finds the release pending or deployed at the wanted version and only waits.
        """
        client = self._client(inp.site, "rancher.install_app")
        app, cid = inp.app, inp.cluster_id
        ident = {"cluster_id": cid, "namespace": app.namespace, "name": app.name, "version": app.version}
        last = waiting.last_heartbeat()
        state: dict[str, Any] = {"action": None, "after": 0, "operation": None, "status": "", "current_version": ""}
        if isinstance(last, dict) and all(last.get(k) == v for k, v in ident.items()) and last.get("action"):
            state.update({k: last.get(k) for k in ("action", "after", "operation")})
        what = f"{app.chart} {app.version} as {app.namespace}/{app.name} on cluster {cid}"

        def result(action: str) -> RancherAppResult:
            return RancherAppResult(name=app.name, version=app.version, action=action)

        async def step() -> RancherAppResult | None:
            current = _Release.of(await client.get_app(cid, app.namespace, app.name))
            state.update(
                status=current.status if current else "absent", current_version=current.version if current else ""
            )
            if state["action"] is None:
                if current is not None and current.chart and current.chart != app.chart:
                    raise fatal(
                        f"{client.system}: release {app.namespace}/{app.name} on cluster {cid} is chart "
                        f"'{current.chart}', not '{app.chart}'; give the app another name in ferry.yaml or uninstall "
                        "that release in Rancher",
                        BAD_REQUEST,
                    )
                if current is not None and current.status in PENDING:
                    return None  # another Helm operation runs on this release: let it finish, then decide
                if (
                    current is not None
                    and current.version == app.version
                    and current.status == DEPLOYED
                    and _contains(current.values, app.values)
                ):
                    return result("unchanged")
                verb = "install" if current is None else "upgrade"
                output = await client.chart_action(cid, verb, app)
                name = str(output.get("operationName") or "")
                state.update(
                    action="installed" if current is None else "upgraded",
                    after=current.revision if current else 0,
                    operation=[str(output.get("operationNamespace") or app.namespace), name] if name else None,
                )
                activity.logger.info("%s: requested %s of %s", client.system, verb, what)
                waiting.heartbeat(progress())
                return None
            if current is not None and current.revision > int(state["after"]) and current.version == app.version:
                if current.status == DEPLOYED:
                    return result(str(state["action"]))
                if current.status == FAILED:
                    raise fatal(
                        f"{client.system}: Helm {VERBS[str(state['action'])]} of {what} failed: "
                        f"{current.description or 'no description'}. Look at the app's events and the helm "
                        "operation's log in Rancher (Apps > Installed Apps), fix the chart values in ferry.yaml, "
                        "then run the provisioning again",
                        APP_INSTALL_FAILED,
                    )
            if state["operation"]:
                op_ns, op_name = state["operation"]
                op = await client.get_operation(cid, op_ns, op_name)
                op_state = ((op or {}).get("metadata") or {}).get("state") or {}
                if op_state.get("error"):
                    raise fatal(
                        f"{client.system}: the helm operation {op_ns}/{op_name} for {what} failed: "
                        f"{op_state.get('message') or 'no message'}. Look at its log in Rancher, then run the "
                        "provisioning again",
                        APP_INSTALL_FAILED,
                    )
            return None

        def progress() -> dict[str, Any]:
            return {**ident, **{k: state[k] for k in ("action", "after", "operation", "status", "current_version")}}

        return await waiting.poll(step, interval=self.poll_seconds, progress=progress)
