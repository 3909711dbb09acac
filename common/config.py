"""ferry.yaml: the one configuration file of Ferry, validated on load.

Every error names the file, the key path and the problem, so an operator can fix the file without reading
code. The file holds credential *references* (an environment variable or a file name), never secrets:
secrets are read on the worker at call time by `CredentialRef.read()`.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.inputs import (
    branch_problem,
    image_reference_problem,
    local_path_problem,
    oci_component_problem,
    oci_repository_problem,
    repo_path_problem,
)
from common.yamlsafe import YamlBudgetError, load_yaml

SITES = ("onprem", "cloud")
SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")
# Environment and workspace names go into workflow ids, GitOps commit messages and (workspaces) the folders a
# worker writes plans to: no separators, no dots alone, no control characters.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _refuse(problem: str | None) -> None:
    """Raise the problem (pydantic puts the key path in front of it), if there is one."""
    if problem:
        raise ValueError(problem)


def _repo_paths(paths: list[str], repo: str) -> list[str]:
    """Refuse any of `paths` that could point outside `repo`, naming its position in the list."""
    for i, path in enumerate(paths):
        problem = repo_path_problem(path, repo)
        if problem:
            raise ValueError(f"entry {i}: {problem}")
    return paths


class ConfigError(Exception):
    """ferry.yaml is missing, unreadable or invalid; the message names file, key and problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialRef(_Model):
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (a variable name) or 'file' (a path)")
        return self

    def describe(self) -> str:
        """A human-readable name of the reference, safe to log."""
        return f"env:{self.env}" if self.env else f"file:{self.file}"

    def read(self) -> str:
        """Read the secret on the worker, at call time. Raises ConfigError naming the reference, not the value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"credential {self.describe()} is not set on this worker")
            return value
        assert self.file is not None
        try:
            return Path(self.file).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"credential {self.describe()} cannot be read: {e.strerror}") from None


class Endpoint(_Model):
    """One external system's HTTP API as seen from a site."""

    url: str
    credential: CredentialRef | None = None
    username: str | None = Field(default=None, description="basic-auth user (Harbor robot account)")
    verify_tls: bool = True
    timeout_seconds: float = 30.0

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class HarborEndpoint(Endpoint):
    """Harbor: the API plus the registry host that image references use."""

    registry: str | None = Field(default=None, description="host[:port] in image names; default: the URL's")
    project: str = "ferry"
    replication_policies: dict[str, int] = Field(
        default_factory=dict,
        description="site name -> id of the replication policy on this Harbor that pushes to that site",
    )

    @field_validator("project")
    @classmethod
    def _project_is_a_component(cls, v: str) -> str:
        # Every image is pushed and pinned as {registry}/{project}/{image}: the project is part of that name.
        _refuse(oci_component_problem(v))
        return v

    @property
    def registry_host(self) -> str:
        """The host[:port] that prefixes image names pulled from this Harbor."""
        return self.registry or re.sub(r"^https?://", "", self.url).split("/")[0]


class TektonEndpoint(Endpoint):
    """The Kubernetes API of the cluster Tekton runs on."""

    namespace: str = "ci"
    pipeline: str = "ferry-ci"


class BuildkiteEndpoint(Endpoint):
    """Buildkite REST API and the pipeline that runs E2E tests."""

    organization: str
    e2e_pipeline: str


class Site(_Model):
    """The systems one network domain can reach; a worker of that site holds only its credentials."""

    harbor: HarborEndpoint | None = None
    argocd: Endpoint | None = None
    sonarqube: Endpoint | None = None
    tekton: TektonEndpoint | None = None
    buildkite: BuildkiteEndpoint | None = None
    rancher: Endpoint | None = Field(default=None, description="Rancher API (/v3) that imports this site's clusters")
    kubernetes: Endpoint | None = Field(
        default=None, description="Kubernetes API of the cluster running this site's Argo Rollouts (bearer token)"
    )


class TerraformSettings(_Model):
    """The Terraform (or OpenTofu) CLI the workers run."""

    binary: str = Field(default="terraform", description="name on PATH or absolute path; `tofu` works too")
    plugin_dir: str | None = Field(default=None, description="offline provider mirror passed to init -plugin-dir")


class PlatformApp(_Model):
    """A platform service installed on a cluster through Rancher's app catalog."""

    chart: str
    version: str
    namespace: str
    repo: str = Field(default="rancher-charts", description="catalog (cluster repo) that holds the chart")
    values: dict[str, Any] = Field(default_factory=dict)


class Workspace(_Model):
    """A Terraform workspace (root module) and the site whose worker runs it."""

    site: Literal["onprem", "cloud"]
    path: str = Field(description="folder of the root module, relative to where the worker runs")
    variables: dict[str, Any] = Field(default_factory=dict, description="values for its variables (no secrets)")
    var_files: list[str] = Field(default_factory=list)
    cluster_outputs: str = Field(
        default="clusters",
        description="output holding the clusters to import: a map name -> {api_endpoint, ...}",
    )
    apps: dict[str, PlatformApp] = Field(default_factory=dict, description="platform services for its clusters")

    @field_validator("path")
    @classmethod
    def _plain_path(cls, v: str) -> str:
        # The root module's folder on the worker (absolute is fine): only what no tool can take is refused.
        _refuse(local_path_problem(v))
        return v

    @field_validator("var_files")
    @classmethod
    def _plain_var_files(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            problem = local_path_problem(name)
            if problem:
                raise ValueError(f"entry {i}: {problem}")
        return v


class BazelSettings(_Model):
    """How the onprem worker runs `bazel query` for the Bazel change-analysis engine."""

    binary: str = "bazel"
    startup_flags: list[str] = Field(default_factory=list)
    query_flags: list[str] = Field(
        default_factory=list, description="e.g. --override_repository=rules_cc=/opt/stubs/rules_cc for offline hosts"
    )
    batch: bool = False
    max_idle_secs: int | None = None
    timeout_seconds: float = Field(default=900, gt=0)


class ChangeAnalysis(_Model):
    """How a commit's changed files map to services."""

    engine: Literal["auto", "paths", "bazel"] = Field(
        default="paths", description="auto: Bazel when the commit has a Bazel workspace and bazel is installed"
    )
    global_paths: list[str] | None = Field(
        default=None, description="files whose change marks every service (default: root build files, CI config)"
    )
    package_manifests: bool = Field(
        default=False, description="also read services.yaml and */ferry-package.yaml manifests at the commit"
    )
    bazel: BazelSettings = BazelSettings()

    @field_validator("global_paths")
    @classmethod
    def _inside_app_repo(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _repo_paths(v, "app repository")


class Provisioning(_Model):
    """Terraform workspaces of both domains, their gate, and drift detection."""

    terraform: TerraformSettings = TerraformSettings()
    workspaces: dict[str, Workspace] = Field(default_factory=dict)
    gate: str | None = Field(default=None, description="gate for plans that destroy or replace anything")
    drift_interval_minutes: float = Field(default=60, gt=0, description="how often the drift schedule plans")


class TLS(_Model):
    """mTLS / server CA settings of the Temporal connection."""

    enabled: bool = False
    server_ca: CredentialRef | None = None
    client_cert: CredentialRef | None = None
    client_key: CredentialRef | None = None
    server_name: str | None = None


class CodecServerSettings(_Model):
    """Who `ferry codec-server` answers: it decrypts any payload for its caller, so it wants a credential.

    The token is read at call time like every other credential reference (`CredentialRef.read()`).
    """

    token: CredentialRef | None = Field(
        default=None,
        description="bearer token every request must carry (Authorization: Bearer ...); none: loopback only",
    )
    allow_encode: bool = Field(
        default=False,
        description="serve POST /encode: it lets anyone with UI access craft encrypted payloads (e.g. signals)",
    )


class PayloadEncryption(_Model):
    """AES-256-GCM encryption of every payload sent to Temporal (common/codec.py); off while `keys` is empty.

    Each key is a secret reference to base64 of 32 random bytes; `active_key` encrypts, all keys decrypt.
    """

    active_key: str | None = Field(default=None, description="id of the key that encrypts new payloads")
    keys: dict[str, CredentialRef] = Field(default_factory=dict, description="key id -> secret reference")
    codec_server: CodecServerSettings = CodecServerSettings()

    @model_validator(mode="after")
    def _active_is_known(self) -> PayloadEncryption:
        if self.keys and self.active_key is None:
            raise ValueError("give active_key: the id (under keys) of the key that encrypts")
        if self.active_key is not None and self.active_key not in self.keys:
            raise ValueError(f"active_key '{self.active_key}' is not under keys")
        for key_id in self.keys:
            if not re.fullmatch(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", key_id):
                raise ValueError(f"key id '{key_id}' must be letters, digits, '.', '_' or '-' (at most 64)")
        return self

    @property
    def enabled(self) -> bool:
        """True when payloads are encrypted."""
        return bool(self.keys)


class TemporalSettings(_Model):
    """How workers and the CLI reach Temporal; TEMPORAL_* environment variables override the file."""

    address: str = "localhost:7233"
    namespace: str = "default"
    tls: TLS = TLS()
    api_key: CredentialRef | None = None
    ui_url: str | None = "http://localhost:8233"
    task_queues: dict[str, str] = Field(default_factory=lambda: {"onprem": "onprem", "cloud": "cloud"})
    encryption: PayloadEncryption = PayloadEncryption()

    @field_validator("task_queues")
    @classmethod
    def _both(cls, v: dict[str, str]) -> dict[str, str]:
        missing = [s for s in SITES if s not in v]
        if missing:
            raise ValueError(f"missing task queue for site(s): {', '.join(missing)}")
        return v


class Repo(_Model):
    """A git repository: URL (or local path) and its main branch; the URL never carries a credential."""

    url: str
    branch: str = "main"
    name: str | None = Field(default=None, description="short name used in workflow ids; default from URL")

    @field_validator("branch")
    @classmethod
    def _git_branch(cls, v: str) -> str:
        # It is checked out, pushed to and put in workflow ids: git decides what a branch name is.
        _refuse(branch_problem(v))
        return v

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        # The URL is copied into every release's input (so into Temporal's history), messages and logs: a token
        # in it would leak to all of them. ssh://git@host and git@host:path name the ssh user, not a secret.
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
        except ValueError:
            return v  # not a URL (a local path); git reports it if it cannot use it
        if "@" not in parts.netloc:
            return v
        if parts.scheme.lower() in ("http", "https") or parts.password is not None:
            raise ValueError(
                "credentials must not be in the URL (it is copied into workflow inputs, Temporal's history and "
                "logs): remove the 'user:token@' part and give each worker's git the credential instead: a git "
                "credential helper that reads the token from a secret reference (an environment variable or a "
                "file; `git config --global credential.helper ...`), or an SSH deploy key with an "
                "ssh://git@HOST/... URL"
            )
        return v

    @property
    def short_name(self) -> str:
        """The name in workflow ids such as release/{repo}/{sha12}."""
        if self.name:
            return self.name
        tail = self.url.rstrip("/").split("/")[-1].split(":")[-1]
        return tail.removesuffix(".git") or "app"


class Repos(_Model):
    """The application monorepo and the GitOps repo."""

    app: Repo
    gitops: Repo


class Service(_Model):
    """A deployable service, or (kind: library) shared code that only makes its dependents rebuild."""

    kind: Literal["service", "library"] = "service"
    paths: list[str] = Field(min_length=1, description="globs of the paths it owns, relative to the repo root")
    depends_on: list[str] = Field(default_factory=list)
    image: str | None = Field(default=None, description="repository in the Harbor project, e.g. api")
    sonar_project: str | None = None
    argocd_apps: dict[str, str] = Field(default_factory=dict, description="environment -> Argo CD app")
    rollouts: dict[str, str] = Field(
        default_factory=dict, description="environment -> Argo Rollout that runs it there (progressive delivery)"
    )

    @field_validator("paths")
    @classmethod
    def _inside_app_repo(cls, v: list[str]) -> list[str]:
        return _repo_paths(v, "app repository")

    @field_validator("image")
    @classmethod
    def _oci_name(cls, v: str | None) -> str | None:
        # Pushed to Harbor and pinned in GitOps as {registry}/{project}/{image}: the OCI grammar decides.
        if v is not None:
            _refuse(oci_repository_problem(v))
        return v

    @model_validator(mode="after")
    def _image_for_services(self) -> Service:
        if self.kind == "service" and not self.image:
            raise ValueError("a service needs 'image' (its Harbor repository); use kind: library otherwise")
        return self


Severity = Literal["Critical", "High", "Medium", "Low", "None"]


class AllowedCve(_Model):
    """A CVE accepted for an environment until a date, with the reason a reviewer accepted it."""

    id: str = Field(pattern=r"^[A-Za-z]+-\d{4}-\d+$|^GHSA-[\w-]+$")
    expires: date
    reason: str = ""


class EnvironmentPolicy(_Model):
    """Supply-chain rules checked before an environment moves."""

    block_severity: Severity | None = Field(
        default=None, description="this severity or worse stops the move (default: policy.block_severity)"
    )
    allow_cves: list[AllowedCve] = Field(default_factory=list)
    require_signature: bool = Field(default=False, description="cosign verify --key before the move")


class RolloutPolicy(_Model):
    """How the Argo Rollouts of an environment are driven: where they live and who promotes their pauses."""

    namespace: str | None = Field(default=None, description="namespace of the environment's Rollouts")
    promotion: Literal["auto", "approval"] = Field(
        default="auto", description="auto: promote each pause after soak_minutes; approval: on `ferry promote`"
    )
    soak_minutes: float = Field(default=5, ge=0, description="auto: how long a pause soaks before the promotion")


class Environment(_Model):
    """A deployment target: where its GitOps folder is and which site's Argo CD and Harbor serve it."""

    site: Literal["onprem", "cloud"]
    path: str = Field(description="folder of the GitOps repo holding this environment's kustomization.yaml")
    gate: str | None = Field(default=None, description="gate that must open before this environment moves")
    e2e: bool = Field(default=False, description="run the Buildkite E2E pipeline after this environment syncs")
    policy: EnvironmentPolicy = EnvironmentPolicy()
    rollout: RolloutPolicy = RolloutPolicy()
    auto_rollback: bool = Field(
        default=True, description="revert this environment's GitOps commit when its verification fails"
    )

    @field_validator("path")
    @classmethod
    def _inside_gitops_repo(cls, v: str) -> str:
        # A GitOps move writes {path}/kustomization.yaml: a path out of the repo would write anywhere.
        _refuse(repo_path_problem(v, "GitOps repository"))
        return v


class Gate(_Model):
    """Who may decide a gate, how many must agree, who may not, and how long it waits."""

    groups: list[str] = Field(min_length=1)
    required_approvals: int = Field(default=1, ge=1, description="distinct approvers needed to open it")
    forbid_commit_author: bool = Field(default=False, description="four-eyes: the commit's author may not approve")
    forbid_previous_approvers: bool = Field(
        default=False, description="four-eyes: whoever approved an earlier gate of the release may not approve"
    )
    deadline_hours: float | None = Field(
        default=None, gt=0, description="the release ends 'expired' after this (default: approvals.deadline_hours)"
    )


class Signatures(_Model):
    """Signed decisions (`ferry approve --as USER`): which keys may sign for whom, and for how long."""

    allowed_signers: str = Field(
        description="ssh-keygen allowed_signers file (relative to ferry.yaml): principal, options, public key"
    )
    max_age_seconds: float = Field(
        default=900, gt=0, le=86400, description="a signed decision older than this is refused as a replay"
    )
    key_dir: str | None = Field(
        default=None, description="CLI only: where `<user>` private keys live (sandbox, tests); else --key"
    )


ROLLBACK_BLOCK_STEP = "rollback-{stage}"


class Approvals(_Model):
    """Where approver identities come from, and gate defaults."""

    deadline_hours: float = Field(default=72, gt=0)
    allow_as_flag: bool = Field(
        default=False,
        description="legacy, ignored: `--as USER` now names the signer of a signed decision (approvals.signatures)",
    )
    trust_buildkite_teams: bool = Field(
        default=False,
        description="a Buildkite team (read from the Buildkite API) named like a gate group counts as membership",
    )
    signatures: Signatures | None = Field(default=None, description="verify `ferry approve --as` by SSH signature")
    buildkite_block_step: str = Field(
        default="approve-{stage}",
        description="the key of the block step whose unblocker decides a gate ({stage}: the gate's stage)",
    )
    buildkite_pipelines: list[str] = Field(
        default_factory=list, description="pipelines whose block steps may decide gates (empty: any in the org)"
    )
    trust_unverified: bool = Field(
        default=False,
        description="sandbox only (needs `sandbox: true`): a decision without proof counts, shown as unverified",
    )

    def block_step(self, action: str, stage: str) -> str:
        """The Buildkite block step whose unblocker may take `action` on `stage`.

        A rollback has its own step (`rollback-{stage}`, in a build of the commit rolled back to): an unblock
        that approved a release must not also be usable to put an environment back.
        """
        template = ROLLBACK_BLOCK_STEP if action == "rollback" else self.buildkite_block_step
        return template.replace("{stage}", stage)

    group_file: str | None = Field(default=None, description="YAML mapping group -> members, merged into groups")
    freeze_override_groups: list[str] = Field(
        default_factory=list, description="groups whose members may approve with --override-freeze"
    )


class FreezeWindow(_Model):
    """A period when environments must not move: an absolute range, or a cron start plus a duration."""

    environments: list[str] = Field(min_length=1)
    reason: str
    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = Field(default=None, description="UTC cron expression of each window's start")
    duration_hours: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_form(self) -> FreezeWindow:
        absolute = self.start is not None and self.end is not None
        recurring = self.cron is not None and self.duration_hours is not None
        if absolute == recurring:
            raise ValueError("give either start and end, or cron and duration_hours")
        if absolute and self.end <= self.start:  # type: ignore[operator]
            raise ValueError("end must be after start")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(f"cron '{self.cron}' is not a valid cron expression")
        for stamp in (self.start, self.end):
            if stamp is not None and stamp.tzinfo is None:
                raise ValueError("start and end need a timezone, e.g. 2026-12-20T00:00:00Z")
        return self


class Signing(_Model):
    """cosign: CI signs each pushed image; environments with require_signature verify before moving."""

    cosign_binary: str = "cosign"
    key: CredentialRef | None = Field(default=None, description="private key (a file reference) for cosign sign")
    password: CredentialRef | None = Field(default=None, description="its password (COSIGN_PASSWORD)")
    public_key: CredentialRef | None = Field(default=None, description="public key for cosign verify --key")


class Notifications(_Model):
    """Slack-compatible webhook for gates waiting, decided, expired, and failed releases."""

    webhook_url: CredentialRef | None = Field(default=None, description="the URL is a secret: a reference")


GITHUB_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$")
GITLAB_PROJECT = re.compile(r"^\d+$|^[\w.-]+(/[\w.-]+)+$")
DEFAULT_TRACKER_URLS = {"github": "https://api.github.com", "gitlab": "https://gitlab.com"}


class Feedback(_Model):
    """Where a production rollback is reported back to the team: an issue in the app repo's tracker."""

    tracker: Literal["none", "github", "gitlab"] = "none"
    url: str | None = Field(
        default=None,
        description="API base; default https://api.github.com (github) or https://gitlab.com (gitlab, + /api/v4)",
    )
    project: str | None = Field(default=None, description="github: owner/repo; gitlab: numeric id or group/project")
    token: CredentialRef | None = Field(default=None, description="API token: a reference, never the token")
    site: Literal["onprem", "cloud"] = Field(default="onprem", description="whose worker reaches the tracker")
    labels: list[str] = Field(
        default_factory=lambda: ["ferry", "rollback"],
        min_length=1,
        description="labels of the issue; the first marks Ferry's issues (looked up before creating one)",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") if v else v

    @field_validator("labels")
    @classmethod
    def _plain_labels(cls, v: list[str]) -> list[str]:
        # GitLab takes labels as one comma-separated string, so a comma would split a label in two.
        bad = [label for label in v if not label.strip() or "," in label]
        if bad:
            raise ValueError(f"labels must be non-empty and contain no comma: {bad}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> Feedback:
        if self.tracker == "none":
            return self
        problems = []
        if self.project is None:
            problems.append(f"'project' is required with tracker {self.tracker}")
        elif self.tracker == "github" and not GITHUB_PROJECT.fullmatch(self.project):
            problems.append(f"project '{self.project}' must be owner/repo for github")
        elif self.tracker == "gitlab" and not GITLAB_PROJECT.fullmatch(self.project):
            problems.append(f"project '{self.project}' must be a numeric id or a group/project path for gitlab")
        if self.token is None:
            problems.append(f"'token' (a credential reference) is required with tracker {self.tracker}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def api_url(self) -> str:
        """The API base URL: the configured one, or the public service's."""
        return self.url or DEFAULT_TRACKER_URLS.get(self.tracker, "")


class Timeouts(_Model):
    """Bounds on activities; a system that stays down fails the release after these, ready for retry.

    An activity is retried (backoff from retry_initial_seconds, doubling up to retry_max_seconds) while both
    bounds allow it: `activity_attempts` (0: no bound on the count) and `retry_budget_seconds`, the time an
    outage may last past an attempt's own start-to-close before the release fails (0: no time bound).
    """

    activity_attempts: int = Field(default=0, ge=0, description="0: as many as retry_budget_seconds allows")
    retry_budget_seconds: float = Field(
        default=600.0, ge=0, description="how long an upstream outage is ridden out before the release fails"
    )
    activity_start_to_close_seconds: float = Field(default=1800, gt=0)
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=60.0, gt=0)
    poll_seconds: float = Field(default=5.0, gt=0, description="how often waits poll the external system")

    @model_validator(mode="after")
    def _bounded(self) -> Timeouts:
        if self.activity_attempts == 0 and self.retry_budget_seconds == 0:
            raise ValueError(
                "timeouts: activity_attempts 0 and retry_budget_seconds 0 would retry a dead system forever; "
                "set one of them"
            )
        return self


class Policy(_Model):
    """Supply-chain defaults."""

    block_severity: Severity = "Critical"


class LogSettings(_Model):
    """Worker and CLI log lines; FERRY_LOG_LEVEL / FERRY_LOG_FORMAT override them on one machine."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = Field(default="json", description="json: one JSON object per line")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class TracingSettings(_Model):
    """OpenTelemetry spans for workflows and activities (needs the `otel` extra installed)."""

    enabled: bool = False
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP collector, e.g. http://otel-collector:4317; default: OTEL_EXPORTER_OTLP_*"
    )
    service_name: str = Field(default="ferry", description="service.name of the spans (the site is added)")


class Observability(_Model):
    """Where logs, metrics and traces go (common/observability.py builds them)."""

    logging: LogSettings = LogSettings()
    metrics: dict[str, str] = Field(
        default_factory=dict,
        description="site -> host:port where that site's worker serves Prometheus /metrics (default: off)",
    )
    tracing: TracingSettings = TracingSettings()

    @field_validator("metrics")
    @classmethod
    def _bind_addresses(cls, v: dict[str, str]) -> dict[str, str]:
        import ipaddress

        problems = []
        for site, address in v.items():
            if site not in SITES:
                problems.append(f"unknown site '{site}'; sites are {', '.join(SITES)}")
                continue
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            try:
                if host != "localhost":
                    ipaddress.ip_address(host)
                ok = port.isdigit() and 0 < int(port) < 65536
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{site}: '{address}' must be ip:port (e.g. 0.0.0.0:9464 or 127.0.0.1:9464)")
        if problems:
            raise ValueError("; ".join(problems))
        return v


class FerryConfig(_Model):
    """The whole ferry.yaml."""

    temporal: TemporalSettings = TemporalSettings()
    sites: dict[str, Site]
    repos: Repos
    services: dict[str, Service] = Field(min_length=1)
    environments: dict[str, Environment] = Field(min_length=1)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    gates: dict[str, Gate] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    policy: Policy = Policy()
    approvals: Approvals = Approvals()
    freeze_windows: list[FreezeWindow] = Field(default_factory=list)
    signing: Signing = Signing()
    notifications: Notifications = Notifications()
    feedback: Feedback = Feedback()
    provisioning: Provisioning = Provisioning()
    change_analysis: ChangeAnalysis = ChangeAnalysis()
    observability: Observability = Observability()
    workdir: str = Field(default="~/.cache/ferry", description="where workers keep git clones")
    sandbox: bool = Field(default=False, description="marks the embedded sandbox's config (`ferry sandbox up`)")

    @field_validator("sites")
    @classmethod
    def _known_sites(cls, v: dict[str, Site]) -> dict[str, Site]:
        unknown = [s for s in v if s not in SITES]
        if unknown:
            raise ValueError(f"unknown site(s) {', '.join(unknown)}; sites are {', '.join(SITES)}")
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> FerryConfig:
        problems: list[str] = []
        for name, svc in self.services.items():
            if not SERVICE_NAME.fullmatch(name):
                problems.append(f"services.{name}: name must be lowercase letters, digits and '-'")
            for dep in svc.depends_on:
                if dep not in self.services:
                    problems.append(f"services.{name}.depends_on: unknown service '{dep}'")
            for env in svc.argocd_apps:
                if env not in self.environments:
                    problems.append(f"services.{name}.argocd_apps: unknown environment '{env}'")
            if svc.kind == "service":
                for env in self.environments:
                    if env not in svc.argocd_apps:
                        problems.append(f"services.{name}.argocd_apps: no application for environment '{env}'")
        for name, env in self.environments.items():
            site = self.sites.get(env.site)
            if site is None:
                problems.append(f"environments.{name}.site: site '{env.site}' is not configured under sites")
            else:
                for system in ("harbor", "argocd"):
                    if getattr(site, system) is None:
                        problems.append(f"sites.{env.site}.{system}: required by environment '{name}'")
            if env.gate is not None and env.gate not in self.gates:
                problems.append(f"environments.{name}.gate: unknown gate '{env.gate}' (define it under gates)")
        for gname, gate in self.gates.items():
            for group in gate.groups:
                if group not in self.groups:
                    problems.append(f"gates.{gname}.groups: unknown group '{group}' (define it under groups)")
        onprem = self.sites.get("onprem")
        if onprem is None or onprem.tekton is None or onprem.harbor is None:
            problems.append("sites.onprem: CI needs 'tekton' and 'harbor' on the onprem site")
        elif onprem.harbor is not None:
            for name, env in self.environments.items():
                if env.site != "onprem" and env.site not in onprem.harbor.replication_policies:
                    problems.append(
                        f"sites.onprem.harbor.replication_policies: no policy for site '{env.site}' "
                        f"(needed by environment '{name}')"
                    )
        if any(e.e2e for e in self.environments.values()) and (onprem is None or onprem.buildkite is None):
            problems.append("sites.onprem.buildkite: required because an environment has e2e: true")
        for i, window in enumerate(self.freeze_windows):
            for env in window.environments:
                if env not in self.environments:
                    problems.append(f"freeze_windows.{i}.environments: unknown environment '{env}'")
        if self.approvals.trust_unverified and not self.sandbox:
            problems.append(
                "approvals.trust_unverified: only a sandbox config (sandbox: true) may count decisions without a "
                "verified identity; configure approvals.signatures and Buildkite instead"
            )
        if "{stage}" not in self.approvals.buildkite_block_step:
            problems.append("approvals.buildkite_block_step: must contain {stage}, e.g. approve-{stage}")
        for group in self.approvals.freeze_override_groups:
            if group not in self.groups:
                problems.append(f"approvals.freeze_override_groups: unknown group '{group}'")
        if any(e.policy.require_signature for e in self.environments.values()):
            if self.signing.public_key is None:
                problems.append("signing.public_key: required because an environment has require_signature")
            if self.signing.key is None:
                problems.append("signing.key: required because an environment has require_signature (CI signs)")
        prov = self.provisioning
        if prov.gate is not None and prov.gate not in self.gates:
            problems.append(f"provisioning.gate: unknown gate '{prov.gate}' (define it under gates)")
        for wname, ws in prov.workspaces.items():
            if ws.site not in self.sites:
                problems.append(f"provisioning.workspaces.{wname}.site: site '{ws.site}' is not configured")
            elif ws.apps and self.sites[ws.site].rancher is None:
                problems.append(f"sites.{ws.site}.rancher: required by provisioning.workspaces.{wname}.apps")
        cycle = _find_cycle({n: s.depends_on for n, s in self.services.items()})
        if cycle:
            problems.append(f"services: depends_on cycle {' -> '.join(cycle)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _names_and_image_references(self) -> FerryConfig:
        # Names become workflow ids and folders; images become {registry}/{project}/{image} on every Harbor.
        problems = [
            f"{section}.{name if name.isprintable() else repr(name)}: name must be letters, digits, '.', '_' or '-' "
            "(at most 63, starting with a letter or digit)"
            for section, names in (
                ("environments", self.environments),
                ("provisioning.workspaces", self.provisioning.workspaces),
            )
            for name in names
            if not PLAIN_NAME.fullmatch(name)
        ]
        for name, svc in self.services.items():
            for site_name, site in self.sites.items():
                if svc.image is None or site.harbor is None:
                    continue
                problem = image_reference_problem(site.harbor.registry_host, site.harbor.project, svc.image)
                if problem:
                    problems.append(f"services.{name}.image: as pushed to sites.{site_name}.harbor: {problem}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _feedback_site(self) -> FerryConfig:
        # The plan sends tracker.open_issue to this site's queue: a site nobody runs would leave it unscheduled.
        if self.feedback.tracker != "none" and self.feedback.site not in self.sites:
            raise ValueError(f"feedback.site: site '{self.feedback.site}' is not configured under sites")
        return self

    @model_validator(mode="after")
    def _rollouts_reachable(self) -> FerryConfig:
        # A Rollout Ferry cannot reach would leave the release waiting on a cluster no worker can read.
        problems: list[str] = []
        for name, svc in self.services.items():
            if svc.rollouts and svc.kind != "service":
                problems.append(f"services.{name}.rollouts: a library is not deployed, so it has no Rollout")
            for env_name, rollout in svc.rollouts.items():
                where = f"services.{name}.rollouts.{env_name}"
                env = self.environments.get(env_name)
                if env is None:
                    problems.append(f"{where}: unknown environment '{env_name}'")
                    continue
                if not rollout:
                    problems.append(f"{where}: give the Rollout's name")
                if not env.rollout.namespace:
                    problems.append(
                        f"{where}: environment '{env_name}' has no rollout.namespace (where its Rollouts live)"
                    )
                site = self.sites.get(env.site)
                if site is not None and site.kubernetes is None:
                    problems.append(
                        f"{where}: sites.{env.site}.kubernetes is not configured (the cluster API that runs the "
                        f"Rollouts of environment '{env_name}')"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def site(self, name: str) -> Site:
        """The site named, which validation guarantees exists for every environment."""
        return self.sites[name]

    def task_queue(self, site: str) -> str:
        """The Temporal task queue whose worker can reach this site."""
        return self.temporal.task_queues[site]


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


_NAMES_ITS_KEY = re.compile(r"^[\w-]+(\.[\w./-]+)*: ")


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"] and _NAMES_ITS_KEY.match(msg):
            lines.append(f"{path}: {msg}")  # a whole-file check already starts with the key it is about
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key (see infra/ferry.example.yaml for the keys)"
        lines.append(f"{path}: {loc}: {msg}")
    return "\n".join(lines)


def _merge_group_file(data: dict[str, Any], path: Path) -> None:
    """Members listed in approvals.group_file (relative to ferry.yaml) join the groups of the same name."""
    group_file = (data.get("approvals") or {}).get("group_file")
    if not group_file:
        return
    file = (path.parent / group_file).expanduser()
    try:
        groups = load_yaml(file.read_text(), str(file))
    except YamlBudgetError as e:
        raise ConfigError(f"{path}: approvals.group_file: {e}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: approvals.group_file: cannot read {file}: {e}") from None
    if not isinstance(groups, dict) or not all(
        isinstance(m, list) and all(isinstance(x, str) for x in m) for m in groups.values()
    ):
        raise ConfigError(f"{file}: must map each group name to a list of member names")
    merged = {k: list(v) for k, v in (data.get("groups") or {}).items()}
    for name, members in groups.items():
        merged[name] = sorted(set(merged.get(name, [])) | set(members))
    data["groups"] = merged


def _resolve_signers(data: dict[str, Any], path: Path) -> None:
    """approvals.signatures.allowed_signers and key_dir relative to ferry.yaml, as group_file is."""
    sigs = (data.get("approvals") or {}).get("signatures")
    if not isinstance(sigs, dict):
        return
    for key in ("allowed_signers", "key_dir"):
        value = sigs.get(key)
        if isinstance(value, str) and value:
            expanded = Path(value).expanduser()
            sigs[key] = str(expanded if expanded.is_absolute() else (path.parent / expanded).resolve())


def parse_config(data: Any, path: Path | str = "ferry.yaml") -> FerryConfig:
    """Validate already-parsed YAML; ConfigError names file, key and problem."""
    path = Path(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a YAML mapping of keys (temporal, sites, repos, ...)")
    _merge_group_file(data, path)
    _resolve_signers(data, path)
    try:
        return FerryConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None


def default_config_path() -> Path:
    """FERRY_CONFIG, else ./ferry.yaml."""
    return Path(os.environ.get("FERRY_CONFIG", "ferry.yaml"))


def load_config(path: Path | str | None = None) -> FerryConfig:
    """Read and validate ferry.yaml (or FERRY_CONFIG); ConfigError on any problem."""
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (pass --config or set FERRY_CONFIG)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None
    try:
        data = load_yaml(text, str(path))
    except YamlBudgetError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: {where}not valid YAML: {problem}") from None
    return parse_config(data, path)
