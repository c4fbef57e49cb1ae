"""The machine-readable summary of a receipt (and of a refusal or abort notice that carries
evidence): ``certdata.json``, modelled on PEC's ``daticert.xml`` (docs/mail.md).

It restates what the attached evidence bundle proves, for programs that file receipts: who
sent what to whom, when, the verdict, and the SHA-256 of the evidence file and of the
original mail.  It proves nothing by itself: the signature of the mail says the gateway
wrote it, and ``tcms verify`` on the bundle is the proof.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from tcms.evidence import Verdict

FORMAT = "tcms-certdata/1"
MEDIA = ("application", "vnd.tcms.certdata+json")
FILENAME = "certdata.json"


def iso(t: int | None) -> str | None:
    """UTC, ISO 8601 to the second (``2026-12-01T22:35:00Z``)."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(*, kind: str, verdict: Verdict, issuer: str, issued: int, evidence_file: str,
            evidence: bytes) -> bytes:
    """``kind``: receipt, refused or aborted (PEC's receipt type); ``verdict``: what the
    bundle proves (docs/evidence.md)."""
    data = {
        "format": FORMAT,
        "type": kind,
        "verdict": verdict.kind,
        "exchange": verdict.tx,
        "issuer": issuer,
        "sender": verdict.sender,
        "recipient": verdict.recipient,
        "subject": verdict.subject,
        "times": {"sent": iso(verdict.sent_at), "event": iso(verdict.event_at),
                  "issued": iso(issued)},
        "original_sha256": verdict.m0_sha256,
        "evidence": {"file": evidence_file, "sha256": hashlib.sha256(evidence).hexdigest()},
        "statements": verdict.statements,
    }
    return json.dumps(data, indent=1, ensure_ascii=False).encode() + b"\n"
