"""Supply-chain activities against real things: the Harbor stand-in's Trivy findings, the cosign CLI of the
sandbox (real ECDSA keys; cosign itself is not installable here), and the webhook receiver."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities import http
from activities.harbor import HarborClient
from activities.notify import NotifyActivities
from activities.supply_chain import CosignActivities, PolicyActivities
from common.config import CredentialRef, HarborEndpoint
from sandbox.receiver import build_receiver
from sandbox.standins import World, build_apps
from workflows.types import AllowedCveSpec, ArtifactRef, Notification, PolicyCheckInput, SignInput

ROOT = Path(__file__).parent.parent
COSIGN = ROOT / "sandbox" / "bin" / "cosign"
DIGEST = "sha256:" + "c" * 64


@pytest.fixture
def harbor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(http, "READ_BACKOFF_SECONDS", 0.0)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("vulnerabilities:\n  api: {High: [CVE-2026-1000], Medium: 2}\n")
    world = World(scenario, speed=0.001)
    world.harbor["cloud"].push("ferry", "api", "v1", DIGEST)
    world.harbor["cloud"].start_scan(world.harbor["cloud"].find("ferry", "api", DIGEST))
    client = HarborClient(
        HarborEndpoint(url="http://harbor-cloud"),
        httpx.ASGITransport(app=build_apps(world)["harbor-cloud"]),
        instance="cloud",
    )
    return PolicyActivities({"cloud": client}, poll_seconds=0.01)


def check(severity: str, allow: list[AllowedCveSpec] | None = None, today: str = "2026-11-27") -> PolicyCheckInput:
    return PolicyCheckInput(
        artifact=ArtifactRef("cloud", "ferry", "api", DIGEST),
        environment="production" if severity == "High" else "testbed",
        block_severity=severity,
        allow_cves=allow or [],
        today=today,
    )


async def wait_scanned(acts: PolicyActivities) -> None:
    import asyncio

    for _ in range(100):
        try:
            await acts.check_image(check("Critical"))
            return
        except ApplicationError as e:
            if e.non_retryable:
                raise
            await asyncio.sleep(0.01)


async def test_high_cve_passes_a_critical_threshold_and_blocks_a_high_one(harbor: PolicyActivities) -> None:
    await wait_scanned(harbor)
    assert (await harbor.check_image(check("Critical"))).blocking == []
    with pytest.raises(ApplicationError) as err:
        await harbor.check_image(check("High"))
    message = str(err.value)
    assert err.value.type == "SupplyChainPolicyViolation" and err.value.non_retryable
    assert f"ferry/api@{DIGEST}" in message and "'High or worse blocks'" in message and "CVE-2026-1000" in message
    assert "CVE-2000-4" not in message  # the Medium findings are below the threshold


async def test_allow_listed_cve_passes_until_its_expiry_date(harbor: PolicyActivities) -> None:
    await wait_scanned(harbor)
    allow = [AllowedCveSpec(id="CVE-2026-1000", expires="2026-12-31", reason="unreachable code")]
    passed = await harbor.check_image(check("High", allow, today="2026-12-31"))
    assert passed.allowed == ["CVE-2026-1000 (High, allowed until 2026-12-31)"]
    with pytest.raises(ApplicationError) as err:
        await harbor.check_image(check("High", allow, today="2027-01-01"))
    assert "allow-list entry expired 2026-12-31" in str(err.value)


@pytest.fixture
def cosign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CosignActivities:
    monkeypatch.setenv("FERRY_COSIGN_STORE", str(tmp_path / "signatures"))
    monkeypatch.setenv("FERRY_TEST_COSIGN_PASSWORD", "pw-5c1e")
    env = {**os.environ, "COSIGN_PASSWORD": "pw-5c1e"}
    subprocess.run(
        [str(COSIGN), "generate-key-pair", "--output-key-prefix", str(tmp_path / "cosign")], check=True, env=env
    )
    return CosignActivities(
        str(COSIGN),
        key=CredentialRef(file=str(tmp_path / "cosign.key")),
        password=CredentialRef(env="FERRY_TEST_COSIGN_PASSWORD"),
        public_key=CredentialRef(file=str(tmp_path / "cosign.pub")),
    )


async def test_unsigned_image_is_refused_signed_image_passes(cosign: CosignActivities) -> None:
    image = SignInput(image="harbor.cloud/ferry/api", digest=DIGEST, instance="cloud")
    with pytest.raises(ApplicationError) as err:
        await cosign.verify(image)
    assert err.value.type == "SignatureMissing" and err.value.non_retryable
    assert "no signature (cosign verify exit 10)" in str(err.value) and DIGEST in str(err.value)
    signed = await cosign.sign(SignInput(image="harbor.onprem/ferry/api", digest=DIGEST))
    again = await cosign.sign(SignInput(image="harbor.onprem/ferry/api", digest=DIGEST))
    assert (signed.detail, again.detail) == ("signed", "already signed")
    assert (await cosign.verify(image)).verified


async def test_a_signature_from_another_key_does_not_match(cosign: CosignActivities, tmp_path: Path) -> None:
    await cosign.sign(SignInput(image="harbor.onprem/ferry/api", digest=DIGEST))
    other = tmp_path / "other"
    subprocess.run(
        [str(COSIGN), "generate-key-pair", "--output-key-prefix", str(other)],
        check=True,
        env={**os.environ, "COSIGN_PASSWORD": "x"},
    )
    cosign.public_key = CredentialRef(file=f"{other}.pub")
    with pytest.raises(ApplicationError) as err:
        await cosign.verify(SignInput(image="harbor.cloud/ferry/api", digest=DIGEST))
    assert "no matching signature (cosign verify exit 12)" in str(err.value)


async def test_webhook_delivers_once_and_never_shows_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://hooks.test/hooks/T0KEN-very-secret"
    monkeypatch.setenv("FERRY_TEST_HOOK", url)
    receiver = build_receiver()
    acts = NotifyActivities(CredentialRef(env="FERRY_TEST_HOOK"), httpx.ASGITransport(app=receiver))
    note = Notification(key="release/shop/x/run/1", event="gate_waiting", release_id="shop-x", text="waiting")
    assert await acts.webhook(note) == "200"
    assert await acts.webhook(note) == "200"  # a redelivery: the receiver keeps it once
    assert [m["text"] for m in receiver.state.messages] == ["waiting"]
    assert receiver.state.messages[0]["blocks"][0]["text"]["text"] == "waiting"

    def failing(status: int) -> NotifyActivities:
        return NotifyActivities(
            CredentialRef(env="FERRY_TEST_HOOK"), httpx.MockTransport(lambda r: httpx.Response(status))
        )

    for status, retry in ((503, True), (404, False)):
        with pytest.raises(ApplicationError) as err:
            await failing(status).webhook(note)
        assert err.value.non_retryable is not retry
        assert "T0KEN" not in str(err.value) and "env:FERRY_TEST_HOOK" in str(err.value)
