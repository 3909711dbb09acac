"""Supply-chain checks before an environment moves: the vulnerability policy and cosign signatures.

`policy.check_image` reads the Trivy findings of an image in the environment's own Harbor (the
vulnerabilities addition, which names each CVE) and blocks findings at or above the environment's
threshold unless an allow-list entry covers them on that day. `cosign.sign` (CI, after the push) and
`cosign.verify` (before a move) run the cosign CLI with a key from a credential reference; exit codes are
read as `../shared/specs/cosign/cosign_exit_codes.md` documents them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from temporalio import activity

from activities.errors import NOT_CONFIGURED, UPSTREAM_UNAVAILABLE, fatal, retryable
from activities.harbor import SEVERITIES, HarborClient, image_name, severity_rank
from activities.site_clients import SiteClients
from activities.waiting import heartbeating
from common.config import CredentialRef, FerryConfig, HarborEndpoint
from workflows.types import PolicyCheckInput, PolicyCheckResult, SignInput, SignResult

POLICY_VIOLATION = "SupplyChainPolicyViolation"
SIGNATURE_MISSING = "SignatureMissing"
# cosign_exit_codes.md: 10 no signature, 11 non-existent tag, 12 no matching signature.
COSIGN_NOT_SIGNED = {10: "no signature", 11: "non-existent tag", 12: "no matching signature"}
VULN_REPORT_MIME = "application/vnd.security.vulnerability.report; version=1.1"


class PolicyActivities(SiteClients[HarborClient, HarborEndpoint]):
    """The vulnerability policy of environments, checked against this site's Harbor."""

    system = "harbor"
    label = "Harbor"

    @classmethod
    def build_client(cls, endpoint: HarborEndpoint, transport: httpx.AsyncBaseTransport | None, site: str):
        """The site's Harbor client."""
        return HarborClient(endpoint, transport, instance=site)

    @activity.defn(name="policy.check_image")
    async def check_image(self, inp: PolicyCheckInput) -> PolicyCheckResult:
        """Block findings at or above the environment's threshold that no unexpired allow-list entry covers."""
        client = self._client(inp.artifact.instance, "policy.check_image")
        threshold = severity_rank(inp.block_severity)
        findings = await self._findings(client, inp)
        allowed_until = {a.id.upper(): a.expires for a in inp.allow_cves}
        result = PolicyCheckResult()
        for cve, severity in findings:
            if inp.block_severity == "None" or severity_rank(severity) < threshold:
                continue
            expires = allowed_until.get(cve.upper())
            if expires is not None and inp.today <= expires:
                result.allowed.append(f"{cve} ({severity}, allowed until {expires})")
            else:
                lapsed = f", allow-list entry expired {expires}" if expires else ""
                result.blocking.append(f"{cve} ({severity}{lapsed})")
        if result.blocking:
            raise fatal(
                f"{inp.environment}: image {image_name(inp.artifact)} violates the policy "
                f"'{inp.block_severity} or worse blocks': {', '.join(result.blocking)}; fix and rebuild, or allow "
                f"the CVE for {inp.environment} with an expiry date (environments.{inp.environment}.policy)",
                POLICY_VIOLATION,
                blocking=result.blocking,
            )
        return result

    async def _findings(self, client: HarborClient, inp: PolicyCheckInput) -> list[tuple[str, str]]:
        ref = inp.artifact
        response = await client.api.request(
            "GET",
            f"{client.artifact_path(ref.project, ref.repository, ref.digest)}/additions/vulnerabilities",
            f"read vulnerabilities of {image_name(ref)}",
            headers={"X-Accept-Vulnerabilities": VULN_REPORT_MIME},
        )
        body: dict[str, Any] = response.json() or {}
        report = body.get(VULN_REPORT_MIME) or next(iter(body.values()), None)
        if not report:
            raise retryable(
                f"Harbor has no finished scan of {image_name(ref)} yet; the policy check retries", UPSTREAM_UNAVAILABLE
            )
        out = []
        for vuln in report.get("vulnerabilities") or []:
            severity = vuln.get("severity", "Unknown")
            out.append((str(vuln.get("id", "?")), severity if severity in SEVERITIES else "Unknown"))
        return out


def key_argument(ref: CredentialRef) -> str:
    """cosign's --key for a credential reference: a file path, or env://VAR (cosign reads the variable)."""
    return ref.file if ref.file is not None else f"env://{ref.env}"


class CosignActivities:
    """cosign sign / verify by digest; the key never leaves the worker (cosign reads the file or variable)."""

    def __init__(
        self,
        binary: str,
        key: CredentialRef | None,
        password: CredentialRef | None,
        public_key: CredentialRef | None,
        timeout: float = 300.0,
    ) -> None:
        self.binary = binary
        self.key = key
        self.password = password
        self.public_key = public_key
        self.timeout = timeout

    @classmethod
    def from_config(cls, cfg: FerryConfig) -> CosignActivities:
        """From the `signing:` section of ferry.yaml."""
        s = cfg.signing
        return cls(os.path.expanduser(s.cosign_binary), s.key, s.password, s.public_key)

    async def _cosign(self, *args: str) -> tuple[int, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["COSIGN_PASSWORD"] = self.password.read()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
            )
        except FileNotFoundError:
            raise fatal(
                f"cosign binary '{self.binary}' not found on this worker; install cosign or set signing.cosign_binary",
                NOT_CONFIGURED,
            ) from None
        try:
            async with heartbeating("cosign", args[0]):
                out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace").strip()[-500:]

    @activity.defn(name="cosign.verify")
    async def verify(self, inp: SignInput) -> SignResult:
        """`cosign verify --key` the image by digest; unsigned or wrongly signed is a policy stop."""
        if self.public_key is None:
            raise fatal("signing.public_key is not configured; cosign verify needs it", NOT_CONFIGURED)
        image = f"{inp.image}@{inp.digest}"
        code, out = await self._cosign(
            "verify", "--key", key_argument(self.public_key), "--insecure-ignore-tlog=true", image
        )
        if code == 0:
            return SignResult(image=image, verified=True, detail="signature verified")
        if code in COSIGN_NOT_SIGNED:
            raise fatal(
                f"image {image}: {COSIGN_NOT_SIGNED[code]} (cosign verify exit {code}); rule: a cosign signature "
                "is required before this environment; sign it in CI with the configured key",
                SIGNATURE_MISSING,
            )
        raise retryable(f"cosign verify {image} failed (exit {code}): {out}")

    @activity.defn(name="cosign.sign")
    async def sign(self, inp: SignInput) -> SignResult:
        """`cosign sign --key` the image by digest, unless it already verifies (signing twice adds nothing)."""
        if self.key is None:
            raise fatal("signing.key is not configured; cosign sign needs it", NOT_CONFIGURED)
        image = f"{inp.image}@{inp.digest}"
        if self.public_key is not None:
            code, _ = await self._cosign(
                "verify", "--key", key_argument(self.public_key), "--insecure-ignore-tlog=true", image
            )
            if code == 0:
                return SignResult(image=image, verified=True, detail="already signed")
        code, out = await self._cosign("sign", "--yes", "--key", key_argument(self.key), "--tlog-upload=false", image)
        if code != 0:
            raise retryable(f"cosign sign {image} failed (exit {code}): {out}")
        return SignResult(image=image, verified=True, detail="signed")
