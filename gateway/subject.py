"""The certification tag in a Subject: find it, and strip it from what the recipient sees
(pure: no I/O).  The tag matches in any case, also inside RFC 2047 encoded-words."""

from __future__ import annotations

import email.parser
import email.policy
import functools
import re
import unicodedata
from email.header import Header

from gateway.mailformat import BLANK_LINE

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def subject_of(content: bytes) -> str:
    """The decoded Subject of a raw mail ("" if none), read from its header block only."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
        header_block(content))
    return str(headers.get("Subject", ""))


def header_block(content: bytes) -> bytes:
    """The headers of a mail up to its first blank line: what the email package's header
    parser reads of it, without decoding the whole mail to text (a copy of it, up to four
    bytes a character for 8-bit mail: 100 MB for a 25 MB attachment)."""
    blank = BLANK_LINE.search(content)  # the first, as the email package splits lines
    return content if blank is None else content[:blank.end()]


# what must never reach a header built from the subject: line breaks of any kind
# (str.splitlines() breaks at all of these), NUL and the other control characters
_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def subject_error(subject: str) -> str | None:
    """Why a decoded Subject cannot be carried into the headers the protocol builds (a line
    break, NUL or other control character: only TAB is allowed), or None if it can."""
    for c in subject:
        if c in _BREAKS:
            return f"the Subject holds a line break (U+{ord(c):04X})"
        if c != "\t" and unicodedata.category(c) == "Cc":
            return f"the Subject holds a control character (U+{ord(c):04X})"
    return None


def has_tag(subject: str, tag: str) -> bool:
    """Whether a decoded Subject carries ``tag`` (in any case)."""
    return re.search(re.escape(tag), subject, re.IGNORECASE) is not None


def may_carry_tag(block: bytes, tag: str) -> bool:
    """Whether the Subject in a header block may carry ``tag``, told without parsing the
    headers (too many for the email package to parse in time): False only where it surely
    does not.  Its decoding could make the tag of an RFC 2047 encoded-word or of 8-bit
    bytes (then: True); of ASCII, only the tag itself, in any case, folded or not."""
    if not tag.isascii() or not block.isascii() or b"=?" in block:
        return True
    return _spelled(tag).search(block) is not None


@functools.lru_cache(maxsize=8)
def _spelled(tag: str) -> re.Pattern[bytes]:
    """The ASCII ``tag`` in a header block: any case, a line break (which unfolding
    removes; two would be a blank line) between any two of its characters."""
    return re.compile(rb"(?:\r\n|\r|\n)?".join(re.escape(c.encode()) for c in tag),
                      re.IGNORECASE)


def is_tagged(content: bytes, tag: str) -> bool:
    """Whether the Subject carries ``tag`` (case-insensitive, decoded from RFC 2047)."""
    return has_tag(subject_of(content), tag)


def without_tag(subject: str, tag: str) -> str:
    stripped = re.sub(r"\s*" + re.escape(tag) + r"\s*", " ", subject, flags=re.IGNORECASE)
    return " ".join(stripped.split())


def _split_head(raw: bytes) -> tuple[bytes, bytes, memoryview]:
    """Header block, blank line, and the body as a view (not a copy of a large mail)."""
    m = _HEADER_END.search(raw)
    if m is None:
        return raw, b"", memoryview(b"")
    return raw[: m.start()], raw[m.start(): m.end()], memoryview(raw)[m.end():]


def strip_tag(raw: bytes, tag: str) -> bytes:
    """The mail as the recipient should see it: the tag removed from the Subject, Bcc
    removed; every other byte (headers, body, attachments) as it was."""
    head, sep, body = _split_head(raw)
    eol = b"\r\n" if b"\r\n" in head else b"\n"
    fields: list[list[bytes]] = []
    for line in head.split(eol):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    out: list[bytes] = []
    for field in fields:
        name = field[0].split(b":", 1)[0].strip().lower()
        if name == b"bcc":
            continue
        if name == b"subject":
            subject = without_tag(subject_of(eol.join(field) + eol + eol), tag)
            try:
                subject.encode("ascii")
                line = b"Subject: " + subject.encode("ascii")
            except UnicodeEncodeError:
                line = b"Subject: " + Header(subject, "utf-8").encode().encode("ascii")
            out.append(line)
            continue
        out.append(eol.join(field))
    return eol.join(out) + sep + body
