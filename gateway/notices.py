"""The mails a person sees (pure: no I/O): the notice of a sealed certified mail, the
original once it may be read, the sender's receipt with its evidence bundle, and the
status mails (sent for certification, refused, aborted, failed, not certifiable).

Each carries ``TCMS-Delivery-Id`` (so a retried APPEND never shows twice) and
``Auto-Submitted``.  A notice is signed by the gateway (``TCMS-Notice-Signature`` over
the transaction, the user and the role), so a mail that merely looks like a notice can
never accept or refuse anything.
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
from dataclasses import dataclass
from email.message import EmailMessage

from tcms.crypto import CryptoError, sign, verify
from tcms.identity import Identity, Party
from tcms.protocol.fields import one_line

DELIVERY_ID = "TCMS-Delivery-Id"
NOTICE = "TCMS-Notice"
NOTICE_SIG = "TCMS-Notice-Signature"
EVIDENCE_MEDIA = ("application", "vnd.tcms.evidence+json")
# header lines up to RFC 5322's hard limit: the stdlib's folding at 78 would start a long
# Subject with a space in many clients
POLICY = email.policy.SMTP.clone(max_line_length=998)
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


def notice(info: NoticeInfo, gateway: Identity, delivery_id: str) -> bytes:
    """What R sees when a sealed certified mail (m3) arrives."""
    msg = _base(delivery_id, _domain(info.owner), info.owner,
                f"Certified mail from {info.sender}: {info.subject} (accept or refuse)")
    msg[NOTICE] = info.tx
    msg[NOTICE_SIG] = sign_notice(gateway, info.tx, info.owner)
    msg["Reply-To"] = info.accept_address
    msg.set_content(
        f"{info.sender} has sent you a certified mail.\n\n"
        f"  Subject:      {info.subject}\n"
        f"  From:         {info.sender}\n"
        f"  Size:         {info.size} bytes\n"
        f"  Time-stamped: {info.stamped} (trusted RFC 3161 time stamp)\n"
        f"  Answer by:    {info.accept_by}\n"
        f"  Exchange:     {info.tx}\n\n"
        "The mail stays sealed until you accept it. When you accept, the sender receives a\n"
        "signed receipt saying that you received it; when you refuse, the sender learns it\n"
        "at once and you never see the content.\n\n"
        "To ACCEPT, either\n"
        f"  - move this message into the folder {info.accept_folder}, or\n"
        f"  - reply to it (the reply goes to {info.accept_address}).\n"
        "To REFUSE, either\n"
        f"  - move this message into the folder {info.refuse_folder}, or\n"
        f"  - send any mail to {info.refuse_address}.\n\n"
        "If you do nothing before the deadline, the exchange ends and the sender is told.\n")
    return msg.as_bytes()


def delivered(m0: bytes, *, tx: str, stamped: str, delivered_at: str, how: str,
              delivery_id: str) -> bytes:
    """The original mail, every byte as sent, behind headers saying it was certified."""
    eol = b"\r\n" if b"\r\n" in m0[:4096] else b"\n"
    head = (f"TCMS-Certified: yes; exchange={tx}; time-stamped={stamped}; "
            f"delivered={delivered_at}; by={how}").encode()
    return (head + eol + f"{DELIVERY_ID}: {delivery_id}".encode() + eol + m0)


def receipt(*, owner: str, peer: str, subject: str, tx: str, verdict: str,
            statements: list[str], bundle: str, delivery_id: str) -> bytes:
    """The sender's receipt: readable text plus the evidence bundle (``tcms verify``)."""
    msg = _base(delivery_id, _domain(owner), owner,
                f"Receipt: {peer} received \"{subject}\"")
    lines = "\n".join(f"  - {s}" for s in statements)
    msg.set_content(
        f"Your certified mail \"{subject}\" to {peer} was received.\n\n"
        f"Evidence (verdict: {verdict}):\n{lines}\n\n"
        f"Exchange: {tx}\n\n"
        "The attached file is the evidence bundle. Anyone can check it offline with the\n"
        "TTP's public keys and the time-stamp authority's certificate:\n"
        "    tcms verify evidence.json --trust trust.json\n")
    msg.add_attachment(bundle.encode(), maintype=EVIDENCE_MEDIA[0], subtype=EVIDENCE_MEDIA[1],
                       filename=f"evidence-{tx[:12]}.json")
    return msg.as_bytes()


STATUS_SUBJECTS = {
    "submitted": "Sent for certification: \"{subject}\" to {peer}",
    "refused": "Refused: {peer} refused \"{subject}\"",
    "aborted": "Not delivered: the certified mail \"{subject}\" to {peer} was withdrawn",
    "failed": "Certification failed: \"{subject}\" ({peer})",
    "expired": "Expired: the certified mail \"{subject}\" from {peer} was not answered",
    "withdrawn": "Withdrawn: {peer} withdrew the certified mail \"{subject}\"",
    "uncertifiable": "Not sent: \"{subject}\" cannot be certified for {peer}",
}


def status(kind: str, *, owner: str, peer: str, subject: str, text: str, tx: str,
           delivery_id: str, bundle: str | None = None) -> bytes:
    """A short status mail; with ``bundle``, the evidence is attached."""
    msg = _base(delivery_id, _domain(owner), owner,
                STATUS_SUBJECTS[kind].format(subject=subject, peer=peer))
    body = text[:1].upper() + text[1:] + ".\n"
    if tx:
        body += f"\nExchange: {tx}\n"
    if kind == "uncertifiable":
        body += ("\nThe mail was NOT sent to this recipient: TCMS never sends a mail that asked"
                 "\nfor certification without it.\n")
    msg.set_content(body)
    if bundle is not None:
        msg.add_attachment(bundle.encode(), maintype=EVIDENCE_MEDIA[0],
                           subtype=EVIDENCE_MEDIA[1], filename=f"evidence-{tx[:12]}.json")
    return msg.as_bytes()
