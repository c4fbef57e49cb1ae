"""DATA for the gateway's aiosmtpd servers (submission, intake), read into one buffer.

aiosmtpd keeps a mail as a list with an object per line (about 136 bytes a line of 78:
1.75 times a base64 mail), joined at the end into one more copy: 2.75 times the mail at
once, for a 37 MB m3 over 100 MB.  ``OneBufferData`` reads the same lines into one
``bytearray``, un-dot-stuffing each as it comes, and hands that buffer to the handler as
the mail (``envelope.original_content`` and ``content``; the gateway's handlers read it as
bytes).  Replies, limits and the bytes the handler sees are aiosmtpd's own
(tests/test_smtpin.py runs both on the same input).
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import MISSING, SMTP, _DataState, syntax

log = logging.getLogger("mail.log")


class OneBufferData(SMTP):
    """aiosmtpd's SMTP session with DATA read into one buffer (for servers that do not
    decode the mail to text: ``decode_data`` false)."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if self._decode_data:  # a text mail: aiosmtpd's own reading
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        mail, state = await self._read_mail()
        if state is not _DataState.NOMINAL:
            if state is _DataState.TOO_LONG:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            else:
                await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = mail  # type: ignore[assignment]  # bytes-like, not copied
        self.envelope.original_content = mail  # type: ignore[assignment]
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks \
            else MISSING
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_mail(self) -> tuple[bytearray, _DataState]:
        """The lines up to the lone dot, each without the dot that stuffs it; emptied, and
        the state said, once a line or the whole is past its limit (read to the end all
        the same, as RFC 5321 4.2.5 implies)."""
        mail = bytearray()
        size, limit = 0, self.data_size_limit
        state = _DataState.NOMINAL
        line_size, starts_line = 0, True
        while self.transport is not None:  # pragma: nobranch
            try:
                line: bytes = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                log.info("Connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as e:  # a piece of a line over the stream limit
                if state is _DataState.NOMINAL:
                    state = _DataState.TOO_LONG
                mail.clear()
                line = await self._reader.read(e.consumed)
            if starts_line and line == b".\r\n":
                break
            size += len(line)
            if state is _DataState.NOMINAL and limit and size > limit:
                state = _DataState.TOO_MUCH
                mail.clear()
            ends = line.endswith(b"\r\n")
            line_size += len(line)
            if state is _DataState.NOMINAL:
                if ends and line_size > self.line_length_limit:
                    state = _DataState.TOO_LONG
                    mail.clear()
                elif starts_line and line[:1] == b".":
                    mail += memoryview(line)[1:]
                else:
                    mail += line
            starts_line = ends
            if ends:
                line_size = 0
        return mail, state
