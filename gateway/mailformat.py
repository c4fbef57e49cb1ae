"""Protocol messages as ordinary e-mail, and back (pure: no I/O).

A protocol message (m3, m4, m5, m6, a refusal) travels between gateways through the real
MTAs as a ``multipart/mixed`` mail:

- a ``text/plain`` part telling a person what the mail is (their TCMS gateway handles it);
- exactly one ``application/vnd.tcms.protocol+cbor`` part, base64, holding the message's
  exact bytes.

Headers: ``TCMS-Message`` (the step: m3, m4, m5, m6, refusal), ``TCMS-Transaction`` (the
transaction id in hex), ``Auto-Submitted: auto-generated`` (RFC 3834: no auto-replies).
``parse`` returns None for mail that is not TCMS's, and raises ``MailFormatError`` naming
the defect for TCMS mail that is malformed; the protocol core then checks the bytes.
"""

from __future__ import annotations

import binascii
import email.policy
import email.utils
import itertools
import os
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser

from tcms.protocol.messages import MessageError, message_type

MEDIA_MAIN, MEDIA_SUB = "application", "vnd.tcms.protocol+cbor"
KINDS = {"M3": "m3", "M4": "m4", "M5": "m5", "M6": "m6", "REFUSE": "refusal"}
EXPLAIN = {
    "m3": "a certified mail for you, sealed until you accept it",
    "m4": "the recipient's acknowledgement that the sealed mail arrived",
    "m5": "the key that opens the certified mail",
    "m6": "the recipient's signed receipt",
    "refusal": "the recipient's signed refusal",
}
MAX_PROTOCOL_BYTES = 64 * 1024 * 1024
# The full reading runs the email package on the whole mail, a few Python objects a line:
# about 1.8 us and 260 bytes a header line, 0.35 us a body line, 250 us a MIME part (40 MB
# of header lines without a blank line: 5.5 s and 780 MB; of tiny parts: 11 s; of empty
# lines: 14 s).  It reads only mail within these bounds, far above what a gateway writes
# (headers of under 1 KiB, two parts: three lines starting with "--", base64 lines of 78
# bytes) and what MTAs add (trace headers: a few KiB; Postfix keeps at most 100 KiB of
# headers, its header_size_limit); past them ``parse`` names the bound (MailFormatError).
MAX_FULL_HEAD = 256 * 1024  # bytes of header blocks in all: the mail's and its parts'
MAX_FULL_PARTS = 64  # lines starting with "--": delimiters, or what may be taken for one
MAX_FULL_LINES = 64 * 1024  # lines of any length; past them, MIN_FULL_LINE on average
MIN_FULL_LINE = 32  # bytes


class MailFormatError(ValueError):
    """A mail that claims to carry a TCMS protocol message is malformed."""


@dataclass(frozen=True)
class ProtocolMail:
    kind: str
    tx: str
    data: bytes
    sender: str
    recipient: str
    message_id: str


def build(data: bytes, *, sender: str, recipient: str, tx: str, domain: str,
          description: str = "") -> bytes:
    """The e-mail carrying one protocol message from ``sender`` to ``recipient``."""
    try:
        kind = KINDS[message_type(data)]
    except (MessageError, KeyError):
        raise MailFormatError("not a protocol message that travels by mail") from None
    writer = MailWriter(kind, len(data), sender=sender, recipient=recipient, tx=tx,
                        domain=domain, description=description)
    writer.write(data)
    return bytes(writer.finish())


LINE_BYTES = 57  # base64 lines of 76 characters, as the email package writes them


class MailWriter:
    """The mail ``build`` writes, for a message of ``size`` bytes given a piece at a time
    (``write``), into one buffer of the mail's exact size: a large m3 is never in memory
    whole besides its mail.  The email package writes the headers and the text part; the
    base64 lines of the message are written by hand where it put those of a random
    placeholder."""

    def __init__(self, kind: str, size: int, *, sender: str, recipient: str, tx: str,
                 domain: str, description: str = "") -> None:
        if kind not in EXPLAIN:
            raise MailFormatError(f"not a protocol message that travels by mail: {kind}")
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = sender
        msg["To"] = recipient
        msg["Subject"] = f"[TCMS] certified mail protocol ({kind})"
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = email.utils.make_msgid(idstring=f"tcms-{kind}", domain=domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg["TCMS-Message"] = kind
        msg["TCMS-Transaction"] = tx
        text = (f"This message carries {EXPLAIN[kind]}.\n"
                + (f"About: {description}\n" if description else "")
                + "\nYour organisation's TCMS gateway processes it automatically; you do"
                  " not need to open it.\nTCMS gives sender and recipient signed,"
                  " time-stamped evidence of certified mail.\n")
        msg.set_content(text)
        placeholder = os.urandom(LINE_BYTES)  # one line no text can hold by chance
        msg.add_attachment(placeholder, maintype=MEDIA_MAIN, subtype=MEDIA_SUB,
                           filename=f"tcms-{kind}.cbor")
        framed = msg.as_bytes()
        line = binascii.b2a_base64(placeholder, newline=False) + b"\r\n"
        at = framed.rfind(line)  # the last: the attachment is the last part
        if at < 0:
            raise MailFormatError("the mail's frame has no place for the message")
        full, rest = divmod(size, LINE_BYTES)
        lines = full * (4 * LINE_BYTES // 3 + 2) + (4 * -(-rest // 3) + 2 if rest else 0)
        self.mail = bytearray(at + lines + len(framed) - at - len(line))
        self.mail[:at] = framed[:at]
        self.mail[at + lines:] = framed[at + len(line):]
        self.pos, self.end = at, at + lines
        self.carry = b""

    def write(self, piece: bytes) -> None:
        """The next ``piece`` of the message: its whole lines go into the mail."""
        data = self.carry + piece if self.carry else piece
        whole = len(data) - len(data) % LINE_BYTES
        self._lines(data[:whole])
        self.carry = bytes(data[whole:])

    def _lines(self, data: bytes) -> None:
        if not data:
            return
        enc = binascii.b2a_base64(data, newline=False)
        width = 4 * -(-len(data) // 3) if len(data) < LINE_BYTES else 76
        out = b"\r\n".join([enc[i:i + width] for i in range(0, len(enc), width)]) + b"\r\n"
        if self.pos + len(out) > self.end:
            raise MailFormatError("the message is longer than its mail was made for")
        self.mail[self.pos:self.pos + len(out)] = out
        self.pos += len(out)

    def finish(self) -> bytearray:
        """The mail (MailFormatError if the pieces written were not ``size`` bytes)."""
        self._lines(self.carry)
        self.carry = b""
        if self.pos != self.end:
            raise MailFormatError("the message is shorter than its mail was made for")
        return self.mail


def is_protocol_mail(raw: bytes) -> bool:
    """A cheap look at the headers: is this TCMS protocol mail (to hide from users)?"""
    return _TCMS_LINE.search(_head(raw)) is not None  # not a list of its lines


def _head(raw: bytes) -> bytes:
    """The header block as these looks take it: up to the first CRLF CRLF, then up to the
    first LF LF in that (a copy of the headers only, never of the body)."""
    for blank in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(blank)
        raw = raw if at < 0 else raw[:at]
    return raw


_TCMS_LINE = re.compile(rb"(?:\A|[\r\n])tcms-message:", re.IGNORECASE)  # a line's start


_HINT = re.compile(rb"^tcms-(message|transaction):[ \t]*([A-Za-z0-9]{1,40})[ \t]*\r?$",
                   re.IGNORECASE | re.MULTILINE)


def hints(raw: bytes) -> tuple[str, str]:
    """(kind, tx) as the headers claim them, for the administrator's view of mail that
    may not parse: lower-case, a known kind or "", 32 hex digits or ""."""
    head = _head(raw[:64 * 1024])
    found = {m.group(1).lower(): m.group(2).decode().lower() for m in _HINT.finditer(head)}
    kind = found.get(b"message", "")
    tx = found.get(b"transaction", "")
    return (kind if kind in EXPLAIN else "",
            tx if len(tx) == 32 and all(c in "0123456789abcdef" for c in tx) else "")


def parse(raw: bytes) -> ProtocolMail | None:
    if not is_protocol_mail(raw):
        return None
    fast = _parse_fast(raw)
    return fast if fast is not None else _parse_full(raw)


def crlf_only(raw: bytes) -> bool:
    """Whether every line break in ``raw`` is a CRLF (no bare CR, no bare LF)."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\r") == crlf and raw.count(b"\n") == crlf


_HEAD_END = re.compile(rb"\r\n\r\n")
_CHUNK = 1 << 20


def _headers(block: bytes) -> Message | None:
    """The headers of ``block`` (a header block without its blank line), or None where the
    email package reads part of it as body (a "From " line at its end; mail gateways do
    not write) and so would read a different body."""
    msg = BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    return None if msg.get_payload() else msg


MAX_PARTS = 4  # gateways write two; a mail of more is read by the email package
MAX_HEAD = 64 * 1024  # gateways write a few hundred bytes; a larger block too


def _leaf_parts(raw: bytes, start: int, boundary: str) -> list[tuple[Message, int, int]] | None:
    """The parts of a multipart body that starts at ``start``: each one's headers, and
    where its body begins and ends in ``raw`` (no copy of a body); None for anything but
    CRLF-delimited leaf parts closed by the final delimiter."""
    delimiter = re.compile(rb"^--" + re.escape(boundary.encode("ascii")) + rb"(--)?[ \t]*\r$",
                           re.MULTILINE)
    marks: list[re.Match[bytes]] = []
    for mark in delimiter.finditer(raw, start):
        marks.append(mark)
        if mark.group(1) or len(marks) > MAX_PARTS:
            break
    if len(marks) < 2 or marks[-1].group(1) is None or delimiter.search(raw, marks[-1].end()):
        return None
    parts = []
    for this, after in itertools.pairwise(marks):
        begin, end = this.end() + 1, after.start() - 2  # the CRLF before a delimiter is its own
        head = _HEAD_END.search(raw, begin, min(end, begin + MAX_HEAD))
        if end < begin or raw[end:end + 2] != b"\r\n" or head is None:
            return None
        headers = _headers(raw[begin:head.start() + 2])
        if (headers is None or headers.defects
                or headers.get_content_maintype() in ("multipart", "message")):
            return None
        parts.append((headers, head.end(), end))
    return parts


# a blank line as the email package splits lines (CRLF, CR or LF; atomic groups: the CR
# and LF of one CRLF are one line break, never two)
BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")


# a header that makes a body a mail of its own, with headers of its own (in a digest, a
# part without Content-Type is one): gateways write none, and the bounds do not follow them
_EMBEDS = re.compile(rb"(?:^|[\r\n])content-type:[ \t\r\n\v\f\x1c-\x1f]*"
                     rb"(?:message/|multipart/digest)", re.IGNORECASE)


def _beyond_bounds(raw: bytes) -> str | None:
    """Which of the full reading's bounds ``raw`` is past, or None; in linear time without
    a copy of the mail.  Counted generously for the email package: every line starting
    with "--" (after a CR, LF or CRLF) as a delimiter, and all up to the first blank line
    after it as that part's header block."""
    lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
    if lines > MAX_FULL_LINES and lines > len(raw) // MIN_FULL_LINE:
        return (f"more than {MAX_FULL_LINES} lines, shorter than {MIN_FULL_LINE} bytes"
                " on average")
    dashes = [0] if raw.startswith(b"--") else []
    for after in (b"\n--", b"\r--"):  # a CRLF's "--" is counted once: after its LF
        at = raw.find(after)
        while at >= 0:
            dashes.append(at + 1)
            if len(dashes) > MAX_FULL_PARTS:
                return f"more than {MAX_FULL_PARTS} MIME parts (lines starting with --)"
            at = raw.find(after, at + 1)
    head = 0  # bytes of header blocks so far
    ends = -1  # where the last one ends
    for at in [0, *sorted(dashes)]:
        if at < ends:
            continue  # within the last header block: counted
        blank = BLANK_LINE.search(raw, at, at + MAX_FULL_HEAD - head + 4)
        ends = len(raw) if blank is None else blank.start()
        head += ends - at
        if head > MAX_FULL_HEAD:
            return (f"header block larger than {MAX_FULL_HEAD} bytes" if at == 0 else
                    f"MIME part header blocks larger than {MAX_FULL_HEAD} bytes in all")
        if _EMBEDS.search(raw, at, ends):
            return "a message/* or multipart/digest part (a mail in the mail)"
    return None


def _parse_fast(raw: bytes) -> ProtocolMail | None:
    """``_parse_full``'s result for the mail that gateways write (multipart/mixed of leaf
    parts, CRLF lines), read without the email package's copies of the whole mail (a list
    of its lines, then the body as text): only headers go through the email package, and
    the protocol part is decoded from ``raw`` itself.  None for any other mail or any
    defect: ``_parse_full`` then reads it and names the defect."""
    try:
        if not crlf_only(raw):
            return None  # a bare CR or LF: the email package's line rules apply
        if _beyond_bounds(raw) is not None:
            return None  # the full reading names the bound (both readings agree)
        head = _HEAD_END.search(raw, 0, MAX_HEAD)
        if head is None:
            return None
        msg = _headers(raw[:head.start() + 2])
        if msg is None:
            return None
        boundary = msg.get_boundary()
        if msg.defects or msg.get_content_type() != "multipart/mixed" or not boundary:
            return None
        kind = str(msg.get("TCMS-Message", "")).strip().lower()
        tx = str(msg.get("TCMS-Transaction", "")).strip().lower()
        if kind not in EXPLAIN or len(tx) != 32 or any(c not in "0123456789abcdef" for c in tx):
            return None
        parts = _leaf_parts(raw, head.end(), boundary)
        if parts is None:
            return None
        ours = [(p, b, e) for p, b, e in parts
                if p.get_content_maintype() == MEDIA_MAIN and p.get_content_subtype() == MEDIA_SUB]
        if len(ours) != 1:
            return None
        part, begin, end = ours[0]
        if str(part.get("Content-Transfer-Encoding", "")).lower() != "base64":
            return None
        body = memoryview(raw)[begin:end]
        if not all(body[i:i + _CHUNK].tobytes().isascii() for i in range(0, len(body), _CHUNK)):
            return None
        data = binascii.a2b_base64(body, strict_mode=False)
        del body
        if not data or len(data) > MAX_PROTOCOL_BYTES or KINDS.get(message_type(data)) != kind:
            return None
        return ProtocolMail(kind, tx, data, str(msg.get("From", "")), str(msg.get("To", "")),
                            str(msg.get("Message-ID", "")))
    except Exception:  # whatever it is, the full reading says what is wrong
        return None


def _parse_full(raw: bytes) -> ProtocolMail | None:
    beyond = _beyond_bounds(raw)
    if beyond is not None:
        raise MailFormatError(beyond)  # before the email package reads the whole mail
    try:
        # compat32: headers as plain strings, without the modern policy's costly parsing of
        # every header (only TCMS-Message, TCMS-Transaction and the part headers are read)
        msg = message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:
        raise MailFormatError("unparseable MIME") from None
    kind = str(msg.get("TCMS-Message", "")).strip().lower()
    if kind not in EXPLAIN:
        raise MailFormatError(f"unknown TCMS-Message {kind!r}")
    tx = str(msg.get("TCMS-Transaction", "")).strip().lower()
    if len(tx) != 32 or any(c not in "0123456789abcdef" for c in tx):
        raise MailFormatError("TCMS-Transaction must be 32 hex digits")
    parts = [p for p in msg.walk()
             if p.get_content_maintype() == MEDIA_MAIN and p.get_content_subtype() == MEDIA_SUB]
    if len(parts) != 1:
        raise MailFormatError(f"expected one protocol part, found {len(parts)}")
    part = parts[0]
    if str(part.get("Content-Transfer-Encoding", "")).lower() != "base64":
        raise MailFormatError("the protocol part must be base64")
    payload = part.get_payload()
    if not isinstance(payload, str):
        raise MailFormatError("the protocol part is not a leaf")
    try:
        data = binascii.a2b_base64(payload.encode("ascii"), strict_mode=False)
    except (binascii.Error, UnicodeEncodeError):
        raise MailFormatError("the protocol part is not valid base64") from None
    if not data or len(data) > MAX_PROTOCOL_BYTES:
        raise MailFormatError("the protocol part is empty or too large")
    try:
        actual = KINDS.get(message_type(data))
    except MessageError as exc:
        raise MailFormatError(f"the attachment is not a protocol message: {exc}") from None
    if actual != kind:
        raise MailFormatError(f"TCMS-Message says {kind} but the attachment is {actual}")
    return ProtocolMail(kind, tx, data, str(msg.get("From", "")), str(msg.get("To", "")),
                        str(msg.get("Message-ID", "")))
