"""The TTP's role, sans-IO: check a request, then decide against the current record.

The caller (the TTP service) keeps one record per cid and must make ``decide`` atomic:
read the record, decide, and insert the new one only if none exists yet.  A record never
changes once written (none -> aborted | resolved | bad-escrow, exactly once); a repeated
request gets the stored answer byte for byte.  The TTP never sees c: requests carry only
the core (with H(c)) and the escrow e_T.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcms.crypto import CryptoError, ct_equal, h, sign, unwrap, wrap
from tcms.crypto import check_commitment as _check_commitment
from tcms.identity import Identity
from tcms.protocol import checks
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.messages import M4, M5, Core, MessageError, message_type
from tcms.protocol.ttpmessages import (
    DELIVERED,
    MADE_AVAILABLE,
    Aborted,
    AbortRequest,
    BadEscrow,
    Rejection,
    Resolved,
    ResolveRequest,
)

ABORTED = "aborted"
RESOLVED = "resolved"
BAD_ESCROW = "bad-escrow"

Request = AbortRequest | ResolveRequest


@dataclass(frozen=True)
class Decision:
    """The TTP's one decision about an exchange, and the signed answer that states it."""

    cid: bytes
    state: str
    answer: bytes
    at: int
    by: str
    sender: str
    recipient: str


def parse_request(data: bytes) -> Request:
    kind = message_type(data)
    if kind == "ABORT-REQ":
        return AbortRequest.decode(data)
    if kind == "RESOLVE-REQ":
        return ResolveRequest.decode(data)
    raise MessageError(f"not a TTP request: {kind}")


def check_request(me: Identity, req: Request, trust: Trust) -> None:
    """Signatures, identities and evidence of a request.  Raises ProtocolError."""
    core = req.core
    if core.header.ttp != me.party:
        raise ProtocolError("hdr.ttp", "this exchange names another TTP")
    hdr = core.header
    if isinstance(req, AbortRequest):
        checks.check_sig("abort.sig", hdr.sender.sig_pk, req.sig, "ABORT-REQ", core.cid, req.t)
        return
    signer = hdr.recipient if req.by == "R" else hdr.sender
    checks.check_sig("resolve.sig", signer.sig_pk, req.sig, "RESOLVE-REQ", *req.signed_fields())
    checks.check_origin(core, req.token, req.eoo, trust)
    checks.check_m4(core, req.eoo, M4.decode(req.m4))
    if not ct_equal(h(req.e_t), core.h_et):
        raise ProtocolError("resolve.e_T", "H(e_T) does not match the core")
    if req.by == "S":
        assert req.m5 is not None
        checks.check_m5_signature(core, M5.decode(req.m5))


def _aborted(me: Identity, cid: bytes, now: int) -> bytes:
    return Aborted(cid, now, sign(me.sig_key, "ABORTED", cid, now)).encode()


def rejection(me: Identity, cid: bytes, reason: str, now: int) -> bytes:
    return Rejection(cid, reason, now, sign(me.sig_key, "REJECTED", cid, reason, now)).encode()


def _resolve(me: Identity, req: ResolveRequest, now: int) -> tuple[str, bytes]:
    core: Core = req.core
    hdr = core.header
    try:
        k_t = unwrap(me.enc_key, req.e_t, checks.WRAP_T, hdr.digest)
        _check_commitment("kT", hdr.tx, k_t, core.hk_t)
    except CryptoError as exc:
        reason = str(exc)
        sig = sign(me.sig_key, "BAD-ESCROW", core.cid, reason, now)
        return BAD_ESCROW, BadEscrow(core.cid, reason, now, sig).encode()
    w_t = wrap(hdr.recipient.enc_pk, k_t, checks.WRAP_RELEASE, hdr.digest)
    kind = DELIVERED if req.by == "R" else MADE_AVAILABLE
    unsigned = Resolved(core.cid, kind, req.m4, w_t, now, b"")
    sig = sign(me.sig_key, "RESOLVED", *unsigned.signed_fields(core.hk_t))
    return RESOLVED, Resolved(core.cid, kind, req.m4, w_t, now, sig).encode()


def decide(me: Identity, req: Request, current: Decision | None,
           now: int) -> tuple[Decision | None, bytes]:
    """Return (the decision to record, or None if nothing is recorded; the answer bytes).

    ``req`` must have passed ``check_request``.  If ``current`` exists, it is returned
    unchanged with its stored answer: the first decision stands forever."""
    core = req.core
    if current is not None:
        return current, current.answer
    hdr = core.header
    who = "S" if isinstance(req, AbortRequest) else req.by
    if isinstance(req, AbortRequest):
        state, answer = ABORTED, _aborted(me, core.cid, now)
    else:
        if req.by == "R" and now > hdr.deadlines.resolve_by:
            return None, rejection(me, core.cid, "the resolve deadline has passed", now)
        state, answer = _resolve(me, req, now)
    return Decision(core.cid, state, answer, now, who, hdr.sender.name,
                    hdr.recipient.name), answer


def handle(me: Identity, trust: Trust, data: bytes, current: Decision | None,
           now: int) -> tuple[Decision | None, bytes]:
    """Convenience for in-process use: parse, check and decide in one call."""
    req = parse_request(data)
    check_request(me, req, trust)
    return decide(me, req, current, now)
