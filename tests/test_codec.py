"""Payload encryption: the AES-GCM codec, key rotation, the codec server, and a real workflow run encrypted.

The run goes through the time-skipping server: what the server stores must not contain the workflow's input,
the encrypted client must still read the result, and the recorded history must replay with the keys.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from fakes import Fakes, worker_plan
from google.protobuf import json_format
from sample import sample_config
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.converter import default
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from common.codec import ENCODING, KEY_ID, EncryptionCodec, PayloadDecryptionError, data_converter
from common.config import ConfigError, PayloadEncryption, TemporalSettings, parse_config
from common.temporal import connect
from starters import replay
from starters.codec_server import build_app, serve
from starters.common import CommandError
from workflows.approval_types import PLAINTEXT_MARK
from workflows.ci import CIWorkflow
from workflows.types import CIInput, CIResult

OLD, NEW = os.urandom(32), os.urandom(32)
MARKER = "release-note: Tokyo launch, do not leak"


def plain(value: object) -> Payload:
    """A payload as the SDK's default converter makes it (json/plain)."""
    return default().payload_converter.to_payloads([value])[0]


def value(payload: Payload) -> object:
    return default().payload_converter.from_payloads([payload])[0]


# --- the codec ---


async def test_round_trip_hides_data_and_metadata() -> None:
    codec = EncryptionCodec({"k1": OLD}, "k1")
    original = plain({"note": MARKER})
    [encrypted] = await codec.encode([original])

    assert dict(encrypted.metadata) == {"encoding": ENCODING, KEY_ID: b"k1"}
    wire = encrypted.SerializeToString()
    assert MARKER.encode() not in wire and b"json/plain" not in wire  # the original encoding is hidden too
    [decoded] = await codec.decode([encrypted])
    assert decoded == original and value(decoded) == {"note": MARKER}


async def test_every_payload_gets_a_fresh_nonce() -> None:
    codec = EncryptionCodec({"k1": OLD}, "k1")
    a, b = await codec.encode([plain(MARKER), plain(MARKER)])
    assert a.data[:12] != b.data[:12] and a.data != b.data
    assert [value(p) for p in await codec.decode([a, b])] == [MARKER, MARKER]


async def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    before = EncryptionCodec({"2025": OLD}, "2025")
    after = EncryptionCodec({"2025": OLD, "2026": NEW}, "2026")
    [old_payload] = await before.encode([plain("written last year")])
    [new_payload] = await after.encode([plain("written today")])

    assert new_payload.metadata[KEY_ID] == b"2026"
    assert [value(p) for p in await after.decode([old_payload, new_payload])] == ["written last year", "written today"]
    # A process that was not given the new key names the key it lacks.
    with pytest.raises(PayloadDecryptionError, match="'2026'"):
        await before.decode([new_payload])


async def test_unknown_key_id_names_the_id_never_a_key() -> None:
    [payload] = await EncryptionCodec({"gone": OLD}, "gone").encode([plain(MARKER)])
    with pytest.raises(PayloadDecryptionError) as err:
        await EncryptionCodec({"k1": NEW}, "k1").decode([payload])
    message = str(err.value)
    assert "'gone'" in message and "temporal.encryption.keys" in message
    for key in (OLD, NEW):
        assert base64.b64encode(key).decode() not in message and key.hex() not in message


async def test_tampered_ciphertext_or_swapped_key_id_fails_authentication() -> None:
    codec = EncryptionCodec({"a": OLD, "b": NEW}, "a")
    [payload] = await codec.encode([plain(MARKER)])
    tampered = Payload(metadata=dict(payload.metadata), data=payload.data[:-1] + bytes([payload.data[-1] ^ 1]))
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([tampered])
    # The key id is authenticated too: relabelling the payload with another configured key does not decrypt.
    relabelled = Payload(metadata={**payload.metadata, KEY_ID: b"b"}, data=payload.data)
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([relabelled])


async def test_plaintext_payloads_pass_through_marked_as_plaintext() -> None:
    """Old histories read as they are; the mark lets a workflow tell a decision that bypassed encryption."""
    codec = EncryptionCodec({"k1": OLD}, "k1")
    old = [plain({"written": "before encryption"}), Payload(metadata={"encoding": b"binary/null"})]
    decoded = await codec.decode(old)
    assert [(p.data, p.metadata["encoding"]) for p in decoded] == [(p.data, p.metadata["encoding"]) for p in old]
    assert all(p.metadata[PLAINTEXT_MARK] == b"1" for p in decoded)
    [encrypted] = await codec.encode([old[0]])
    assert PLAINTEXT_MARK not in (await codec.decode([encrypted]))[0].metadata


def test_keys_are_read_from_secret_references(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "old-key"
    key_file.write_text(base64.b64encode(OLD).decode() + "\n")
    monkeypatch.setenv("FERRY_TEST_PAYLOAD_KEY", base64.b64encode(NEW).decode())
    settings = PayloadEncryption(
        active_key="new", keys={"new": {"env": "FERRY_TEST_PAYLOAD_KEY"}, "old": {"file": str(key_file)}}
    )
    codec = EncryptionCodec.from_settings(settings)
    assert codec.active_key == "new" and sorted(codec.key_ids) == ["new", "old"]
    assert data_converter(settings).payload_codec is not None
    assert data_converter(PayloadEncryption()).payload_codec is None  # default: off


@pytest.mark.parametrize(
    "bad",
    [
        base64.b64encode(os.urandom(16)).decode(),  # AES-128 length
        "not base64 at all! " + base64.b64encode(os.urandom(8)).decode(),
        OLD.hex(),  # hex, not base64: decodes to 48 bytes
    ],
)
def test_bad_key_is_a_config_error_without_the_key(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("FERRY_TEST_PAYLOAD_KEY", bad)
    settings = PayloadEncryption(active_key="k1", keys={"k1": {"env": "FERRY_TEST_PAYLOAD_KEY"}})
    with pytest.raises(ConfigError) as err:
        EncryptionCodec.from_settings(settings)
    message = str(err.value)
    assert "'k1'" in message and "env:FERRY_TEST_PAYLOAD_KEY" in message
    assert bad not in message and bad[:12] not in message


def test_missing_key_and_unknown_active_key_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_TEST_PAYLOAD_KEY", raising=False)
    with pytest.raises(ConfigError, match="env:FERRY_TEST_PAYLOAD_KEY is not set"):
        EncryptionCodec.from_settings(
            PayloadEncryption(active_key="k1", keys={"k1": {"env": "FERRY_TEST_PAYLOAD_KEY"}})
        )
    data = sample_config()
    data["temporal"]["encryption"] = {"active_key": "k2", "keys": {"k1": {"env": "X"}}}
    with pytest.raises(ConfigError, match=r"temporal\.encryption: active_key 'k2' is not under keys"):
        parse_config(data)
    data["temporal"]["encryption"] = {"keys": {"k1": {"env": "X"}}}
    with pytest.raises(ConfigError, match=r"temporal\.encryption: give active_key"):
        parse_config(data)


# --- the codec server ---

UI = "http://127.0.0.1:8233"


def codec_client(codec: EncryptionCodec, *, allow_encode: bool = False) -> httpx.AsyncClient:
    app = build_app(codec, origins=[UI], namespace="default", allow_encode=allow_encode)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


def as_json(*payloads: Payload) -> dict:
    """The body the UI and CLI send: proto3 JSON of Payloads (bytes as base64)."""
    return json_format.MessageToDict(Payloads(payloads=payloads))


def from_json(body: dict) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


async def test_codec_server_encode_then_decode_round_trip() -> None:
    codec = EncryptionCodec({"k1": OLD}, "k1")
    original = plain({"note": MARKER})
    async with codec_client(codec, allow_encode=True) as http:
        encoded = await http.post("/encode", json=as_json(original), headers={"X-Namespace": "default"})
        assert encoded.status_code == 200
        [encrypted] = from_json(encoded.json())
        assert encrypted.metadata["encoding"] == ENCODING and MARKER.encode() not in encrypted.data
        # The CLI's templated endpoint (/{namespace}/decode) works the same: only the last segment counts.
        decoded = await http.post("/default/decode", json=encoded.json(), headers={"X-Namespace": "default"})
        assert decoded.status_code == 200
        assert from_json(decoded.json()) == [original]
        # Plaintext payloads (older histories) come back unchanged.
        passthrough = await http.post("/decode", json=as_json(original))
        assert from_json(passthrough.json()) == [original]


async def test_codec_server_refuses_what_it_cannot_serve() -> None:
    [foreign] = await EncryptionCodec({"other": NEW}, "other").encode([plain(MARKER)])
    async with codec_client(EncryptionCodec({"k1": OLD}, "k1")) as http:
        unknown = await http.post("/decode", json=as_json(foreign))
        assert unknown.status_code == 400 and "'other'" in unknown.text
        assert base64.b64encode(NEW).decode() not in unknown.text
        assert (await http.post("/decode", content=b"{not json")).status_code == 400
        wrong_ns = await http.post("/decode", json=as_json(plain(1)), headers={"X-Namespace": "payments"})
        assert wrong_ns.status_code == 403 and "'default'" in wrong_ns.text
        assert (await http.post("/download", json=as_json(plain(1)))).status_code == 404
        assert (await http.get("/decode")).status_code == 405


async def test_codec_server_cors_preflight_for_the_ui_origin_only() -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with codec_client(EncryptionCodec({"k1": OLD}, "k1")) as http:
        ok = await http.options("/decode", headers={"Origin": UI, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == UI
        assert "POST" in ok.headers["access-control-allow-methods"]
        allowed = ok.headers["access-control-allow-headers"].lower()
        assert "x-namespace" in allowed and "content-type" in allowed
        refused = await http.options("/decode", headers={"Origin": "http://evil.example", **preflight})
        assert "access-control-allow-origin" not in refused.headers
        # The actual request from the UI carries the CORS header too.
        post = await http.post("/decode", json=as_json(plain(1)), headers={"Origin": UI, "X-Namespace": "default"})
        assert post.headers["access-control-allow-origin"] == UI


def test_codec_server_needs_keys() -> None:
    cfg = parse_config(sample_config())
    args = argparse.Namespace(origin=None, host="127.0.0.1", port=0, allow_encode=False)
    with pytest.raises(CommandError, match="no keys"):
        serve(cfg, args)


# --- a real workflow, encrypted end to end on the time-skipping server ---


def encrypted_settings(monkeypatch: pytest.MonkeyPatch, address: str) -> TemporalSettings:
    monkeypatch.setenv("FERRY_TEST_PAYLOAD_KEY", base64.b64encode(NEW).decode())
    return TemporalSettings(
        address=address, encryption={"active_key": "k1", "keys": {"k1": {"env": "FERRY_TEST_PAYLOAD_KEY"}}}
    )


async def test_workflow_history_holds_only_ciphertext_and_replays_with_the_keys(
    time_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    settings = encrypted_settings(monkeypatch, time_env.client.service_client.config.target_host)
    client = await connect(settings)  # the connection workers and the CLI use
    assert isinstance(client.data_converter.payload_codec, EncryptionCodec)

    queue = f"onprem-{uuid.uuid4().hex[:8]}"
    cfg = sample_config()
    cfg["temporal"]["task_queues"] = {"onprem": queue, "cloud": queue}
    commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    inp = CIInput(release_id=MARKER, commit=commit, branch="main", plan=worker_plan(cfg))
    wf_id = f"ci-codec-{uuid.uuid4().hex[:8]}"
    fakes = Fakes(affected=["web"])
    async with Worker(client, task_queue=queue, workflows=[CIWorkflow], activities=fakes.onprem()):
        result = await client.execute_workflow(CIWorkflow.run, inp, id=wf_id, task_queue=queue)

    # The encrypted client reads the result (and the activities got their real input).
    assert isinstance(result, CIResult) and [a.service for a in result.artifacts] == ["web"]
    assert fakes.names("changes.analyze")[0][1].commit == commit

    # What the server stores, read with a client that has no codec: no trace of the input.
    history = await time_env.client.get_workflow_handle(wf_id).fetch_history()
    stored = History(events=history.events).SerializeToString()
    for secret in (MARKER, commit, commit[:12]):
        assert secret.encode() not in stored
        assert secret not in history.to_json()
    started = history.events[0]
    assert started.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    [stored_input] = started.workflow_execution_started_event_attributes.input.payloads
    assert stored_input.metadata["encoding"] == ENCODING and stored_input.metadata[KEY_ID] == b"k1"
    # ... while the same bytes, decrypted with the key, are the input.
    [clear] = await client.data_converter.payload_codec.decode([stored_input])
    assert json.loads(clear.data)["commit"] == commit
    # A client without the keys cannot read the result.
    with pytest.raises(KeyError, match="Unknown payload encoding binary/encrypted"):
        await time_env.client.get_workflow_handle(wf_id).result()

    # `ferry replay` replays it with the keys, and only with them.
    converter = data_converter(settings.encryption)
    assert await replay.replay_history(history, converter) is None
    assert await replay.replay_history(history) is not None

    # `ferry replay --file` takes the keys from ferry.yaml.
    saved = tmp_path / "history.json"
    saved.write_text(history.to_json())
    cfg["temporal"]["encryption"] = settings.encryption.model_dump(exclude_none=True)
    (tmp_path / "ferry.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("FERRY_CONFIG", str(tmp_path / "absent.yaml"))
    args = argparse.Namespace(file=str(saved), workflow_id=wf_id, save=None, json=False)
    assert await replay.replay(None, argparse.Namespace(**vars(args), config=tmp_path / "ferry.yaml")) == 0
    assert await replay.replay(None, argparse.Namespace(**vars(args), config=None)) == 1
