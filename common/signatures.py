"""Signed decisions: who approves is proven by an SSH signature, checked against an allowed_signers file.

A decision (release, gate, action, comment, time, nonce) is written as one canonical JSON claim and signed
with the person's SSH key by `ssh-keygen -Y sign`, the mechanism git uses for signed commits; the worker
checks it with `ssh-keygen -Y verify` against the allowed_signers file it was configured with
(ssh-keygen(1), "ALLOWED SIGNERS"). No cryptography is written here: OpenSSH does the signing and the
verifying, and its allowed_signers format already carries key rotation (`valid-after`, `valid-before`)
and namespace restrictions (`namespaces="ferry"`).

The claim binds the signature to one decision: the workflow id and stage stop it from approving another
release or gate, the action and flags from being turned into another decision, the comment digest from
having its comment swapped, `issued_at` from being replayed later, and the nonce from being replayed at all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

NAMESPACE = "ferry"  # the ssh-keygen -Y namespace of Ferry decisions: a git commit signature never passes
CLAIM_VERSION = 1


class SignatureError(Exception):
    """A decision could not be signed or its signature did not verify; the message says why."""


@dataclass
class Claim:
    """What a person signs: one decision on one gate of one workflow, at one time, once."""

    workflow_id: str
    action: str  # approve | reject | promote | rollback
    stage: str  # the gate's stage, the environment of a promotion or rollback
    principal: str  # the signer's name, as in allowed_signers and the gate groups
    comment_sha256: str
    issued_at: str  # ISO 8601, UTC
    nonce: str
    override_freeze: bool = False
    full: bool = False
    target: str = ""  # rollback: the release rolled back to
    v: int = CLAIM_VERSION

    def canonical(self) -> str:
        """The exact bytes that are signed and verified: sorted keys, no whitespace."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> Claim:
        """The claim of a signed decision; SignatureError when it is not one."""
        try:
            data = json.loads(text)
            claim = cls(**data)
        except (ValueError, TypeError) as e:
            raise SignatureError(f"the signed claim is not a Ferry decision ({e})") from None
        if claim.v != CLAIM_VERSION:
            raise SignatureError(f"the signed claim has version {claim.v}; this worker reads version {CLAIM_VERSION}")
        if claim.canonical() != text:
            raise SignatureError("the signed claim is not in canonical form")
        return claim


def claim_for(
    workflow_id: str,
    action: str,
    stage: str,
    principal: str,
    comment: str,
    *,
    override_freeze: bool = False,
    full: bool = False,
    target: str = "",
    issued_at: str | None = None,
    nonce: str | None = None,
) -> Claim:
    """The claim of a new decision: now, with a fresh nonce, over the comment's digest."""
    return Claim(
        workflow_id=workflow_id,
        action=action,
        stage=stage,
        principal=principal,
        comment_sha256=comment_digest(comment),
        issued_at=issued_at or now_utc(),
        nonce=nonce or uuid.uuid4().hex,
        override_freeze=override_freeze,
        full=full,
        target=target,
    )


def comment_digest(comment: str) -> str:
    """The sha256 of a comment as the claim carries it (the comment itself travels beside the signature)."""
    return hashlib.sha256(comment.encode()).hexdigest()


def now_utc() -> str:
    """The current time as a claim's `issued_at`."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SignatureError("ssh-keygen is not installed (Debian: apt-get install openssh-client)")
    return found


def sign(claim: Claim, key: Path) -> str:
    """The armored SSH signature of `claim` by the private key at `key` (`ssh-keygen -Y sign`)."""
    if not key.is_file():
        raise SignatureError(f"signing key {key} not found; pass --key PATH or set FERRY_SIGNING_KEY")
    proc = subprocess.run(
        [_ssh_keygen(), "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE],
        input=claim.canonical().encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SignatureError(f"ssh-keygen could not sign with {key}: {detail[-1] if detail else 'no output'}")
    return proc.stdout.decode()


def verify(claim_text: str, signature: str, principal: str, allowed_signers: Path) -> str:
    """Check that `principal` signed `claim_text` with a key allowed_signers lists for them, now.

    Returns the signing key's fingerprint (for the audit); SignatureError names the reason otherwise.
    """
    if not allowed_signers.is_file():
        raise SignatureError(f"allowed signers file {allowed_signers} not found (approvals.signatures.allowed_signers)")
    if not principal or any(c in principal for c in "\n\r\0,*?!") or principal.startswith("-"):
        raise SignatureError(f"'{principal}' is not a valid signer name")
    with tempfile.TemporaryDirectory(prefix="ferry-verify-") as tmp:
        sig_path = Path(tmp) / "decision.sig"
        sig_path.write_text(signature)
        proc = subprocess.run(
            [
                _ssh_keygen(),
                "-Y",
                "verify",
                "-f",
                str(allowed_signers),
                "-I",
                principal,
                "-n",
                NAMESPACE,
                "-s",
                str(sig_path),
            ],
            input=claim_text.encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 or not out.startswith("Good"):
        lines = (proc.stderr.decode(errors="replace") or out).strip().splitlines()
        raise SignatureError(
            f"the signature is not a valid signature by {principal} in {allowed_signers.name}"
            + (f" ({lines[-1]})" if lines else "")
        )
    # "Good "ferry" signature for quinn with ED25519 key SHA256:..."
    return out.strip().rsplit(" ", 1)[-1]


def generate_key(path: Path, comment: str) -> str:
    """A new ed25519 key pair at `path` (+ `.pub`), no passphrase (sandbox and tests); returns the public key line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        subprocess.run(
            [_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return path.with_suffix(path.suffix + ".pub").read_text().strip()


def allowed_signers_line(principal: str, public_key: str) -> str:
    """One allowed_signers line that lets `principal` sign Ferry decisions (and nothing else) with the key."""
    key_type, key_b64, *_ = public_key.split()
    return f'{principal} namespaces="{NAMESPACE}" {key_type} {key_b64}'


def principals_of(allowed_signers: Path, name: str) -> list[str]:
    """Every principal listed on an allowed_signers line together with `name` (the person's other names).

    One line can name a person several ways (`rita,rita@example.com namespaces="ferry" ssh-ed25519 ...`), so
    a decision signed as `rita` and one Buildkite verified as `rita@example.com` are the same person to the
    four-eyes rules. Wildcard patterns name nobody in particular and are ignored.
    """
    found = {name}
    try:
        lines = allowed_signers.read_text().splitlines()
    except OSError:
        return [name]
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        principals = [p.strip('"') for p in line.split(None, 1)[0].split(",")]
        if name in principals:
            found.update(p for p in principals if p and not any(c in p for c in "*?!"))
    return sorted(found)
