"""What decrypting costs is bounded by the input, not by the size class a header claims
(issue 11, item 13): TSRG decryption, the offline arbiter and the TTP's /dispute."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ALICE, BOB, DEADLINES, T0, TRUST, TTP, stamp
from mailstack import PATIENCE
from services import Services, prepare_keys

from tcms import evidence
from tcms.crypto import h
from tcms.protocol import checks
from tcms.protocol.messages import Description
from tcms.timestamp import make_request, token_from_reply
from tsrg import TsrgCipher, TsrgError, TsrgSession
from tsrg.cipher import MAX_CLASS_EXP, MIN_FRAME, TAG_LEN, class_index, class_length
from ttp import filing

ISSUE_BLOB = b"TSR2\x01\x00\x28\x7f" + bytes(288)  # claims a class of 2 TiB in 296 bytes
CHEAP = 1 << 20  # bytes of Python allocations a rejection may cost at most


def peak_allocated(fn: Callable[[], Any]) -> tuple[int, BaseException | None]:
    """The peak of Python allocations while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as exc:  # returned, to be asserted on
        raised = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


def test_the_issue_blob_is_rejected_before_planning() -> None:
    assert class_length(0x287F) > 1 << 40
    peak, raised = peak_allocated(lambda: TsrgCipher().decrypt(bytes(32), ISSUE_BLOB, b""))
    assert isinstance(raised, TsrgError), raised
    assert "does not match its size class" in str(raised)
    assert peak < CHEAP, peak  # was up to 520 MiB (the plan of a 2 TiB frame)


def every_class() -> Iterator[int]:
    """Every canonical size class, smallest first."""
    cls = class_index(MIN_FRAME)
    while cls >> 8 <= MAX_CLASS_EXP:
        yield cls
        cls = class_index(class_length(cls) + 1)


def test_no_class_claim_costs_more_than_the_input() -> None:
    classes = list(every_class())
    assert len(classes) > 300 and classes[-1] >> 8 == MAX_CLASS_EXP

    def claim_all() -> None:
        for cls in classes:
            body = bytes(class_length(cls) + TAG_LEN) if cls >> 8 < 14 else bytes(300)
            for cut in (1, 0):  # one byte short of the smallest valid length, then exact
                blob = b"TSR2\x01\x00" + struct.pack(">H", cls) + bytes(16) + body[cut:]
                try:
                    TsrgCipher().decrypt(bytes(32), blob, b"")
                except TsrgError:
                    continue
                raise AssertionError(f"class {cls:#x} opened a forged blob")

    peak, raised = peak_allocated(claim_all)
    assert raised is None, raised
    assert peak < CHEAP + (1 << 14), peak  # the largest body here is 8 KiB + 16


def test_session_record_claiming_a_huge_class_is_cheap() -> None:
    record = b"TSI2" + struct.pack(">HQ", 0x287F, 0) + bytes(288)
    session = TsrgSession(bytes(32), initiator=False)
    peak, raised = peak_allocated(lambda: session.open(record))
    assert isinstance(raised, TsrgError) and peak < CHEAP, (raised, peak)


@pytest.mark.parametrize("size", [0, 300_000, 5 << 20])  # one, two, three or more segments
def test_valid_blobs_still_open(size: int) -> None:
    payload = os.urandom(size)
    key = os.urandom(32)
    cipher = TsrgCipher()
    assert cipher.decrypt(key, cipher.encrypt(key, payload, b"aad"), b"aad") == payload
    a, b = TsrgSession(key, initiator=True), TsrgSession(key, initiator=False)
    assert b.open(a.seal(payload)) == payload


def bundle_sealing(c: bytes) -> dict[str, Any]:
    """A sender's bundle for an exchange whose core commits to ``c`` (any bytes: what a
    cheating S can make), with both key shares: the arbiter must try to decrypt it."""
    sealed = checks.seal(ALICE, BOB.party, TTP.party, "tss", b"m0",
                         Description("x", 2, "<x@a.test>"), DEADLINES)
    core = dataclasses.replace(sealed.core, h_c=h(c))
    token = token_from_reply(stamp(make_request(core.cid)[0], T0, kind="tsq"))
    items = {"core": core.encoded, "token": token, "eoo": checks.sign_eoo(ALICE, core, token),
             "k_r": sealed.k_r, "k_t": sealed.k_t, "c": c}
    bundle: dict[str, Any] = {"format": evidence.FORMAT, "holder": "sender"}
    bundle.update({k: None for k in evidence.ITEMS})
    bundle.update({k: base64.b64encode(v).decode() for k, v in items.items()})
    return bundle


def test_the_arbiter_rejects_it_cheaply() -> None:
    bundle = bundle_sealing(ISSUE_BLOB)
    assert len(evidence.dumps(bundle)) < 3000

    def run() -> None:
        evidence.verify(bundle, TRUST)

    peak, raised = peak_allocated(run)
    assert isinstance(raised, evidence.EvidenceInvalid) and raised.check == "c.decrypt", raised
    assert peak < CHEAP, peak


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM:")))


def test_dispute_with_it_costs_the_ttp_nothing(tmp_path: Path) -> None:
    """Issue: a 2.7 KB bundle sent to /dispute cost the TTP 7.3 s and 518 MiB."""
    prepare_keys(tmp_path / "keys")
    svc = Services(tmp_path, f"sqlite:///{tmp_path / 'tcms.db'}", which="ttp").start()
    try:
        assert svc.proc is not None
        def dispute(c: bytes) -> httpx.Response:
            bundle = bundle_sealing(c)
            body = json.dumps(bundle).encode()
            filed = filing.filing_headers(ALICE, filing.core_of(bundle).cid, body,
                                          int(time.time()))  # the sender files it
            return httpx.post(svc.ttp + "/dispute", content=body, timeout=PATIENCE,
                              headers={"Content-Type": "application/json", **filed})

        warm = dispute(b"TSR2")  # the same path up to the cipher: imports, connection
        assert warm.json()["check"] == "c.decrypt", warm.text
        before = peak_rss_kib(svc.proc.pid)
        r = dispute(ISSUE_BLOB)
        grown = peak_rss_kib(svc.proc.pid) - before
        assert r.status_code == 200, r.text
        verdict = r.json()
        assert verdict["valid"] is False and verdict["check"] == "c.decrypt", verdict
        assert grown < 16 * 1024, f"the TTP's peak memory grew by {grown} KiB"
    finally:
        svc.stop()
