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

At the door: at most ``max_recipients`` recipients per mail (``452 4.5.3``, as Postfix),
handled in constant time each; addresses with control characters are refused (``501
5.1.3``); certified mail whose sender or a recipient cannot be a protocol party name, or
whose Subject holds a line break or control character, is refused after DATA with the
reason (``550``/``554``) and nothing is stored; so is (``552``) certified mail whose header
block is larger than ``MAX_HEADER_BLOCK``, before its headers are parsed (untagged, it is
relayed: only the tag is looked for).  Clients never see Python exception text
(``451 4.3.0 Internal error``; the traceback goes to the log, once); a user name is logged
only once it has authenticated; the banner names no library or version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.parser
import email.policy
import hashlib
import hmac
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import AnyStr

import aioimaplib
import aiosmtplib
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, TLSSetupException

from gateway.context import Upstream
from gateway.smtpin import OneBufferData
from gateway.subject import has_tag, header_block, may_carry_tag, subject_error
from tcms.identity import party_name_error
from tcms.protocol.events import Accept, Event, Refuse
from tcms.store import Store

log = logging.getLogger("tcms.gateway.smtp")
CONTROL = re.compile(r"tcms\+(accept|refuse)-([0-9a-f]{32})@(.+)", re.IGNORECASE)
BANNER = "ESMTP TCMS"  # after the host name: no library, no version
MAX_RECIPIENTS = 1000  # as Postfix's smtpd_recipient_limit
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
INTERNAL_ERROR = "451 4.3.0 Internal error"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"
BAD_PLAIN = "501 5.5.2 Bad PLAIN data"
BAD_LOGIN = "501 5.5.2 Bad LOGIN data"
# The email package parses headers at about 1.8 us a line (40 MB of header lines: 9.7 s):
# a header block past this bound is not parsed.  Mail clients write a few KiB of headers,
# and Postfix keeps at most 100 KiB of them (header_size_limit).
MAX_HEADER_BLOCK = 1024 * 1024
HEADER_TOO_LARGE = ("552 5.3.4 Cannot take this mail for certification: its header block is"
                    f" larger than {MAX_HEADER_BLOCK} bytes; nothing was stored")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_NOT_IN_IMAP = re.compile(r"[\x00\r\n]")  # what an IMAP LOGIN cannot carry
_LOG_KEY = os.urandom(16)  # per process: failed user names are logged as keyed digests
# (user, tx, event) -> "done" or why not
Answer = Callable[[str, str, Event], Awaitable[str]]


def unverified_name(user: str) -> str:
    """How a user name that has not (yet) authenticated is logged: its length and a short
    digest under a key of this process (it may be a password typed in the wrong field)."""
    digest = hmac.new(_LOG_KEY, user.encode(errors="surrogateescape"), hashlib.sha256)
    return f"<{len(user)} chars, ref {digest.hexdigest()[:8]}>"


class _NoCommandText(logging.Filter):
    """aiosmtpd logs the first word of a line it does not know: that may be a password a
    client sent out of turn, so only its length and digest are logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == "%r unrecognised: %s" and isinstance(args, tuple) and len(args) == 2:
            record.args = (args[0], unverified_name(str(args[1])))
        return True


logging.getLogger("mail.log").addFilter(_NoCommandText())


async def _response(server: SMTP, prompt: str) -> bytes | AuthResult:
    """The client's (base64-decoded) answer to an AUTH challenge, or how AUTH ends."""
    try:
        got = await server.challenge_auth(prompt)
    except ValueError:  # the line is longer than aiosmtpd's reader takes
        return AuthResult(success=False, handled=False, message=AUTH_LINE_TOO_LONG)
    if not isinstance(got, bytes):  # "*" or not base64: aiosmtpd has answered
        return AuthResult(success=False, handled=True)
    return got


async def _initial_response(server: SMTP, args: list[str], prompt: str,
                            bad: str) -> bytes | AuthResult:
    """The (decoded) initial response on the AUTH line, else the answer to ``prompt``."""
    if len(args) > 1:
        try:
            return base64.b64decode(args[1], validate=True)
        except binascii.Error:
            return AuthResult(success=False, handled=False, message=bad)
    return await _response(server, prompt)


def reply_text(text: str, limit: int = 200) -> str:
    """Text from elsewhere (the upstream MTA, an address) made fit for one reply line:
    printable ASCII, at most ``limit`` characters."""
    flat = "".join(c if " " <= c <= "~" else " " for c in text[: limit + 1])
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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
        log.warning("upstream IMAP unavailable for AUTH of %s: %s", unverified_name(user),
                    type(exc).__name__)
        return False


class SubmissionHandler:
    def __init__(self, store: Store, upstream: Upstream, tag: str, *,
                 on_login: Callable[[str], Awaitable[object]] | None = None,
                 on_submit: Callable[[str], None] | None = None,
                 answer: Answer | None = None, domains: tuple[str, ...] = (),
                 max_recipients: int = MAX_RECIPIENTS) -> None:
        self.store = store
        self.upstream = upstream
        self.tag = tag
        self.on_login = on_login
        self.on_submit = on_submit
        self.answer = answer
        self.domains = domains
        self.max_recipients = max_recipients

    async def handle_exception(self, error: Exception) -> str:
        """Whatever went wrong inside, the client hears a generic transient error (aiosmtpd
        would send the exception's text); the traceback is logged here, once."""
        if isinstance(error, TLSSetupException):  # a failed handshake: aiosmtpd closes
            log.info("TLS handshake failed: %r", error.__cause__)
        elif isinstance(error, ConnectionError):  # the client went away mid-reply
            log.info("SMTP connection lost: %r", error)
        else:
            log.error("SMTP session error", exc_info=error)
        return INTERNAL_ERROR

    # --- AUTH (handler methods override aiosmtpd's built-ins, and may await) -----------

    async def _check(self, server: SMTP, user: str, password: str) -> AuthResult:
        if (user and password and not _NOT_IN_IMAP.search(user)
                and not _NOT_IN_IMAP.search(password)
                and await imap_login_ok(self.upstream, user, password)):
            log.info("AUTH ok for %s", user)
            if self.on_login is not None:
                try:
                    await self.on_login(user.lower())
                except Exception as exc:  # enrolment is retried at the first certified mail
                    log.warning("could not enrol %s yet: %s", user, exc)
            return AuthResult(success=True, auth_data=user.lower())
        peer = server.session.peer if server.session is not None else None
        log.info("AUTH failed from %s for the user name %s", peer, unverified_name(user))
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        data = await _initial_response(server, args, "", BAD_PLAIN)
        if isinstance(data, AuthResult):
            return data
        try:
            _, user, password = data.decode().split("\0")
        except ValueError:  # not UTF-8 (UnicodeDecodeError), not three fields
            return AuthResult(success=False, handled=False, message=BAD_PLAIN)
        return await self._check(server, user, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        name = await _initial_response(server, args, "Username:", BAD_LOGIN)
        if isinstance(name, AuthResult):
            return name
        secret = await _response(server, "Password:")
        if isinstance(secret, AuthResult):
            return secret
        try:
            user, password = name.decode(), secret.decode()
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False, message=BAD_LOGIN)
        return await self._check(server, user, password)

    # --- the transaction ---------------------------------------------------------------

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if _CONTROL_CHARS.search(address):
            return "501 5.1.3 Bad sender address syntax"
        user = session.auth_data
        if not isinstance(user, str) or address.lower() != user:
            return "553 5.7.1 You may only send as your own address"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def _control(self, address: str) -> tuple[str, str] | None:
        m = CONTROL.fullmatch(address)
        if m is None or self.answer is None or m.group(3).lower() not in self.domains:
            return None
        return m.group(1).lower(), m.group(2).lower()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if _CONTROL_CHARS.search(address):
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return TOO_MANY_RECIPIENTS
        # a transaction is all answers or all mail: its first recipient says which, so each
        # RCPT costs the same however many came before
        if envelope.rcpt_tos and ((self._control(address) is None)
                                  != (self._control(envelope.rcpt_tos[0]) is None)):
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
                return f"550 5.7.1 Cannot {verb} {tx}: {reply_text(outcome)}"
            results.append(f"{verb}ed {tx}")
            log.info("%s %sed certified mail %s by mail", user, verb, tx)
            if self.on_submit is not None:
                self.on_submit("answer")
        return "250 2.0.0 " + ", ".join(results)

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = envelope.mail_from or ""
        recipients = list(envelope.rcpt_tos)
        if recipients and self._control(recipients[0]) is not None:
            return await self._answer(sender.lower(), recipients)
        block = header_block(content)
        if len(block) > MAX_HEADER_BLOCK:  # only the tag is looked for, not parsed
            if may_carry_tag(block, self.tag):
                log.info("certified mail from %s refused at the door: a header block of %d"
                         " bytes", sender, len(block))
                return HEADER_TOO_LARGE
            return await self._relay(content, sender, recipients)
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(block)
        subject = str(headers.get("Subject", ""))
        if has_tag(subject, self.tag):
            refusal = uncertifiable(sender, recipients, subject)
            if refusal is not None:
                log.info("certified mail from %s refused at the door: %s", sender, refusal)
                return refusal
            sid = await self.store.add_submission(
                message_id=message_id_of(headers), sender=sender,
                recipients=recipients, subject=subject, raw=content, now=int(time.time()))
            log.info("certified submission #%d from %s to %d recipient(s) stored", sid, sender,
                     len(recipients))
            if self.on_submit is not None:
                self.on_submit("submission")
            return f"250 2.0.0 Queued for certification as #{sid}"
        return await self._relay(content, sender, recipients)

    async def _relay(self, content: bytes, sender: str, recipients: list[str]) -> str:
        """Untagged mail, to the upstream MTA byte for byte; its answer."""
        try:
            errors, reply = await self.upstream.send_mail(content, sender, recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return ("550 5.1.1 Upstream refused every recipient: "
                    + reply_text(exc.recipients[0].message))
        except aiosmtplib.SMTPResponseException as exc:
            code = exc.code if 400 <= exc.code <= 599 else 451
            return f"{code} {reply_text(exc.message)}"
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("upstream SMTP unavailable: %s", exc)
            return "451 4.4.1 The upstream mail server is unavailable; try again later"
        if errors:  # accepted for some recipients only: say which were refused
            refused = ", ".join(f"{r} ({e.code})" for r, e in errors.items())
            log.warning("upstream refused %s for mail from %s", refused, sender)
            return f"250 2.0.0 Relayed, but the upstream refused: {reply_text(refused)}"
        log.info("relayed untagged mail from %s to %d recipient(s)", sender, len(recipients))
        return f"250 2.0.0 Relayed: {reply_text(reply)}"


def message_id_of(headers: EmailMessage) -> str:
    """The Message-ID as one line of printable text, at most 998 characters (the column)."""
    try:
        value = str(headers.get("Message-ID", ""))
    except Exception:  # the standard library's parser fails on some values, e.g. "<"
        value = next((v for k, v in headers.raw_items() if k.lower() == "message-id"), "")
    value = value.encode("utf-8", "replace").decode()  # undecodable bytes are kept as "?"
    return "".join(c for c in " ".join(value.split()) if c.isprintable())[:998]


def uncertifiable(sender: str, recipients: list[str], subject: str) -> str | None:
    """The 5xx answer to certified mail that cannot enter the protocol (a sender or a
    recipient that cannot be a party name, a Subject that would break a header), or None."""
    error = party_name_error(sender)
    if error is not None:
        return f"550 5.1.7 Cannot certify mail from this sender: {error}; nothing was stored"
    bad = [(r, e) for r in recipients if (e := party_name_error(r)) is not None]
    if bad:
        address, error = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return (f"550 5.1.3 Cannot certify mail to <{reply_text(address, 100)}>: {error}"
                f"{more}; nothing was stored")
    error = subject_error(subject)
    if error is not None:
        return f"554 5.6.0 Cannot certify this mail: {error}; nothing was stored"
    return None


class _FairSMTP(OneBufferData):
    """aiosmtpd's session, but it lets every other connection have a turn after each
    reply: a client that pipelines thousands of commands is served at the same pace as
    everyone else, not before everyone else (a buffered line is read without waiting);
    DATA is read into one buffer (gateway/smtpin.py)."""

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        await asyncio.sleep(0)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


async def start(handler: SubmissionHandler, *, tls: ssl.SSLContext,
                submission: tuple[str, int], smtps: tuple[str, int] | None,
                max_size: int) -> list[asyncio.Server]:
    """Listen for submissions: STARTTLS on ``submission``, implicit TLS on ``smtps``; with
    SO_REUSEPORT, so that the gateway's other worker processes (gateway/workers.py) can
    listen on the same ports."""
    loop = asyncio.get_running_loop()

    def factory(implicit: bool) -> SMTP:
        # On the implicit-TLS listener the transport itself is TLS, which aiosmtpd does not
        # see (it only tracks STARTTLS): AUTH needs no further TLS check there.
        return _FairSMTP(handler, data_size_limit=max_size, hostname="tcms-gateway", ident=BANNER,
                    tls_context=None if implicit else tls, require_starttls=not implicit,
                    auth_required=True, auth_require_tls=not implicit,
                    auth_exclude_mechanism=["CRAM-MD5"])

    servers = [await loop.create_server(lambda: factory(False), *submission, reuse_port=True)]
    if smtps:
        servers.append(await loop.create_server(lambda: factory(True), *smtps, ssl=tls,
                                                reuse_port=True))
    return servers
