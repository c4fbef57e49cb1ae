"""How the gateway's IMAP client (aioimaplib) sends the literal of an APPEND larger than
``CHUNK`` bytes: a piece at a time, each written only when the connection has taken the
ones before (flow control), instead of aioimaplib's one write of the whole mail, which
asyncio's TLS encrypts into one buffer as large as the mail and queues whole (about three
copies of a 25 MB original as it is delivered).  The server receives the same bytes.

Until the literal's last byte is written the connection carries nothing else: a command
sent on it before then (the LOGOUT after the APPEND timed out or was answered early)
drops the connection instead (the server gets a literal cut short, and never another
command's bytes inside it); a connection lost while the literal waits ends its task.
The APPEND's timeout starts again with each piece the connection takes: it is for a
connection that stops, not for a literal that takes longer than it to go.

Installed on import (gateway/imap.py imports it), only where aioimaplib has exactly what it
replaces; another aioimaplib runs as it is, with more memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aioimaplib.aioimaplib import CRLF, Abort, IMAP4ClientProtocol

log = logging.getLogger("tcms.gateway.imap")
CHUNK = 256 * 1024
_continuation: Callable[[Any, bytes], None] | None = getattr(
    IMAP4ClientProtocol, "_continuation", None)
_send: Callable[..., None] | None = getattr(IMAP4ClientProtocol, "send", None)
_connection_lost: Callable[[Any, Exception | None], None] | None = getattr(
    IMAP4ClientProtocol, "connection_lost", None)
_SENDING: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak ones)


def _writable(protocol: Any) -> asyncio.Event:
    """Set while the connection takes more (cleared by ``pause_writing``)."""
    event: asyncio.Event | None = protocol.__dict__.get("_tcms_writable")
    if event is None:
        event = protocol.__dict__["_tcms_writable"] = asyncio.Event()
        event.set()
    return event


def pause_writing(self: Any) -> None:
    _writable(self).clear()


def resume_writing(self: Any) -> None:
    _writable(self).set()


def connection_lost(self: Any, exc: Exception | None) -> None:
    assert _connection_lost is not None
    _writable(self).set()  # a literal waiting for the connection ends
    _connection_lost(self, exc)


def send(self: Any, line: str, scrub: str | None = None) -> None:
    """aioimaplib's command line, unless a literal is still being written: then the
    connection is dropped and the command fails (Abort)."""
    assert _send is not None
    literal: asyncio.Task[None] | None = self.__dict__.get("_tcms_literal")
    if literal is not None and not literal.done():
        if self.transport is not None:
            self.transport.abort()
        raise Abort("the connection was dropped: an APPEND literal was left unfinished")
    _send(self, line, scrub)


def continuation(self: Any, line: bytes) -> None:
    """aioimaplib's answer to a continuation request; a large APPEND literal is sent by a
    task, a piece at a time (the server answers the command once it has all of it)."""
    assert _continuation is not None
    command, data = self.pending_sync_command, self.literal_data
    if command is None or command.name != "APPEND" or data is None or len(data) <= CHUNK:
        _continuation(self, line)
        return
    self.literal_data = None
    task = asyncio.get_running_loop().create_task(send_literal(self, data))
    self.__dict__["_tcms_literal"] = task
    _SENDING.add(task)
    task.add_done_callback(_SENDING.discard)


def _progressed(command: Any) -> None:
    """The command's inactivity timer started again (aioimaplib's own, if it has one)."""
    ended, reset = getattr(command, "_event", None), getattr(command, "_reset_timer", None)
    if isinstance(ended, asyncio.Event) and not ended.is_set() and callable(reset):
        reset()


async def send_literal(protocol: Any, data: bytes) -> None:
    view, writable = memoryview(data), _writable(protocol)
    command = protocol.pending_sync_command  # the APPEND
    try:
        for at in range(0, len(view), CHUNK):
            await writable.wait()
            transport = protocol.transport
            if transport is None or transport.is_closing():
                return  # the connection is gone: the command fails with it
            transport.write(view[at:at + CHUNK])
            _progressed(command)
        protocol.transport.write(CRLF)
    except Exception:  # the command times out or fails with its connection
        log.exception("IMAP: sending an APPEND literal of %d bytes failed", len(data))


def _install() -> None:
    used = set(getattr(getattr(_continuation, "__code__", None), "co_names", ()))
    if {"pending_sync_command", "literal_data", "transport", "write"} <= used \
            and "pause_writing" not in IMAP4ClientProtocol.__dict__ \
            and _send is not None and _connection_lost is not None:
        IMAP4ClientProtocol._continuation = continuation
        IMAP4ClientProtocol.send = send
        IMAP4ClientProtocol.connection_lost = connection_lost
        IMAP4ClientProtocol.pause_writing = pause_writing
        IMAP4ClientProtocol.resume_writing = resume_writing


_install()
