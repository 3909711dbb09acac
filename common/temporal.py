"""Connect to Temporal from ferry.yaml, with the standard TEMPORAL_* environment variables on top.

TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS, TEMPORAL_TLS_CLIENT_CERT_PATH,
TEMPORAL_TLS_CLIENT_KEY_PATH, TEMPORAL_TLS_SERVER_CA_CERT_PATH and TEMPORAL_TLS_SERVER_NAME override the
file, as the Temporal CLI and SDK environment configuration do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from temporalio.client import Client, Interceptor
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from common.codec import data_converter
from common.config import ConfigError, TemporalSettings


def _read_path(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def connection_args(settings: TemporalSettings) -> dict:
    """Keyword arguments for Client.connect; secrets are read here, on the machine that connects."""
    env = os.environ
    address = env.get("TEMPORAL_ADDRESS") or settings.address
    namespace = env.get("TEMPORAL_NAMESPACE") or settings.namespace
    api_key = env.get("TEMPORAL_API_KEY") or (settings.api_key.read() if settings.api_key else None)
    tls: bool | TLSConfig = False
    cert = env.get("TEMPORAL_TLS_CLIENT_CERT_PATH")
    key = env.get("TEMPORAL_TLS_CLIENT_KEY_PATH")
    ca = env.get("TEMPORAL_TLS_SERVER_CA_CERT_PATH")
    tls_wanted = settings.tls.enabled or env.get("TEMPORAL_TLS", "").lower() in ("1", "true") or bool(cert)
    if tls_wanted:
        t = settings.tls
        tls = TLSConfig(
            client_cert=_read_path(cert) or (t.client_cert.read().encode() if t.client_cert else None),
            client_private_key=_read_path(key) or (t.client_key.read().encode() if t.client_key else None),
            server_root_ca_cert=_read_path(ca) or (t.server_ca.read().encode() if t.server_ca else None),
            domain=env.get("TEMPORAL_TLS_SERVER_NAME") or t.server_name,
        )
    elif api_key:
        tls = True  # API keys are only sent over TLS (Temporal Cloud)
    return {"target_host": address, "namespace": namespace, "api_key": api_key, "tls": tls}


async def connect(
    settings: TemporalSettings, *, runtime: Runtime | None = None, interceptors: Sequence[Interceptor] = ()
) -> Client:
    """A Temporal client for workers and the CLI; it encrypts payloads when `temporal.encryption` has keys.

    `runtime` and `interceptors` come from common/observability.py (`runtime_for`, `interceptors_for`): the
    Prometheus metrics and tracing of a worker; a worker built on this client inherits both.
    """
    return await Client.connect(
        **connection_args(settings),
        data_converter=data_converter(settings.encryption),
        runtime=runtime,
        interceptors=interceptors,
    )
