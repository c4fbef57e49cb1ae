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

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tcms import boundedjson
from tcms.crypto import CryptoError, check_commitment, ct_equal, h
from tcms.identity import Party
from tcms.protocol import checks
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.messages import M3, M4, M5, M6, Core, MessageError, Refusal
from tcms.protocol.receiver import Receiver, ReceiverState
from tcms.protocol.sender import Sender, SenderState
from tcms.protocol.state import load_state
from tcms.protocol.ttpmessages import Aborted, BadEscrow, Rejection, Resolved, decode_ttp_answer
from tcms.timestamp import TimestampError, verify_token

FORMAT = "tcms-evidence/1"
TRUST_FORMAT = "tcms-trust/1"
ITEMS = ("core", "token", "eoo", "m4", "m5", "m6", "refusal", "ttp_answer", "receipt_token",
         "k_r", "k_t", "c")
FIELDS = ("format", "holder", *ITEMS)
HOLDERS = ("sender", "receiver")
CONTENT = ("k_r", "k_t", "c")
# Files are read with these bounds before any parsing.  A bundle carries c, the whole
# encrypted mail: 128 MiB of base64 holds a c of 96 MiB (mail up to about 85 MiB; the
# gateway's default limit is 50 MiB).  A trust file is a few kilobytes.
MAX_BUNDLE_BYTES = 128 * 1024 * 1024
MAX_TRUST_BYTES = 1024 * 1024
MAX_DEPTH = 8  # a bundle nests 1 level, a trust file 2
MAX_ITEMS = 256  # a bundle has at most 43 (strings, brackets, commas), a trust file 22


class BundleUnreadable(ValueError):
    """A bundle file that cannot be read as strict JSON within the bounds (too large, not
    UTF-8, nested too deeply, not JSON, a name twice in an object): nothing to verify."""


class TrustFileError(ValueError):
    """A trust file that cannot be used: not strict JSON, or not a valid tcms-trust/1."""


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


def from_stored(role: str, state: bytes, c: bytes | None = None) -> dict[str, Any]:
    """The bundle of a stored run (no private key needed: it only reads the state);
    ValueError naming the role if the stored state cannot be read."""
    return bundle_of(role, stored_items(role, state, c))


def stored_items(role: str, state: bytes, c: bytes | None = None) -> dict[str, bytes | None]:
    """The items (decoded: what ``verify_items`` checks) of a stored run's bundle; ``c``
    the run's payload, for a state stored without it."""
    if role not in HOLDERS:
        raise ValueError(f"unknown role {role!r}")
    try:
        items = (sender_items(load_state(SenderState, state)) if role == "sender"
                 else receiver_items(load_state(ReceiverState, state)))
    except (ValueError, TypeError, cbor2.CBORError) as exc:
        raise ValueError(f"the stored {role} state cannot be read: {exc}") from None
    return items if c is None else {**items, "c": c}


def bundle_of(holder: str, items: dict[str, bytes | None]) -> dict[str, Any]:
    """The bundle (JSON value) of ``items``; an item left out is null."""
    return {"format": FORMAT, "holder": holder, **{k: _b64(items.get(k)) for k in ITEMS}}


def sender_items(st: SenderState) -> dict[str, bytes | None]:
    return {"core": st.core, "token": st.token, "eoo": st.eoo, "m4": st.m4, "m5": st.m5,
            "m6": st.m6, "refusal": st.refusal, "ttp_answer": st.ttp_answer,
            "receipt_token": st.receipt_token, "k_r": st.k_r, "k_t": st.k_t, "c": st.c or None}


def receiver_items(st: ReceiverState) -> dict[str, bytes | None]:
    m3 = M3.decode(st.m3)
    return {"core": m3.core.encoded, "token": m3.token, "eoo": m3.eoo, "m4": st.m4,
            "m5": st.m5, "m6": st.m6, "refusal": st.refusal, "ttp_answer": st.ttp_answer,
            "receipt_token": None, "k_r": st.k_r, "k_t": st.k_t, "c": m3.c or None}


def sender_bundle(st: SenderState) -> dict[str, Any]:
    return bundle_of("sender", sender_items(st))


def receiver_bundle(st: ReceiverState) -> dict[str, Any]:
    return bundle_of("receiver", receiver_items(st))


# --- reading files ---------------------------------------------------------------------


def _read_json(data: bytes, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise boundedjson.JsonRefused("json.size", f"larger than {max_bytes} bytes")
    return boundedjson.loads(data, max_depth=MAX_DEPTH, max_items=MAX_ITEMS)


def loads(data: bytes) -> Any:
    """The JSON value of a bundle file, read strictly (``boundedjson``: size, depth and
    item bounds before parsing, no key twice); BundleUnreadable otherwise.  Its fields
    are checked by ``verify``."""
    try:
        return _read_json(data, MAX_BUNDLE_BYTES)
    except boundedjson.JsonRefused as exc:
        raise BundleUnreadable(f"the bundle cannot be read: {exc.reason}") from None


def dumps(bundle: dict[str, Any]) -> str:
    """The file text of a bundle; ``loads`` reads it back unchanged."""
    _check_shape(bundle)  # a bundle the project writes is one it reads
    return json.dumps(bundle, indent=1, allow_nan=False)


# --- trust files -----------------------------------------------------------------------


def trust_to_json(trust: Trust) -> dict[str, Any]:
    return {"format": TRUST_FORMAT, "ttp": trust.ttp.to_json(), "tsa_ca": _tsa_pem(trust)}


_TYPE_NAMES: dict[type, str] = {str: "a string", dict: "a JSON object"}


def _object(value: object, where: str, fields: dict[str, type],
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``value`` as an object with exactly ``fields`` (each of its type; those named in
    ``optional`` may be left out); TrustFileError naming the first wrong field otherwise."""
    if not isinstance(value, dict):
        raise TrustFileError(f"{where} must be a JSON object")
    for key in value:
        if key not in fields:
            raise TrustFileError(f"{where}: unknown field {key!r}")
    for key, kind in fields.items():
        if key not in value:
            if key in optional:
                continue
            raise TrustFileError(f"{where}: field {key!r} is missing")
        if not isinstance(value[key], kind):
            raise TrustFileError(f"{where}: field {key!r} must be {_TYPE_NAMES[kind]}")
    return value


def trust_from_json(data: object) -> Trust:
    """The Trust a parsed ``tcms-trust/1`` file holds; TrustFileError (a ValueError) naming
    what is wrong otherwise."""
    top = _object(data, "the trust file", {"format": str, "ttp": dict, "tsa_ca": str})
    if top["format"] != TRUST_FORMAT:
        raise TrustFileError(f"not a trust file (format must be {TRUST_FORMAT})")
    ttp = _object(top["ttp"], "ttp", {"name": str, "sig_pk": str, "enc_pk": str,
                                      "fingerprint": str}, optional=("fingerprint",))
    try:
        party = Party.from_json(ttp)
    except ValueError as exc:  # a bad name, base64, key length or fingerprint
        raise TrustFileError(f"ttp: {exc}") from None
    try:
        ca = x509.load_pem_x509_certificate(top["tsa_ca"].encode())
    except (ValueError, x509.InvalidVersion):
        raise TrustFileError("tsa_ca: not a PEM certificate") from None
    return Trust(party, ca)


def load_trust(data: bytes) -> Trust:
    """The Trust in a trust file's bytes, read strictly; TrustFileError otherwise."""
    try:
        parsed = _read_json(data, MAX_TRUST_BYTES)
    except boundedjson.JsonRefused as exc:
        raise TrustFileError(exc.reason) from None
    return trust_from_json(parsed)


# --- verification ----------------------------------------------------------------------


def _check_shape(bundle: object) -> dict[str, Any]:
    """``bundle`` if it has only bundle fields, each of its type; EvidenceInvalid naming
    the first wrong one otherwise."""
    if not isinstance(bundle, dict):
        raise EvidenceInvalid("format", "not an evidence bundle (a JSON object is expected)")
    for key in bundle:
        if key not in FIELDS:
            raise EvidenceInvalid("format", f"unknown field {key!r}")
    if bundle.get("format") != FORMAT:
        raise EvidenceInvalid("format", f"not an evidence bundle (format must be {FORMAT})")
    if bundle.get("holder") not in (None, *HOLDERS):
        raise EvidenceInvalid("holder", "must be \"sender\", \"receiver\" or null")
    for name in ITEMS:
        if not isinstance(bundle.get(name), str | None):
            raise EvidenceInvalid(name, "must be a base64 string or null")
    return bundle


def _fields(bundle: object) -> dict[str, bytes | None]:
    """The items of a parsed bundle, decoded; EvidenceInvalid for a wrong shape."""
    shaped = _check_shape(bundle)
    out: dict[str, bytes | None] = {}
    for name in ITEMS:
        v = shaped.get(name)
        if v is None:
            out[name] = None
            continue
        try:
            out[name] = base64.b64decode(v, validate=True)
        except ValueError:
            raise EvidenceInvalid(name, "not valid base64") from None
    return out


def _check_presence(it: dict[str, bytes | None], resolved: bool) -> None:
    """Rows 1-5 of the verdict table (docs/evidence.md): an item whose predecessor is not
    in the bundle, or a receipt without what it shows, makes the bundle invalid."""
    has = {name for name, v in it.items() if v is not None}
    if "receipt_token" in has and "m6" not in has:
        raise EvidenceInvalid("receipt_token", "a receipt time stamp without the m6 it stamps")
    if "m6" in has and "m5" not in has:
        raise EvidenceInvalid("m6", "m6 acknowledges an m5 that is not in the bundle")
    if "m5" in has and "m4" not in has and not resolved:
        raise EvidenceInvalid("m5", "m5 answers an m4 that is not in the bundle")
    missing = [name for name in CONTENT if name not in has]
    if ("m6" in has or resolved) and missing:
        also = "" if missing != ["c"] else (
            " (a receipt mail may leave a large c out: `tcms tx export TX` at the sender's "
            "gateway writes the complete bundle)")
        raise EvidenceInvalid("content", "a receipt needs k_r, k_t and c to show what was "
                              f"received; missing: {', '.join(missing)}{also}")


def verify(bundle: object, trust: Trust) -> Verdict:
    """Check every item of a parsed ``bundle``; return what it proves (the verdict table
    of docs/evidence.md), or raise EvidenceInvalid naming the first failed check."""
    return verify_items(_fields(bundle), trust)


def verify_items(it: dict[str, bytes | None], trust: Trust) -> Verdict:
    """``verify`` of a bundle's items, decoded (``stored_items``: no base64 copy of c)."""
    for required in ("core", "token", "eoo"):
        if it.get(required) is None:
            raise EvidenceInvalid(required, "missing from the bundle")
    try:
        return _verify(it, trust)
    except ProtocolError as exc:
        raise EvidenceInvalid(exc.check, exc.reason) from None
    except MessageError as exc:
        raise EvidenceInvalid("format", str(exc)) from None


def _check_content(core: Core, it: dict[str, bytes | None], passed: list[str]) -> bytes | None:
    """Each share and c present against the core; m0 when all three are there."""
    hdr = core.header
    k_r, k_t, c = it["k_r"], it["k_t"], it["c"]
    try:
        if k_r is not None:
            check_commitment("kR", hdr.tx, k_r, core.hk_r)
            passed.append("keys.k_r")
        if k_t is not None:
            check_commitment("kT", hdr.tx, k_t, core.hk_t)
            passed.append("keys.k_t")
    except CryptoError as exc:
        raise EvidenceInvalid("keys", str(exc)) from None
    if c is not None:
        if not ct_equal(h(c), core.h_c):
            raise EvidenceInvalid("c", "H(c) does not match the core")
        passed.append("c")
    if k_r is None or k_t is None or c is None:
        return None
    m0 = checks.decrypt_payload(core, c, k_r, k_t)
    passed.append("c.decrypt")
    return m0


def _verify(it: dict[str, bytes | None], trust: Trust) -> Verdict:
    answer = None if it["ttp_answer"] is None else decode_ttp_answer(it["ttp_answer"])
    _check_presence(it, isinstance(answer, Resolved))
    core_b, token, eoo = it["core"], it["token"], it["eoo"]
    assert core_b is not None and token is not None and eoo is not None
    core = Core.decode(core_b)
    hdr = core.header
    passed: list[str] = []
    sent_at = checks.token_time(checks.check_origin(core, token, eoo, trust))
    passed += ["hdr.ttp", "m2.token", "m3.eoo"]

    if it["m4"] is not None:
        checks.check_m4(core, eoo, M4.decode(it["m4"]))
        passed.append("m4.sig")
    m5_b, m6_b = it["m5"], it["m6"]
    if m5_b is not None:
        checks.check_m5_signature(core, M5.decode(m5_b))
        passed.append("m5.sig")
    if m6_b is not None:
        assert m5_b is not None  # _check_presence
        checks.check_m6(core, m5_b, M6.decode(m6_b))
        passed.append("m6.sig")
    refused = it["refusal"] is not None
    if it["refusal"] is not None:
        checks.check_refusal(core, eoo, Refusal.decode(it["refusal"]))
        passed.append("refusal.sig")
    if answer is not None:
        checks.check_ttp_answer(core, answer, trust)
        passed.append("ttp.sig")
        if isinstance(answer, Resolved):
            checks.check_m4(core, eoo, M4.decode(answer.m4))
            passed.append("ttp.m4")
    receipt_at = None
    if it["receipt_token"] is not None:
        assert m6_b is not None  # _check_presence
        try:
            rinfo = verify_token(it["receipt_token"], h(m6_b), trust.tsa_ca)
        except TimestampError as exc:
            raise EvidenceInvalid("m6.token", str(exc)) from None
        receipt_at = checks.token_time(rinfo)
        passed.append("m6.token")
    m0 = _check_content(core, it, passed)

    verdict = Verdict("", [], hdr.tx.hex(), hdr.sender.name, hdr.recipient.name,
                      hdr.description.subject, sent_at, checks=passed, m0=m0,
                      m0_sha256=None if m0 is None else h(m0).hex())
    s_name, r_name = hdr.sender.name, hdr.recipient.name
    sent = f"{s_name} sent m0 at {checks.utc(sent_at)} (RFC 3161 time stamp)"
    who = f"{r_name} received m0 (subject {hdr.description.subject!r})"
    if m6_b is not None or isinstance(answer, Resolved):  # rows 6 and 7
        verdict.kind = "received"
        if receipt_at is not None:
            verdict.event_at = receipt_at
            got = f"{who} at {checks.utc(receipt_at)} (time stamp of m6)"
        elif isinstance(answer, Resolved):
            verdict.event_at = answer.t
            how = "delivered" if answer.kind == "delivered" else "made available to the recipient"
            got = f"{who}: the TTP certifies it was {how} at {checks.utc(answer.t)}"
        else:
            got = f"{who} (acknowledged by m6; its time is not stamped)"
        verdict.statements = [sent, got]
    elif isinstance(answer, BadEscrow):  # row 8
        verdict.kind, verdict.event_at = "bad-escrow", answer.t
        verdict.statements = [f"{s_name} sent a sealed mail at {checks.utc(sent_at)} (RFC 3161 "
                              "time stamp)"]
    elif isinstance(answer, Aborted):  # row 9
        verdict.kind, verdict.event_at = "aborted", answer.t
        verdict.statements = [f"the exchange was aborted by the TTP at {checks.utc(answer.t)};"
                              f" {r_name} received nothing it could read"]
    elif refused:  # row 10
        verdict.kind = "refused"
        verdict.statements = [f"{r_name} refused the mail sent at {checks.utc(sent_at)}"]
    elif m0 is not None:  # row 11
        verdict.kind = "sent"
        verdict.statements = [sent]
    else:  # row 12
        verdict.kind = "sealed"
        verdict.statements = [f"{s_name} sent a sealed mail to {r_name} at "
                              f"{checks.utc(sent_at)}; its content cannot be shown without "
                              "both key shares"]
    # what else the bundle shows, whatever the verdict
    if refused and verdict.kind != "refused":
        verdict.statements.append(f"{r_name} refused the mail")
    if isinstance(answer, BadEscrow):
        verdict.statements.append(f"the TTP found {s_name}'s escrow invalid at "
                                  f"{checks.utc(answer.t)}: {answer.reason}")
    elif isinstance(answer, Aborted) and verdict.kind != "aborted":
        verdict.statements.append(f"the TTP aborted the exchange at {checks.utc(answer.t)}, "
                                  f"but {r_name} acknowledged the key (m6)")
    elif isinstance(answer, Rejection):
        verdict.statements.append(f"the TTP declined a request at {checks.utc(answer.t)}: "
                                  f"{answer.reason}")
    return verdict
