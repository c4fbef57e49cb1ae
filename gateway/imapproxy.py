"""The gateway's IMAP proxy: a user's own client logs in to the gateway with the usual
credentials and works on the real mailbox behind it.

- TLS on every listener: STARTTLS (LOGINDISABLED until then) and implicit TLS;
- LOGIN and AUTHENTICATE PLAIN are checked by logging in to the upstream server with the
  same credentials; from then on the session is relayed command by command;
- the folder holding protocol mail (``protocol_folder``) is hidden: it never appears in
  LIST, LSUB or STATUS answers, and a command naming it (SELECT, EXAMINE, STATUS, APPEND,
  COPY, MOVE, RENAME, DELETE, CREATE, SUBSCRIBE...) is answered ``NO [NONEXISTENT]``;
- literals (synchronising or not) work in both directions, and IDLE is relayed; the proxy
  acknowledges a client's synchronising literal itself and sends every command upstream
  whole, with non-synchronising literals (LITERAL+), so that it can read a command before
  it decides;
- COMPRESS is not offered (removed from every capability list, refused if asked).
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

log = logging.getLogger("tcms.gateway.imap-proxy")
LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n$")
MAX_LITERAL = 64 * 1024 * 1024
MAX_LINE = 64 * 1024
HIDDEN_CAPS = re.compile(rb" (COMPRESS=\S+|STARTTLS|LOGINDISABLED|AUTH=\S+)(?=[ \]\r])",
                         re.IGNORECASE)
# commands whose first argument is a mailbox, and those whose last one is
FIRST_ARG = {b"SELECT", b"EXAMINE", b"STATUS", b"APPEND", b"DELETE", b"RENAME", b"CREATE",
             b"SUBSCRIBE", b"UNSUBSCRIBE", b"GETQUOTAROOT", b"MYRIGHTS", b"GETACL",
             b"SETACL", b"DELETEACL", b"LISTRIGHTS", b"GETMETADATA", b"SETMETADATA"}
LAST_ARG = {b"COPY", b"MOVE", b"RENAME"}
PRE_AUTH_CAPS = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE"


@dataclass(frozen=True)
class ProxyConfig:
    upstream_host: str
    upstream_port: int
    hidden: str  # the protocol folder
    tls: ssl.SSLContext
    upstream_tls: ssl.SSLContext | None = None  # implicit TLS to the upstream server


class ProxyError(Exception):
    pass


# --- reading IMAP: lines with their literals ------------------------------------------------


async def read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise ProxyError("line too long") from None
    except asyncio.IncompleteReadError:
        raise ProxyError("connection closed") from None
    return line


def tokens(data: bytes) -> list[bytes]:
    """Atoms, quoted strings (unquoted) and literals of a whole command, in order; the
    parentheses of lists are left out.  Enough to find the mailboxes a command names."""
    out: list[bytes] = []
    i, n = 0, len(data)
    while i < n:
        c = data[i:i + 1]
        if c in (b" ", b"(", b")", b"\r", b"\n"):
            i += 1
        elif c == b'"':
            j, buf = i + 1, bytearray()
            while j < n and data[j:j + 1] != b'"':
                if data[j:j + 1] == b"\\":
                    j += 1
                buf += data[j:j + 1]
                j += 1
            out.append(bytes(buf))
            i = j + 1
        elif c == b"{" and (m := re.match(rb"\{(\d+)\+?\}\r\n", data[i:])):
            size = int(m.group(1))
            start = i + m.end()
            out.append(data[start:start + size])
            i = start + size
        else:
            j = i
            while j < n and data[j:j + 1] not in (b" ", b"(", b")", b"\r", b"\n"):
                j += 1
            out.append(data[i:j])
            i = j
    return out


def names_hidden(name: bytes, hidden: str, delimiter: str = ".") -> bool:
    h = hidden.encode()
    return name == h or name.startswith(h + delimiter.encode()) or name.startswith(h + b"/")


class Session:
    def __init__(self, cfg: ProxyConfig, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, implicit_tls: bool) -> None:
        self.cfg = cfg
        self.reader = reader
        self.writer = writer
        self.tls = implicit_tls
        self.user = ""
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None

    # -- to the client ---------------------------------------------------------------------

    async def say(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    def caps(self) -> str:
        if self.tls:
            return f"{PRE_AUTH_CAPS} AUTH=PLAIN"
        return f"{PRE_AUTH_CAPS} STARTTLS LOGINDISABLED"

    async def read_command(self) -> bytes:
        """One whole client command, its literals included; a synchronising literal is
        acknowledged here, and every literal is passed on as non-synchronising."""
        parts = bytearray()
        total = 0
        while True:
            line = await read_line(self.reader)
            m = LITERAL.search(line)
            if not m:
                parts += line
                return bytes(parts)
            size = int(m.group(1))
            total += size
            if total > MAX_LITERAL:
                raise ProxyError("literal too large")
            parts += line[: m.start()] + b"{%d+}\r\n" % size
            if not m.group(2):
                await self.say("+ go ahead")
            try:
                parts += await self.reader.readexactly(size)
            except asyncio.IncompleteReadError:
                raise ProxyError("connection closed in a literal") from None

    # -- before authentication -----------------------------------------------------------------

    async def greet_and_login(self) -> bool:
        await self.say(f"* OK [CAPABILITY {self.caps()}] TCMS gateway IMAP ready")
        while True:
            cmd = await self.read_command()
            parts = cmd.split(b" ", 2)
            tag = parts[0].decode(errors="replace")
            name = parts[1].strip().upper() if len(parts) > 1 else b""
            if name == b"CAPABILITY":
                await self.say(f"* CAPABILITY {self.caps()}")
                await self.say(f"{tag} OK CAPABILITY completed")
            elif name == b"NOOP" or name == b"ID":
                await self.say(f"{tag} OK {name.decode()} completed")
            elif name == b"LOGOUT":
                await self.say("* BYE logging out")
                await self.say(f"{tag} OK LOGOUT completed")
                return False
            elif name == b"STARTTLS":
                if self.tls:
                    await self.say(f"{tag} BAD TLS is already active")
                    continue
                await self.say(f"{tag} OK Begin TLS negotiation now")
                await self.writer.start_tls(self.cfg.tls)
                self.tls = True
            elif name in (b"LOGIN", b"AUTHENTICATE"):
                if not self.tls:
                    await self.say(f"{tag} NO [PRIVACYREQUIRED] Use STARTTLS first")
                    continue
                creds = await self._credentials(tag, name, cmd)
                if creds is None:
                    continue
                if await self._login_upstream(tag, *creds):
                    return True
            else:
                await self.say(f"{tag} BAD Log in first")

    async def _credentials(self, tag: str, name: bytes, cmd: bytes) -> tuple[str, str] | None:
        args = tokens(cmd)[2:]
        try:
            if name == b"LOGIN":
                if len(args) != 2:
                    await self.say(f"{tag} BAD LOGIN user password")
                    return None
                return args[0].decode(), args[1].decode()
            if not args or args[0].upper() != b"PLAIN":
                await self.say(f"{tag} NO [CANNOT] Only AUTHENTICATE PLAIN is offered")
                return None
            if len(args) > 1:
                blob = args[1]
            else:
                await self.say("+ ")
                blob = (await read_line(self.reader)).strip()
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
                                                 ssl=self.cfg.upstream_tls, limit=MAX_LINE)
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
        w.write(b"C CAPABILITY\r\n")
        await w.drain()
        caps = b""
        while True:
            line = await read_line(r)
            if line.startswith(b"* CAPABILITY"):
                caps = HIDDEN_CAPS.sub(b"", line.strip())[len(b"* CAPABILITY "):]
            if line.startswith(b"C "):
                break
        log.info("IMAP session for %s", self.user)
        await self.say(f"{tag} OK [CAPABILITY {caps.decode()}] Logged in")
        return True

    # -- relaying --------------------------------------------------------------------------

    def refuses(self, cmd: bytes) -> str | None:
        """Why the proxy answers this command itself (None: relay it)."""
        toks = tokens(cmd)
        if len(toks) < 2:
            return None
        name, args = toks[1].upper(), toks[2:]
        if name == b"UID" and args:
            name, args = args[0].upper(), args[1:]
        if name == b"COMPRESS":
            return "NO [CANNOT] COMPRESS is not offered"
        if name in (b"STARTTLS", b"LOGIN", b"AUTHENTICATE"):
            return "BAD Already logged in"
        named = []
        if name in FIRST_ARG and args:
            named.append(args[0])
        if name in LAST_ARG and args:
            named.append(args[-1])
        if any(names_hidden(n, self.cfg.hidden) for n in named):
            return "NO [NONEXISTENT] Unknown mailbox"
        return None

    def shown(self, line: bytes) -> bool:
        """Whether an upstream answer line may reach the client (not one about the hidden
        folder)."""
        if not line.startswith(b"* "):
            return True
        kind = line[2:9].upper()
        if not kind.startswith((b"LIST ", b"LSUB ", b"STATUS ")):
            return True
        toks = tokens(line)
        if kind.startswith(b"STATUS "):
            box = toks[2] if len(toks) > 2 else b""
        else:  # * LIST (flags) "delim" name
            flags_end = line.find(b")")
            rest = tokens(line[flags_end + 1:]) if flags_end > 0 else []
            box = rest[1] if len(rest) > 1 else b""
        return not names_hidden(box, self.cfg.hidden)

    async def client_to_upstream(self) -> None:
        assert self.up_writer is not None
        while True:
            cmd = await self.read_command()
            why = self.refuses(cmd)
            if why is not None:
                tag = cmd.split(b" ", 1)[0].decode(errors="replace")
                await self.say(f"{tag} {why}")
                continue
            self.up_writer.write(cmd)
            await self.up_writer.drain()

    async def upstream_to_client(self) -> None:
        assert self.up_reader is not None
        while True:
            line = await read_line(self.up_reader)
            chunk = bytearray(line)
            while m := LITERAL.search(line):  # a literal, then the rest of the line
                size = int(m.group(1))
                try:
                    chunk += await self.up_reader.readexactly(size)
                except asyncio.IncompleteReadError:
                    raise ProxyError("upstream closed in a literal") from None
                line = await read_line(self.up_reader)
                chunk += line
            if not self.shown(bytes(chunk)):
                continue
            if b"CAPABILITY" in chunk[:200]:
                chunk = bytearray(HIDDEN_CAPS.sub(b"", bytes(chunk)))
            self.writer.write(chunk)
            await self.writer.drain()

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
                with contextlib.suppress(asyncio.CancelledError, ProxyError, OSError):
                    await t
        except (ProxyError, OSError, ssl.SSLError) as exc:
            log.debug("IMAP session %s ended: %s", self.user or "(not logged in)", exc)
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
