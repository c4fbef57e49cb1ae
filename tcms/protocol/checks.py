"""Every check of the protocol, each failing with a named reason.

The sender and receiver machines, the TTP and the offline arbiter (``tcms verify``) all
call these functions, so a message is judged the same way wherever it is judged.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography import x509

from tcms import cipher as ciphers
from tcms.crypto import (
    CryptoError,
    check_commitment,
    commit,
    ct_equal,
    derive_message_key,
    h,
    sign,
    unwrap,
    verify,
    wrap,
)
from tcms.identity import Identity, Party
from tcms.protocol.messages import (
    M3,
    M4,
    M5,
    M6,
    Core,
    Deadlines,
    Description,
    Header,
    MessageError,
    Refusal,
    Signed,
    parse_plaintext,
    plaintext,
)
from tcms.protocol.ttpmessages import Aborted, BadEscrow, Resolved, ResolveRequest, TTPAnswer
from tcms.timestamp import TimestampError, TokenInfo, verify_token

# Step tags of key wraps.
WRAP_R = "ESCROW-R"
WRAP_T = "ESCROW-T"
WRAP_M5 = "M5-KEY"
WRAP_RELEASE = "RELEASE-KEY"


class ProtocolError(Exception):
    """A named check failed.  ``check`` is stable (for logs and tests); ``reason`` is prose."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


@dataclass(frozen=True)
class Trust:
    """What a party or an arbiter trusts: the TTP's public keys and the TSA's CA."""

    ttp: Party
    tsa_ca: x509.Certificate


def check_sig(check: str, public: bytes, signature: bytes, tag: str, *fields: object) -> None:
    try:
        verify(public, signature, tag, *fields)  # type: ignore[arg-type]
    except CryptoError as exc:
        raise ProtocolError(check, str(exc)) from None


# --- sealing (S's setup) ---------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    core: Core
    c: bytes
    e_r: bytes
    e_t: bytes
    k_r: bytes
    k_t: bytes


def seal(
    me: Identity,
    recipient: Party,
    ttp: Party,
    tss: str,
    m0: bytes,
    description: Description,
    deadlines: Deadlines,
    *,
    cipher_alg: str | None = None,
    random: Callable[[int], bytes] = os.urandom,
) -> Sealed:
    """Set up one run: fresh tx and key shares, c = E_k(m0 || h(m0) || ID_S || ID_R), escrows."""
    tx, k_r, k_t = random(16), random(32), random(32)
    cipher = ciphers.get(cipher_alg) if cipher_alg else ciphers.default()
    hdr = Header(tx, me.party, recipient, ttp, tss, cipher.alg_id, deadlines, description)
    k = derive_message_key(k_r, k_t, tx)
    c = _encrypt(cipher, k, plaintext(m0, me.name, recipient.name), hdr.digest)
    e_r = wrap(recipient.enc_pk, k_r, WRAP_R, hdr.digest)
    e_t = wrap(ttp.enc_pk, k_t, WRAP_T, hdr.digest)
    core = Core(hdr, h(c), h(e_r), h(e_t), commit("kR", tx, k_r), commit("kT", tx, k_t))
    return Sealed(core, c, e_r, e_t, k_r, k_t)


def _encrypt(cipher: ciphers.MessageCipher, k: bytes, data: bytes, aad: bytes) -> bytes:
    """E_k(data): into the cipher's own buffer where it offers one (TSRG), and ``data``
    (as large as the mail) let go before that buffer is copied out."""
    into = getattr(cipher, "encrypt_buffer", None)
    if into is None:
        return cipher.encrypt(k, data, aad)
    sealed = into(k, data, aad)
    del data
    return bytes(sealed)


def sign_eoo(me: Identity, core: Core, token: bytes) -> bytes:
    return sign(me.sig_key, "M3", core.cid, h(token))


# --- m3 ---------------------------------------------------------------------------------


def check_core_hashes(m3: M3) -> None:
    if not m3.c:  # never a real c (it holds a header and a tag); stores keep c apart
        raise ProtocolError("m3.c", "c is empty")
    if not ct_equal(h(m3.c), m3.core.h_c):
        raise ProtocolError("m3.c", "H(c) does not match the core")
    if not ct_equal(h(m3.e_r), m3.core.h_er):
        raise ProtocolError("m3.e_R", "H(e_R) does not match the core")
    if not ct_equal(h(m3.e_t), m3.core.h_et):
        raise ProtocolError("m3.e_T", "H(e_T) does not match the core")


def check_token(core: Core, token: bytes, trust: Trust) -> TokenInfo:
    try:
        return verify_token(token, core.cid, trust.tsa_ca)
    except TimestampError as exc:
        raise ProtocolError("m2.token", str(exc)) from None


def token_time(info: TokenInfo) -> int:
    return int(info.gen_time.timestamp())


def check_eoo(core: Core, token: bytes, eoo: bytes) -> None:
    check_sig("m3.eoo", core.header.sender.sig_pk, eoo, "M3", core.cid, h(token))


def check_ttp_named(core: Core, trust: Trust) -> None:
    if core.header.ttp != trust.ttp:
        raise ProtocolError("hdr.ttp", "the header names a TTP that is not the trusted one")


def check_origin(core: Core, token: bytes, eoo: bytes, trust: Trust) -> TokenInfo:
    """Non-repudiation of origin: the trusted TTP is named, the token covers cid, EOO verifies.
    Returns the token's contents; its genTime is the time m0 was sent."""
    check_ttp_named(core, trust)
    info = check_token(core, token, trust)
    if token_time(info) > core.header.deadlines.accept_by:
        raise ProtocolError("m2.time", "the time stamp is later than the accept deadline")
    check_eoo(core, token, eoo)
    return info


def open_e_r(me: Identity, core: Core, e_r: bytes) -> bytes:
    try:
        k_r = unwrap(me.enc_key, e_r, WRAP_R, core.header.digest)
        check_commitment("kR", core.header.tx, k_r, core.hk_r)
    except CryptoError as exc:
        raise ProtocolError("m3.e_R", str(exc)) from None
    return k_r


def check_m3(me: Identity, m3: M3, trust: Trust, now: int,
             known_sender: Callable[[str], Party | None]) -> tuple[TokenInfo, bytes]:
    """R's checks of m3 (returns the token's contents and k_R)."""
    hdr = m3.core.header
    if hdr.recipient != me.party:
        raise ProtocolError("hdr.recipient", "this mail is addressed to another party or key")
    sender = known_sender(hdr.sender.name)
    if sender is None:
        raise ProtocolError("hdr.sender", f"unknown sender {hdr.sender.name}")
    if sender != hdr.sender:
        raise ProtocolError("hdr.sender", "the sender's keys are not the published ones")
    try:
        ciphers.get(hdr.cipher)
    except ciphers.DecryptionError as exc:
        raise ProtocolError("hdr.cipher", str(exc)) from None
    check_core_hashes(m3)
    info = check_origin(m3.core, m3.token, m3.eoo, trust)
    if now > hdr.deadlines.accept_by:
        raise ProtocolError("hdr.deadline", "m3 arrived after its accept deadline")
    if hdr.deadlines.resolve_by > now + MAX_HORIZON:
        raise ProtocolError("hdr.deadline", "the deadlines lie more than a year ahead")
    return info, open_e_r(me, m3.core, m3.e_r)


# --- m4, m5, m6, refusal ----------------------------------------------------------------


def _check_by_recipient(core: Core, msg: Signed, check: str, step: str, over: bytes,
                        name: str = "") -> None:
    """A message R signs over ``(step, cid, H(over))``: m4 and the refusal over EOO, m6 over
    m5.  ``check`` names the failed check (``m4.cid``, ``m4.sig``...)."""
    if not ct_equal(msg.cid, core.cid):
        raise ProtocolError(f"{check}.cid", f"{name or check} belongs to another exchange")
    check_sig(f"{check}.sig", core.header.recipient.sig_pk, msg.sig, step, core.cid, h(over))


def _sign_as_recipient(me: Identity, core: Core, step: str, over: bytes) -> bytes:
    return sign(me.sig_key, step, core.cid, h(over))


def check_m4(core: Core, eoo: bytes, m4: M4) -> None:
    _check_by_recipient(core, m4, "m4", "M4", eoo)


def sign_m4(me: Identity, core: Core, eoo: bytes) -> M4:
    return M4(core.cid, _sign_as_recipient(me, core, "M4", eoo))


def check_refusal(core: Core, eoo: bytes, refusal: Refusal) -> None:
    _check_by_recipient(core, refusal, "refusal", "REFUSE", eoo, "the refusal")


def sign_refusal(me: Identity, core: Core, eoo: bytes) -> Refusal:
    return Refusal(core.cid, _sign_as_recipient(me, core, "REFUSE", eoo))


def make_m5(me: Identity, core: Core, k_t: bytes) -> M5:
    w5 = wrap(core.header.recipient.enc_pk, k_t, WRAP_M5, core.header.digest)
    return M5(core.cid, w5, sign(me.sig_key, "M5", core.cid, core.hk_t, h(w5)))


def check_m5_signature(core: Core, m5: M5) -> None:
    if not ct_equal(m5.cid, core.cid):
        raise ProtocolError("m5.cid", "m5 belongs to another exchange")
    check_sig("m5.sig", core.header.sender.sig_pk, m5.sig, "M5", core.cid, core.hk_t, h(m5.w5))


def open_m5(me: Identity, core: Core, m5: M5) -> bytes:
    check_m5_signature(core, m5)
    return _unwrap_k_t(me, core, m5.w5, WRAP_M5, "m5.key")


def _unwrap_k_t(me: Identity, core: Core, wrapped: bytes, label: str, check: str) -> bytes:
    """k_T as R unwraps it (from m5, or from the TTP's release), checked against its
    commitment hK_T; a failure is the named ``check``."""
    try:
        k_t = unwrap(me.enc_key, wrapped, label, core.header.digest)
        check_commitment("kT", core.header.tx, k_t, core.hk_t)
    except CryptoError as exc:
        raise ProtocolError(check, str(exc)) from None
    return k_t


def sign_resolve_request(me: Identity, by: str, core: Core, token: bytes, eoo: bytes,
                         m4: bytes, e_t: bytes, m5: bytes | None, now: int) -> ResolveRequest:
    """R1R (by="R", no m5) or R2S (by="S", with m5), signed by the requester."""
    unsigned = ResolveRequest(by, core, token, eoo, m4, e_t, m5, now, b"")
    return replace(unsigned, sig=sign(me.sig_key, "RESOLVE-REQ", *unsigned.signed_fields()))


def check_m6(core: Core, m5: bytes, m6: M6) -> None:
    _check_by_recipient(core, m6, "m6", "M6", m5)


def sign_m6(me: Identity, core: Core, m5: bytes) -> M6:
    return M6(core.cid, _sign_as_recipient(me, core, "M6", m5))


def decrypt_payload(core: Core, c: bytes, k_r: bytes, k_t: bytes) -> bytes:
    """Check both shares against their commitments, derive k, decrypt c, check h(m0) and IDs."""
    hdr = core.header
    try:
        check_commitment("kR", hdr.tx, k_r, core.hk_r)
        check_commitment("kT", hdr.tx, k_t, core.hk_t)
    except CryptoError as exc:
        raise ProtocolError("keys", str(exc)) from None
    if not ct_equal(h(c), core.h_c):
        raise ProtocolError("c", "H(c) does not match the core")
    k = derive_message_key(k_r, k_t, hdr.tx)
    try:
        cipher = ciphers.get(hdr.cipher)
        # into one buffer where the cipher offers it (TSRG): m0 is then its only copy
        opened = getattr(cipher, "decrypt_buffer", cipher.decrypt)
        data: bytes | bytearray = opened(k, c, hdr.digest)
        return parse_plaintext(data, hdr.sender.name, hdr.recipient.name)
    except ciphers.DecryptionError as exc:
        raise ProtocolError("c.decrypt", str(exc)) from None
    except MessageError as exc:
        raise ProtocolError("c.payload", str(exc)) from None


# --- the TTP's answers -----------------------------------------------------------------


def check_ttp_answer(core: Core, answer: TTPAnswer, trust: Trust) -> None:
    """The answer is signed by the trusted TTP (the one in the header) for this exchange."""
    check_ttp_named(core, trust)
    if not ct_equal(answer.cid, core.cid):
        raise ProtocolError("ttp.cid", "the TTP's answer belongs to another exchange")
    pk = trust.ttp.sig_pk
    if isinstance(answer, Aborted):
        check_sig("ttp.aborted", pk, answer.sig, "ABORTED", answer.cid, answer.t)
    elif isinstance(answer, Resolved):
        check_sig("ttp.resolved", pk, answer.sig, "RESOLVED", *answer.signed_fields(core.hk_t))
    elif isinstance(answer, BadEscrow):
        check_sig("ttp.bad-escrow", pk, answer.sig, "BAD-ESCROW", answer.cid, answer.reason,
                  answer.t)
    else:
        check_sig("ttp.rejected", pk, answer.sig, "REJECTED", answer.cid, answer.reason,
                  answer.t)


def open_release(me: Identity, core: Core, resolved: Resolved) -> bytes:
    return _unwrap_k_t(me, core, resolved.w_t, WRAP_RELEASE, "ttp.release")


MAX_HORIZON = 366 * 86400  # no exchange may stay open longer than this


def utc(t: int) -> str:
    """A time for people; total: a time no date can show is said as such, never raised."""
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"@{t} (not a representable date)"
