"""Evidence bundles and their offline verification (what ``tcms verify`` runs).

A bundle is one JSON file (format ``tcms-evidence/1``, documented in docs/evidence.md): the
protocol items a party holds, base64-encoded as they were signed, plus the key shares and
c.  Verification needs only the bundle and a trust file (the TTP's public keys and the TSA's
CA certificate).  Every item present is checked; the first failing check is reported by
name, so a tampered byte is never silently ignored.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tcms.crypto import CryptoError, check_commitment, ct_equal, h
from tcms.identity import Party
from tcms.protocol import checks
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.messages import (
    M3,
    M4,
    M5,
    M6,
    Aborted,
    BadEscrow,
    Core,
    MessageError,
    Refusal,
    Rejection,
    Resolved,
    decode_ttp_answer,
)
from tcms.protocol.receiver import Receiver, ReceiverState
from tcms.protocol.sender import Sender, SenderState
from tcms.protocol.state import load_state
from tcms.timestamp import TimestampError, verify_token

FORMAT = "tcms-evidence/1"
TRUST_FORMAT = "tcms-trust/1"
ITEMS = ("core", "token", "eoo", "m4", "m5", "m6", "refusal", "ttp_answer", "receipt_token",
         "k_r", "k_t", "c")


class EvidenceInvalid(Exception):
    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


@dataclass
class Verdict:
    """``kind`` is received | sent | sealed | aborted | bad-escrow | refused (prose in
    ``statements``)."""

    kind: str
    statements: list[str]
    tx: str
    sender: str
    recipient: str
    subject: str
    sent_at: int
    event_at: int | None = None
    m0_sha256: str | None = None
    checks: list[str] = field(default_factory=list)
    m0: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": True, "verdict": self.kind, "statements": self.statements, "tx": self.tx,
            "sender": self.sender, "recipient": self.recipient, "subject": self.subject,
            "sent_at": self.sent_at, "event_at": self.event_at, "m0_sha256": self.m0_sha256,
            "checks_passed": self.checks,
        }


# --- building bundles ------------------------------------------------------------------


def _b64(v: bytes | None) -> str | None:
    return None if v is None else base64.b64encode(v).decode()


def _tsa_pem(trust: Trust) -> str:
    return trust.tsa_ca.public_bytes(serialization.Encoding.PEM).decode()


def from_sender(sender: Sender) -> dict[str, Any]:
    return sender_bundle(sender.state)


def from_receiver(receiver: Receiver) -> dict[str, Any]:
    return receiver_bundle(receiver.state)


def from_stored(role: str, state: bytes) -> dict[str, Any]:
    """The bundle of a stored run (no private key needed: it only reads the state)."""
    if role == "sender":
        return sender_bundle(load_state(SenderState, state))
    if role == "receiver":
        return receiver_bundle(load_state(ReceiverState, state))
    raise ValueError(f"unknown role {role!r}")


def sender_bundle(st: SenderState) -> dict[str, Any]:
    items = {"core": st.core, "token": st.token, "eoo": st.eoo, "m4": st.m4, "m5": st.m5,
             "m6": st.m6, "refusal": st.refusal, "ttp_answer": st.ttp_answer,
             "receipt_token": st.receipt_token, "k_r": st.k_r, "k_t": st.k_t, "c": st.c}
    return {"format": FORMAT, "holder": "sender",
            **{k: _b64(v) for k, v in items.items()}}


def receiver_bundle(st: ReceiverState) -> dict[str, Any]:
    m3 = M3.decode(st.m3)
    items = {"core": m3.core.encoded, "token": m3.token, "eoo": m3.eoo, "m4": st.m4,
             "m5": st.m5, "m6": st.m6, "refusal": st.refusal, "ttp_answer": st.ttp_answer,
             "receipt_token": None, "k_r": st.k_r, "k_t": st.k_t, "c": m3.c}
    return {"format": FORMAT, "holder": "receiver",
            **{k: _b64(v) for k, v in items.items()}}


# --- trust files -----------------------------------------------------------------------


def trust_to_json(trust: Trust) -> dict[str, Any]:
    return {"format": TRUST_FORMAT, "ttp": trust.ttp.to_json(), "tsa_ca": _tsa_pem(trust)}


def trust_from_json(data: dict[str, Any]) -> Trust:
    if data.get("format") != TRUST_FORMAT:
        raise ValueError(f"not a trust file (format must be {TRUST_FORMAT})")
    return Trust(Party.from_json(data["ttp"]),
                 x509.load_pem_x509_certificate(data["tsa_ca"].encode()))


# --- verification ----------------------------------------------------------------------


def _items(bundle: dict[str, Any]) -> dict[str, bytes | None]:
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise EvidenceInvalid("format", f"not an evidence bundle (format must be {FORMAT})")
    out: dict[str, bytes | None] = {}
    for name in ITEMS:
        v = bundle.get(name)
        if v is None:
            out[name] = None
            continue
        try:
            out[name] = base64.b64decode(v, validate=True)
        except (ValueError, TypeError):
            raise EvidenceInvalid(name, "not valid base64") from None
    for required in ("core", "token", "eoo"):
        if out[required] is None:
            raise EvidenceInvalid(required, "missing from the bundle")
    return out


def verify(bundle: dict[str, Any], trust: Trust) -> Verdict:
    """Check every item of ``bundle``; return what it proves, or raise EvidenceInvalid."""
    it = _items(bundle)
    passed: list[str] = []

    def ok(name: str) -> None:
        passed.append(name)

    try:
        return _verify(it, trust, passed, ok)
    except ProtocolError as exc:
        raise EvidenceInvalid(exc.check, exc.reason) from None
    except MessageError as exc:
        raise EvidenceInvalid("format", str(exc)) from None


def _verify(it: dict[str, bytes | None], trust: Trust, passed: list[str],
            ok: Any) -> Verdict:
    core_b, token, eoo = it["core"], it["token"], it["eoo"]
    assert core_b is not None and token is not None and eoo is not None
    core = Core.decode(core_b)
    hdr = core.header
    info = checks.check_origin(core, token, eoo, trust)
    sent_at = checks.token_time(info)
    ok("hdr.ttp")
    ok("m2.token")
    ok("m3.eoo")
    verdict = Verdict("", [], hdr.tx.hex(), hdr.sender.name, hdr.recipient.name,
                      hdr.description.subject, sent_at, checks=passed)

    m4 = m6 = None
    if it["m4"] is not None:
        m4 = M4.decode(it["m4"])
        checks.check_m4(core, eoo, m4)
        ok("m4.sig")
    m5_b = it["m5"]
    if m5_b is not None:
        checks.check_m5_signature(core, M5.decode(m5_b))
        ok("m5.sig")
    if it["m6"] is not None:
        if m5_b is None:
            raise EvidenceInvalid("m6", "m6 acknowledges an m5 that is not in the bundle")
        m6 = M6.decode(it["m6"])
        checks.check_m6(core, m5_b, m6)
        ok("m6.sig")
    refused = False
    if it["refusal"] is not None:
        checks.check_refusal(core, eoo, Refusal.decode(it["refusal"]))
        refused = True
        ok("refusal.sig")
    answer = None
    if it["ttp_answer"] is not None:
        answer = decode_ttp_answer(it["ttp_answer"])
        checks.check_ttp_answer(core, answer, trust)
        ok("ttp.sig")
        if isinstance(answer, Resolved):
            checks.check_m4(core, eoo, M4.decode(answer.m4))
            ok("ttp.m4")
    receipt_at = None
    if it["receipt_token"] is not None:
        if it["m6"] is None:
            raise EvidenceInvalid("receipt_token", "a receipt time stamp without m6")
        try:
            rinfo = verify_token(it["receipt_token"], h(it["m6"]), trust.tsa_ca)
        except TimestampError as exc:
            raise EvidenceInvalid("m6.token", str(exc)) from None
        receipt_at = checks.token_time(rinfo)
        ok("m6.token")

    # the content: both shares, their commitments, decryption of c to m0
    m0 = None
    k_r, k_t, c = it["k_r"], it["k_t"], it["c"]
    if k_r is not None and k_t is not None and c is not None:
        m0 = checks.decrypt_payload(core, c, k_r, k_t)
        ok("keys.commitments")
        ok("c.decrypt")
        verdict.m0 = m0
        verdict.m0_sha256 = h(m0).hex()
    elif k_r is not None and c is not None:
        # R before m5: k_R and c without k_T.  Check what can be checked.
        try:
            check_commitment("kR", hdr.tx, k_r, core.hk_r)
        except CryptoError as exc:
            raise EvidenceInvalid("keys", str(exc)) from None
        if not ct_equal(h(c), core.h_c):
            raise EvidenceInvalid("c", "H(c) does not match the core")
        ok("keys.k_r")

    who = f"{hdr.recipient.name} received m0 (subject {hdr.description.subject!r})"
    sent = f"{hdr.sender.name} sent m0 at {checks.utc(sent_at)} (RFC 3161 time stamp)"
    if isinstance(answer, BadEscrow):
        verdict.kind, verdict.event_at = "bad-escrow", answer.t
        verdict.statements = [sent.replace(" sent m0", " sent a sealed mail"),
                              f"the TTP found {hdr.sender.name}'s escrow invalid at "
                              f"{checks.utc(answer.t)}: {answer.reason}"]
        return verdict
    receipt = m4 is not None and (m6 is not None or isinstance(answer, Resolved))
    if receipt and m0 is None:
        raise EvidenceInvalid("c", "a receipt needs k_R, k_T and c to show what was received")
    if m6 is not None:
        verdict.kind = "received"
        when = (f"at {checks.utc(receipt_at)} (time stamp of m6)" if receipt_at
                else "(acknowledged by m6; its time is not stamped)")
        verdict.event_at = receipt_at
        verdict.statements = [sent, f"{who} {when}"]
        return verdict
    if isinstance(answer, Aborted):
        verdict.kind, verdict.event_at = "aborted", answer.t
        verdict.statements = [f"the exchange was aborted by the TTP at {checks.utc(answer.t)};"
                              f" {hdr.recipient.name} received nothing it could read"]
        if refused:
            verdict.statements.append(f"{hdr.recipient.name} refused the mail")
        return verdict
    if isinstance(answer, Resolved):
        verdict.kind, verdict.event_at = "received", answer.t
        how = ("delivered" if answer.kind == "delivered"
               else "made available to the recipient")
        verdict.statements = [sent, f"{who}: the TTP certifies it {how} at "
                              f"{checks.utc(answer.t)}"]
        return verdict
    if refused:
        verdict.kind = "refused"
        verdict.statements = [f"{hdr.recipient.name} refused the mail sent at "
                              f"{checks.utc(sent_at)}"]
        return verdict
    if m0 is not None:
        verdict.kind = "sent"
        verdict.statements = [sent]
        return verdict
    verdict.kind = "sealed"
    verdict.statements = [f"{hdr.sender.name} sent a sealed mail to {hdr.recipient.name} at "
                          f"{checks.utc(sent_at)}; its content cannot be shown without both "
                          "key shares"]
    if isinstance(answer, Rejection):
        verdict.statements.append(f"the TTP declined a request at {checks.utc(answer.t)}: "
                                  f"{answer.reason}")
    return verdict


def dumps(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, indent=1)
