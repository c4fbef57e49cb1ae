"""The gateway's intake: the organisation's MTA hands it protocol mail over LMTP.

Each gateway has one protocol address per domain (``tcms-gateway@example.org`` by
default), registered at the DC; peers send m3-m6 and refusals there, never to users.
The MTA routes that one address here (Postfix: one ``transport_maps`` line,
``tcms-gateway@example.org lmtp:inet:127.0.0.1:8024``).  The listener

- accepts connections only from the configured MTA hosts (``intake_clients``),
- accepts only the gateway's protocol addresses as recipients,
- refuses mail larger than an m3 carrying a mail of ``max_message_size`` can be,
- answers 250, per recipient as LMTP requires, only once the mail is stored in SQL
  (table ``inbound``): a crash after that loses nothing, and the worker handles it.

It never parses the mail: whatever arrives is stored and handled by the worker in
isolation (gateway/inbound.py), so a malformed mail costs one row, never the listener.
The one exception is `tcms doctor`'s probe (a header ``TCMS-Probe: <32 hex digits>``):
it is recorded as an ``inbound`` row of status ``probe``, with no content, for the doctor
to see that the MTA routes protocol mail here; it never becomes work or protocol state.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import insert

from gateway import metrics
from gateway.queue import Queues
from gateway.smtpin import OneBufferData
from tcms.store import models as m

log = logging.getLogger("tcms.gateway.intake")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROBE_HEADER = "TCMS-Probe"
_PROBE = re.compile(rb"^TCMS-Probe:[ \t]*([0-9a-f]{32})[ \t]*\r?$", re.I | re.M)


def probe_nonce(raw: bytes) -> str | None:
    """The nonce of a doctor's probe (a header in the first 8 KB of the header section)."""
    head = raw[:8192].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _PROBE.search(head)
    return found.group(1).decode().lower() if found else None


def max_size(max_message_size: int) -> int:
    """The largest protocol mail to take for a mail of ``max_message_size``: an m3 carries
    c (at most 12 % of padding over m0) in base64 (4/3), with a little MIME around it."""
    return max_message_size * 3 // 2 + 1024 * 1024


def networks(clients: Iterable[str]) -> list[Network]:
    """``127.0.0.1``, ``10.0.0.0/8``, ``::1``... as networks (ValueError if malformed)."""
    return [ipaddress.ip_network(c.strip(), strict=False) for c in clients]


class IntakeHandler:
    def __init__(self, queues: Queues, addresses: Iterable[str], clients: Iterable[str], *,
                 on_stored: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.queues = queues
        self.addresses = {a.lower() for a in addresses}
        self.clients = networks(clients)
        self.on_stored = on_stored
        self.clock = clock

    def allowed(self, session: Session) -> bool:
        peer = session.peer
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        try:
            ip = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.clients)

    async def handle_MAIL(self, server: LMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self.allowed(session):
            log.warning("intake: refused a mail from %s (not an allowed MTA host)",
                        session.peer[0] if session.peer else "?")
            return "550 5.7.1 This host may not hand protocol mail to the gateway"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: LMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.lower() not in self.addresses:
            return "550 5.1.1 Not a TCMS protocol address of this gateway"
        if address.lower() in (r.lower() for r in envelope.rcpt_tos):
            return "250 2.1.5 OK (again)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        peer = str(session.peer[0]) if session.peer else "?"
        nonce = probe_nonce(raw)
        if nonce is not None:
            return await self._probe(nonce, envelope, rcpts, peer, len(raw))
        try:
            item = await self.queues.add_inbound(mail_from=str(envelope.mail_from or ""),
                                                 rcpt=rcpts, peer=peer, raw=raw,
                                                 now=int(self.clock()))
        except Exception:  # the database is unavailable: the MTA keeps it and retries
            log.exception("intake: could not store a protocol mail of %d bytes", len(raw))
            return "\r\n".join("451 4.3.0 Not stored; try again later" for _ in rcpts)
        log.info("intake: protocol mail #%d stored (%d bytes from %s)", item, len(raw), peer)
        metrics.MAILS_IN.labels("protocol").inc()
        if self.on_stored is not None:
            self.on_stored()
        # LMTP: one answer per recipient, each saying it is stored
        return "\r\n".join(f"250 2.0.0 <{r}> stored as #{item}" for r in rcpts)


    async def _probe(self, nonce: str, envelope: Envelope, rcpts: list[str], peer: str,
                     size: int) -> str:
        """`tcms doctor`'s probe came round through the MTA: say so in SQL, keep nothing."""
        now = int(self.clock())
        try:
            async with self.queues.store.transaction() as conn:
                await conn.execute(insert(m.inbound).values(
                    received_at=now, mail_from=str(envelope.mail_from or "")[:254],
                    rcpt=json.dumps(rcpts), peer=peer[:64], raw=b"", size=size,
                    kind="probe", tx=nonce, status="probe", finished_at=now))
        except Exception:
            log.exception("intake: could not record the probe %s", nonce)
            return "\r\n".join("451 4.3.0 Not recorded; try again later" for _ in rcpts)
        log.info("intake: tcms doctor's probe %s came through the MTA from %s", nonce, peer)
        return "\r\n".join(f"250 2.0.0 <{r}> probe {nonce} recognised" for r in rcpts)


class _IntakeLMTP(OneBufferData, LMTP):
    """aiosmtpd's LMTP session, DATA read into one buffer (gateway/smtpin.py)."""


async def start(handler: IntakeHandler, *, listen: tuple[str, int],
                tls: ssl.SSLContext | None, max_size: int) -> asyncio.Server:
    """Listen for LMTP from the MTA (STARTTLS offered when ``tls`` is given)."""
    loop = asyncio.get_running_loop()

    def factory() -> LMTP:
        return _IntakeLMTP(handler, data_size_limit=max_size, hostname="tcms-gateway-intake",
                    ident="TCMS intake", tls_context=tls, require_starttls=False,
                    enable_SMTPUTF8=True)

    return await loop.create_server(factory, *listen)
