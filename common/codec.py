"""AES-256-GCM payload encryption: what Ferry sends to Temporal is ciphertext the server cannot read.

Workflow payloads carry SHAs, digests, service names, approvers and comments; on a shared or hosted Temporal
(Temporal Cloud) that is more than the operators of the server need to see. The codec encrypts each whole
serialized Payload (data *and* metadata such as `encoding`), so the server stores only ciphertext plus the
id of the key that made it. Several keys can be configured: the active one encrypts, every one decrypts, so
a key is rotated by adding a new one, making it active, and dropping the old one only once no history that
still matters was written with it. Payloads that are not encrypted pass through, so histories recorded
before encryption was turned on keep replaying.

Only the client processes (workers, the `ferry` CLI, the codec server) hold keys; the Temporal server never
does. Search attributes are not payloads that go through a codec (the server must index them), so they stay
readable: they hold SHAs, branch and service names only, by design.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, PayloadCodec, default

from common.config import ConfigError, PayloadEncryption
from workflows.approval_types import PLAINTEXT_MARK

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12


class PayloadDecryptionError(Exception):
    """An encrypted payload cannot be decrypted here: its key is not configured, or it was altered.

    The message names the key id (never a key) and what to do. On a worker the SDK turns it into a failed
    workflow task (retried until the worker has the key) or a failed activity attempt (retried by its policy).
    """


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with the active key (AES-256-GCM, fresh 12-byte nonce); decrypts with any key.

    Layout of an encrypted payload: metadata `encoding: binary/encrypted` and `encryption-key-id: <id>`;
    data = nonce (12 bytes) || AES-GCM(serialized original Payload) including its 16-byte tag. The key id is
    the associated data, so moving a ciphertext under another key id fails authentication instead of
    decrypting under a key it was not made with.
    """

    def __init__(self, keys: Mapping[str, bytes], active_key: str) -> None:
        if active_key not in keys:
            raise ConfigError(f"encryption: active key '{active_key}' is not one of the keys ({', '.join(keys)})")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if len(key) != KEY_BYTES:
                raise ConfigError(f"encryption: key '{key_id}' is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
            self._ciphers[key_id] = AESGCM(key)
        self.active_key = active_key

    @classmethod
    def from_settings(cls, settings: PayloadEncryption) -> EncryptionCodec:
        """Read every key from its secret reference (base64 of 32 random bytes) and build the codec.

        ConfigError names the key id and its reference when a key is missing, not base64 or not 32 bytes;
        the value itself never appears in a message.
        """
        if not settings.enabled or settings.active_key is None:
            raise ConfigError("encryption: no keys configured (temporal.encryption.keys)")
        keys = {key_id: _decode_key(key_id, ref.describe(), ref.read()) for key_id, ref in settings.keys.items()}
        return cls(keys, settings.active_key)

    @property
    def key_ids(self) -> list[str]:
        """Ids of every key this codec can decrypt with (safe to log)."""
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload, whole, with the active key."""
        cipher = self._ciphers[self.active_key]
        aad = self.active_key.encode()
        out = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), aad)
            out.append(Payload(metadata={"encoding": ENCODING, KEY_ID: aad}, data=nonce + sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt encrypted payloads with the key they name; pass any other payload through, marked.

        The mark (`ferry-plaintext` metadata, ignored by the converters) lets a workflow refuse a decision
        that was sent without encryption where encryption is on: only someone bypassing Ferry's clients (and
        its keys) sends one. Old plaintext histories still decode as before.
        """
        return [self._decrypt(p) if p.metadata.get("encoding") == ENCODING else _marked(p) for p in payloads]

    def _decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload was encrypted with key '{key_id}', which is not configured here (have: "
                f"{', '.join(self._ciphers) or 'none'}); add it under temporal.encryption.keys on this worker/CLI"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key '{key_id}' failed authentication: it was altered, or the key "
                f"configured as '{key_id}' is not the one that encrypted it"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded


def _marked(payload: Payload) -> Payload:
    marked = Payload()
    marked.CopyFrom(payload)
    marked.metadata[PLAINTEXT_MARK] = b"1"
    return marked


def _decode_key(key_id: str, where: str, value: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"encryption: key '{key_id}' ({where}) is not base64; generate one with "
            """python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())\""""
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"encryption: key '{key_id}' ({where}) is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
    return key


def codec_for(settings: PayloadEncryption) -> EncryptionCodec | None:
    """The codec of ferry.yaml's `temporal.encryption`, or None when encryption is off."""
    return EncryptionCodec.from_settings(settings) if settings.enabled else None


def data_converter(settings: PayloadEncryption) -> DataConverter:
    """The SDK's default converter, with the encryption codec when `temporal.encryption` has keys.

    Clients, workers and the replayer must all use this one, or they cannot read each other's payloads.
    """
    codec = codec_for(settings)
    return dataclasses.replace(default(), payload_codec=codec) if codec else default()
