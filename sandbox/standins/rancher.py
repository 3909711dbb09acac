"""Rancher stand-in: the v3 (norman) API that imports clusters, and the app catalog behind the cluster proxy.

Written from specs/rancher/NOTES-rancher-v3.md for the import: `/v3/clusters` (name, driver, state,
transitioning, transitioningMessage, apiEndpoint, ...), `/v3/clusterregistrationtokens` with ids
`<clusterId>:<name>` whose `command`/`insecureCommand`/`manifestUrl` a controller fills in after creation
(`kubectl apply -f %s`, `curl --insecure -sfL %s | kubectl apply -f -`, `/v3/import/<token>_<clusterId>.yaml`),
and the states an imported cluster goes through (`pending` after create, `waiting`, `active`).

The notes are silent on several things; the stand-in then follows Rancher's source, noted at each place:
- the registration manifest's content: shaped like Rancher's import template test data
  (pkg/systemtemplate/testdata/test-provisioned-import.yaml): RBAC, the `cattle-system` Namespace, the
  `cattle` ServiceAccount, a `cattle-credentials-*` Secret with the server URL and token, and the
  `cattle-cluster-agent` Deployment and Service. The simulated agent "connects" once that Deployment and
  its credentials Secret are applied to the cluster's Kubernetes API (the `kube` stand-in);
- the app catalog (steve, Rancher 2.5+), reached per cluster through `/k8s/clusters/{id}/v1/...`:
  `POST catalog.cattle.io.clusterrepos/{repo}?action=install|upgrade` with the ChartInstallAction /
  ChartUpgradeAction bodies of pkg/api/steve/catalog/types/rest.go, answered 201 with a `chartActionOutput`
  naming the helm operation (pkg/api/steve/catalog/operation.go); apps at
  `catalog.cattle.io.apps/{namespace}/{name}` carrying the Helm release (`spec.chart.metadata.version`,
  `spec.version` = revision, `spec.info.status` one of Helm's statuses, pkg/apis/catalog.cattle.io/v1/helm.go);
- error bodies: the norman/steve `{"type": "error", "status", "code", "message"}` shape; a duplicate
  cluster name is 422 `NotUnique`; a proxy request to a cluster whose agent is not connected is 503
  `ClusterUnavailable`; the exact texts are the stand-in's own.

Scenario key `rancher` (see `parse_rancher_scenario`): `reject_chart` makes an install/upgrade of a chart
fail with a 4xx and a reason, `install_errors` answers the next N chart actions with 503, and
`helm_failures` lets the Helm operation itself end `failed`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import secrets
import string
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.standins.world import ScenarioError, iso_s

if TYPE_CHECKING:
    from sandbox.standins.kube import KubeCluster
    from sandbox.standins.world import World

AUTH_SCHEME = "bearer"
PUBLIC_PATHS: frozenset[str] = frozenset()
# `kubectl apply -f <manifestUrl>` sends no credential: the token in the file name is the credential.
PUBLIC_PREFIXES: tuple[str, ...] = ("/v3/import/",)

TOKEN_SECONDS = 0.3  # the clusterregistrationtoken controller fills in command/manifestUrl
CONNECT_SECONDS = 0.5  # agent objects applied -> the agent connects (state "waiting")
ACTIVE_SECONDS = 0.5  # connected -> "active"
HELM_START_SECONDS = 0.2  # the helm-operation pod starts
HELM_SECONDS = 0.5  # helm install/upgrade --wait finishes

TOKEN_NAMES = ("default-token", "system")  # NOTES: looked up as <clusterID>:default-token, then :system
REPOS = ("rancher-charts", "rancher-partner-charts", "rancher-rke2-charts")
AGENT_NAMESPACE, AGENT_NAME = "cattle-system", "cattle-cluster-agent"
FILTERS = frozenset({"id", "name", "state", "driver", "clusterId"})
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


def api_error(status: int, code: str, message: str) -> JSONResponse:
    """Rancher's error body (norman /v3 and steve /v1 use the same shape)."""
    body = {"type": "error", "baseType": "error", "status": status, "code": code, "message": message}
    return JSONResponse(body, status_code=status)


def unauthorized() -> Response:
    """What Rancher answers without a valid API token."""
    return api_error(401, "Unauthorized", "must authenticate")


def parse_rancher_scenario(data: Any, source: str) -> dict[str, Any]:
    """Validate the scenario's `rancher` mapping:

    rancher:
      reject_chart: {harbor: "chart harbor 9.9.9 not found in repo"}   # or {status: 422, message: ...}
      install_errors: {harbor: 1}      # the next N install/upgrade actions of that chart answer 503
      helm_failures: {nexus: "timed out waiting for the condition"}    # the Helm operation ends failed
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: rancher: must be a mapping with keys reject_chart, install_errors, helm_failures"
        )
    unknown = set(data) - {"reject_chart", "install_errors", "helm_failures"}
    if unknown:
        raise ScenarioError(f"{source}: rancher: unknown key(s) {sorted(unknown)}")
    for key in ("reject_chart", "install_errors", "helm_failures"):
        if not isinstance(data.get(key) or {}, dict):
            raise ScenarioError(f"{source}: rancher.{key}: must be a mapping of chart name -> value")
    reject: dict[str, dict[str, Any]] = {}
    for chart, value in (data.get("reject_chart") or {}).items():
        if isinstance(value, str):
            value = {"status": 404, "message": value}
        status = value.get("status", 404) if isinstance(value, dict) else None
        if not isinstance(status, int) or not 400 <= status <= 499 or not isinstance(value.get("message"), str):
            raise ScenarioError(
                f"{source}: rancher.reject_chart.{chart}: must be a reason, or {{status: 4xx, message: reason}}"
            )
        reject[str(chart)] = {"status": status, "message": value["message"]}
    errors = {str(k): v for k, v in (data.get("install_errors") or {}).items()}
    for chart, count in errors.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ScenarioError(f"{source}: rancher.install_errors.{chart}: must be a non-negative integer")
    failures = {str(k): v for k, v in (data.get("helm_failures") or {}).items()}
    for chart, reason in failures.items():
        if not isinstance(reason, str) or not reason:
            raise ScenarioError(f"{source}: rancher.helm_failures.{chart}: must be the failure message")
    return {"reject_chart": reject, "install_errors": errors, "helm_failures": failures}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def registration_manifest(server: str, token: str, cluster_id: str) -> str:
    """The YAML that `/v3/import/<token>_<clusterId>.yaml` serves (see the module docstring for its shape)."""
    credential = "cattle-credentials-" + hashlib.sha256(f"{token}{server}".encode()).hexdigest()[:10]
    checksum = hashlib.sha256(b"sandbox-ca").hexdigest()
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "proxy-clusterrole-kubeapiserver"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["nodes/metrics", "nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec"],
                    "verbs": ["get", "list", "watch", "create"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "proxy-role-binding-kubernetes-master"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "proxy-clusterrole-kubeapiserver",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver"}],
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": AGENT_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cattle", "namespace": AGENT_NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "cattle-admin-binding", "namespace": AGENT_NAMESPACE},
            "subjects": [{"kind": "ServiceAccount", "name": "cattle", "namespace": AGENT_NAMESPACE}],
            "roleRef": {"kind": "ClusterRole", "name": "cattle-admin", "apiGroup": "rbac.authorization.k8s.io"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": credential, "namespace": AGENT_NAMESPACE},
            "type": "Opaque",
            "data": {"url": _b64(server), "token": _b64(token), "namespace": ""},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "cattle-admin", "labels": {"cattle.io/creator": "norman"}},
            "rules": [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": AGENT_NAME, "namespace": AGENT_NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": AGENT_NAME}},
                "template": {
                    "metadata": {"labels": {"app": AGENT_NAME}},
                    "spec": {
                        "serviceAccountName": "cattle",
                        "containers": [
                            {
                                "name": "cluster-register",
                                "image": "rancher/rancher-agent:v2.9-sandbox",
                                "imagePullPolicy": "IfNotPresent",
                                "env": [
                                    {"name": "CATTLE_SERVER", "value": server},
                                    {"name": "CATTLE_CA_CHECKSUM", "value": checksum},
                                    {"name": "CATTLE_CLUSTER", "value": "true"},
                                    {"name": "CATTLE_K8S_MANAGED", "value": "true"},
                                    {"name": "CATTLE_CREDENTIAL_NAME", "value": credential},
                                ],
                                "volumeMounts": [
                                    {"name": "cattle-credentials", "mountPath": "/cattle-credentials", "readOnly": True}
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "cattle-credentials", "secret": {"secretName": credential, "defaultMode": 320}}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": AGENT_NAME, "namespace": AGENT_NAMESPACE},
            "spec": {
                "ports": [
                    {"port": 80, "targetPort": 80, "protocol": "TCP", "name": "http"},
                    {"port": 443, "targetPort": 444, "protocol": "TCP", "name": "https-internal"},
                ],
                "selector": {"app": AGENT_NAME},
            },
        },
    ]
    return "---\n" + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def _agent_token(kube: KubeCluster) -> str | None:
    """The registration token the cluster's `cattle-cluster-agent` would present, if it is deployed."""
    deployment = kube.get("apps/v1", "deployments", AGENT_NAMESPACE, AGENT_NAME)
    if deployment is None:
        return None
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    names = [(v.get("secret") or {}).get("secretName") for v in pod.get("volumes") or [] if isinstance(v, dict)] + [
        e.get("value")
        for c in pod.get("containers") or []
        for e in c.get("env") or []
        if isinstance(e, dict) and e.get("name") == "CATTLE_CREDENTIAL_NAME"
    ]
    for name in filter(None, names):
        secret = kube.get("v1", "secrets", AGENT_NAMESPACE, str(name))
        raw = ((secret or {}).get("data") or {}).get("token")
        if raw:
            try:
                return base64.b64decode(raw).decode()
            except ValueError:
                return None
    return None


class RancherState:
    """Clusters, registration tokens, and per cluster the installed apps and helm operations."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.clusters: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.apps: dict[tuple[str, str, str], dict[str, Any]] = {}  # (cluster id, namespace, release)
        self.operations: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.clusters_created = Counter[str]()  # cluster name -> creates
        self.tokens_created = Counter[str]()  # cluster id -> creates
        self.actions: list[dict[str, str]] = []  # every accepted chart action, in order
        self._refused = Counter[str]()  # chart -> install_errors already answered
        self._connecting: set[str] = set()
        self._seq = itertools.count(1)
        self._resource_version = 0
        local = self._new_cluster("local", "local")
        local.update(state="active", transitioning="no", internal=True)

    # --- clusters and tokens ---

    def _new_cluster(self, name: str, driver: str, description: str = "", labels: dict | None = None) -> dict:
        n = next(self._seq)
        cid = "local" if name == "local" and n == 1 else "c-" + hashlib.sha256(f"{name}/{n}".encode()).hexdigest()[:5]
        now = self.world.now()
        cluster = {
            "id": cid,
            "type": "cluster",
            "baseType": "cluster",
            "name": name,
            "description": description,
            "driver": driver,
            "state": "pending",
            "transitioning": "yes",
            "transitioningMessage": "",
            "conditions": [{"type": "Connected", "status": "Unknown"}],
            "apiEndpoint": "",
            "caCert": "",
            "internal": False,
            "nodeCount": 0,
            "labels": dict(labels or {}),
            "annotations": {},
            "uuid": str(uuid.uuid4()),
            "created": iso_s(now),
            "createdTS": int(now * 1000),
            "creatorId": "user-sandbox",
        }
        self.clusters[cid] = cluster
        return cluster

    def create_cluster(self, name: str, description: str, labels: dict) -> dict[str, Any]:
        """An imported cluster, `pending` until its agent connects."""
        self.clusters_created[name] += 1
        return self._new_cluster(name, "imported", description, labels)

    def create_token(self, cluster_id: str, name: str, server: str) -> dict[str, Any]:
        """A registration token; a simulated controller fills in token, commands and manifestUrl shortly after."""
        now = self.world.now()
        token = {
            "id": f"{cluster_id}:{name}",
            "type": "clusterRegistrationToken",
            "baseType": "clusterRegistrationToken",
            "name": name,
            "clusterId": cluster_id,
            "namespaceId": cluster_id,
            # The notes do not give a token's state before its controller ran; "pending" is the stand-in's.
            "state": "pending",
            "transitioning": "yes",
            "transitioningMessage": "",
            "token": "",
            "command": "",
            "insecureCommand": "",
            "manifestUrl": "",
            "nodeCommand": "",
            "insecureNodeCommand": "",
            "windowsNodeCommand": "",
            "insecureWindowsNodeCommand": "",
            "uuid": str(uuid.uuid4()),
            "created": iso_s(now),
            "createdTS": int(now * 1000),
            "creatorId": "user-sandbox",
        }
        self.tokens[token["id"]] = token
        self.tokens_created[cluster_id] += 1
        self.world.after(TOKEN_SECONDS, lambda at: self._fill_token(token, server), base=now)
        return token

    def _fill_token(self, token: dict[str, Any], server: str) -> None:
        value = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(54))
        url = f"{server}/v3/import/{value}_{token['clusterId']}.yaml"
        # The node commands' format is not in the notes; they are irrelevant to imported clusters.
        node = f"sudo docker run -d --privileged --restart=unless-stopped --net=host rancher/rancher-agent:v2.9-sandbox --server {server} --token {value}"  # noqa: E501
        token.update(
            token=value,
            manifestUrl=url,
            command=f"kubectl apply -f {url}",
            insecureCommand=f"curl --insecure -sfL {url} | kubectl apply -f -",
            nodeCommand=node,
            insecureNodeCommand=node,
            windowsNodeCommand=node,
            insecureWindowsNodeCommand=node,
            state="active",
            transitioning="no",
            _server=server,
        )

    def token_by_value(self, value: str) -> dict[str, Any] | None:
        """The registration token whose secret value is `value`."""
        for token in self.tokens.values():
            if token["token"] and secrets.compare_digest(token["token"], value):
                return token
        return None

    def agent_objects_changed(self, kube: KubeCluster) -> None:
        """Called by the kube stand-in after every apply: connect the agent once its objects are there."""
        value = _agent_token(kube)
        token = self.token_by_value(value) if value else None
        if token is None:
            return
        cid = token["clusterId"]
        cluster = self.clusters.get(cid)
        if cluster is None or cluster["state"] != "pending" or cid in self._connecting:
            return
        self._connecting.add(cid)
        endpoint = kube.url
        self.world.after(CONNECT_SECONDS, lambda at: self._connected(cid, endpoint, at))

    def _connected(self, cid: str, endpoint: str, at: float) -> None:
        cluster = self.clusters.get(cid)
        if cluster is None:
            return
        cluster.update(
            state="waiting",
            transitioning="yes",
            transitioningMessage="Waiting for API to be available",
            apiEndpoint=endpoint,
            conditions=[{"type": "Connected", "status": "True", "lastUpdateTime": iso_s(at)}],
        )
        self.world.after(ACTIVE_SECONDS, lambda t: self._active(cid, t), base=at)

    def _active(self, cid: str, at: float) -> None:
        cluster = self.clusters.get(cid)
        if cluster is None:
            return
        cluster.update(
            state="active",
            transitioning="no",
            transitioningMessage="",
            nodeCount=1,
            version={"gitVersion": "v1.30.0-ferry-sandbox"},
            conditions=[
                {"type": "Connected", "status": "True", "lastUpdateTime": iso_s(at)},
                {"type": "Ready", "status": "True", "lastUpdateTime": iso_s(at)},
            ],
        )
        self._connecting.discard(cid)

    # --- app catalog ---

    def chart_action(self, cid: str, repo: str, action: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Validate and accept an install/upgrade; the helm operation then runs on the simulated clock."""
        if not isinstance(body, dict) or not isinstance(body.get("charts"), list) or not body["charts"]:
            return 422, _err(422, "InvalidBodyContent", "the body needs a non-empty 'charts' list")
        if len(body["charts"]) != 1:
            # Rancher accepts several; Ferry sends one, and one is what the stand-in simulates.
            return 422, _err(422, "InvalidBodyContent", "the stand-in installs exactly one chart per action")
        chart = body["charts"][0]
        if not isinstance(chart, dict):
            return 422, _err(422, "InvalidBodyContent", "charts[0] must be an object")
        name, version = str(chart.get("chartName") or ""), str(chart.get("version") or "")
        release = str(chart.get("releaseName") or "")
        namespace = str(body.get("namespace") or "default")
        if not name or not version or not release:
            return 422, _err(422, "MissingRequired", "charts[0] needs chartName, version and releaseName")
        values = chart.get("values") or {}
        if not isinstance(values, dict):
            return 422, _err(422, "InvalidBodyContent", "charts[0].values must be an object")
        scenario = self.world.scenario.rancher
        rejected = scenario.get("reject_chart", {}).get(name)
        if rejected is not None:
            status = rejected["status"]
            code = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 422: "InvalidBodyContent"}.get(
                status, "Invalid"
            )
            return status, _err(status, code, rejected["message"])
        if self._refused[name] < scenario.get("install_errors", {}).get(name, 0):
            self._refused[name] += 1
            return 503, _err(503, "ServiceUnavailable", f"sandbox scenario: rancher.install_errors for chart {name}")
        op_name = "helm-operation-" + hashlib.sha256(f"{cid}/{next(self._seq)}".encode()).hexdigest()[:5]
        now = self.world.now()
        op = {
            "name": op_name,
            "namespace": namespace,
            "action": action,
            "chart": name,
            "version": version,
            "release": release,
            "state": "running",
            "error": False,
            "message": "",
            "created": iso_s(now),
        }
        self.operations[(cid, namespace, op_name)] = op
        self.actions.append(
            {"cluster": cid, "action": action, "repo": repo, "chart": name, "version": version, "release": release}
        )
        self.world.after(
            HELM_START_SECONDS,
            lambda at: self._helm_start(cid, op, copy.deepcopy(values), at),
            base=now,
        )
        return 201, {"type": "chartActionOutput", "operationName": op_name, "operationNamespace": namespace}

    def _helm_start(self, cid: str, op: dict[str, Any], values: dict[str, Any], at: float) -> None:
        key = (cid, op["namespace"], op["release"])
        app = self.apps.get(key)
        problem = None
        if app is not None and app["status"].startswith("pending-"):
            problem = "another operation (install/upgrade/rollback) is in progress"
        elif op["action"] == "install" and app is not None:
            problem = f"INSTALLATION FAILED: cannot re-use a name that is still in use: {op['release']}"
        elif op["action"] == "upgrade" and app is None:
            problem = f'UPGRADE FAILED: "{op["release"]}" has no deployed releases'
        if problem:
            op.update(state="error", error=True, message=problem)
            return
        if app is None:
            app = self.apps[key] = {"revision": 0, "first": at, "created": at}
        installing = op["action"] == "install"
        app.update(
            name=op["release"],
            namespace=op["namespace"],
            chart=op["chart"],
            version=op["version"],
            values=values,
            revision=app["revision"] + 1,
            status="pending-install" if installing else "pending-upgrade",
            description="Initial install underway" if installing else "Preparing upgrade",
            last=at,
        )
        self._bump(app)
        self.world.after(HELM_SECONDS, lambda t: self._helm_done(app, op, t), base=at)

    def _helm_done(self, app: dict[str, Any], op: dict[str, Any], at: float) -> None:
        failure = self.world.scenario.rancher.get("helm_failures", {}).get(op["chart"])
        installing = op["action"] == "install"
        if failure:
            verb = "install" if installing else "upgrade"
            app.update(status="failed", description=f"Release {verb} failed: {failure}", last=at)
            op.update(state="error", error=True, message=f"{verb.upper()} FAILED: {failure}")
        else:
            app.update(status="deployed", description="Install complete" if installing else "Upgrade complete", last=at)
            op.update(state="successful")
        self._bump(app)

    def _bump(self, app: dict[str, Any]) -> None:
        self._resource_version += 1
        app["resourceVersion"] = str(self._resource_version)

    def snapshot(self) -> dict[str, Any]:
        """State for /_sandbox/state (token values left out: they are credentials)."""
        return {
            "clusters": {c["id"]: {"name": c["name"], "state": c["state"]} for c in self.clusters.values()},
            "tokens": sorted(self.tokens),
            "apps": {
                f"{cid}/{ns}/{name}": {"chart": a["chart"], "version": a["version"], "status": a["status"]}
                for (cid, ns, name), a in sorted(self.apps.items())
            },
            "clusters_created": dict(self.clusters_created),
            "actions": list(self.actions),
        }


def _err(status: int, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "baseType": "error", "status": status, "code": code, "message": message}


def _public_token(token: dict[str, Any], base: str) -> dict[str, Any]:
    out = {k: v for k, v in token.items() if not k.startswith("_")}
    out["links"] = {"self": f"{base}/v3/clusterregistrationtokens/{token['id']}"}
    return out


def _public_cluster(cluster: dict[str, Any], base: str) -> dict[str, Any]:
    out = copy.deepcopy(cluster)
    cid = cluster["id"]
    out["links"] = {
        "self": f"{base}/v3/clusters/{cid}",
        "clusterRegistrationTokens": f"{base}/v3/clusters/{cid}/clusterregistrationtokens",
    }
    return out


def _steve_app(app: dict[str, Any], base: str) -> dict[str, Any]:
    status = app["status"]
    failed, pending = status == "failed", status.startswith("pending-")
    ns, name = app["namespace"], app["name"]
    return {
        "id": f"{ns}/{name}",
        "type": "catalog.cattle.io.app",
        "links": {"self": f"{base}/v1/catalog.cattle.io.apps/{ns}/{name}"},
        "apiVersion": "catalog.cattle.io/v1",
        "kind": "App",
        "metadata": {
            "name": name,
            "namespace": ns,
            "generation": app["revision"],
            "resourceVersion": app["resourceVersion"],
            "creationTimestamp": iso_s(app["created"]),
            "state": {
                "name": status,
                "error": failed,
                "transitioning": pending,
                "message": app["description"] if failed else "",
            },
        },
        "spec": {
            "name": name,
            "namespace": ns,
            "version": app["revision"],
            "helmVersion": 3,
            "chart": {"metadata": {"name": app["chart"], "version": app["version"], "apiVersion": "v2"}},
            "values": copy.deepcopy(app["values"]),
            "info": {
                "status": status,
                "description": app["description"],
                "firstDeployed": iso_s(app["first"]),
                "lastDeployed": iso_s(app["last"]),
            },
        },
        "status": {
            "observedGeneration": app["revision"],
            "summary": {"state": status, "transitioning": pending, "error": failed},
        },
    }


def _steve_operation(op: dict[str, Any], base: str) -> dict[str, Any]:
    ns, name = op["namespace"], op["name"]
    # How steve summarises an Operation is not in the sources consulted; the stand-in reports `error` and
    # `message` in metadata.state (what Ferry reads) and the OperationStatus fields of types.go.
    return {
        "id": f"{ns}/{name}",
        "type": "catalog.cattle.io.operation",
        "links": {"self": f"{base}/v1/catalog.cattle.io.operations/{ns}/{name}"},
        "apiVersion": "catalog.cattle.io/v1",
        "kind": "Operation",
        "metadata": {
            "name": name,
            "namespace": ns,
            "creationTimestamp": op["created"],
            "state": {
                "name": op["state"],
                "error": op["error"],
                "transitioning": op["state"] == "running",
                "message": op["message"],
            },
        },
        "status": {
            "action": op["action"],
            "chart": op["chart"],
            "version": op["version"],
            "releaseName": op["release"],
            "namespace": ns,
            "podName": name,
            "podNamespace": "cattle-system",
            "podCreated": True,
        },
    }


def build_app(world: World) -> Starlette:
    """The ASGI app of the Rancher stand-in."""
    rancher = world.rancher

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    def collection(request: Request, kind: str, items: list[dict[str, Any]]) -> JSONResponse:
        filters = {k: v for k, v in request.query_params.items() if k in FILTERS}
        data = [i for i in items if all(str(i.get(k, "")) == v for k, v in filters.items())]
        return JSONResponse(
            {
                "type": "collection",
                "resourceType": kind,
                "links": {"self": f"{base(request)}{request.url.path}"},
                "filters": {k: [{"modifier": "eq", "value": v}] for k, v in filters.items()},
                "pagination": {"limit": 1000, "total": len(data)},
                "data": data,
            }
        )

    async def list_clusters(request: Request) -> Response:
        with world.lock:
            items = [_public_cluster(c, base(request)) for c in rancher.clusters.values()]
        return collection(request, "cluster", items)

    async def get_cluster(request: Request) -> Response:
        cluster = rancher.clusters.get(request.path_params["id"])
        if cluster is None:
            return api_error(404, "NotFound", f'clusters.management.cattle.io "{request.path_params["id"]}" not found')
        return JSONResponse(_public_cluster(cluster, base(request)))

    async def create_cluster(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return api_error(422, "InvalidBodyContent", "the body is not a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return api_error(422, "MissingRequired", "name is required")
        driver = body.get("driver") or "imported"
        if driver != "imported":
            return api_error(422, "InvalidBodyContent", f"driver {driver!r}: the stand-in only imports clusters")
        labels = body.get("labels") or {}
        with world.lock:
            if any(c["name"] == name for c in rancher.clusters.values()):
                return api_error(422, "NotUnique", f"Cluster name {name} is already in use")
            cluster = rancher.create_cluster(name, str(body.get("description") or ""), labels)
            return JSONResponse(_public_cluster(cluster, base(request)), status_code=201)

    async def cluster_tokens(request: Request) -> Response:
        cid = request.path_params["id"]
        with world.lock:
            items = [_public_token(t, base(request)) for t in rancher.tokens.values() if t["clusterId"] == cid]
        return collection(request, "clusterRegistrationToken", items)

    async def list_tokens(request: Request) -> Response:
        with world.lock:
            items = [_public_token(t, base(request)) for t in rancher.tokens.values()]
        return collection(request, "clusterRegistrationToken", items)

    async def get_token(request: Request) -> Response:
        token = rancher.tokens.get(request.path_params["id"])
        if token is None:
            tid = request.path_params["id"]
            return api_error(404, "NotFound", f'clusterregistrationtokens.management.cattle.io "{tid}" not found')
        return JSONResponse(_public_token(token, base(request)))

    async def create_token(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return api_error(422, "InvalidBodyContent", "the body is not a JSON object")
        cid = body.get("clusterId")
        name = str(body.get("name") or "default-token")
        with world.lock:
            if not isinstance(cid, str) or cid not in rancher.clusters:
                return api_error(422, "InvalidReference", f"clusterId {cid!r}: no such cluster")
            if f"{cid}:{name}" in rancher.tokens:
                return api_error(409, "AlreadyExists", f'clusterregistrationtokens "{name}" already exists')
            token = rancher.create_token(cid, name, base(request))
            return JSONResponse(_public_token(token, base(request)), status_code=201)

    async def import_yaml(request: Request) -> Response:
        stem = request.path_params["file"].removesuffix(".yaml")
        value, _, cid = stem.rpartition("_")
        token = rancher.token_by_value(value) if value else None
        if token is None or token["clusterId"] != cid:
            return Response("404 page not found\n", status_code=404, media_type="text/plain")
        return Response(
            registration_manifest(token.get("_server") or base(request), value, cid), media_type="application/yaml"
        )

    # --- steve, through the cluster proxy ---

    def proxied(request: Request) -> tuple[str, str] | Response:
        cid = request.path_params["cid"]
        cluster = rancher.clusters.get(cid)
        if cluster is None:
            return api_error(404, "NotFound", f"cluster {cid} not found")
        if cluster["state"] != "active":
            return api_error(503, "ClusterUnavailable", f"cluster {cid} is not available: its agent is not connected")
        return cid, f"{base(request)}/k8s/clusters/{cid}"

    async def repo_action(request: Request) -> Response:
        target = proxied(request)
        if isinstance(target, Response):
            return target
        cid, _ = target
        repo = request.path_params["repo"]
        if repo not in REPOS:
            return api_error(404, "NotFound", f'clusterrepos.catalog.cattle.io "{repo}" not found')
        action = request.query_params.get("action", "")
        if action not in ("install", "upgrade"):
            return api_error(400, "BadRequest", f"action {action!r}: the stand-in models install and upgrade")
        body = await read_json(request)
        with world.lock:
            status, payload = rancher.chart_action(cid, repo, action, body)
        return JSONResponse(payload, status_code=status)

    async def get_repo(request: Request) -> Response:
        target = proxied(request)
        if isinstance(target, Response):
            return target
        repo = request.path_params["repo"]
        if repo not in REPOS:
            return api_error(404, "NotFound", f'clusterrepos.catalog.cattle.io "{repo}" not found')
        return JSONResponse(
            {"id": repo, "type": "catalog.cattle.io.clusterrepo", "metadata": {"name": repo}, "spec": {}}
        )

    async def get_app(request: Request) -> Response:
        target = proxied(request)
        if isinstance(target, Response):
            return target
        cid, steve_base = target
        ns, name = request.path_params["ns"], request.path_params["name"]
        with world.lock:
            app = rancher.apps.get((cid, ns, name))
            if app is None:
                return api_error(404, "NotFound", f'apps.catalog.cattle.io "{name}" not found')
            return JSONResponse(_steve_app(app, steve_base))

    async def get_operation(request: Request) -> Response:
        target = proxied(request)
        if isinstance(target, Response):
            return target
        cid, steve_base = target
        ns, name = request.path_params["ns"], request.path_params["name"]
        with world.lock:
            op = rancher.operations.get((cid, ns, name))
            if op is None:
                return api_error(404, "NotFound", f'operations.catalog.cattle.io "{name}" not found')
            return JSONResponse(_steve_operation(op, steve_base))

    async def no_route(request: Request, exc: Exception) -> Response:
        return api_error(404, "NotFound", f"the stand-in has no {request.url.path}")

    async def no_method(request: Request, exc: Exception) -> Response:
        return api_error(405, "MethodNotAllowed", f"{request.method} is not supported by the stand-in here")

    steve = "/k8s/clusters/{cid}/v1"
    return Starlette(
        routes=[
            Route("/v3/clusters", list_clusters, methods=["GET"]),
            Route("/v3/clusters", create_cluster, methods=["POST"]),
            Route("/v3/clusters/{id}", get_cluster, methods=["GET"]),
            Route("/v3/clusters/{id}/clusterregistrationtokens", cluster_tokens, methods=["GET"]),
            Route("/v3/clusterregistrationtokens", list_tokens, methods=["GET"]),
            Route("/v3/clusterregistrationtokens", create_token, methods=["POST"]),
            Route("/v3/clusterregistrationtokens/{id}", get_token, methods=["GET"]),
            Route("/v3/import/{file}", import_yaml, methods=["GET"]),
            Route(f"{steve}/catalog.cattle.io.clusterrepos/{{repo}}", repo_action, methods=["POST"]),
            Route(f"{steve}/catalog.cattle.io.clusterrepos/{{repo}}", get_repo, methods=["GET"]),
            Route(f"{steve}/catalog.cattle.io.apps/{{ns}}/{{name}}", get_app, methods=["GET"]),
            Route(f"{steve}/catalog.cattle.io.operations/{{ns}}/{{name}}", get_operation, methods=["GET"]),
        ],
        exception_handlers={404: no_route, 405: no_method},
    )
