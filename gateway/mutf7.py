"""IMAP's modified UTF-7 for mailbox names (RFC 3501 section 5.1.3). Strict by default: a name
decodes only if it is in the one canonical form (printable ASCII never encoded, no two encoded
runs in a row, no padding); anything else is a ValueError."""

from __future__ import annotations

import base64
import binascii
import re

_B64 = re.compile(rb"[A-Za-z0-9+,]*")


def encode(name: str) -> bytes:
    out = bytearray()
    run: list[str] = []

    def close_run() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(data, altchars=b"+,").rstrip(b"=") + b"-")
            run.clear()

    for ch in name:
        if " " <= ch <= "~":
            close_run()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            run.append(ch)
    close_run()
    return bytes(out)


def decode(raw: bytes, *, strict: bool = True) -> str:
    """The name ``raw`` stands for; not ``strict``: any decodable form (two encoded runs in a
    row, encoded printable ASCII) is read too."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x26:  # '&'
            if not 0x20 <= c <= 0x7E:
                raise ValueError("mailbox name is not valid mUTF-7")
            out.append(chr(c))
            i += 1
            continue
        m = _B64.match(raw, i + 1)
        assert m is not None
        if m.end() >= n or raw[m.end()] != 0x2D:  # '-'
            raise ValueError("mailbox name is not valid mUTF-7")
        chunk = m.group()
        if not chunk:
            out.append("&")
        else:
            try:
                data = base64.b64decode(chunk + b"=" * (-len(chunk) % 4), altchars=b"+,",
                                        validate=True)
                out.append(data.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError("mailbox name is not valid mUTF-7") from None
        i = m.end() + 1
    name = "".join(out)
    if strict and encode(name) != raw:
        raise ValueError("mailbox name is not in canonical mUTF-7")
    return name
