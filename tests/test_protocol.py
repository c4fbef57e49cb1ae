"""The role machines on every path, and every way to cheat we know of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from conftest import (
    ALICE,
    BOB,
    CAROL,
    DEADLINES,
    MALLORY_TTP,
    T0,
    TRUST,
    TTP,
    Run,
    delivered,
    known,
    one,
    receive,
    stamp,
    start_run,
)

from tcms import codec
from tcms.crypto import h, sign, wrap
from tcms.protocol import checks
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.events import (
    Accept,
    Action,
    Ignored,
    Notify,
    Received,
    Refuse,
    Tick,
    TimestampFailed,
    TimestampReply,
)
from tcms.protocol.machine import PayloadMissing
from tcms.protocol.messages import (
    M3,
    M5,
    Core,
    Description,
    MessageError,
    parse_plaintext,
    plaintext,
)
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.protocol.ttpmessages import AbortRequest, BadEscrow, Resolved, decode_ttp_answer
from tcms.timestamp import make_request

M0 = b"From: alice@a.test\r\nSubject: test\r\n\r\nhello \xe2\x9c\x93\r\n"


def accepted(run: Run, at: int = T0 + 10) -> bytes:
    r, acts = Receiver.from_m3(BOB, TRUST, run.m3, at, known)
    assert isinstance(acts[0], Notify) and acts[0].kind == "notice"
    run.receiver = r
    return one(r.handle(Accept(), at), "m4")


def ignored(actions: Sequence[Action]) -> str:
    assert len(actions) == 1 and isinstance(actions[0], Ignored), actions
    return actions[0].reason


# --- the optimistic path and each recovery path ----------------------------------------


def test_normal_exchange_m1_to_m6() -> None:
    run = start_run(M0)
    assert run.sender.phase == "await-m4"
    m4 = accepted(run)
    m5 = one(receive(run.sender, m4, T0 + 11), "m5")
    acts = receive(run.receiver, m5, T0 + 12)
    assert delivered(acts) == [M0]
    m6 = one(acts, "m6")
    acts = receive(run.sender, m6, T0 + 13)
    assert run.sender.phase == "done" and run.sender.has_receipt
    tsq = one(acts, "receipt-stamp")
    run.sender.handle(TimestampReply(stamp(tsq, T0 + 13, kind="tsq")), T0 + 13)
    assert run.sender.state.receipt_token is not None
    assert run.receiver.phase == "done" and run.receiver.m0() == M0


def test_refusal_aborts_at_the_ttp() -> None:
    run = start_run(M0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 5, known)
    refusal = one(r.handle(Refuse(), T0 + 5), "refusal")
    assert r.phase == "refused"
    abort = one(receive(run.sender, refusal, T0 + 6), "abort")
    receive(run.sender, run.to_ttp(abort, T0 + 6), T0 + 6)
    assert run.sender.phase == "aborted" and not run.sender.has_receipt
    assert run.ttp_decision is not None and run.ttp_decision.state == "aborted"


def test_r1s_recipient_never_answers() -> None:
    run = start_run(M0)
    assert run.sender.handle(Tick(), DEADLINES.accept_by) == []  # not yet
    abort = one(run.sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    receive(run.sender, run.to_ttp(abort, DEADLINES.accept_by + 1), DEADLINES.accept_by + 1)
    assert run.sender.phase == "aborted"
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, known)
    r.handle(Tick(), DEADLINES.accept_by + 1)
    assert r.phase == "expired"


def test_r1r_sender_stalls_after_m4() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    one(receive(run.sender, m4, T0 + 11), "m5")  # m5 is lost
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    answer = run.to_ttp(req, DEADLINES.m5_by + 1)
    assert delivered(receive(run.receiver, answer, DEADLINES.m5_by + 1)) == [M0]
    # S never got m6; R2S returns the same resolution: an affidavit "delivered"
    req = one(run.sender.handle(Tick(), DEADLINES.m6_by + 1), "resolve")
    answer2 = run.to_ttp(req, DEADLINES.m6_by + 1)
    assert answer2 == answer  # idempotent: the stored signed answer, byte for byte
    receive(run.sender, answer2, DEADLINES.m6_by + 1)
    assert run.sender.phase == "done" and run.sender.has_receipt
    res = decode_ttp_answer(answer)
    assert isinstance(res, Resolved) and res.kind == "delivered"


def test_r2s_recipient_stalls_after_m5() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    m5 = one(receive(run.sender, m4, T0 + 11), "m5")
    assert delivered(receive(run.receiver, m5, T0 + 12)) == [M0]  # m6 never sent back
    req = one(run.sender.handle(Tick(), DEADLINES.m6_by + 1), "resolve")
    receive(run.sender, run.to_ttp(req, DEADLINES.m6_by + 1), DEADLINES.m6_by + 1)
    assert run.sender.phase == "done" and run.sender.has_receipt
    res = decode_ttp_answer(run.sender.state.ttp_answer or b"")
    assert isinstance(res, Resolved) and res.kind == "made-available"


def test_abort_after_resolution_returns_the_resolution() -> None:
    run = start_run(M0)
    accepted(run)  # m4 lost on the way to S
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    receive(run.receiver, run.to_ttp(req, DEADLINES.m5_by + 1), DEADLINES.m5_by + 1)
    abort = one(run.sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    receive(run.sender, run.to_ttp(abort, DEADLINES.m5_by + 2), DEADLINES.m5_by + 2)
    assert run.sender.phase == "done" and run.sender.has_receipt
    assert run.sender.state.m4 is not None  # m4 came with the TTP's answer


def test_resolve_after_abort_gets_the_abort_token() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    abort = one(run.sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    receive(run.sender, run.to_ttp(abort, DEADLINES.accept_by + 1), DEADLINES.accept_by + 1)
    assert "m4 in phase aborted" in ignored(receive(run.sender, m4, DEADLINES.accept_by + 2))
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    receive(run.receiver, run.to_ttp(req, DEADLINES.m5_by + 1), DEADLINES.m5_by + 1)
    assert run.receiver.phase == "aborted" and not run.receiver.has_message


def test_late_m4_after_accept_deadline_aborts_instead_of_m5() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    acts = receive(run.sender, m4, DEADLINES.accept_by + 5)
    assert [a.kind for a in acts if hasattr(a, "kind")] == ["abort"]


def test_r1r_after_resolve_deadline_is_rejected_but_r2s_still_works() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    m5 = one(receive(run.sender, m4, T0 + 11), "m5")
    late = DEADLINES.resolve_by + 1
    req = one(run.receiver.handle(Tick(), late), "resolve")
    receive(run.receiver, run.to_ttp(req, late), late)
    assert run.receiver.phase == "failed" and "deadline" in run.receiver.state.reason
    assert run.ttp_decision is None  # a rejection changes no state
    receive(run.receiver, m5, late)  # R's machine is terminal: it does not take m5 now
    req = one(run.sender.handle(Tick(), late), "resolve")
    receive(run.sender, run.to_ttp(req, late), late)
    assert run.sender.phase == "done"


def test_timestamp_failure_sends_nothing() -> None:
    s, _ = Sender.start(ALICE, TRUST, BOB.party, M0, Description("t", 1, "<x>"), DEADLINES)
    acts = s.handle(TimestampFailed("connection refused"), T0)
    assert s.phase == "failed" and all(isinstance(a, Notify) for a in acts)


def test_state_survives_dump_and_load() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    s2 = Sender.load(ALICE, TRUST, run.sender.dump())
    m5 = one(receive(s2, m4, T0 + 11), "m5")
    r2 = Receiver.load(BOB, TRUST, run.receiver.dump())
    assert delivered(receive(r2, m5, T0 + 12)) == [M0]


def test_the_state_kept_apart_from_c_behaves_as_the_whole() -> None:
    """A store keeps c (the payload) apart: ``stored`` leaves it out, ``load`` takes it
    back; with it, the machine acts as one loaded from ``dump``."""
    s, acts = Sender.start(ALICE, TRUST, BOB.party, M0, Description("t", len(M0), "<x>"),
                           DEADLINES)
    c = s.payload
    assert len(c) > len(M0) and c not in s.stored() and c in s.dump()
    assert not Sender.needs_payload("stamping") and not Sender.needs_payload("await-m4")
    # loaded without c, S sends m3 with c left out: the mailer puts the run's c back
    bare = Sender.load(ALICE, TRUST, s.stored())
    m3_bare = M3.decode(one(bare.handle(TimestampReply(stamp(one(acts, "m1"), T0)), T0),
                            "m3"))
    assert m3_bare.c == b"" and bare.payload == b""
    m3 = replace(m3_bare, c=c).encode()
    r, _ = Receiver.from_m3(BOB, TRUST, m3, T0 + 1, lambda n: ALICE.party)
    assert r.phase == "pending" and r.payload == c and c not in r.stored()
    # the receiver's steps before m5 need no c; m5 does
    assert not Receiver.needs_payload("pending") and Receiver.needs_payload("await-m5")
    r = Receiver.load(BOB, TRUST, r.stored())
    m4 = one(r.handle(Accept(), T0 + 2), "m4")
    m5 = one(receive(Sender.load(ALICE, TRUST, bare.stored()), m4, T0 + 3), "m5")
    waiting = r.stored()
    with pytest.raises(PayloadMissing):  # never a verdict on c: the caller forgot it
        receive(Receiver.load(BOB, TRUST, waiting), m5, T0 + 4)
    # an m3 without c is never taken: c is what the exchange is about
    bare_r, acts = Receiver.from_m3(BOB, TRUST, m3_bare.encode(), T0 + 1, lambda n: ALICE.party)
    assert bare_r.phase == "rejected" and "m3.c" in ignored(acts)
    r = Receiver.load(BOB, TRUST, waiting, c)
    assert delivered(receive(r, m5, T0 + 4)) == [M0] and r.phase == "done"
    assert Receiver.load(BOB, TRUST, r.stored(), c).m0() == M0


# --- duplicates, replays, swaps -----------------------------------------------------------


def test_duplicates_are_ignored() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    m5 = one(receive(run.sender, m4, T0 + 11), "m5")
    assert "m4 in phase await-m6" in ignored(receive(run.sender, m4, T0 + 11))
    m6 = one(receive(run.receiver, m5, T0 + 12), "m6")
    assert "m5 in phase done" in ignored(receive(run.receiver, m5, T0 + 12))
    assert "duplicate m3" in ignored(receive(run.receiver, run.m3, T0 + 12))
    receive(run.sender, m6, T0 + 13)
    assert "m6 in phase done" in ignored(receive(run.sender, m6, T0 + 13))


def test_m4_and_m6_replayed_across_transactions_are_rejected() -> None:
    a, b = start_run(M0), start_run(M0)
    m4_a = accepted(a)
    assert "m4.cid" in ignored(receive(b.sender, m4_a, T0 + 11))
    m5_a = one(receive(a.sender, m4_a, T0 + 11), "m5")
    waiting_a = a.receiver.dump()  # R of run a, still waiting for m5
    m6_a = one(receive(a.receiver, m5_a, T0 + 12), "m6")
    m4_b = accepted(b)
    m5_b = one(receive(b.sender, m4_b, T0 + 11), "m5")
    assert "m6.cid" in ignored(receive(b.sender, m6_a, T0 + 13))
    assert "m5.cid" in ignored(receive(Receiver.load(BOB, TRUST, waiting_a), m5_b, T0 + 13))
    # even with the cid field rewritten, the signature binds the exchange
    forged = codec.encode(["TCMS1/M6", b.sender.cid, codec.decode(m6_a)[2]])  # type: ignore[index]
    assert "m6.sig" in ignored(receive(b.sender, forged, T0 + 13))


def test_m3_for_another_recipient_is_rejected() -> None:
    run = start_run(M0)  # addressed to bob
    r, _ = Receiver.from_m3(CAROL, TRUST, run.m3, T0 + 1, known)
    assert r.phase == "rejected" and "hdr.recipient" in r.state.reason


def test_swapping_sender_and_recipient_breaks_every_signature() -> None:
    run = start_run(M0)
    m3 = M3.decode(run.m3)
    hdr = m3.core.header
    swapped = replace(m3.core, header=replace(hdr, sender=hdr.recipient, recipient=hdr.sender))
    forged = replace(m3, core=swapped).encode()
    known_all = {ALICE.name: ALICE.party, BOB.name: BOB.party}.get
    r, _ = Receiver.from_m3(ALICE, TRUST, forged, T0 + 1, known_all)
    assert r.phase == "rejected" and r.state.reason.startswith("m2.token")


def test_sender_with_unpublished_keys_is_rejected() -> None:
    run = start_run(M0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, lambda n: CAROL.party)
    assert r.phase == "rejected" and "hdr.sender" in r.state.reason
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, lambda n: None)
    assert "unknown sender" in r.state.reason


def test_exchange_naming_another_ttp_is_rejected() -> None:
    evil_trust = Trust(MALLORY_TTP.party, TRUST.tsa_ca)
    s, acts = Sender.start(ALICE, evil_trust, BOB.party, M0, Description("t", 1, "<x>"),
                           DEADLINES)
    acts = s.handle(TimestampReply(stamp(one(acts, "m1"), T0)), T0)
    r, _ = Receiver.from_m3(BOB, TRUST, one(acts, "m3"), T0 + 1, known)
    assert r.phase == "rejected" and "hdr.ttp" in r.state.reason
    # and the real TTP will not act on it either
    with pytest.raises(ProtocolError, match=r"hdr\.ttp"):
        ttp_role.check_request(TTP, ttp_role.parse_request(
            one(s.handle(Tick(), DEADLINES.accept_by + 1), "abort")), TRUST)


def test_expired_m3_is_rejected() -> None:
    run = start_run(M0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, DEADLINES.accept_by + 1, known)
    assert r.phase == "rejected" and "hdr.deadline" in r.state.reason


def test_forged_abort_request_is_rejected_by_the_ttp() -> None:
    run = start_run(M0)
    core = M3.decode(run.m3).core
    t = T0 + 50
    by_bob = AbortRequest(core, t, sign(BOB.sig_key, "ABORT-REQ", core.cid, t)).encode()
    with pytest.raises(ProtocolError, match=r"abort\.sig"):
        ttp_role.handle(TTP, TRUST, by_bob, None, t)


# --- bad escrow: the TTP's statement proves that S cheated -----------------------------------


def _run_with_bad_escrow() -> Run:
    """S puts a wrap of a wrong k_T into e_T (consistent hashes, wrong content)."""
    s, acts = Sender.start(ALICE, TRUST, BOB.party, M0, Description("t", 1, "<x>"), DEADLINES)
    core = s.core
    bad_e_t = wrap(TTP.party.enc_pk, b"\x00" * 32, checks.WRAP_T, core.header.digest)
    bad_core = Core(core.header, core.h_c, core.h_er, h(bad_e_t), core.hk_r, core.hk_t)
    s.state = replace(s.state, core=bad_core.encoded, e_t=bad_e_t)
    s.core = bad_core
    tsq, nonce = make_request(bad_core.cid)
    s.state = replace(s.state, tsq=tsq, nonce=nonce)
    acts = s.handle(TimestampReply(stamp(tsq, T0, kind="tsq")), T0)
    return Run(s, one(acts, "m3"))


def test_bad_escrow_yields_a_signed_statement() -> None:
    run = _run_with_bad_escrow()
    accepted(run)
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    answer = run.to_ttp(req, DEADLINES.m5_by + 1)
    stmt = decode_ttp_answer(answer)
    assert isinstance(stmt, BadEscrow) and "commitment" in stmt.reason
    receive(run.receiver, answer, DEADLINES.m5_by + 1)
    assert run.receiver.phase == "cheated"
    assert run.ttp_decision is not None and run.ttp_decision.state == "bad-escrow"


def test_m5_with_wrong_key_is_rejected_then_ttp_resolves() -> None:
    run = start_run(M0)
    m4 = accepted(run)
    one(receive(run.sender, m4, T0 + 11), "m5")
    core = run.sender.core
    w5 = wrap(BOB.party.enc_pk, b"\x01" * 32, checks.WRAP_M5, core.header.digest)
    bad = M5(core.cid, w5, sign(ALICE.sig_key, "M5", core.cid, core.hk_t, h(w5))).encode()
    assert "m5.key" in ignored(receive(run.receiver, bad, T0 + 12))
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    assert delivered(receive(run.receiver, run.to_ttp(req, DEADLINES.m5_by + 1),
                             DEADLINES.m5_by + 1)) == [M0]


# --- tampering: every byte of every signed message ----------------------------------------


def _flips(data: bytes) -> list[bytes]:
    return [data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:] for i in range(len(data))]


def test_every_byte_of_m3_is_protected() -> None:
    run = start_run(M0)
    for i, forged in enumerate(_flips(run.m3)):
        try:
            r, _ = Receiver.from_m3(BOB, TRUST, forged, T0 + 1, known)
        except MessageError:
            continue
        assert r.phase == "rejected", f"byte {i} of m3 flipped and accepted"
        check = r.state.reason.split(":")[0]
        assert check in {"m2.token", "m3.eoo", "m3.c", "m3.e_R", "m3.e_T", "hdr.recipient",
                         "hdr.sender", "hdr.ttp", "hdr.cipher", "hdr.deadline",
                         "m2.time"}, r.state.reason


@pytest.mark.parametrize("step", ["m4", "m5", "m6", "refusal"])
def test_every_byte_of_m4_m5_m6_refusal_is_protected(step: str) -> None:
    run = start_run(M0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, known)
    run.receiver = r
    if step == "refusal":
        original = one(Receiver.load(BOB, TRUST, r.dump()).handle(Refuse(), T0 + 2), "refusal")
    m4 = one(r.handle(Accept(), T0 + 2), "m4")
    m5 = one(Sender.load(ALICE, TRUST, run.sender.dump()).handle(
        Received(m4), T0 + 3), "m5")
    m6 = one(Receiver.load(BOB, TRUST, r.dump()).handle(
        Received(m5), T0 + 4), "m6")
    if step != "refusal":
        original = {"m4": m4, "m5": m5, "m6": m6}[step]
    for i, forged in enumerate(_flips(original)):
        sender = Sender.load(ALICE, TRUST, run.sender.dump())
        if step == "m6":
            receive(sender, m4, T0 + 3)
        if step == "m5":
            acts = receive(Receiver.load(BOB, TRUST, r.dump()), forged, T0 + 5)
        else:
            acts = receive(sender, forged, T0 + 5)
        assert len(acts) == 1 and isinstance(acts[0], Ignored), f"{step} byte {i}: {acts}"


def test_every_byte_of_a_ttp_answer_is_protected() -> None:
    run = start_run(M0)
    accepted(run)
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    answer = run.to_ttp(req, DEADLINES.m5_by + 1)
    saved = run.receiver.dump()
    for i, forged in enumerate(_flips(answer)):
        r = Receiver.load(BOB, TRUST, saved)
        acts = receive(r, forged, DEADLINES.m5_by + 2)
        assert r.phase == "resolving" and isinstance(acts[0], Ignored), f"byte {i}: {acts}"


def test_every_byte_of_a_resolve_request_is_checked_by_the_ttp() -> None:
    run = start_run(M0)
    accepted(run)
    req = one(run.receiver.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    for i, forged in enumerate(_flips(req)):
        with pytest.raises((ProtocolError, MessageError)):
            ttp_role.handle(TTP, TRUST, forged, None, DEADLINES.m5_by + 1)
            pytest.fail(f"byte {i} of the resolve request flipped and accepted")


def test_a_cheating_sender_whose_c_does_not_open_ends_in_cheated_with_the_proof() -> None:
    """S commits to genuine key shares but seals garbage: R accepts, gets the right k_T in
    m5, and c does not decrypt.  R's machine ends in ``cheated`` holding m5 (the signed
    key share) as its evidence, sends no m6, and tells the user."""
    import datetime as dt
    import os

    from conftest import TSA

    from tcms.protocol.events import Notify
    from tcms.protocol.messages import M3, Description

    m0 = b"Subject: honest?\r\n\r\nno"
    sealed = checks.seal(ALICE, BOB.party, TRUST.ttp, "tss", m0,
                         Description("honest?", len(m0), "<c@a.test>"), DEADLINES)
    garbage = os.urandom(len(sealed.c))
    core = replace(sealed.core, h_c=h(garbage))
    tsq, _ = make_request(core.cid)
    token = TSA.stamp(tsq, now=dt.datetime.fromtimestamp(T0, dt.UTC), serial=90_001).token
    assert token is not None
    m3 = M3(core, garbage, sealed.e_r, sealed.e_t, token, checks.sign_eoo(ALICE, core, token))
    r, _ = Receiver.from_m3(BOB, TRUST, m3.encode(), T0 + 1,
                            lambda n: ALICE.party if n == ALICE.name else None)
    assert r.phase == "pending", r.state.reason
    m4 = one(r.handle(Accept(), T0 + 2), "m4")
    assert m4
    m5 = checks.make_m5(ALICE, core, sealed.k_t).encode()
    actions = r.handle(Received(m5), T0 + 3)
    assert r.phase == "cheated" and r.terminal
    assert r.state.m5 == m5 and r.state.k_t == sealed.k_t and r.state.m6 is None
    assert "does not decrypt" in r.state.reason
    assert [type(a) for a in actions] == [Notify]  # no m6: nothing was received
    again = Receiver.load(BOB, TRUST, r.dump())  # the proof survives a restart
    assert again.phase == "cheated" and again.state.m5 == m5


def _old_parse(data: bytes, sender: str, recipient: str) -> bytes:
    """parse_plaintext as it read every payload before it read m0 where it lies."""
    f = codec.decode_array(data, "TCMS1/PAYLOAD", 5)
    m0 = f[1]
    if not isinstance(m0, bytes) or h(m0) != f[2] or f[3] != sender or f[4] != recipient:
        raise MessageError("payload")
    return m0


def test_m0_read_where_it_lies_is_the_decoders_reading() -> None:
    """parse_plaintext takes m0 from the payload without decoding it whole: for any
    payload, mutated or not, it gives the m0 the decoder gives, or refuses as it does."""
    import random

    rng = random.Random(7)
    at = len(codec.encode(["TCMS1/PAYLOAD"]))  # where m0's head is
    for n in (0, 1, 23, 24, 255, 256, 65535, 65536, 70_001):
        m0 = rng.randbytes(n)
        good = plaintext(m0, "alice@a.test", "bob@b.test")
        longer = b"\x5b" + n.to_bytes(8, "big")  # m0's head in a longer form than needed
        variants: list[bytes | bytearray] = [good, good + b"\0", good[:-1], bytearray(good),
                    good.replace(b"bob@b.test", b"bob@b.tesT"),
                    good[:at] + longer + good[at + len(codec.bytes_head(n)):]]
        for _ in range(40):
            bad = bytearray(good)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            variants.append(bytes(bad))
        for data in variants:
            try:
                want: bytes | None = _old_parse(bytes(data), "alice@a.test", "bob@b.test")
            except (MessageError, codec.CodecError):
                want = None
            try:
                got: bytes | None = parse_plaintext(data, "alice@a.test", "bob@b.test")
            except (MessageError, codec.CodecError):
                got = None
            assert got == want, (n, bytes(data)[:40])
        assert parse_plaintext(good, "alice@a.test", "bob@b.test") == m0
