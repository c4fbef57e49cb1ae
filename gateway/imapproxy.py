"""The gateway's IMAP proxy: a user's own client logs in to the gateway with the usual
credentials and works on the real mailbox behind it.

- TLS on every listener: STARTTLS (LOGINDISABLED until then) and implicit TLS; whatever a
  client sent after STARTTLS and before the handshake is dropped (the CVE-2011-0411 class);
- LOGIN and AUTHENTICATE PLAIN are checked by logging in to the upstream server with the
  same credentials; before that the proxy answers every command itself, within small limits
  (4 KB lines, 1 KB literals, 8 KB commands; past them: BYE and the connection closed);
- after login every command is read as the upstream server reads it (gateway/imapwire.py,
  modelled on Dovecot's imap-parser.c: where a command ends, which literals it has), vetted
  (gateway/imappolicy.py: only commands the server knows, never an unknown one, no CATENATE or
  URL command, no COMPRESS or NOTIFY) and sent upstream whole, with non-synchronising
  literals (LITERAL+; the proxy answers a client's synchronising literal itself). Commands stay
  below Dovecot's 64 KB line limit (APPEND's messages aside, up to 64 MB);
- the folder holding protocol mail (``protocol_folder``) is hidden: it never appears in LIST,
  LSUB or STATUS answers; a command naming it is sent upstream naming a folder that does not
  exist, so the client gets exactly the server's answer for a missing folder; CREATE or RENAME
  to it are refused whether it exists or not;
- only the capabilities the proxy supports are shown;
- ``ProxyConfig.on_filed`` is awaited after the server accepted a COPY or MOVE (UID too).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway import imapcommand
from gateway.imappolicy import (
    Answer,
    HiddenFolder,
    after_login,
    before_login,
    keep_capabilities,
    vet,
)
from gateway.imapwire import CommandReader

log = logging.getLogger("tcms.gateway.imap-proxy")
LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n$")
MAX_LITERAL = 64 * 1024 * 1024
MAX_LINE = 64 * 1024  # the longest line the proxy reads from the client or the server
UPSTREAM_LINE = 1024 * 1024  # the longest answer line accepted from the server
CHUNK = 64 * 1024
# Before login the proxy answers everything itself: a few KB is plenty for a login.
BEFORE_LOGIN = imapcommand.Limits(max_line=4096, max_literal=1024, max_text=8192, max_command=8192)
# After login: lines and commands stay below Dovecot's imap_max_line_length (64 KB, literals
# included for every command but APPEND): past it the server would skip the rest of a line.
AFTER_LOGIN = imapcommand.Limits(max_line=60 * 1024, max_literal=MAX_LITERAL,
                                 max_text=60 * 1024, max_command=MAX_LITERAL + 1024 * 1024)
PRE_AUTH_CAPS = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE"
Filed = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class ProxyConfig:
    upstream_host: str
    upstream_port: int
    hidden: str  # the protocol folder
    tls: ssl.SSLContext
    upstream_tls: ssl.SSLContext | None = None  # implicit TLS to the upstream server
    # after the server answered OK to a logged-in user's COPY or MOVE (UID too): the user and
    # the destination as the client named it (decoded from modified UTF-7)
    on_filed: Filed | None = None


LINGER_SECONDS, LINGER_BYTES = 2.0, 8 * 1024 * 1024  # after a BYE for a client over a limit


class ProxyError(Exception):
    pass


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """One line from the upstream server."""
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise ProxyError("line too long") from None
    except asyncio.IncompleteReadError:
        raise ProxyError("connection closed") from None
    return line


def tagged(tag: bytes | None, answer: str) -> str:
    return f"{(tag or b'*').decode('ascii')} {answer}"


class Session:
    def __init__(self, cfg: ProxyConfig, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, implicit_tls: bool) -> None:
        self.cfg = cfg
        self.reader = reader
        self.writer = writer
        self.tls = implicit_tls
        self.user = ""
        self.wire = CommandReader(before_login, BEFORE_LOGIN)
        self.folder = HiddenFolder(cfg.hidden)
        self.filing: dict[bytes, list[str]] = {}  # tag -> destinations of COPY/MOVE sent
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None

    # -- to the client ---------------------------------------------------------------------

    async def say(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def linger(self) -> None:
        """Before closing on a client that is still sending: read and drop what it sends
        for a moment (at most LINGER_SECONDS and LINGER_BYTES), so that the kernel does
        not answer the unread bytes with a reset that destroys the BYE just sent."""
        if self.writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write_eof()
        dropped, deadline = 0, asyncio.get_running_loop().time() + LINGER_SECONDS
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            while dropped < LINGER_BYTES:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                data = await asyncio.wait_for(self.reader.read(CHUNK), left)
                if not data:
                    break
                dropped += len(data)

    def caps(self) -> str:
        if self.tls:
            return f"{PRE_AUTH_CAPS} AUTH=PLAIN"
        return f"{PRE_AUTH_CAPS} STARTTLS LOGINDISABLED"

    async def event(self) -> imapcommand.Event:
        """The client's next command (or rejected command, or expected line); synchronising
        literals are acknowledged here. Past a limit: BYE, and the session ends."""
        while True:
            try:
                event = self.wire.next()
            except imapcommand.LimitExceeded as exc:
                await self.say(f"* BYE [TOOBIG] {str(exc).capitalize()}")
                await self.linger()
                raise ProxyError(str(exc)) from None
            if isinstance(event, imapcommand.Continue):
                await self.say("+ go ahead")
            elif event is not None:
                return event
            else:
                data = await self.reader.read(CHUNK)
                if not data:
                    raise ProxyError("connection closed")
                self.wire.feed(data)

    # -- before authentication -------------------------------------------------------------

    async def greet_and_login(self) -> bool:
        await self.say(f"* OK [CAPABILITY {self.caps()}] TCMS gateway IMAP ready")
        while True:
            cmd = await self.event()
            if isinstance(cmd, imapcommand.Rejected):
                await self.say(tagged(cmd.tag, cmd.answer))
                continue
            if not isinstance(cmd, imapcommand.Command):
                await self.say("* BAD Expected a command")
                continue
            tag, name = cmd.tag.decode("ascii"), cmd.name
            if name == b"CAPABILITY":
                await self.say(f"* CAPABILITY {self.caps()}")
                await self.say(f"{tag} OK CAPABILITY completed")
            elif name == b"NOOP":
                await self.say(f"{tag} OK NOOP completed")
            elif name == b"ID":
                await self.say("* ID NIL")
                await self.say(f"{tag} OK ID completed")
            elif name == b"LOGOUT":
                await self.say("* BYE logging out")
                await self.say(f"{tag} OK LOGOUT completed")
                return False
            elif name == b"STARTTLS":
                if self.tls:
                    await self.say(f"{tag} BAD TLS is already active")
                    continue
                await self.say(f"{tag} OK Begin TLS negotiation now")
                await self._start_tls()
            elif not self.tls:  # LOGIN or AUTHENTICATE
                await self.say(f"{tag} NO [PRIVACYREQUIRED] Use STARTTLS first")
            else:
                creds = await self._credentials(tag, cmd)
                if creds is not None and await self._login_upstream(tag, *creds):
                    self.wire.policy, self.wire.limits = after_login, AFTER_LOGIN
                    return True

    async def _start_tls(self) -> None:
        """TLS on this connection. Whatever the client sent after STARTTLS, before the
        handshake, is dropped: it was not protected (the CVE-2011-0411 class)."""
        loop = asyncio.get_running_loop()
        await self.writer.drain()
        reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = await loop.start_tls(self.writer.transport, protocol, self.cfg.tls,
                                         server_side=True)
        if transport is None:
            raise ProxyError("TLS handshake failed")
        dropped = self.wire.pending()
        if dropped:
            log.info("IMAP STARTTLS: %d bytes sent before the handshake dropped", dropped)
        self.reader = reader
        self.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self.wire = CommandReader(before_login, BEFORE_LOGIN)
        self.tls = True

    async def _credentials(self, tag: str, cmd: imapcommand.Command) -> tuple[str, str] | None:
        args = [a.value for a in cmd.args if not isinstance(a, imapcommand.ParenList)]
        if len(args) != len(cmd.args):
            await self.say(f"{tag} BAD malformed credentials")
            return None
        try:
            if cmd.name == b"LOGIN":
                if len(args) != 2:
                    await self.say(f"{tag} BAD LOGIN user password")
                    return None
                return args[0].decode(), args[1].decode()
            if not args or args[0].upper() != b"PLAIN" or len(args) > 2:
                await self.say(f"{tag} NO [CANNOT] Only AUTHENTICATE PLAIN is offered")
                return None
            if len(args) > 1:
                blob = args[1]
            else:
                await self.say("+ ")
                self.wire.expect_line()
                line = await self.event()
                if not isinstance(line, imapcommand.Line):
                    await self.say(f"{tag} BAD malformed credentials")
                    return None
                blob = line.data.strip()
            if blob == b"*":
                await self.say(f"{tag} BAD AUTHENTICATE cancelled")
                return None
            _, user, password = base64.b64decode(blob, validate=True).decode().split("\0")
            return user, password
        except (ValueError, binascii.Error, UnicodeDecodeError):
            await self.say(f"{tag} BAD malformed credentials")
            return None

    async def _login_upstream(self, tag: str, user: str, password: str) -> bool:
        try:
            r, w = await asyncio.open_connection(self.cfg.upstream_host,
                                                 self.cfg.upstream_port,
                                                 ssl=self.cfg.upstream_tls, limit=UPSTREAM_LINE)
            await read_line(r)  # greeting
            u, p = user.encode(), password.encode()
            w.write(b"L LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(u), u, len(p), p))
            await w.drain()
            while True:
                line = await read_line(r)
                if line.startswith(b"L "):
                    break
        except (OSError, ProxyError) as exc:
            log.warning("upstream IMAP unavailable for %s: %s", user, exc)
            await self.say(f"{tag} NO [UNAVAILABLE] The mail server is unavailable")
            return False
        if not line.startswith(b"L OK"):
            w.close()
            log.info("IMAP login refused for %r", user)
            await self.say(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed")
            return False
        self.user, self.up_reader, self.up_writer = user.lower(), r, w
        w.write(b'C CAPABILITY\r\nD LIST "" ""\r\n')
        await w.drain()
        caps = b""
        while True:
            line = await read_line(r)
            if line.startswith(b"* CAPABILITY"):
                caps = keep_capabilities(line.strip())[len(b"* CAPABILITY "):]
            elif line.startswith(b"* LIST "):
                self.folder = self.folder.with_delimiter_from(line)
            elif line.startswith(b"D "):
                break
        log.info("IMAP session for %s", self.user)
        await self.say(f"{tag} OK [CAPABILITY {caps.decode()}] Logged in")
        return True

    # -- relaying --------------------------------------------------------------------------

    async def client_to_upstream(self) -> None:
        assert self.up_writer is not None
        while True:
            cmd = await self.event()
            if isinstance(cmd, imapcommand.Rejected):
                await self.say(tagged(cmd.tag, cmd.answer))
                continue
            if isinstance(cmd, imapcommand.Line):  # the end of IDLE, whatever the client said
                self.up_writer.write(b"DONE\r\n")
                await self.up_writer.drain()
                continue
            assert isinstance(cmd, imapcommand.Command)
            verdict = vet(cmd, self.folder)
            if isinstance(verdict, Answer):
                await self.say(tagged(cmd.tag, verdict.text))
                continue
            if verdict.filed_to is not None:
                self.filing.setdefault(cmd.tag, []).append(verdict.filed_to)
            self.up_writer.writelines(verdict.wire)
            await self.up_writer.drain()
            if cmd.name == b"IDLE":
                self.wire.expect_line()

    async def upstream_to_client(self) -> None:
        assert self.up_reader is not None
        while True:
            line = await read_line(self.up_reader)
            chunk = bytearray(line)
            while m := LITERAL.search(line):  # a literal, then the rest of the line
                size = int(m.group(1))
                if size > MAX_LITERAL:
                    raise ProxyError("upstream literal too large")
                try:
                    chunk += await self.up_reader.readexactly(size)
                except asyncio.IncompleteReadError:
                    raise ProxyError("upstream closed in a literal") from None
                line = await read_line(self.up_reader)
                chunk += line
            answer = bytes(chunk)
            if self.folder.listed(answer):
                continue
            answer = self.folder.restore(answer)
            if len(answer) == len(line) and b"CAPABILITY" in answer[:200].upper():
                answer = keep_capabilities(answer)  # one line: no literal data is touched
            self.writer.write(answer)
            await self.writer.drain()
            if not answer.startswith((b"*", b"+")):
                await self._tagged_answer(answer)

    async def _tagged_answer(self, answer: bytes) -> None:
        tag, _, rest = answer.partition(b" ")
        pending = self.filing.get(tag)
        if not pending:
            return
        destination = pending.pop(0)
        if not pending:
            del self.filing[tag]
        if rest[:3].upper() == b"OK " and self.cfg.on_filed is not None:
            try:
                await self.cfg.on_filed(self.user, destination)
            except Exception:
                log.error("on_filed for %s (%s) failed", self.user, destination,
                          exc_info=True)

    async def run(self) -> None:
        try:
            if not await self.greet_and_login():
                return
            tasks = [asyncio.create_task(self.client_to_upstream()),
                     asyncio.create_task(self.upstream_to_client())]
            # either side closing (LOGOUT, a dropped client, the server's BYE) ends both
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            # every task's outcome is retrieved: a session's end is not an error
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, ProxyError | OSError | asyncio.CancelledError):
                    log.debug("IMAP session %s ended: %s", self.user, outcome)
                elif isinstance(outcome, BaseException):
                    log.error("IMAP session %s failed: %r", self.user, outcome)
        except (ProxyError, OSError, ssl.SSLError) as exc:
            log.debug("IMAP session %s ended: %s", self.user or "(not logged in)", exc)
        except Exception:  # a bug: logged, the connection closed, nothing said to the client
            log.error("IMAP session %s failed", self.user or "(not logged in)", exc_info=True)
        finally:
            for w in (self.up_writer, self.writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await w.wait_closed()


async def start(cfg: ProxyConfig, *, starttls: tuple[str, int],
                implicit: tuple[str, int] | None) -> list[asyncio.Server]:
    """Listen: STARTTLS on ``starttls``, implicit TLS on ``implicit``."""

    def handler(implicit_tls: bool) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                Awaitable[None]]:
        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await Session(cfg, r, w, implicit_tls).run()
        return serve

    servers = [await asyncio.start_server(handler(False), *starttls, limit=MAX_LINE)]
    if implicit:
        servers.append(await asyncio.start_server(handler(True), *implicit, ssl=cfg.tls,
                                                  limit=MAX_LINE))
    return servers
