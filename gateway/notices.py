"""The mails a person sees (pure: no I/O): the notice of a sealed certified mail, the
original once it may be read, the sender's receipt with its evidence bundle and its
summary (gateway/certdata.py), and the status mails (sent for certification, refused,
aborted, failed, expired, withdrawn, not certifiable).

Every mail the gateway writes is worded by the organisation's templates in the user's
language (gateway/wording.py), text and HTML, and S/MIME signed with the gateway's
certificate (gateway/smime.py).  The original is delivered as sent: no template, no
wrapper, no signature of the gateway's (its own signature, if any, stays intact).

Each carries ``TCMS-Delivery-Id`` (so a retried APPEND never shows twice) and
``Auto-Submitted``.  A notice is signed by the gateway (``TCMS-Notice-Signature`` over
the transaction, the user and the role), so a mail that merely looks like a notice can
never accept or refuse anything.
"""

from __future__ import annotations

import base64
import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage, MIMEPart
from typing import Any

from gateway import certdata, smime
from gateway.signingcert import Signer
from gateway.wording import Wording, language_of
from tcms.crypto import CryptoError, sign, verify
from tcms.evidence import Verdict
from tcms.identity import Identity, Party
from tcms.protocol.fields import one_line

DELIVERY_ID = "TCMS-Delivery-Id"
NOTICE = "TCMS-Notice"
NOTICE_SIG = "TCMS-Notice-Signature"
EVIDENCE_MEDIA = ("application", "vnd.tcms.evidence+json")
# header lines up to RFC 5322's hard limit: the stdlib's folding at 78 would start a long
# Subject with a space in many clients
POLICY = smime.POLICY
MAX_SUBJECT = 300


@dataclass(frozen=True)
class NoticeInfo:
    tx: str
    owner: str
    sender: str
    subject: str
    size: int
    stamped: str  # the TSS time of m3, UTC text
    accept_by: str
    accept_folder: str
    refuse_folder: str
    accept_address: str
    refuse_address: str


def _base(delivery_id: str, domain: str, to: str, subject: str) -> EmailMessage:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = f"TCMS certified mail <postmaster@{domain}>"
    msg["To"] = to
    subject = one_line(subject, 10_000)  # never a control character or a line break
    msg["Subject"] = subject if len(subject) <= MAX_SUBJECT else subject[:MAX_SUBJECT] + "…"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(idstring="tcms", domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg[DELIVERY_ID] = delivery_id
    return msg


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1]


def sign_notice(gateway: Identity, tx: str, owner: str) -> str:
    return base64.b64encode(sign(gateway.sig_key, "NOTICE", tx, owner)).decode()


def notice_is_genuine(gateway: Party, tx: str, owner: str, signature: str) -> bool:
    try:
        verify(gateway.sig_pk, base64.b64decode(signature, validate=True), "NOTICE", tx, owner)
    except (CryptoError, ValueError):
        return False
    return True


def delivered(m0: bytes, *, tx: str, stamped: str, delivered_at: str, how: str,
              delivery_id: str) -> bytes:
    """The original mail, every byte as sent, behind headers saying it was certified."""
    eol = b"\r\n" if b"\r\n" in m0[:4096] else b"\n"
    head = (f"TCMS-Certified: yes; exchange={tx}; time-stamped={stamped}; "
            f"delivered={delivered_at}; by={how}").encode()
    return (head + eol + f"{DELIVERY_ID}: {delivery_id}".encode() + eol + m0)



# --- the mails the gateway writes: the organisation's words, signed -------------------------


@dataclass(frozen=True)
class Writer:
    """Writes each mail in its user's language (gateway/wording.py), as text and HTML
    alternatives, and signs it with the gateway's certificate (gateway/smime.py)."""

    signer: Signer
    wording: Wording
    language: str = "en"
    languages: Mapping[str, str] = field(default_factory=dict)

    def language_of(self, owner: str) -> str:
        return language_of(owner, self.language, dict(self.languages))

    def _mail(self, kind: str, owner: str, delivery_id: str, values: dict[str, Any],
              attachments: Sequence[tuple[bytes, tuple[str, str], str]] = (),
              headers: Sequence[tuple[str, str]] = ()) -> bytes:
        words = self.wording.render(self.language_of(owner), kind, values)
        outer = _base(delivery_id, _domain(owner), owner, words.subject)
        for name, value in headers:
            outer[name] = value
        inner = MIMEPart(policy=POLICY)
        inner.set_content(words.text, cte="quoted-printable")
        inner.add_alternative(words.html, subtype="html", cte="quoted-printable")
        for data, (main, sub), filename in attachments:
            inner.add_attachment(data, maintype=main, subtype=sub, filename=filename)
        return smime.signed(outer, inner, self.signer)

    def notice(self, info: NoticeInfo, gateway: Identity, delivery_id: str) -> bytes:
        """What R sees when a sealed certified mail (m3) arrives."""
        return self._mail("notice", info.owner, delivery_id, asdict(info), headers=[
            (NOTICE, info.tx), (NOTICE_SIG, sign_notice(gateway, info.tx, info.owner)),
            ("Reply-To", info.accept_address)])

    def _evidence(self, kind: str, owner: str, tx: str, bundle: str, verdict: Verdict | None,
                  issued: int) -> tuple[list[tuple[bytes, tuple[str, str], str]], str, str | None]:
        name = f"evidence-{tx[:12]}.json"
        parts = [(bundle.encode(), EVIDENCE_MEDIA, name)]
        if verdict is None:
            return parts, name, None
        parts.append((certdata.summary(kind=kind, verdict=verdict, issuer=f"postmaster@"
                                       f"{_domain(owner)}", issued=issued, evidence_file=name,
                                       evidence=bundle.encode()),
                       certdata.MEDIA, certdata.FILENAME))
        return parts, name, certdata.FILENAME

    def receipt(self, *, owner: str, peer: str, subject: str, tx: str, verdict: Verdict,
                bundle: str, delivery_id: str, issued: int) -> bytes:
        """The sender's receipt: the evidence bundle (``tcms verify``) and its summary."""
        parts, name, summary = self._evidence("receipt", owner, tx, bundle, verdict, issued)
        return self._mail("receipt", owner, delivery_id, {
            "owner": owner, "peer": peer, "subject": subject, "tx": tx,
            "verdict": verdict.kind, "statements": verdict.statements,
            "evidence_file": name, "summary_file": summary}, parts)

    def status(self, kind: str, *, owner: str, peer: str, subject: str, text: str, tx: str,
               delivery_id: str, issued: int, bundle: str | None = None,
               verdict: Verdict | None = None) -> bytes:
        """A short status mail; with ``bundle``, the evidence is attached (and with its
        ``verdict``, the summary)."""
        parts, name, summary = ([], None, None) if bundle is None else \
            self._evidence(kind, owner, tx, bundle, verdict, issued)
        return self._mail(kind, owner, delivery_id, {
            "owner": owner, "peer": peer, "subject": subject, "tx": tx, "detail": text,
            "evidence_file": name, "summary_file": summary}, parts)

    def sample(self, kind: str, owner: str, values: dict[str, Any]) -> bytes:
        """A mail of ``kind`` made of ``values`` alone (`tcms mail preview`)."""
        return self._mail(kind, owner, "preview", values)
