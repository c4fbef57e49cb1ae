"""Real gateway processes for end-to-end tests: a `tcms serve all` (TSS, TTP, DC) and one
`tcms serve gateway` per organisation, each with its own keys, database, TLS certificate
and configuration, in front of the real Postfix and Dovecot of tests/mailstack.py.
Users act with standard clients only: smtplib through the gateway, imaplib on Dovecot."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import imaplib
import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO

import httpx
from mailstack import MASTER, PATIENCE, MailStack, free_port, listens
from services import DC, PASSPHRASE, Services, prepare_keys, spawn, stop_process

from gateway import signingcert
from tcms import datakeys
from tcms.keystore import Keystore
from tcms.store import Store

USERS = {"alice@a.test": "alice-password", "bob@b.test": "bob-password",
         "carol@b.test": "carol-password", "dave@b.test": "dave-password",
         "carla@b.test": "carla-password"}  # carla reads her gateway's mail in Italian
# windows short enough for tests to watch every recovery procedure happen, long enough
# for a 20 MB mail to be sealed and carried on a busy 2-core machine
WINDOWS = {"ACCEPT_WINDOW": "60", "M5_WINDOW": "10", "M6_WINDOW": "10",
           "RESOLVE_WINDOW": "600"}


def tcms(args: list[str], env: dict[str, str], cwd: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "tcms.cli", *args], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=PATIENCE)
    assert res.returncode == 0, f"tcms {' '.join(args)}: {res.stdout}{res.stderr}"
    return res.stdout


@dataclass
class GatewayProc:
    """One organisation's gateway (`tcms serve gateway`)."""

    workdir: Path
    domain: str
    stack: MailStack
    services: Services
    db_url: str
    submission: int = field(default_factory=free_port)
    smtps: int = field(default_factory=free_port)
    imap: int = field(default_factory=free_port)
    imaps: int = field(default_factory=free_port)
    intake: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)  # its Prometheus endpoint (loopback)
    proc: subprocess.Popen[bytes] | None = None
    log: BinaryIO | None = None
    home: Path | None = None  # keys and trust files (default: workdir); a replica shares them
    languages: dict[str, str] = field(default_factory=dict)  # [mail] languages
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. another TCMS_TSS__URL
    _mark: int = 0  # where the log of the latest start begins

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.identity = f"gateway@{self.domain}"
        self.protocol_address = f"tcms-gateway@{self.domain}"
        res = subprocess.run(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            "-keyout gw.key -out gw.crt -days 2 -subj /CN=127.0.0.1 "
            "-addext subjectAltName=IP:127.0.0.1", shell=True, cwd=self.workdir,
            capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        self.tls = ssl.create_default_context(cafile=str(self.workdir / "gw.crt"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
        s, w, h = self.services, self.workdir, self.home or self.workdir
        env.update({
            "TCMS_KEYS__DIR": str(h / "keys"),
            "TCMS_KEYS__PASSPHRASE": PASSPHRASE,
            "TCMS_DATABASE__URL": self.db_url,
            "TCMS_TSS__URL": s.tss, "TCMS_TTP__URL": s.ttp, "TCMS_DC__URL": s.dc,
            "TCMS_GATEWAY__IDENTITY": self.identity,
            "TCMS_GATEWAY__DOMAINS": json.dumps([self.domain]),
            "TCMS_GATEWAY__SUBMISSION": f"127.0.0.1:{self.submission}",
            "TCMS_GATEWAY__SMTPS": f"127.0.0.1:{self.smtps}",
            "TCMS_GATEWAY__IMAP_PROXY": f"127.0.0.1:{self.imap}",
            "TCMS_GATEWAY__IMAPS_PROXY": f"127.0.0.1:{self.imaps}",
            "TCMS_GATEWAY__INTAKE": f"127.0.0.1:{self.intake}",
            "TCMS_METRICS__LISTEN": f"127.0.0.1:{self.metrics}",
            "TCMS_GATEWAY__ANSWER_POLL_INTERVAL": "1",
            "TCMS_GATEWAY__TLS_CERT": str(w / "gw.crt"),
            "TCMS_GATEWAY__TLS_KEY": str(w / "gw.key"),
            # TLS both ways: implicit TLS to Dovecot, STARTTLS to Postfix
            "TCMS_GATEWAY__UPSTREAM_SMTP": f"127.0.0.1:{self.stack.smtp_port}",
            "TCMS_GATEWAY__UPSTREAM_SMTP_TLS": "starttls",
            "TCMS_GATEWAY__UPSTREAM_IMAP": f"127.0.0.1:{self.stack.imaps_port}",
            "TCMS_GATEWAY__UPSTREAM_IMAP_TLS": "tls",
            "TCMS_GATEWAY__UPSTREAM_CA_FILE": str(self.stack.cert),
            "TCMS_GATEWAY__MASTER_USER": MASTER[0],
            "TCMS_GATEWAY__MASTER_PASSWORD": MASTER[1],
            "TCMS_GATEWAY__TRUST_FILE": str(h / "trust.json"),
            "TCMS_GATEWAY__DC_KEY_FILE": str(h / "dc.json"),
            "TCMS_GATEWAY__POLL_INTERVAL": "0.5",
            "TCMS_GATEWAY__MAX_MESSAGE_SIZE": str(30 * 1024 * 1024),
            "TCMS_MAIL__LANGUAGES": json.dumps(self.languages),
            **{f"TCMS_PROTOCOL__{k}": v for k, v in WINDOWS.items()},
        })
        env.update(self.extra_env)
        return env

    def setup(self) -> None:
        """The gateway's own key, registered at the DC for its domain with its protocol
        address, which the MTA routes to its intake; what it trusts."""
        gw = Keystore(self.workdir / "keys", PASSPHRASE.encode()).create(self.identity,
                                                                         "gateway")
        (self.workdir / "gw-public.json").write_text(json.dumps(gw.party.to_json()))
        tcms(["dc", "register", self.domain, str(self.workdir / "gw-public.json"),
              "--protocol-address", self.protocol_address],
             self.services.env(), self.services.workdir)
        self.stack.route(self.protocol_address, self.intake)
        trust = httpx.get(self.services.ttp + "/identity", timeout=10).json()
        (self.workdir / "trust.json").write_text(json.dumps(trust))
        (self.workdir / "dc.json").write_text(json.dumps(DC.party.to_json()))
        self.issue_signing_cert()

    @property
    def mail_ca(self) -> Path:
        """The organisation's CA, which issued the certificate its gateway signs mail with."""
        return (self.home or self.workdir) / "mail-ca.pem"

    def issue_signing_cert(self) -> None:
        """The organisation's CA, and the gateway's S/MIME certificate it issues (in its
        keystore, where [mail] finds them by default; the key encrypted)."""
        now = dt.datetime.now(dt.UTC)
        ca, ca_key = signingcert.create_ca(f"Organisation {self.domain}", now=now)
        key = signingcert.new_key()
        cert = signingcert.issue(ca, ca_key, key.public_key(), [f"postmaster@{self.domain}"],
                                 now=now)
        keys = self.workdir / "keys"
        signingcert.save_key(keys / "mail-signing-key.pem", key, PASSPHRASE.encode())
        (keys / "mail-signing-cert.pem").write_bytes(signingcert.pem(cert))
        self.mail_ca.write_bytes(signingcert.pem(ca))

    def enroll(self, *addresses: str) -> None:
        tcms(["gateway", "enroll", *addresses], self.env(), self.workdir)

    def start(self) -> GatewayProc:
        """Start it; when a listening port was taken meanwhile (another test run on this
        machine), start again on fresh ports (the MTA's route to the intake follows)."""
        for attempt in range(3):
            if attempt:
                for name in ("submission", "smtps", "imap", "imaps", "intake", "metrics"):
                    setattr(self, name, free_port())
                if self.home is None:
                    self.stack.route(self.protocol_address, self.intake)
            self.launch()
            if self.ready():
                return self
        raise RuntimeError(self.log_text())

    def launch(self) -> None:
        """Start the process (from the main thread: see spawn), without waiting."""
        self.log = open(self.workdir / "gateway.log", "ab")  # noqa: SIM115
        self._mark = self.log.tell()
        self.proc = spawn([sys.executable, "-m", "tcms.cli", "serve", "gateway"],
                          env=self.env(), cwd=self.workdir, stdout=self.log,
                          stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        """Wait until the launched gateway answers; False if it could not listen on its
        ports (taken meanwhile by another test run on this machine)."""
        assert self.proc is not None and self.log is not None
        deadline = time.time() + PATIENCE  # it waits while the process lives
        ports = (self.submission, self.smtps, self.imap, self.imaps, self.intake)
        while True:
            try:
                # its own listeners, not another test run's that took a port first
                if not all(listens(self.proc.pid, port) for port in ports):
                    raise ConnectionRefusedError
                with smtplib.SMTP("127.0.0.1", self.submission, timeout=2):
                    return True
            except OSError:
                if self.proc.poll() is not None:
                    self.log.close()
                    if "address already in use" in self.log_text()[self._mark:]:
                        return False
                    raise RuntimeError(self.log_text()) from None
                if time.time() > deadline:
                    raise RuntimeError(self.log_text()) from None
                time.sleep(0.2)

    def store(self) -> Store:
        """Its database, with its data keys (from its keystore) to read what it sealed."""
        keys = datakeys.load((self.home or self.workdir) / "keys", PASSPHRASE.encode())
        return Store(self.db_url, data_keys=keys)

    def log_text(self) -> str:
        return (self.workdir / "gateway.log").read_text(errors="replace")

    def wait_log(self, *needles: str, since: int = 0, timeout: float = PATIENCE) -> str:
        """The first line of the log (from offset ``since``) holding every one of
        ``needles``, once the gateway has written it."""
        deadline = time.time() + timeout
        while True:
            for line in self.log_text()[since:].splitlines():
                if all(n in line for n in needles):
                    return line
            if time.time() > deadline:
                raise AssertionError(f"{self.domain}'s gateway never logged {needles}")
            time.sleep(0.1)

    def replica(self, name: str) -> GatewayProc:
        """Another instance of this organisation's gateway: its own ports, the same
        keys, configuration and database (the MTA keeps routing to the first one's
        intake; every replica works on what any of them stored)."""
        return GatewayProc(self.workdir / name, self.domain, self.stack, self.services,
                           self.db_url, home=self.home or self.workdir,
                           languages=self.languages)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        if self.log:
            self.log.close()

    def connect(self) -> smtplib.SMTP:
        """A STARTTLS session on the submission port, not yet logged in."""
        s = smtplib.SMTP("127.0.0.1", self.submission, timeout=60)
        s.starttls(context=self.tls)
        return s

    def smtp(self, user: str) -> smtplib.SMTP:
        s = self.connect()
        s.login(user, USERS[user])
        return s


# --- what a user sees: plain imaplib, directly on Dovecot or through their gateway ----------


@dataclass
class Via:
    """How a test's user reaches their mailbox: straight to Dovecot (``proxies`` empty) or
    through their organisation's gateway IMAP proxy, implicit TLS."""

    dovecot_port: int
    proxies: dict[str, GatewayProc] = field(default_factory=dict)  # domain -> gateway

    def open(self, user: str) -> imaplib.IMAP4:
        gw = self.proxies.get(user.rsplit("@", 1)[1])
        imap: imaplib.IMAP4
        if gw is None:
            imap = imaplib.IMAP4("127.0.0.1", self.dovecot_port, timeout=30)
        else:
            imap = imaplib.IMAP4_SSL("127.0.0.1", gw.imaps, ssl_context=gw.tls, timeout=30)
        imap.login(user, USERS[user])
        return imap


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.default)


def messages(via: Via, user: str, folder: str = "INBOX") -> list[tuple[bytes, bytes]]:
    """(uid, raw) of every message in the user's folder, as the user's own client sees it."""
    with via.open(user) as imap:
        typ, _ = imap.select(folder)
        if typ != "OK":
            return []
        _, data = imap.uid("SEARCH", None, "ALL")  # type: ignore[arg-type]
        out = []
        for uid in data[0].split():
            _, msg = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append((uid, bytes(msg[0][1])))
        return out


def wait_mail(via: Via, user: str, match: Callable[[Message], bool],
              timeout: float = PATIENCE, folder: str = "INBOX") -> tuple[bytes, bytes]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for uid, raw in messages(via, user, folder):
                if match(parse(raw)):
                    return uid, raw
        except (OSError, imaplib.IMAP4.error):  # the gateway restarts: a client retries
            pass
        time.sleep(0.3)
    seen = [str(parse(r)["Subject"]) for _, r in messages(via, user, folder)]
    raise AssertionError(f"no matching mail for {user} in {folder}; it holds: {seen}")


def subject_starts(prefix: str, about: str = "") -> Callable[[Message], bool]:
    return lambda m: str(m["Subject"]).startswith(prefix) and about in str(m["Subject"])


def move(via: Via, user: str, uid: bytes, folder: str) -> None:
    deadline = time.time() + PATIENCE
    while True:
        try:
            with via.open(user) as imap:
                imap.select("INBOX")
                typ, data = imap.uid("MOVE", uid, folder)  # type: ignore[arg-type]
                assert typ == "OK", data
                return
        except (OSError, imaplib.IMAP4.error):  # the gateway restarts: a client retries
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def attachment(raw: bytes, subtype: str) -> bytes:
    for part in parse(raw).walk():
        if part.get_content_type() == f"application/{subtype}":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise AssertionError(f"no application/{subtype} part")


@dataclass
class Orgs:
    """Two organisations, a.test and b.test, and the services they share."""

    stack: MailStack
    services: Services
    a: GatewayProc
    b: GatewayProc
    workdir: Path

    @property
    def proxy(self) -> Via:
        """Users reach their mailboxes through their own gateway's IMAP proxy."""
        return Via(self.stack.imap_port, {"a.test": self.a, "b.test": self.b})

    @property
    def direct(self) -> Via:
        return Via(self.stack.imap_port)

    def stop(self) -> None:
        for gw in (self.a, self.b):
            gw.stop()
        self.services.stop()
        self.stack.remove()

    def verify(self, bundle: bytes, name: str) -> subprocess.CompletedProcess[str]:
        path = self.workdir / name
        path.write_bytes(bundle)
        return subprocess.run([sys.executable, "-m", "tcms.cli", "verify", str(path),
                               "--trust", str(self.a.workdir / "trust.json")],
                              capture_output=True, text=True, timeout=PATIENCE)


def start_orgs(workdir: Path, services_db: str, a_db: str, b_db: str) -> Orgs:
    """The mail stack and the services, then each organisation's gateway (set up,
    registered at the DC, users enrolled, started), the two side by side."""
    with ThreadPoolExecutor(2) as pool:
        stacking = pool.submit(MailStack(USERS).start)
        (workdir / "services").mkdir()
        prepare_keys(workdir / "services" / "keys")
        services = Services(workdir / "services", services_db).start()
        stack = stacking.result()
    a = GatewayProc(workdir / "a", "a.test", stack, services, a_db)
    b = GatewayProc(workdir / "b", "b.test", stack, services, b_db,
                    languages={"carla@b.test": "it"})
    orgs = Orgs(stack, services, a, b, workdir)

    def prepare(gw: GatewayProc, *users: str) -> None:
        gw.setup()
        gw.enroll(*users)

    try:
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(prepare, b, "bob@b.test", "carol@b.test", "dave@b.test",
                                         "carla@b.test"),
                         pool.submit(prepare, a, "alice@a.test")]:
                done.result()
        for gw in (a, b):  # both start at once
            gw.launch()
        for gw in (a, b):
            if not gw.ready():
                gw.start()  # on fresh ports
    except BaseException:
        orgs.stop()
        raise
    return orgs


def query(db_url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of a gateway's database, SQLite or PostgreSQL (``?`` placeholders)."""
    import asyncio
    import sqlite3

    import asyncpg

    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.split(":///", 1)[1], timeout=10) as db:
            return [tuple(r) for r in db.execute(sql, args).fetchall()]
    parts = sql.split("?")
    pg_sql = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], start=1))

    async def pg() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(db_url)
        try:
            return [tuple(r) for r in await conn.fetch(pg_sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(pg())


def inbound_outcome(db_url: str, tx: str, timeout: float = PATIENCE,
                    kind: str | None = None) -> tuple[str, str]:
    """(status, detail) of the newest inbound item of exchange ``tx`` (of that ``kind``:
    m3 ... refusal), once handled."""
    sql = "SELECT status, detail FROM inbound WHERE tx = ?"
    args: tuple[str, ...] = (tx,)
    if kind is not None:
        sql, args = sql + " AND kind = ?", (tx, kind)
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = query(db_url, sql + " ORDER BY id DESC", *args)
        if rows and rows[0][0] != "new":
            return str(rows[0][0]), str(rows[0][1] or "")
        time.sleep(0.1)
    raise AssertionError(f"the intake never handled {kind or 'protocol'} mail of exchange {tx}")


def unfinished(db_url: str, tx: str) -> list[str]:
    """What a gateway still has to do for exchange ``tx``: runs not yet terminal, outbox
    messages not yet sent, inbound protocol mail not yet handled ([] if none, and the
    gateway has runs of ``tx``)."""
    runs = query(db_url, "SELECT cid, role, phase, terminal FROM runs WHERE tx = ?", tx)
    if not runs:
        return [f"no run of exchange {tx}"]
    left = [f"{role} run in phase {phase}" for _, role, phase, terminal in runs
            if not terminal]
    for cid, role, _, _ in runs:
        left += [f"{role}'s {kind} to {dest} unsent" for kind, dest in query(
            db_url, "SELECT kind, destination FROM messages WHERE cid = ? AND role = ? "
                    "AND direction = 'out' AND sent_at IS NULL", cid, role)]
    left += [f"inbound #{i} ({kind}) unhandled" for i, kind in query(
        db_url, "SELECT id, kind FROM inbound WHERE tx = ? AND status = 'new'", tx)]
    return left


def settled(tx: str, *gateways: GatewayProc, timeout: float = PATIENCE) -> None:
    """Wait until each gateway has done all it will do for exchange ``tx`` (its runs
    ended, its outbox sent, protocol mail handled): what its users hold then is final."""
    deadline = time.time() + timeout
    for gw in gateways:
        while left := unfinished(gw.db_url, tx):
            if time.time() > deadline:
                raise AssertionError(f"{gw.domain} never settled exchange {tx}: {left}")
            time.sleep(0.1)
