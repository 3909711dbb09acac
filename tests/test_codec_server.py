"""`ferry codec-server` access control: bearer token, loopback-only without one, /encode off by default."""

from __future__ import annotations

import argparse
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from google.protobuf import json_format
from sample import sample_config
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import default

from common.codec import EncryptionCodec
from common.config import ConfigError, CredentialRef, FerryConfig, parse_config
from starters.codec_server import build_app, is_loopback, serve
from starters.common import USAGE, CommandError

KEY = os.urandom(32)
UI = "http://127.0.0.1:8233"
TOKEN = "codec-token-7f3a"


def plain(value: object) -> Payload:
    return default().payload_converter.to_payloads([value])[0]


def body(*payloads: Payload) -> dict:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def client(token: Callable[[], str] | None = None, *, allow_encode: bool = False) -> httpx.AsyncClient:
    app = build_app(
        EncryptionCodec({"k1": KEY}, "k1"), origins=[UI], namespace="default", token=token, allow_encode=allow_encode
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


async def encrypted(value: object) -> dict:
    return body(*await EncryptionCodec({"k1": KEY}, "k1").encode([plain(value)]))


# --- the token ---


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer wrong-token", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Basic {TOKEN}", 401),
        (TOKEN, 401),
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),  # the scheme is case-insensitive (RFC 9110)
    ],
)
async def test_decode_needs_the_bearer_token(authorization: str | None, status: int) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with client(lambda: TOKEN) as http:
        response = await http.post("/decode", json=await encrypted("hello"), headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in response.text and TOKEN not in response.text
    else:
        [decoded] = json_format.ParseDict(response.json(), Payloads()).payloads
        assert decoded == plain("hello")


async def test_every_path_is_behind_the_token() -> None:
    async with client(lambda: TOKEN) as http:
        for path in ("/decode", "/default/decode", "/encode", "/anything"):
            assert (await http.post(path, json=body(plain(1)))).status_code == 401


async def test_preflight_is_answered_without_the_token_and_allows_authorization() -> None:
    preflight = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    async with client(lambda: TOKEN) as http:
        ok = await http.options("/decode", headers=preflight)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == UI
        allowed = ok.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-namespace"} <= {h.strip() for h in allowed.split(",")}
        # A refusal carries the CORS headers too, so the UI can read and show it.
        refused = await http.post("/decode", json=body(plain(1)), headers={"Origin": UI})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == UI


async def test_namespace_check_still_applies_with_the_token() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client(lambda: TOKEN) as http:
        wrong = await http.post("/decode", json=body(plain(1)), headers={**auth, "X-Namespace": "payments"})
        assert wrong.status_code == 403 and "'default'" in wrong.text
        right = await http.post("/decode", json=body(plain(1)), headers={**auth, "X-Namespace": "default"})
        assert right.status_code == 200


async def test_token_is_read_at_each_request(tmp_path: Path) -> None:
    secret = tmp_path / "codec-token"
    secret.write_text("first-token\n")
    async with client(CredentialRef(file=str(secret)).read) as http:
        first = {"Authorization": "Bearer first-token"}
        assert (await http.post("/decode", json=body(plain(1)), headers=first)).status_code == 200
        secret.write_text("second-token\n")  # rotated: the old token stops working without a restart
        assert (await http.post("/decode", json=body(plain(1)), headers=first)).status_code == 401
        second = {"Authorization": "Bearer second-token"}
        assert (await http.post("/decode", json=body(plain(1)), headers=second)).status_code == 200
        secret.write_text("\n")  # an empty token never matches an empty header
        for header in ("Bearer ", "Bearer"):
            empty = await http.post("/decode", json=body(plain(1)), headers={"Authorization": header})
            assert empty.status_code == 500 and "cannot read its token" in empty.text
        secret.unlink()
        gone = await http.post("/decode", json=body(plain(1)), headers=second)
        assert gone.status_code == 500 and str(secret) not in gone.text


# --- /encode ---


async def test_encode_is_refused_unless_allowed() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client(lambda: TOKEN) as http:
        refused = await http.post("/encode", json=body(plain("approve")), headers=auth)
        assert refused.status_code == 403
        assert "--allow-encode" in refused.text and "codec_server.allow_encode" in refused.text
        assert "forged" in refused.text
        assert (await http.post("/default/encode", json=body(plain(1)), headers=auth)).status_code == 403
    async with client(lambda: TOKEN, allow_encode=True) as http:
        allowed = await http.post("/encode", json=body(plain("approve")), headers=auth)
        assert allowed.status_code == 200
    async with client() as http:  # tokenless (loopback) servers refuse it too
        assert (await http.post("/encode", json=body(plain(1)))).status_code == 403


# --- where it binds, and what `serve` reads from ferry.yaml ---


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("codec.internal", False),
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def encrypted_config(monkeypatch: pytest.MonkeyPatch, codec_server: dict[str, Any] | None = None) -> FerryConfig:
    monkeypatch.setenv("FERRY_TEST_PAYLOAD_KEY", base64.b64encode(KEY).decode())
    data = sample_config()
    data["temporal"]["encryption"] = {"active_key": "k1", "keys": {"k1": {"env": "FERRY_TEST_PAYLOAD_KEY"}}}
    if codec_server is not None:
        data["temporal"]["encryption"]["codec_server"] = codec_server
    return parse_config(data)


def args(host: str = "127.0.0.1", *, allow_encode: bool = False) -> argparse.Namespace:
    return argparse.Namespace(origin=[UI], host=host, port=0, allow_encode=allow_encode)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `serve` would have run uvicorn with (no socket is opened)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    return calls


async def post(app: Any, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec") as http:
        return await http.post(path, json=body(plain(1)), headers=headers or {})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "codec.internal"])
def test_tokenless_server_refuses_a_non_loopback_host(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]], host: str
) -> None:
    with pytest.raises(CommandError) as err:
        serve(encrypted_config(monkeypatch), args(host))
    assert err.value.code == USAGE == 2
    message = str(err.value)
    assert host in message and "temporal.encryption.codec_server.token" in message and "loopback" in message
    assert served == []


async def test_tokenless_loopback_server_warns_and_refuses_encode(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(encrypted_config(monkeypatch), args()) == 0
    [warning] = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert "anyone on this machine can decrypt payloads" in warning
    [call] = served
    assert call["host"] == "127.0.0.1"
    assert (await post(call["app"], "/decode")).status_code == 200  # no token to send
    assert (await post(call["app"], "/encode")).status_code == 403


async def test_allow_encode_from_the_flag_or_ferry_yaml(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]]
) -> None:
    serve(encrypted_config(monkeypatch), args(allow_encode=True))
    serve(encrypted_config(monkeypatch, {"allow_encode": True}), args())
    for call in served:
        assert (await post(call["app"], "/encode")).status_code == 200


async def test_server_with_a_token_may_bind_the_network_and_requires_it(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FERRY_TEST_CODEC_TOKEN", TOKEN)
    cfg = encrypted_config(monkeypatch, {"token": {"env": "FERRY_TEST_CODEC_TOKEN"}})
    assert serve(cfg, args("0.0.0.0")) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "env:FERRY_TEST_CODEC_TOKEN" in err and TOKEN not in err
    [call] = served
    assert call["host"] == "0.0.0.0"
    assert (await post(call["app"], "/decode")).status_code == 401
    assert (await post(call["app"], "/decode", {"Authorization": f"Bearer {TOKEN}"})).status_code == 200


def test_missing_or_empty_token_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]], tmp_path: Path
) -> None:
    monkeypatch.delenv("FERRY_TEST_CODEC_TOKEN", raising=False)
    cfg = encrypted_config(monkeypatch, {"token": {"env": "FERRY_TEST_CODEC_TOKEN"}})
    with pytest.raises(ConfigError, match="env:FERRY_TEST_CODEC_TOKEN is not set"):
        serve(cfg, args())
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(CommandError, match="is empty"):
        serve(encrypted_config(monkeypatch, {"token": {"file": str(empty)}}), args())
    assert served == []


def test_codec_server_keys_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = encrypted_config(monkeypatch)
    assert cfg.temporal.encryption.codec_server.token is None
    assert cfg.temporal.encryption.codec_server.allow_encode is False
    with pytest.raises(ConfigError, match=r"temporal\.encryption\.codec_server\.token"):
        encrypted_config(monkeypatch, {"token": "inline-secret"})
    with pytest.raises(ConfigError, match=r"temporal\.encryption\.codec_server\.tokn: unknown key"):
        encrypted_config(monkeypatch, {"tokn": {"env": "X"}})
