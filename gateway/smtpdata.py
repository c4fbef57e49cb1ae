"""How the gateway's SMTP client (aiosmtplib) hands a mail to the MTA, without copies of a
large mail: installed on import (gateway/context.py imports it).

- The line-ending normalisation (lone CR and LF to CRLF, a CRLF at the end), which
  aiosmtplib runs twice per mail (for SIZE, then for DATA), returns a mail that has CRLF
  line endings only as it is, and any other with a few copies of it, instead of a
  regular-expression substitution that builds one piece per line (about six times a big
  mail's size, fifty times for one of short lines).
- DATA of a mail over ``CHUNK`` bytes is dot-stuffed and written a piece at a time (pieces
  end at a line end), each written only when the connection has taken the one before
  (flow control): aiosmtplib writes the whole mail at once, after two more copies of it
  (the dot-stuffing and the terminator), and asyncio's TLS then encrypts all of it into
  one buffer as large as the mail.

Both give the MTA the same bytes as aiosmtplib's own code (tests/test_smtpdata.py).  Each
is installed only where aiosmtplib has exactly what it replaces; another aiosmtplib runs
as it is, with more memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import aiosmtplib.protocol
import aiosmtplib.smtp
from aiosmtplib import SMTPDataError, SMTPServerDisconnected
from aiosmtplib.protocol import SMTPProtocol

from gateway.mailformat import crlf_only

CHUNK = 256 * 1024
PERIOD = re.compile(rb"(?m)^\.")  # a line that starts with a dot (RFC 5321 4.5.2)
_NORMALIZE = "normalize_message_line_endings"
_normalize: Callable[[bytes], bytes] | None = getattr(aiosmtplib.protocol, _NORMALIZE, None)
_execute_data: Callable[..., Any] | None = getattr(SMTPProtocol, "execute_data_command", None)


def normalized(message: bytes) -> bytes:
    """aiosmtplib's normalisation, without a copy of a mail that needs none."""
    if not crlf_only(message):
        # a CRLF, a lone CR and a lone LF are each one line end, as in aiosmtplib's regular
        # expression, which builds a piece per line (50 times a mail of short lines)
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def stuffed_pieces(message: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """The dot-stuffed ``message`` (every line starting with "." gets another), in pieces
    of about ``size`` bytes that each end at a line end (so a piece starts a line)."""
    view, pos, end = memoryview(message), 0, len(message)
    while pos < end:
        cut = pos + size
        nl = message.find(b"\n", cut) if cut < end else -1
        stop = end if nl < 0 else nl + 1
        yield PERIOD.sub(b"..", view[pos:stop])
        pos = stop


async def execute_data_command(self: SMTPProtocol, message: bytes,
                               timeout: float | None = None) -> Any:
    """aiosmtplib's DATA (``SMTPProtocol.execute_data_command``), a piece at a time for a
    mail over ``CHUNK`` bytes; a smaller one goes through aiosmtplib's own code."""
    assert _execute_data is not None
    if len(message) <= CHUNK:
        return await _execute_data(self, message, timeout=timeout)
    if self._command_lock is None:
        raise SMTPServerDisconnected("Server not connected")
    message = normalized(message)
    async with self._command_lock:
        self._response_pending = True  # as aiosmtplib marks a reply expected
        self.write(b"DATA\r\n")
        start = await self.read_response(timeout=timeout)
        if start.code != aiosmtplib.SMTPStatus.start_input:
            raise SMTPDataError(start.code, start.message)
        self._response_pending = True
        for piece in stuffed_pieces(message):
            self.write(piece)
            await self._drain_helper()
        self.write(b".\r\n")
        response = await self.read_response(timeout=timeout)
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise SMTPDataError(response.code, response.message)
    return response


def _install() -> None:
    for module in (aiosmtplib.protocol, aiosmtplib.smtp):
        if _normalize is not None and getattr(module, _NORMALIZE, None) is _normalize:
            setattr(module, _NORMALIZE, normalized)
    # the DATA replacement: only over the code it was written from (the names it uses)
    used = set(getattr(getattr(_execute_data, "__code__", None), "co_names", ()))
    if {"_command_lock", "_response_pending", "write", "read_response"} <= used \
            and callable(getattr(SMTPProtocol, "_drain_helper", None)):
        SMTPProtocol.execute_data_command = execute_data_command  # type: ignore[method-assign]


_install()
