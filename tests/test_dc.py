"""The Distribution Center as a real service: registration, publication, rotation,
revocation, and everything it must refuse."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from conftest import ALICE, BOB, CAROL, TRUST, start_run
from fakehttp import serve
from mailstack import PATIENCE
from services import DC, PASSPHRASE, Services, prepare_keys

from dc.client import DirectoryClient
from dc.records import (
    ACTIVE,
    REVOKED,
    SUPERSEDED,
    DirectoryError,
    KeyRecord,
    Publish,
    Revoke,
    usable,
    verify_record,
)
from tcms.identity import Identity, Party
from tcms.keystore import Keystore
from tcms.protocol.receiver import Receiver

GW_A = Identity.from_seed("gateway@a.test", b"gwa" * 10 + b"xx", kind="gateway")
GW_B = Identity.from_seed("gateway@b.test", b"gwb" * 10 + b"xx", kind="gateway")


def register(svc: Services, *gateways: tuple[str, Identity]) -> None:
    """`tcms dc register DOMAIN KEYFILE` for each (domain, gateway), side by side."""
    procs = []
    for domain, gateway in gateways:
        keyfile = svc.workdir / f"{gateway.name}.json"
        keyfile.write_text(json.dumps(gateway.party.to_json()))
        procs.append(subprocess.Popen([sys.executable, "-m", "tcms.cli", "dc", "register",
                                       domain, str(keyfile)], env=svc.env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=PATIENCE)
        assert proc.returncode == 0, err


@pytest.fixture
def dc_service(tmp_path: Path) -> Iterator[Services]:
    prepare_keys(tmp_path / "keys")
    svc = Services(tmp_path, f"sqlite:///{tmp_path / 'dc.db'}", which="dc").start()
    register(svc, ("a.test", GW_A), ("b.test", GW_B))
    yield svc
    svc.stop()


@pytest.fixture
async def client(dc_service: Services) -> AsyncIterator[DirectoryClient]:
    c = DirectoryClient(dc_service.dc, DC.party)
    yield c
    await c.aclose()


async def test_publish_rotate_lookup_and_restart(dc_service: Services,
                                                 client: DirectoryClient) -> None:
    assert await client.publish(GW_A, ALICE.party) == 1
    rec = await client.lookup("Alice@A.test")
    assert rec.party == ALICE.party and rec.status == ACTIVE and usable(rec, int(time.time()))
    new_alice = Identity.generate("alice@a.test")
    assert await client.publish(GW_A, new_alice.party) == 2  # rotation
    assert (await client.lookup("alice@a.test")).party == new_alice.party
    old = await client.lookup("alice@a.test", ALICE.party.fingerprint)
    assert old.status == SUPERSEDED and not usable(old, int(time.time()))
    dc_service.stop()
    dc_service.start()
    assert (await client.lookup("alice@a.test")).party == new_alice.party
    with pytest.raises(DirectoryError, match="unknown"):
        await client.lookup("nobody@a.test")


async def test_a_revoked_key_is_refused_by_the_protocol(client: DirectoryClient) -> None:
    await client.publish(GW_A, ALICE.party)
    run = start_run()  # alice -> bob
    sender = await client.usable_party("alice@a.test")
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, 1_800_000_001, lambda n: sender)
    assert r.phase == "pending"
    await client.revoke(GW_A, "alice@a.test", ALICE.party.fingerprint, "laptop stolen")
    rec = await client.lookup("alice@a.test")
    assert rec.status == REVOKED
    sender = await client.usable_party("alice@a.test")
    assert sender is None
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, 1_800_000_001, lambda n: sender)
    assert r.phase == "rejected" and "hdr.sender" in r.state.reason


async def test_only_the_domains_gateway_may_publish_or_revoke(dc_service: Services,
                                                             client: DirectoryClient) -> None:
    with pytest.raises(DirectoryError) as e:
        await client.publish(GW_A, BOB.party)  # bob@b.test belongs to gateway B
    assert e.value.check == "gateway.sig"
    now = int(time.time())
    # gateway A signs, for its own domain, a request about an address outside it
    outside = Publish("a.test", BOB.party, now, now + 86400, now).signed_by(GW_A)
    r = httpx.post(dc_service.dc + "/keys", content=outside.encode(),
                   headers={"Content-Type": "application/cbor"})
    assert r.status_code == 403 and r.json()["error"] == "domain"
    with pytest.raises(DirectoryError) as e:
        await client.publish(GW_B, Identity.generate("eve@c.test").party)
    assert e.value.check == "gateway"
    await client.publish(GW_B, BOB.party)
    with pytest.raises(DirectoryError) as e:
        await client.revoke(GW_A, "bob@b.test", BOB.party.fingerprint, "hostile")
    assert e.value.check == "gateway.sig"
    # a request for b.test signed with gateway A's key
    forged = Publish("b.test", CAROL.party, now, now + 86400, now).signed_by(GW_A)
    r = httpx.post(dc_service.dc + "/keys", content=forged.encode(),
                   headers={"Content-Type": "application/cbor"})
    assert r.status_code == 403 and r.json()["error"] == "gateway.sig"
    assert (await client.lookup("bob@b.test")).status == ACTIVE


async def test_stale_and_replayed_requests_are_refused(dc_service: Services) -> None:
    now = int(time.time())
    headers = {"Content-Type": "application/cbor"}
    stale = Publish("a.test", ALICE.party, now, now + 86400, now - 3600).signed_by(GW_A)
    r = httpx.post(dc_service.dc + "/keys", content=stale.encode(), headers=headers)
    assert r.status_code == 400 and r.json()["error"] == "request.time"
    fresh = Publish("a.test", ALICE.party, now, now + 86400, now).signed_by(GW_A).encode()
    assert httpx.post(dc_service.dc + "/keys", content=fresh, headers=headers).status_code == 200
    r = httpx.post(dc_service.dc + "/keys", content=fresh, headers=headers)
    assert r.status_code == 400 and r.json()["error"] == "request.replay"
    for bad in (b"", b"\x00", b"\x83\x01\x02\x03"):
        r = httpx.post(dc_service.dc + "/keys", content=bad, headers=headers)
        assert r.status_code == 400
    assert httpx.get(dc_service.dc + "/keys/not-an-address").status_code == 400


async def test_forged_or_stale_answers_are_refused_by_the_client(
        dc_service: Services, client: DirectoryClient) -> None:
    await client.publish(GW_A, ALICE.party)
    raw = httpx.get(dc_service.dc + "/keys/alice@a.test").content
    rec = KeyRecord.decode(raw)
    now = int(time.time())
    swapped = replace(rec, party=Party("alice@a.test", CAROL.party.sig_pk,
                                       CAROL.party.enc_pk)).encode()
    with pytest.raises(DirectoryError, match=r"dc\.sig"):
        verify_record(swapped, DC.party.sig_pk, "alice@a.test", now)
    with pytest.raises(DirectoryError, match=r"dc\.expired"):
        verify_record(raw, DC.party.sig_pk, "alice@a.test", now + 2 * 3600)
    with pytest.raises(DirectoryError, match=r"dc\.address"):
        verify_record(raw, DC.party.sig_pk, "bob@b.test", now)
    assert verify_record(raw, DC.party.sig_pk, "alice@a.test", now).party == ALICE.party
    human = httpx.get(dc_service.dc + "/keys/alice@a.test?format=json").json()
    assert human["fingerprint"] == ALICE.party.fingerprint and human["status"] == "active"


def test_dc_cli_publish_and_lookup(dc_service: Services) -> None:
    keys = Keystore(dc_service.workdir / "keys", PASSPHRASE.encode())
    keys.save(GW_A)
    keys.save(ALICE)
    env = dc_service.env()

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tcms.cli", "dc", *a], env=env,
                              capture_output=True, text=True, timeout=PATIENCE)

    res = run("publish", "alice@a.test", "--gateway", "gateway@a.test")
    assert res.returncode == 0 and "version 1" in res.stdout, res.stderr
    res = run("lookup", "alice@a.test")
    assert res.returncode == 0 and json.loads(res.stdout)["status"] == "active"
    res = run("revoke", "alice@a.test", ALICE.party.fingerprint, "--gateway", "gateway@a.test")
    assert res.returncode == 0, res.stderr
    res = run("lookup", "alice@a.test")
    assert res.returncode == 1 and json.loads(res.stdout)["status"] == "revoked"
    res = run("publish", "bob@b.test", "--gateway", "gateway@a.test")
    assert res.returncode != 0


# --- issue 11, item 10: malformed input on both sides -------------------------------------


async def test_a_signed_revoke_naming_an_impossible_address_is_refused(
        dc_service: Services, client: DirectoryClient) -> None:
    """A DC-REVOKE from the domain's gateway naming ``a b@a.test`` gave a 500."""
    now = int(time.time())
    headers = {"Content-Type": "application/cbor"}
    for address in ("a b@a.test", "a\tb@a.test", "@a.test"):
        req = Revoke("a.test", address, ALICE.party.fingerprint, "test", now).signed_by(GW_A)
        r = httpx.post(dc_service.dc + "/revoke", content=req.encode(), headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "address", (address, r.text)
    # a key published under a name no lookup can find (upper case, spaces) is refused too
    for name in ("Alice@a.test", "al ice@a.test"):
        party = Party(name, ALICE.party.sig_pk, ALICE.party.enc_pk)
        req_p = Publish("a.test", party, now, now + 86400, now).signed_by(GW_A)
        r = httpx.post(dc_service.dc + "/keys", content=req_p.encode(), headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "address", (name, r.text)
    with pytest.raises(DirectoryError) as e:
        await client.revoke(GW_A, "a b@a.test", ALICE.party.fingerprint, "test")
    assert e.value.check == "address"
    assert httpx.get(dc_service.dc + "/health").status_code == 200


JSON = "application/json"
MALFORMED_ANSWERS: dict[str, tuple[int, str, bytes]] = {
    "not-json": (200, JSON, b"{not json"),  # JSONDecodeError
    "json-list": (200, JSON, b"[]"),  # TypeError
    "no-version": (200, JSON, b"{}"),  # KeyError
    "text-version": (200, JSON, b'{"version": "x"}'),  # ValueError
    "deep": (200, JSON, b"[" * 100_000),  # RecursionError
    "refusal-list": (400, JSON, b"[]"),  # AttributeError
    "refusal-not-json": (403, JSON, b"{"),  # JSONDecodeError
    "refusal-deep": (403, JSON, b'{"error":' + b"[" * 100_000),  # RecursionError
    "huge": (200, JSON, b'{"version": 1, "x": "' + b"x" * 200_000 + b'"}'),
}


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
async def test_malformed_dc_answers_are_directory_errors(
        answer: tuple[int, str, bytes]) -> None:
    """The DC client raised JSONDecodeError, KeyError, TypeError, AttributeError or
    RecursionError on malformed answers; now each is a DirectoryError naming it."""
    with serve(lambda *_: answer) as dc:
        client = DirectoryClient(dc.url, DC.party)
        try:
            with pytest.raises(DirectoryError) as e:
                await client.publish(GW_A, ALICE.party)
            assert e.value.check in ("dc.answer", "dc"), e.value
            with pytest.raises(DirectoryError) as e:
                await client.revoke(GW_A, "alice@a.test", ALICE.party.fingerprint, "x")
            with pytest.raises(DirectoryError) as e:
                await client.lookup("alice@a.test")
            assert e.value.check in ("dc.answer", "dc"), e.value
            assert await client.usable_party("alice@a.test") is None
        finally:
            await client.aclose()
        assert len(dc.requests) == 4


@pytest.mark.parametrize("record", [b"", b"\x00", b"\x9f" * 1000, b"\x81" * 100_000 + b"\x00",
                                    b"\x89" + b"\x00" * 9, b"x" * 100_000],
                         ids=["empty", "zero", "indefinite", "deep", "nine-zeros", "huge"])
async def test_malformed_key_records_are_directory_errors(record: bytes) -> None:
    with serve(lambda *_: (200, "application/cbor", record)) as dc:
        client = DirectoryClient(dc.url, DC.party)
        try:
            with pytest.raises(DirectoryError) as e:
                await client.lookup("alice@a.test")
            assert e.value.check == "dc.answer", e.value
            assert await client.usable_party("alice@a.test") is None
        finally:
            await client.aclose()
