"""Everything a gateway's workers share: the store, the identities of the users it serves
(private keys encrypted at rest, cached once opened), what it trusts, and its clients of
the DC, the TSS, the TTP and the upstream mail servers."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioimaplib
import aiosmtplib
import httpx

from dc.client import DirectoryClient
from dc.records import DirectoryError
from gateway import signingcert, smtpdata  # noqa: F401 - smtpdata installs itself in aiosmtplib
from gateway.imap import MasterLogin
from gateway.notices import Writer
from gateway.queue import Queues
from gateway.wording import Wording, WordingError
from tcms import datakeys, evidence
from tcms.config import ConfigError, GatewayConfig, Settings
from tcms.identity import Identity, Party, normalise_name
from tcms.keystore import Keystore, KeystoreError
from tcms.protocol.checks import Trust
from tcms.protocol.messages import Deadlines
from tcms.store import Store

log = logging.getLogger("tcms.gateway")
KEY_CACHE = 60  # seconds a DC answer about a key is used again without asking
# A mail larger than this goes to the MTA over a connection that is closed afterwards, so
# that no buffer its TLS layer grew for the mail lives on in the pool (DATA itself is
# written in pieces under flow control: gateway/smtpdata.py).
BIG_MAIL = 1024 * 1024


class SmtpPool:
    """Connections to the MTA, kept open between mails.  A connection that the MTA closed
    is dropped; one idle for more than ``check_after`` seconds is checked with NOOP first
    (a connection in steady use costs no extra round trip per mail).  A send that fails is
    never retried here: the caller decides (a 4xx to the client, or the outbox's retry)."""

    def __init__(self, connect: Callable[[], aiosmtplib.SMTP], keep: int = 8,
                 check_after: float = 5.0) -> None:
        self._connect = connect
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._keep = keep
        self._check_after = check_after

    async def acquire(self) -> aiosmtplib.SMTP:
        while self._idle:
            client, since = self._idle.pop()
            if not client.is_connected:
                client.close()
                continue
            if time.monotonic() - since < self._check_after:
                return client
            try:
                await client.noop(timeout=10)
                return client
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        client = self._connect()
        await client.connect()
        return client

    async def reset(self, client: aiosmtplib.SMTP) -> None:
        """After a refused mail: RSET, and keep the connection if that works."""
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
            return
        self.release(client)

    def release(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and len(self._idle) < self._keep:
            self._idle.append((client, time.monotonic()))
        else:
            client.close()


@dataclass(frozen=True)
class Upstream:
    """The organisation's real mail servers, and how the gateway speaks TLS to them."""

    smtp_host: str
    smtp_port: int
    imap_host: str
    imap_port: int
    imap_tls: ssl.SSLContext | None = None  # implicit TLS to the IMAP server
    smtp_starttls: ssl.SSLContext | None = None  # STARTTLS required to the MTA
    smtp: SmtpPool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "smtp", SmtpPool(lambda: aiosmtplib.SMTP(
            hostname=self.smtp_host, port=self.smtp_port, timeout=120, use_tls=False,
            start_tls=self.smtp_starttls is not None, tls_context=self.smtp_starttls)))

    def imap_client(self, timeout: float = 60) -> aioimaplib.IMAP4:
        if self.imap_tls is not None:
            return aioimaplib.IMAP4_SSL(host=self.imap_host, port=self.imap_port,
                                        ssl_context=self.imap_tls, timeout=timeout)
        return aioimaplib.IMAP4(host=self.imap_host, port=self.imap_port, timeout=timeout)

    async def send_mail(self, data: bytes, sender: str,
                        recipients: list[str]) -> tuple[dict[str, Any], str]:
        """Hand a mail to the MTA over a pooled connection (raises aiosmtplib errors);
        returns the refused recipients and the MTA's answer."""
        client = await self.smtp.acquire()
        big = len(data) > BIG_MAIL
        try:
            result: tuple[dict[str, Any], str] = await client.sendmail(sender, recipients,
                                                                       data)
        except aiosmtplib.SMTPResponseException:
            if big:
                client.close()
            else:
                await self.smtp.reset(client)  # the MTA refused this mail, not the session
            raise
        except BaseException:
            client.close()
            raise
        if big:
            client.close()
        else:
            self.smtp.release(client)
        return result

    @classmethod
    def from_config(cls, g: GatewayConfig) -> Upstream:
        ctx = None
        if g.upstream_imap_tls != "none" or g.upstream_smtp_tls != "none":
            ctx = ssl.create_default_context(
                cafile=str(g.upstream_ca_file) if g.upstream_ca_file else None)
        (smtp_host, smtp_port), (imap_host, imap_port) = (g.split(g.upstream_smtp),
                                                          g.split(g.upstream_imap))
        return cls(smtp_host, smtp_port, imap_host, imap_port,
                   ctx if g.upstream_imap_tls == "tls" else None,
                   ctx if g.upstream_smtp_tls == "starttls" else None)


@dataclass
class GatewayContext:
    settings: Settings
    store: Store
    keystore: Keystore
    me: Identity
    trust: Trust
    dc: DirectoryClient
    upstream: Upstream
    imap: MasterLogin
    http: httpx.AsyncClient
    queues: Queues
    writer: Writer
    _identities: dict[str, Identity] = field(default_factory=dict)
    _gateways: dict[str, tuple[str, float]] = field(default_factory=dict)
    _parties: dict[str, tuple[Party | None, float]] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return self.settings.gateway.domains

    @property
    def tag(self) -> str:
        return self.settings.gateway.tag

    def serves(self, address: str) -> bool:
        return address.rsplit("@", 1)[-1].lower() in self.domains

    def deadlines(self, now: int) -> Deadlines:
        p = self.settings.protocol
        accept_by = now + p.accept_window
        m5_by = accept_by + p.m5_window
        return Deadlines(accept_by, m5_by, m5_by + p.m6_window, m5_by + p.resolve_window)

    # --- the users it serves ------------------------------------------------------------

    def identity(self, address: str) -> Identity | None:
        name = normalise_name(address)
        if name not in self._identities:
            try:
                self._identities[name] = self.keystore.load(name)
            except KeystoreError:
                return None
        return self._identities[name]

    async def enroll(self, address: str) -> Identity:
        """The user's identity, created and published at the DC on first use."""
        if not self.serves(address):
            raise DirectoryError("domain", f"this gateway does not serve {address}")
        ident = self.identity(address)
        if ident is None:
            ident = self.keystore.create(address, "user")
            self._identities[ident.name] = ident
            log.info("enrolled %s (key %s)", ident.name, ident.party.fingerprint[:14])
        current = await self.party_of(ident.name)
        if current != ident.party:
            self._parties.pop(ident.name, None)
            current = await self.party_of(ident.name)
        if current != ident.party:
            version = await self.dc.publish(self.me, ident.party)
            self._parties.pop(ident.name, None)
            log.info("published the key of %s at the DC (version %d)", ident.name, version)
        return ident

    async def party_of(self, address: str) -> Party | None:
        """The DC's current key for ``address`` (None: not certifiable), remembered for
        ``KEY_CACHE`` seconds: a key the DC revokes stops being used within that time."""
        name = normalise_name(address)
        now = time.monotonic()
        cached = self._parties.get(name)
        if cached is not None and cached[1] > now:
            return cached[0]
        party = await self.dc.usable_party(name)
        if len(self._parties) > 10_000:
            self._parties.clear()
        self._parties[name] = (party, now + (KEY_CACHE if party is not None else 5))
        return party

    def protocol_address(self, domain: str) -> str:
        """This gateway's own protocol address in one of its domains."""
        return f"{self.settings.gateway.protocol_address}@{domain.lower()}"

    async def protocol_address_of(self, address: str) -> str:
        """Where protocol mail for ``address`` goes: the protocol address of the gateway
        the DC has registered for its domain (kept for the DC answer's lifetime).  Raises
        DirectoryError (check ``unknown``: the domain has no TCMS gateway)."""
        domain = address.rsplit("@", 1)[-1].lower()
        cached = self._gateways.get(domain)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        rec = await self.dc.gateway_of(domain)
        self._gateways[domain] = (rec.protocol_address, min(rec.expires_at,
                                                            time.time() + 600))
        return rec.protocol_address

    async def aclose(self) -> None:
        await self.dc.aclose()
        await self.http.aclose()
        await self.store.close()


def load_trust(settings: Settings, keystore: Keystore) -> tuple[Trust, Party]:
    """The trust file and the DC's keys, from [gateway] files or the local keystore."""
    g = settings.gateway
    try:
        if g.trust_file:
            trust = evidence.load_trust(g.trust_file.read_bytes())
        else:
            from tss import credentials

            trust = Trust(keystore.public(settings.ttp.identity)[1],
                          credentials.load_ca(settings.keys.dir))
        if g.dc_key_file:
            dc = Party.from_json(json.loads(g.dc_key_file.read_text()))
        else:
            dc = keystore.public(settings.dc.identity)[1]
    except (OSError, ValueError, KeyError, KeystoreError) as exc:
        raise ConfigError(f"gateway: cannot load what it trusts: {exc}") from None
    return trust, dc


def data_keys(directory: Path, passphrase: bytes) -> datakeys.DataKeys:
    """The data keys that encrypt mail and key shares in the store, created on first use."""
    new = not datakeys.keyring_path(directory).exists()
    try:
        keys = datakeys.load_or_create(directory, passphrase)
    except datakeys.KeyringError as exc:
        raise ConfigError(f"gateway: its data keys: {exc}") from None
    if new:
        log.info("created the data key %08x in %s", keys.current,
                 datakeys.keyring_path(directory))
    return keys


def writer(settings: Settings, passphrase: bytes) -> Writer:
    """What words and signs the users' mails: the organisation's templates, checked for
    every configured language, and the gateway's S/MIME certificate and key."""
    m = settings.mail
    cert, key = m.signing_files(Path(settings.keys.dir))
    try:
        signer = signingcert.load_signer(cert, key, passphrase)
    except signingcert.SigningCertError as exc:
        raise ConfigError(f"mail: {exc} (every mail to a user is signed: `tcms mail csr` "
                          "makes a key and a request for the organisation's CA; "
                          "docs/mail.md)") from None
    missing = [d for d in settings.gateway.domains
               if f"postmaster@{d}" not in signer.addresses]
    if missing:
        log.warning("the mail signing certificate does not name %s: mail clients may warn "
                    "that the signer is not the sender",
                    ", ".join(f"postmaster@{d}" for d in missing))
    try:
        wording = Wording(m.templates)
        wording.check(sorted({m.language, *m.languages.values()}))
    except WordingError as exc:
        raise ConfigError(f"mail: {exc}") from None
    return Writer(signer, wording, m.language, m.languages)


def create(settings: Settings) -> GatewayContext:
    g = settings.gateway
    if not g.domains:
        raise ConfigError("gateway: set gateway.domains (TCMS_GATEWAY__DOMAINS), the mail "
                          "domains it certifies for")
    passphrase = settings.keys.get_passphrase()
    keystore = Keystore(Path(settings.keys.dir), passphrase)
    try:
        me = keystore.load(g.identity)
    except KeystoreError as exc:
        raise ConfigError(f"gateway: its identity {g.identity}: {exc} (create it with "
                          f"`tcms keys create {g.identity} --kind gateway`)") from None
    trust, dc_party = load_trust(settings, keystore)
    write = writer(settings, passphrase)
    upstream = Upstream.from_config(g)
    store = Store(settings.database.url, data_keys=data_keys(keystore.dir, passphrase))
    return GatewayContext(
        settings=settings, store=store, keystore=keystore, me=me,
        trust=trust, dc=DirectoryClient(settings.dc.url, dc_party, clock=time.time),
        upstream=upstream,
        imap=MasterLogin(upstream.imap_client, g.master_user, g.get_master_password(),
                         g.master_separator),
        http=httpx.AsyncClient(timeout=60),
        queues=Queues(store, max_attempts=g.max_attempts,
                      instance=g.instance or f"{socket.gethostname()}:{g.submission}"),
        writer=write)
