"""Who may ask the TTP for a verdict on an evidence bundle, and how the filer proves it.

A dispute is filed by a party of the exchange: its sender or its recipient, as the
bundle's core names them (anybody can check a bundle offline with ``tcms verify``; the
TTP's signed verdict is for the parties).  The filer signs, with the Ed25519 key the core
binds to its name, ``["TCMS1/DISPUTE", cid, filer, H(body), t]`` and sends the bundle with

- ``TCMS-Filer``: the filer's address (the core's sender or recipient);
- ``TCMS-Filed-At``: ``t``, Unix seconds, within 5 minutes of the TTP's clock;
- ``TCMS-Filing-Signature``: the signature, base64.

The signature covers the exact body, so a filing cannot be reused for another bundle; a
filing sent again within its 5 minutes gets the same verdict (and counts against the
sender's rate).  Sans-IO: the service supplies the headers, the body and the time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tcms.crypto import CryptoError, h, sign, verify
from tcms.identity import Identity
from tcms.protocol.messages import Core, MessageError

FRESHNESS = 300
FILER, FILED_AT, SIGNATURE = "TCMS-Filer", "TCMS-Filed-At", "TCMS-Filing-Signature"


class FilingRefused(Exception):
    """The filing is refused: ``status`` 400 (malformed), 401 (no filing) or 403 (not a
    party, or the signature does not verify); ``check`` names why."""

    def __init__(self, status: int, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.status, self.check, self.reason = status, check, reason


@dataclass(frozen=True)
class Filing:
    filer: str
    t: int
    sig: bytes


def filing_headers(me: Identity, cid: bytes, body: bytes, now: int) -> dict[str, str]:
    """The headers with which ``me`` files ``body`` (the bundle's exact bytes)."""
    sig = sign(me.sig_key, "DISPUTE", cid, me.name, h(body), now)
    return {FILER: me.name, FILED_AT: str(now), SIGNATURE: base64.b64encode(sig).decode()}


def parse_headers(headers: Mapping[str, str]) -> Filing:
    """The filing named by the request's headers (cheap: before the body is read)."""
    filer, t, sig = (headers.get(k) for k in (FILER, FILED_AT, SIGNATURE))
    if filer is None or t is None or sig is None:
        raise FilingRefused(401, "dispute.filer", f"a dispute is filed by a party of the "
                            f"exchange: send {FILER}, {FILED_AT} and {SIGNATURE}")
    if not t.isascii() or not t.isdigit() or len(t) > 12 or len(filer) > 254:
        raise FilingRefused(400, "dispute.filing", f"{FILED_AT} must be Unix seconds")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (ValueError, binascii.Error):
        raise FilingRefused(400, "dispute.filing", f"{SIGNATURE} is not base64") from None
    return Filing(filer.strip().lower(), int(t), raw)


def core_of(bundle: Any) -> Core:
    """The core of a parsed bundle (the rest is for ``evidence.verify``)."""
    item = bundle.get("core") if isinstance(bundle, dict) else None
    if not isinstance(item, str):
        raise FilingRefused(400, "format", "the bundle has no core")
    try:
        return Core.decode(base64.b64decode(item, validate=True))
    except (ValueError, binascii.Error, MessageError):
        raise FilingRefused(400, "format", "the bundle's core does not parse") from None


def check_filing(filing: Filing, core: Core, body: bytes, now: int) -> str:
    """Check that a party of the exchange filed ``body``; return its role."""
    hdr = core.header
    parties = {hdr.sender.name.lower(): ("sender", hdr.sender),
               hdr.recipient.name.lower(): ("recipient", hdr.recipient)}
    if filing.filer not in parties:
        raise FilingRefused(403, "dispute.filer", "only the sender or the recipient of the "
                            "exchange may file a dispute about it")
    role, party = parties[filing.filer]
    if abs(now - filing.t) > FRESHNESS:
        raise FilingRefused(403, "dispute.time", "the filing's time is not within 5 minutes")
    try:
        verify(party.sig_pk, filing.sig, "DISPUTE", core.cid, party.name, h(body), filing.t)
    except CryptoError:
        raise FilingRefused(403, "dispute.sig", "the filing's signature does not verify "
                            "with the key the core binds to the filer") from None
    return role
