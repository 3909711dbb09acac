"""A stand-in for the cosign CLI, for machines where cosign cannot be installed (it is not in PyPI or
Debian's archive here): the same commands, flags and exit codes that Ferry uses, with real ECDSA P-256 keys.

  cosign generate-key-pair [--output-key-prefix PREFIX]     (password from COSIGN_PASSWORD)
  cosign sign --key KEY [--yes] [--tlog-upload=false] IMAGE@DIGEST
  cosign verify --key PUB [--insecure-ignore-tlog=true] IMAGE@DIGEST

KEY/PUB are a path or env://VAR, as with cosign. Real cosign stores a signature as an OCI artifact tagged
`sha256-<digest>.sig` next to the image, so Harbor replication carries it; this stand-in keeps it in
$FERRY_COSIGN_STORE (one file per digest), shared by both sandbox workers. Exit codes as upstream's
cosign_exit_codes.md: 0 verified, 10 no signature, 12 no matching signature, 1 any other error.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

NO_SIGNATURE, NO_MATCHING_SIGNATURE = 10, 12


def _fail(message: str, code: int = 1) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return code


def _read_key(ref: str) -> bytes:
    if ref.startswith("env://"):
        return os.environ[ref.removeprefix("env://")].encode()
    return Path(ref).read_bytes()


def _store(digest: str) -> Path:
    root = Path(os.environ.get("FERRY_COSIGN_STORE", Path.home() / ".cache" / "ferry-cosign"))
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{digest.replace(':', '-')}.sig"


def _payload(digest: str) -> bytes:
    # cosign's "simple signing" payload names the manifest digest it vouches for.
    return json.dumps(
        {"critical": {"image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}},
        sort_keys=True,
    ).encode()


def _digest(image: str) -> str | None:
    return image.split("@", 1)[1] if "@" in image else None


def _args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            flags[key] = value
        elif arg in ("--key", "--output-key-prefix"):
            flags[arg[2:]] = argv[i + 1]
            i += 1
        elif arg.startswith("-"):
            flags[arg.lstrip("-")] = "true"
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, (flags, rest) = argv[0], _args(argv[1:])
    password = os.environ.get("COSIGN_PASSWORD", "").encode()
    if command == "generate-key-pair":
        prefix = flags.get("output-key-prefix", "cosign")
        key = ec.generate_private_key(ec.SECP256R1())
        encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        Path(f"{prefix}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        )
        os.chmod(f"{prefix}.key", 0o600)
        Path(f"{prefix}.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        print(f"Private key written to {prefix}.key\nPublic key written to {prefix}.pub")
        return 0
    if command not in ("sign", "verify") or "key" not in flags or len(rest) != 1:
        return _fail(f"usage: cosign {command} --key KEY IMAGE@DIGEST")
    digest = _digest(rest[0])
    if digest is None:
        return _fail(f"{rest[0]}: sign and verify by digest (IMAGE@sha256:...)")
    try:
        key_bytes = _read_key(flags["key"])
    except (OSError, KeyError) as e:
        return _fail(f"reading key {flags['key']}: {e}")
    if command == "sign":
        try:
            key = serialization.load_pem_private_key(key_bytes, password=password or None)
        except (ValueError, TypeError) as e:
            return _fail(f"decrypting private key: {e}")
        signature = key.sign(_payload(digest), ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
        _store(digest).write_text(
            json.dumps(
                {
                    "payload": base64.b64encode(_payload(digest)).decode(),
                    "signature": base64.b64encode(signature).decode(),
                }
            )
        )
        print(f"Pushing signature to: {rest[0].split('@')[0]}:{digest.replace(':', '-')}.sig")
        return 0
    path = _store(digest)
    if not path.exists():
        return _fail(f"no signatures found for image {rest[0]}", NO_SIGNATURE)
    record = json.loads(path.read_text())
    public = serialization.load_pem_public_key(key_bytes)
    try:
        public.verify(base64.b64decode(record["signature"]), _payload(digest), ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr,call-arg]
    except InvalidSignature:
        return _fail(f"no matching signatures: {rest[0]}", NO_MATCHING_SIGNATURE)
    print(json.dumps([{"critical": {"image": {"docker-manifest-digest": digest}}, "optional": None}]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
