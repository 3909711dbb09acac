"""SSH-signed decisions (common/signatures.py): what verifies, what does not, and why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from signing import ALLOWED_SIGNERS, key_of, rogue_key

from common import signatures
from common.signatures import Claim, SignatureError


def claim(**changes: object) -> Claim:
    base = dict(
        workflow_id="release/shop/0123456789ab",
        action="approve",
        stage="production",
        principal="rita",
        comment_sha256=signatures.comment_digest("ship it"),
        issued_at="2026-12-04T10:00:00+00:00",
        nonce="n-1",
    )
    return Claim(**(base | changes))  # type: ignore[arg-type]


def test_a_signature_verifies_for_its_signer_and_claim_only() -> None:
    signed = claim()
    signature = signatures.sign(signed, key_of("rita"))
    assert signatures.verify(signed.canonical(), signature, "rita", ALLOWED_SIGNERS).startswith("SHA256:")
    # The same signature, checked for another principal, or over another claim, does not verify.
    with pytest.raises(SignatureError, match="not a valid signature by raj"):
        signatures.verify(signed.canonical(), signature, "raj", ALLOWED_SIGNERS)
    with pytest.raises(SignatureError, match="not a valid signature by rita"):
        signatures.verify(claim(stage="staging").canonical(), signature, "rita", ALLOWED_SIGNERS)
    # A key that is nobody's in allowed_signers signs nothing anyone believes.
    forged = signatures.sign(signed, rogue_key("rita"))
    with pytest.raises(SignatureError):
        signatures.verify(signed.canonical(), forged, "rita", ALLOWED_SIGNERS)


def test_a_signature_in_another_namespace_does_not_count(tmp_path: Path) -> None:
    """A git commit signature (namespace `git`) by the same key is no Ferry decision."""
    message = claim().canonical()
    proc = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-q", "-f", str(key_of("rita")), "-n", "git"],
        input=message.encode(),
        capture_output=True,
        check=True,
    )
    with pytest.raises(SignatureError):
        signatures.verify(message, proc.stdout.decode(), "rita", ALLOWED_SIGNERS)


def test_claims_parse_only_in_canonical_form() -> None:
    text = claim().canonical()
    assert Claim.parse(text) == claim()
    with pytest.raises(SignatureError, match="canonical"):
        Claim.parse(text.replace(",", ", ", 1))
    with pytest.raises(SignatureError, match="not a Ferry decision"):
        Claim.parse('{"workflow_id": "x"}')
    with pytest.raises(SignatureError, match="version"):
        Claim.parse(claim(v=2).canonical())


def test_principal_names_that_could_be_patterns_or_options_are_refused() -> None:
    for bad in ("*", "rita,raj", "-rita", "ri\nta", ""):
        with pytest.raises(SignatureError):
            signatures.verify(claim().canonical(), "x", bad, ALLOWED_SIGNERS)


def test_principals_of_reads_a_persons_other_names(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        "# comment\n"
        'rita,rita@example.com namespaces="ferry" ssh-ed25519 AAAA\n'
        '"*@example.com" namespaces="ferry" ssh-ed25519 BBBB\n'
    )
    assert signatures.principals_of(allowed, "rita@example.com") == ["rita", "rita@example.com"]
    assert signatures.principals_of(allowed, "raj") == ["raj"]
    assert signatures.principals_of(tmp_path / "missing", "rita") == ["rita"]
