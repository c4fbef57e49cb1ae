"""`tcms doctor`'s checks of what the gateway talks to (gateway/doctor.py has the rest):
the upstream SMTP and IMAP servers (reachable, TLS verified, the master login), the DC
(this gateway's registration and its users' keys), the TTP and the TSS (they answer, and
are the ones the trust file names), and the MTA's route for protocol mail: a probe mail
sent through the MTA to each protocol address, which the running gateway's intake
recognises (gateway/intake.py) without creating protocol state."""

from __future__ import annotations

import asyncio
import hashlib
import imaplib
import os
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage

import httpx
from sqlalchemy import delete, select

from dc.client import DirectoryClient
from dc.records import DirectoryError
from gateway.doctor import Found, Report
from gateway.intake import PROBE_HEADER
from tcms import evidence
from tcms.config import GatewayConfig, Settings
from tcms.store import Store
from tcms.store import models as m
from tcms.timestamp import TimestampError, make_request, token_from_reply, verify_token

TIMEOUT = 15.0


def _tls(g: GatewayConfig) -> ssl.SSLContext:
    return ssl.create_default_context(
        cafile=str(g.upstream_ca_file) if g.upstream_ca_file else None)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate does not verify ({exc.verify_message})"
    return f"{type(exc).__name__}: {exc}"[:300]


def smtp_session(g: GatewayConfig) -> smtplib.SMTP:
    """A session with the MTA as the gateway opens one (STARTTLS verified if configured)."""
    host, port = g.split(g.upstream_smtp)
    s = smtplib.SMTP(host, port, timeout=TIMEOUT)
    try:
        s.ehlo("tcms-doctor")
        if g.upstream_smtp_tls == "starttls":
            s.starttls(context=_tls(g))
            s.ehlo("tcms-doctor")
    except BaseException:
        s.close()
        raise
    return s


def check_smtp(r: Report, g: GatewayConfig) -> bool:
    check = f"upstream SMTP {g.upstream_smtp}"
    try:
        with smtp_session(g):
            pass
    except (OSError, smtplib.SMTPException) as exc:
        r.fail(check, f"cannot open a session: {_reason(exc)}",
               "check gateway.upstream_smtp, upstream_smtp_tls and upstream_ca_file (the "
               "CA of the MTA's certificate), and that the MTA accepts this host")
        return False
    if g.upstream_smtp_tls == "starttls":
        r.ok(check, "reachable, STARTTLS with a verified certificate")
    else:
        r.warn(check, "reachable, but spoken to in clear text",
               "set gateway.upstream_smtp_tls = \"starttls\" unless the MTA is on this host")
    return True


def check_imap(r: Report, g: GatewayConfig, found: Found, user: str | None) -> None:
    check = f"upstream IMAP {g.upstream_imap}"
    host, port = g.split(g.upstream_imap)
    try:
        imap: imaplib.IMAP4 = (imaplib.IMAP4_SSL(host, port, ssl_context=_tls(g),
                                                 timeout=TIMEOUT)
                               if g.upstream_imap_tls == "tls" else
                               imaplib.IMAP4(host, port, timeout=TIMEOUT))
    except (OSError, imaplib.IMAP4.error) as exc:
        r.fail(check, f"cannot connect: {_reason(exc)}",
               "check gateway.upstream_imap, upstream_imap_tls and upstream_ca_file")
        return
    with imap:
        if g.upstream_imap_tls == "tls":
            r.ok(check, "reachable, implicit TLS with a verified certificate")
        else:
            r.warn(check, "reachable, but spoken to in clear text",
                   "set gateway.upstream_imap_tls = \"tls\" (port 993) unless the IMAP "
                   "server is on this host")
        target = user or (found.users[0].name if found.users else None)
        login = f"master login ({g.master_user})"
        if target is None:
            r.skip(login, "no user of the gateway's domains to open a mailbox of: give "
                   "--user ADDRESS")
            return
        try:
            password = g.get_master_password()
        except Exception as exc:
            r.fail(login, str(exc), "set gateway.master_password_file")
            return
        try:
            imap.login(f"{target}{g.master_separator}{g.master_user}", password)
        except imaplib.IMAP4.error as exc:
            r.fail(login, f"the IMAP server refused {target}{g.master_separator}"
                   f"{g.master_user}: {exc}",
                   "check gateway.master_user, master_password and master_separator, and "
                   "the server's master users (Dovecot: a passdb with master = yes)")
            return
        r.ok(login, f"opens {target}'s mailbox")


async def check_dc(r: Report, settings: Settings, found: Found) -> None:
    g = settings.gateway
    if found.dc is None or found.me is None:
        r.skip("dc", "needs the DC's keys and the gateway's own key (see above)")
        return
    me = found.me.party
    client = DirectoryClient(settings.dc.url, found.dc)
    try:
        for domain in g.domains:
            check = f"dc registration {domain}"
            try:
                rec = await client.gateway_of(domain)
            except httpx.HTTPError as exc:
                r.fail("dc", f"the DC at {settings.dc.url} does not answer: {_reason(exc)}",
                       "check dc.url and that the DC runs")
                return
            except DirectoryError as exc:
                fix = (f"on the DC: tcms dc register {domain} gw.json --protocol-address "
                       f"{g.protocol_address}@{domain} (gw.json: tcms keys export "
                       f"{g.identity})")
                if exc.check in ("dc.sig", "dc.answer"):
                    fix = ("gateway.dc_key_file must hold the keys of the DC at dc.url "
                           "(tcms keys export on the DC)")
                r.fail(check, f"{exc.check}: {exc.reason}", fix)
                continue
            want = f"{g.protocol_address}@{domain}"
            if (rec.gateway.sig_pk, rec.gateway.enc_pk) != (me.sig_pk, me.enc_pk):
                r.fail(check, f"the DC has the key {rec.gateway.fingerprint} of "
                       f"{rec.gateway.name} for {domain}, not this gateway's "
                       f"{me.fingerprint}",
                       f"register this gateway's keys again on the DC: tcms dc register "
                       f"{domain} gw.json (gw.json: tcms keys export {g.identity})")
            elif rec.protocol_address != want:
                r.fail(check, f"the DC sends {domain}'s protocol mail to "
                       f"{rec.protocol_address}, not {want}",
                       f"register again with --protocol-address {want}, or set "
                       "gateway.protocol_address")
            else:
                r.ok(check, f"this gateway's keys, protocol mail to {want}")
        await _check_users(r, client, found)
    finally:
        await client.aclose()


async def _check_users(r: Report, client: DirectoryClient, found: Found) -> None:
    wrong = []
    for ident in found.users[:200]:
        try:
            party = await client.usable_party(ident.name)
        except (httpx.HTTPError, DirectoryError):
            party = None
        if party != ident.party:
            wrong.append(ident.name)
    if wrong:
        r.fail("dc user keys", f"the DC has no usable key, or another one, for "
               f"{len(wrong)} local user(s): {', '.join(wrong[:5])}",
               "publish them again: tcms gateway enroll ADDRESS...")
    elif found.users:
        r.ok("dc user keys", f"the DC publishes the keys of all {len(found.users)} local "
             "user(s)")


async def check_ttp(r: Report, settings: Settings, found: Found) -> None:
    url = settings.ttp.url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            res = await http.get(url + "/identity")
        theirs = evidence.trust_from_json(res.json()) if res.status_code == 200 else None
    except httpx.HTTPError as exc:
        r.fail("ttp", f"the TTP at {url} does not answer: {_reason(exc)}",
               "check ttp.url and that the TTP runs: without it no exchange can be "
               "aborted or resolved")
        return
    except ValueError as exc:
        r.fail("ttp", f"{url}/identity is not a trust file: {exc}", "check ttp.url")
        return
    if theirs is None:
        r.fail("ttp", f"{url}/identity answered {res.status_code}", "check ttp.url")
    elif found.trust is None:
        r.skip("ttp", "answers; no trust file to compare it with (see above)")
    elif theirs.ttp != found.trust.ttp or theirs.tsa_ca != found.trust.tsa_ca:
        r.fail("ttp", f"the TTP at {url} is {theirs.ttp.name} [{theirs.ttp.fingerprint}], "
               "not the one the trust file names, or trusts another TSA",
               "fetch the trust file again from the TTP you mean (GET /identity), or fix "
               "ttp.url")
    else:
        r.ok("ttp", f"{url} answers and is the TTP of the trust file")


async def check_tss(r: Report, settings: Settings, found: Found) -> None:
    url = settings.tss.url.rstrip("/")
    imprint = hashlib.sha256(os.urandom(16)).digest()
    tsq, nonce = make_request(imprint)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            res = await http.post(url + "/tsa", content=tsq,
                                  headers={"Content-Type": "application/timestamp-query"})
    except httpx.HTTPError as exc:
        r.fail("tss", f"the TSS at {url} does not answer: {_reason(exc)}",
               "check tss.url and that the TSS runs: no certified mail can start without it")
        return
    if res.status_code != 200:
        r.fail("tss", f"{url}/tsa answered {res.status_code}", "check tss.url")
        return
    if found.trust is None:
        r.skip("tss", "answers; no trust file to check its token with (see above)")
        return
    try:
        info = verify_token(token_from_reply(res.content), imprint, found.trust.tsa_ca,
                            nonce=nonce)
    except (TimestampError, ValueError) as exc:
        r.fail("tss", f"its time stamp does not verify with the trust file's TSA CA: {exc}",
               "fix tss.url, or fetch the trust file again from the TTP")
        return
    r.ok("tss", f"{url} stamps ({info.tsa_subject}, {info.gen_time:%Y-%m-%d %H:%M:%S} "
         "UTC), and its token verifies with the trust file's TSA CA")


def _listening(address: str) -> bool:
    host, port = GatewayConfig.split(address)
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


async def check_route(r: Report, settings: Settings, wait: float) -> None:
    """A probe to each protocol address through the MTA; the intake records it."""
    g = settings.gateway
    if not _listening(g.intake):
        r.fail("mta route", f"nothing listens on the intake {g.intake}",
               "start the gateway (tcms serve gateway): the probe goes round through the "
               "MTA to its intake")
        return
    store = Store(settings.database.url)
    try:
        for domain in g.domains:
            await _probe(r, g, store, f"{g.protocol_address}@{domain}", wait)
    finally:
        await store.close()


async def _probe(r: Report, g: GatewayConfig, store: Store, address: str,
                 wait: float) -> None:
    check = f"mta route {address}"
    nonce = os.urandom(16).hex()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = address, address, "tcms doctor probe"
    msg[PROBE_HEADER] = nonce
    msg.set_content("A probe of `tcms doctor`: the gateway's intake recognises it and "
                    "keeps nothing.\n")
    try:
        with smtp_session(g) as s:
            s.sendmail("", [address], msg.as_bytes())  # null sender: no bounce comes back
    except (OSError, smtplib.SMTPException) as exc:
        r.fail(check, f"the MTA did not take the probe: {_reason(exc)}",
               f"the MTA must accept mail for {address} from this host")
        return
    i = m.inbound
    deadline = time.monotonic() + wait
    while True:
        async with store.engine.connect() as conn:
            row = (await conn.execute(select(i.c.id, i.c.peer).where(
                i.c.status == "probe", i.c.tx == nonce))).first()
        if row is not None:
            async with store.transaction() as conn:
                await conn.execute(delete(i).where(i.c.id == row[0]))
            r.ok(check, f"the MTA routes it to the intake {g.intake} (handed over by "
                 f"{row[1]})")
            return
        if time.monotonic() > deadline:
            r.fail(check, f"the probe did not reach the intake {g.intake} within "
                   f"{wait:.0f}s: the MTA does not route {address} to the gateway",
                   f"route it to the intake (Postfix: `{address} lmtp:inet:{g.intake}` "
                   "in transport_maps, then postmap and postfix reload; see "
                   "docs/gateway.md) and allow the MTA in gateway.intake_clients")
            return
        await asyncio.sleep(0.25)


async def network(r: Report, settings: Settings, found: Found, *, user: str | None,
                  probe_wait: float) -> None:
    g = settings.gateway
    smtp_ok = await asyncio.to_thread(check_smtp, r, g)
    await asyncio.to_thread(check_imap, r, g, found, user)
    await check_dc(r, settings, found)
    await check_ttp(r, settings, found)
    await check_tss(r, settings, found)
    if smtp_ok:
        await check_route(r, settings, probe_wait)
    else:
        r.skip("mta route", "the upstream SMTP server cannot be used (see above)")
