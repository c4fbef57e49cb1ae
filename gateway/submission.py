"""The SMTP submission side of the gateway (aiosmtpd).

- STARTTLS on the submission port (TLS required before AUTH) and implicit TLS on another;
- SMTP AUTH (PLAIN, LOGIN) checked against the upstream IMAP server: users keep the
  credentials they have (pass-through); nothing about the password is kept;
- MAIL FROM must be the authenticated user's own address;
- untagged mail is relayed to the upstream MTA byte for byte (aiosmtplib) and answered
  with the upstream's answer, so a 250 means the upstream has taken the message;
- mail whose Subject carries the tag (``[certified]`` by default, any case, RFC 2047
  encoded too) is stored in SQL before the 250 and is never relayed uncertified;
- mail to ``tcms+accept-TX@DOMAIN`` or ``tcms+refuse-TX@DOMAIN`` (the reply address of a
  notice) accepts or refuses the authenticated user's own certified mail TX; it is never
  relayed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.parser
import email.policy
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioimaplib
import aiosmtplib
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from gateway.context import Upstream
from gateway.subject import is_tagged
from tcms.protocol.events import Accept, Event, Refuse
from tcms.store import Store

log = logging.getLogger("tcms.gateway.smtp")
CONTROL = re.compile(r"^tcms\+(accept|refuse)-([0-9a-f]{32})@(.+)$", re.IGNORECASE)
# (user, tx, event) -> "done" or why not
Answer = Callable[[str, str, Event], Awaitable[str]]


async def imap_login_ok(up: Upstream, user: str, password: str) -> bool:
    """Try the credentials on the upstream IMAP server."""
    client = up.imap_client(timeout=15)
    try:
        await client.wait_hello_from_server()
        response = await client.login(user, password)
        ok = bool(response.result == "OK")
        if ok:
            await client.logout()
        return ok
    except (TimeoutError, OSError, aioimaplib.Abort) as exc:
        log.warning("upstream IMAP unavailable for AUTH of %s: %s", user, exc)
        return False


class SubmissionHandler:
    def __init__(self, store: Store, upstream: Upstream, tag: str, *,
                 on_login: Callable[[str], Awaitable[object]] | None = None,
                 on_submit: Callable[[], None] | None = None,
                 answer: Answer | None = None, domains: tuple[str, ...] = ()) -> None:
        self.store = store
        self.upstream = upstream
        self.tag = tag
        self.on_login = on_login
        self.on_submit = on_submit
        self.answer = answer
        self.domains = domains

    # --- AUTH (handler methods override aiosmtpd's built-ins, and may await) -----------

    async def _check(self, server: SMTP, user: str, password: str) -> AuthResult:
        if user and password and await imap_login_ok(self.upstream, user, password):
            log.info("AUTH ok for %s", user)
            if self.on_login is not None:
                try:
                    await self.on_login(user.lower())
                except Exception as exc:  # enrolment is retried at the first certified mail
                    log.warning("could not enrol %s yet: %s", user, exc)
            return AuthResult(success=True, auth_data=user.lower())
        log.info("AUTH failed for %r", user)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        raw: Any = args[1] if len(args) > 1 else await server.challenge_auth("")
        if raw is None or not isinstance(raw, (str, bytes)):
            return AuthResult(success=False, handled=True)
        try:
            data = base64.b64decode(raw, validate=True) if isinstance(raw, str) else raw
            _, user, password = data.decode().split("\0")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad PLAIN data")
        return await self._check(server, user, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        try:
            if len(args) > 1:
                user = base64.b64decode(args[1], validate=True).decode()
            else:
                got = await server.challenge_auth("Username:")
                if not isinstance(got, bytes):
                    return AuthResult(success=False, handled=True)
                user = got.decode()
            got = await server.challenge_auth("Password:")
            if not isinstance(got, bytes):
                return AuthResult(success=False, handled=True)
            password = got.decode()
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(success=False, handled=False, message="501 5.5.2 Bad LOGIN data")
        return await self._check(server, user, password)

    # --- the transaction ---------------------------------------------------------------

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        user = session.auth_data
        if not isinstance(user, str) or address.lower() != user:
            return "553 5.7.1 You may only send as your own address"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def _control(self, address: str) -> tuple[str, str] | None:
        m = CONTROL.match(address)
        if m is None or self.answer is None or m.group(3).lower() not in self.domains:
            return None
        return m.group(1).lower(), m.group(2).lower()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        controls = [self._control(a) is not None for a in [*envelope.rcpt_tos, address]]
        if any(controls) and not all(controls):
            return "452 4.5.3 Send an answer to a certified mail on its own"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def _answer(self, user: str, recipients: list[str]) -> str:
        assert self.answer is not None
        results = []
        for address in recipients:
            control = self._control(address)
            assert control is not None
            verb, tx = control
            outcome = await self.answer(user, tx, Accept() if verb == "accept" else Refuse())
            if outcome != "done":
                log.info("%s could not %s %s: %s", user, verb, tx, outcome)
                return f"550 5.7.1 Cannot {verb} {tx}: {outcome}"
            results.append(f"{verb}ed {tx}")
            log.info("%s %sed certified mail %s by mail", user, verb, tx)
        if self.on_submit is not None:
            self.on_submit()
        return "250 2.0.0 " + ", ".join(results)

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        if recipients and self._control(recipients[0]) is not None:
            return await self._answer(sender.lower(), recipients)
        if is_tagged(content, self.tag):
            headers = email.parser.BytesHeaderParser(
                policy=email.policy.default).parsebytes(content)
            sid = await self.store.add_submission(
                message_id=str(headers.get("Message-ID", "")), sender=sender,
                recipients=recipients, subject=str(headers.get("Subject", "")), raw=content,
                now=int(time.time()))
            log.info("certified submission #%d from %s to %d recipient(s) stored", sid, sender,
                     len(recipients))
            if self.on_submit is not None:
                self.on_submit()
            return f"250 2.0.0 Queued for certification as #{sid}"
        try:
            errors, reply = await self.upstream.send_mail(content, sender, recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return f"550 5.1.1 Upstream refused every recipient: {exc.recipients[0].message}"
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("upstream SMTP unavailable: %s", exc)
            return "451 4.4.1 The upstream mail server is unavailable; try again later"
        if errors:  # accepted for some recipients only: say which were refused
            refused = ", ".join(f"{r} ({e.code})" for r, e in errors.items())
            log.warning("upstream refused %s for mail from %s", refused, sender)
            return f"250 2.0.0 Relayed, but the upstream refused: {refused}"
        log.info("relayed untagged mail from %s to %d recipient(s)", sender, len(recipients))
        return f"250 2.0.0 Relayed: {reply}"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def start(handler: SubmissionHandler, *, tls: ssl.SSLContext,
                submission: tuple[str, int], smtps: tuple[str, int] | None,
                max_size: int) -> list[asyncio.Server]:
    """Listen for submissions: STARTTLS on ``submission``, implicit TLS on ``smtps``."""
    loop = asyncio.get_running_loop()

    def factory(implicit: bool) -> SMTP:
        # On the implicit-TLS listener the transport itself is TLS, which aiosmtpd does not
        # see (it only tracks STARTTLS): AUTH needs no further TLS check there.
        return SMTP(handler, data_size_limit=max_size, hostname="tcms-gateway",
                    tls_context=None if implicit else tls, require_starttls=not implicit,
                    auth_required=True, auth_require_tls=not implicit,
                    auth_exclude_mechanism=["CRAM-MD5"])

    servers = [await loop.create_server(lambda: factory(False), *submission)]
    if smtps:
        servers.append(await loop.create_server(lambda: factory(True), *smtps, ssl=tls))
    return servers
