"""The ``tcms`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from tcms import config as config_mod
from tcms import evidence
from tcms.cliutil import settings_of, with_store
from tcms.keystore import Keystore, KeystoreError

log = logging.getLogger("tcms")


def _settings(ctx: click.Context) -> config_mod.Settings:
    return settings_of(ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              envvar="TCMS_CONFIG", help="TOML configuration file (env TCMS_CONFIG).")
@click.version_option(package_name="tcms")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """TCMS, the certified-mail gateway: fair exchange of mail for a signed receipt."""
    ctx.ensure_object(dict)["config"] = config_path
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for chatty in ("mail.log", "aioimaplib"):  # aiosmtpd's and aioimaplib's per-line logs
        logging.getLogger(chatty).setLevel(logging.WARNING)


# --- config -------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration and print it (secrets hidden)."""
    settings = _settings(ctx)
    data = settings.model_dump(mode="json")
    for section in data.values():  # every secret value, whichever section holds it
        for key, value in section.items():
            if value and key.endswith(("password", "passphrase")):
                section[key] = "***"
    click.echo(json.dumps(data, indent=1))
    click.echo("configuration OK", err=True)


# --- keys ---------------------------------------------------------------------------------


def _keystore(ctx: click.Context, need_secret: bool) -> Keystore:
    settings = _settings(ctx)
    passphrase = None
    if need_secret:
        try:
            passphrase = settings.keys.get_passphrase()
        except config_mod.ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    return Keystore(settings.keys.dir, passphrase)


@main.group()
def keys() -> None:
    """Create, list and export identities (Ed25519 signing + X25519 encryption keys)."""


@keys.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["user", "gateway", "tss", "ttp", "dc"]),
              default="user", show_default=True, help="What the identity is for.")
@click.option("--force", is_flag=True, help="Replace an existing identity of that name.")
@click.pass_context
def keys_create(ctx: click.Context, name: str, kind: str, force: bool) -> None:
    """Create the identity NAME (an e-mail address or a service name)."""
    store = _keystore(ctx, need_secret=True)
    try:
        ident = store.create(name, kind, overwrite=force)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {kind} {ident.name}  fingerprint {ident.party.fingerprint}")


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List the identities in the key directory with their fingerprints."""
    store = _keystore(ctx, need_secret=False)
    rows = store.list()
    if not rows:
        click.echo(f"no identities in {store.dir}")
    for kind, party in rows:
        click.echo(f"{kind:8} {party.name:32} {party.fingerprint}")


@keys.command("export")
@click.argument("name")
@click.option("--output", "-o", type=click.File("w"), default="-",
              help="Where to write the public keys (default: standard output).")
@click.pass_context
def keys_export(ctx: click.Context, name: str, output: Any) -> None:
    """Export the PUBLIC keys of NAME as JSON (private keys never leave the keystore)."""
    store = _keystore(ctx, need_secret=False)
    try:
        kind, party = store.public(name)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    output.write(json.dumps({"kind": kind, **party.to_json()}, indent=1) + "\n")


@keys.group("data-key")
def data_key() -> None:
    """The data key that encrypts mail, key shares and protocol state in the database.

    Kept in the key directory (data-keys.keyring, sealed with the passphrase); a gateway
    creates it on first use.  Rotate: `rotate`, then `tcms db reencrypt`, then `retire`
    the old version (docs/gateway.md, "Data at rest")."""


def _passphrase_of(ctx: click.Context) -> tuple[Path, bytes]:
    settings = _settings(ctx)
    return Path(settings.keys.dir), _passphrase(settings)


def _keyring_command(fn: Any) -> Any:
    from tcms import datakeys

    try:
        return fn()
    except datakeys.DataKeyError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@data_key.command("create")
@click.pass_context
def data_key_create(ctx: click.Context) -> None:
    """Create the data key (an error if there is one: use `rotate`)."""
    from tcms import datakeys

    directory, passphrase = _passphrase_of(ctx)
    keys = _keyring_command(lambda: datakeys.create(directory, passphrase))
    click.echo(f"data key {keys.current:08x} created in {datakeys.keyring_path(directory)}")


@data_key.command("rotate")
@click.pass_context
def data_key_rotate(ctx: click.Context) -> None:
    """Add a new version of the data key and make it current: new values are sealed under
    it, old ones still open.  Restart the gateways (copy the keyring to every gateway
    sharing the database), then run `tcms db reencrypt`."""
    from tcms import datakeys

    directory, passphrase = _passphrase_of(ctx)
    keys = _keyring_command(lambda: datakeys.rotate(directory, passphrase))
    old = ", ".join(f"{k:08x}" for k in sorted(keys.keys) if k != keys.current) or "none"
    click.echo(f"data key {keys.current:08x} is now current (older versions kept: {old})")


@data_key.command("list")
@click.pass_context
def data_key_list(ctx: click.Context) -> None:
    """The versions of the data key, oldest first (no passphrase needed)."""
    import datetime as dt

    from tcms import datakeys

    directory = Path(_settings(ctx).keys.dir)
    rows = _keyring_command(lambda: datakeys.describe(directory))
    if not rows:
        click.echo(f"no data key in {directory}")
    for kid, created, current in sorted(rows, key=lambda r: r[1]):
        when = dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{kid:08x}  created {when} UTC{'  current' if current else ''}")


@data_key.command("retire")
@click.argument("key_id")
@click.pass_context
def data_key_retire(ctx: click.Context, key_id: str) -> None:
    """Drop the old version KEY_ID, once no value in the database is sealed under it
    (`tcms db reencrypt` first).  What it sealed could never be opened again: it is
    checked, on the configured database ([database] url)."""
    from tcms import datakeys
    from tcms.cliutil import with_store
    from tcms.store.reencrypt import usage

    directory, passphrase = _passphrase_of(ctx)
    kid = _keyring_command(lambda: datakeys.parse_key_id(key_id))
    used = with_store(ctx, usage)
    left = {col: n[kid] for col, n in used.items() if n[kid]}
    if left:
        raise click.ClickException(
            f"data key {kid:08x} still seals " + ", ".join(f"{n} value(s) of {c}"
                                                            for c, n in left.items())
            + ": run `tcms db reencrypt` first")
    _keyring_command(lambda: datakeys.retire(directory, passphrase, kid))
    click.echo(f"data key {kid:08x} retired")


# --- verify -------------------------------------------------------------------------------


class _UnusableInput(click.ClickException):
    """Input `tcms verify` cannot use at all: exit status 2 (1 means invalid evidence)."""

    exit_code = 2


def _read_bounded(file: Any, limit: int, what: str) -> bytes:
    try:
        data: bytes = file.read(limit + 1)
    except OSError as exc:
        raise _UnusableInput(f"cannot read the {what}: {exc.strerror or exc}") from None
    return data


@main.command()
@click.argument("bundle", type=click.File("rb"))
@click.option("--trust", "-t", "trust_file", type=click.File("rb"), required=True,
              help="Trust file: the TTP's public keys and the TSA's CA certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option("--extract", type=click.Path(dir_okay=False, writable=True),
              help="Write the certified original mail (m0) to this file.")
def verify(bundle: Any, trust_file: Any, as_json: bool, extract: str | None) -> None:
    """Verify an evidence BUNDLE offline and say what it proves (docs/evidence.md).

    \b
    Exit status:
      0  the evidence is valid; its verdict is printed
      1  the evidence is invalid; the failing check is named
      2  the input cannot be used: a file cannot be read, the bundle is not
         strict JSON (larger than 128 MiB, nested too deeply, a field twice),
         the trust file is not a valid tcms-trust/1 file, or the --extract
         file cannot be written"""
    try:
        trust = evidence.load_trust(_read_bounded(trust_file, evidence.MAX_TRUST_BYTES,
                                                  "trust file"))
    except evidence.TrustFileError as exc:
        raise _UnusableInput(f"cannot use the trust file: {exc}") from None
    try:
        data = evidence.loads(_read_bounded(bundle, evidence.MAX_BUNDLE_BYTES, "bundle"))
    except evidence.BundleUnreadable as exc:
        raise _UnusableInput(str(exc)) from None
    try:
        verdict = evidence.verify(data, trust)
    except evidence.EvidenceInvalid as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "check": exc.check, "reason": exc.reason}))
        else:
            click.echo(f"INVALID evidence: check {exc.check} failed: {exc.reason}")
        sys.exit(1)
    if extract:
        if verdict.m0 is None:
            click.echo("nothing extracted: m0 needs k_r, k_t and c in the bundle", err=True)
        else:
            try:
                Path(extract).write_bytes(verdict.m0)
            except OSError as exc:
                raise _UnusableInput(f"cannot write {extract}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(verdict.to_json(), indent=1))
        return
    click.echo(f"VALID evidence ({verdict.kind}) for exchange {verdict.tx}")
    for s in verdict.statements:
        click.echo(f"  - {s}")
    if verdict.m0_sha256:
        click.echo(f"  m0 SHA-256: {verdict.m0_sha256}")
    click.echo(f"  checks passed: {', '.join(verdict.checks)}")


# --- db -----------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Manage the SQL database (SQLite by default, PostgreSQL by URL)."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to the newest revision."""
    from tcms.store import Store

    settings = _settings(ctx)

    async def go() -> None:
        store = Store(settings.database.url)
        try:
            await store.upgrade()
        finally:
            await store.close()

    asyncio.run(go())
    click.echo("database schema is up to date")


def _usage_lines(used: dict[str, Any], current: int | None) -> list[str]:
    lines = []
    for col, counts in used.items():
        parts = [f"{n} in clear" if kid is None else
                 f"{n} under {kid:08x}{' (current)' if kid == current else ''}"
                 for kid, n in sorted(counts.items(), key=lambda kv: (kv[0] is not None,
                                                                       kv[0] or 0))]
        lines.append(f"{col:18} {', '.join(parts) or 'empty'}")
    return lines


@db.command("key-usage")
@click.pass_context
def db_key_usage(ctx: click.Context) -> None:
    """Which data key seals the values of each encrypted column (or: in clear)."""
    from tcms.cliutil import data_keys_of, with_store
    from tcms.store.reencrypt import usage

    keys = data_keys_of(_settings(ctx))
    for line in _usage_lines(with_store(ctx, usage), keys.current if keys else None):
        click.echo(line)


@db.command("reencrypt")
@click.pass_context
def db_reencrypt(ctx: click.Context) -> None:
    """Seal every value under the current data key: values sealed under an older version
    (after `tcms keys data-key rotate`) and values stored in clear before encryption.
    Safe while gateways run; run it again if it reports values rewritten meanwhile."""
    from tcms.cliutil import data_keys_of, with_store
    from tcms.store.reencrypt import reencrypt

    keys = data_keys_of(_settings(ctx))
    if keys is None:
        raise click.ClickException("no data key: set the keystore passphrase "
                                   "(TCMS_KEYS__PASSPHRASE); a gateway creates the key on "
                                   "first start, or `tcms keys data-key create`")
    report = with_store(ctx, reencrypt)
    total = sum(report.resealed.values())
    click.echo(f"{total} value(s) sealed again under data key {keys.current:08x}"
               + "".join(f"; {c}: {n}" for c, n in report.resealed.items()))
    if report.raced:
        click.echo(f"{sum(report.raced.values())} value(s) were rewritten by a gateway "
                   "meanwhile (sealed under its current key)")
    for line in _usage_lines(report.usage, keys.current):
        click.echo(line)
    if report.vacuumed:
        click.echo("the SQLite file was rebuilt (VACUUM) and its WAL emptied: no page "
                   "keeps a value as it was")
    elif report.vacuumed is False:
        click.echo("the SQLite file was rebuilt (VACUUM) but a reader kept its WAL busy: "
                   "run `tcms db reencrypt` again to empty it")
    elif total and _settings(ctx).database.url.startswith("postgres"):
        click.echo("PostgreSQL keeps old row versions until they are vacuumed: run "
                   "VACUUM FULL on submissions, inbound, runs, messages and evidence, and "
                   "destroy backups taken before")


# --- services -------------------------------------------------------------------------------


def _passphrase(settings: config_mod.Settings) -> bytes:
    try:
        return settings.keys.get_passphrase()
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def tss() -> None:
    """The Time Stamping Server's credentials and log."""


@tss.command("init")
@click.option("--force", is_flag=True, help="Replace existing credentials.")
@click.pass_context
def tss_init(ctx: click.Context, force: bool) -> None:
    """Create the TSA's CA and its time-stamping certificate (keys encrypted at rest)."""
    import datetime as dt

    from tss import credentials

    settings = _settings(ctx)
    try:
        creds = credentials.init(settings.keys.dir, settings.tss.name, _passphrase(settings),
                                 now=dt.datetime.now(dt.UTC), force=force)
    except credentials.CredentialsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"TSA certificate {creds.tsa_cert.subject.rfc4514_string()} in "
               f"{settings.keys.dir} (CA: {credentials.FILES['ca']})")


def _listeners(settings: config_mod.Settings, which: str) -> list[Any]:
    import time

    from tcms.store import Store
    from tcms.web import Listener
    from tss import credentials
    from tss.authority import TimeStampAuthority

    store = Store(settings.database.url)
    asyncio.run(_upgrade(store))
    store = Store(settings.database.url)  # a fresh engine for the serving loop
    out: list[Listener] = []
    passphrase = _passphrase(settings)
    try:
        if which in ("tss", "all"):
            from tss.service import create_app as tss_app

            tsa = TimeStampAuthority(credentials.load(settings.keys.dir, passphrase))
            s = settings.tss
            out.append(Listener(tss_app(store, tsa), s.host, s.port, s.tls_cert, s.tls_key))
        if which in ("ttp", "all"):
            from tcms.protocol.checks import Trust
            from ttp.service import create_app as ttp_app

            me = Keystore(settings.keys.dir, passphrase).load(settings.ttp.identity)
            trust = Trust(me.party, credentials.load_ca(settings.keys.dir))
            from ttp.service import DisputeLimits

            t = settings.ttp
            limits = DisputeLimits(t.dispute_max_bytes, t.dispute_per_minute, t.dispute_burst,
                                   t.dispute_concurrency)
            out.append(Listener(ttp_app(store, me, trust, time.time, limits), t.host, t.port,
                                t.tls_cert, t.tls_key))
        if which in ("dc", "all"):
            from dc.service import create_app as dc_app

            dc_me = Keystore(settings.keys.dir, passphrase).load(settings.dc.identity)
            d = settings.dc
            out.append(Listener(dc_app(store, dc_me, time.time, d.updates_dir), d.host, d.port,
                                d.tls_cert, d.tls_key))
    except (credentials.CredentialsError, KeystoreError) as exc:
        raise click.ClickException(str(exc)) from None
    return out


async def _upgrade(store: Any) -> None:
    try:
        await store.upgrade()
    finally:
        await store.close()


@main.command()
@click.argument("service", type=click.Choice(["all", "tss", "ttp", "dc", "gateway"]),
                default="all")
@click.pass_context
def serve(ctx: click.Context, service: str) -> None:
    """Run TCMS services: the TSS, the TTP, the DC, the gateway, or all of them in one
    process (``all`` includes the gateway when [gateway] domains is set).

    Addresses, TLS files and the database come from the configuration ([tss], [ttp], [dc],
    [gateway], [database]); state is in SQL, so a restart continues where it stopped."""
    from tcms.web import serve as serve_all

    settings = _settings(ctx)
    listeners = _listeners(settings, service) if service != "gateway" else []
    with_gateway = service == "gateway" or (service == "all" and bool(settings.gateway.domains))
    endpoint = _metrics_listener(settings, service, with_gateway)
    if endpoint is not None:
        listeners.append(endpoint)

    async def run() -> None:
        work = [_start_gateway(settings)] if with_gateway else []
        if listeners:
            work.append(serve_all(listeners))
        await asyncio.gather(*work)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def _metrics_listener(settings: config_mod.Settings, service: str,
                      with_gateway: bool) -> Any:
    """The Prometheus endpoint of this process ([metrics] listen), with the SQL gauges of
    what it runs; None when it is off."""
    from tcms import metrics
    from tcms.store import Store

    if not settings.metrics.listen:
        return None
    store = Store(settings.database.url)  # counts rows only: no data key needed
    readers: list[Any] = []
    if service in ("tss", "all"):
        from tss import metrics as tss_metrics

        readers.append(tss_metrics.sql_gauges(store))
    if service in ("ttp", "all"):
        from ttp import metrics as ttp_metrics

        readers.append(ttp_metrics.sql_gauges(store))
    if service in ("dc", "all"):
        from dc import metrics as dc_metrics

        readers.append(dc_metrics.sql_gauges(store))
    if with_gateway:
        from gateway import metrics as gateway_metrics

        readers.append(gateway_metrics.sql_gauges(store))
    log.info("metrics: http://%s/metrics", settings.metrics.listen)
    return metrics.listener(settings.metrics, [r.refresh for r in readers])


async def _start_gateway(settings: config_mod.Settings) -> None:
    """The gateway: its SMTP, IMAP and intake listeners and its protocol worker."""
    from gateway import context, imapproxy, intake, submission
    from gateway.worker import Worker, answer

    g = settings.gateway
    if not (g.tls_cert and g.tls_key):
        raise click.ClickException("the gateway needs [gateway] tls_cert and tls_key: "
                                   "every listener speaks TLS")
    try:
        ctx = context.create(settings)
        clients = intake.networks(g.intake_clients)
    except (config_mod.ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    await ctx.store.upgrade()
    worker = Worker(ctx)

    async def answer_by_mail(user: str, tx: str, event: Any) -> str:
        return await answer(ctx, user, tx, event, worker.clock())

    handler = submission.SubmissionHandler(
        ctx.store, ctx.upstream, g.tag, on_login=ctx.enroll, on_submit=worker.kick_submissions,
        answer=answer_by_mail, domains=tuple(g.domains), max_recipients=g.max_recipients)
    tls = submission.tls_context(str(g.tls_cert), str(g.tls_key))
    await submission.start(handler, tls=tls, submission=g.split(g.submission),
                           smtps=g.split(g.smtps), max_size=g.max_message_size)
    log.info("gateway SMTP listening: submission %s (STARTTLS), smtps %s (TLS)",
             g.submission, g.smtps)
    addresses = list(g.protocol_addresses().values())
    await intake.start(intake.IntakeHandler(ctx.queues, addresses, [str(c) for c in clients],
                                            on_stored=worker.kick_inbound),
                       listen=g.split(g.intake), tls=tls,
                       max_size=intake.max_size(g.max_message_size))
    log.info("gateway intake listening: %s (LMTP) for %s, from %s", g.intake,
             ", ".join(addresses), ", ".join(g.intake_clients))
    up = ctx.upstream
    # a notice filed into Certified.Accept/Refuse through the proxy is acted on at once
    await imapproxy.start(imapproxy.ProxyConfig(up.imap_host, up.imap_port, g.protocol_folder,
                                                tls, up.imap_tls,
                                                on_filed=worker.answers_filed),
                          starttls=g.split(g.imap_proxy), implicit=g.split(g.imaps_proxy))
    log.info("gateway IMAP listening: %s (STARTTLS), %s (TLS); folder %s hidden",
             g.imap_proxy, g.imaps_proxy, g.protocol_folder)
    try:
        await worker.run()
    finally:
        await ctx.aclose()


@main.group("gateway")
def gateway_group() -> None:
    """The gateway's users: enrol them (key pair, published at the DC)."""


@gateway_group.command("enroll")
@click.argument("addresses", nargs=-1, required=True)
@click.pass_context
def gateway_enroll(ctx: click.Context, addresses: tuple[str, ...]) -> None:
    """Create the keys of ADDRESSES (users of the gateway's domains) and publish them at the
    DC, so that others can send them certified mail.  Users who log in to the gateway's
    SMTP are enrolled on their own."""
    from dc.records import DirectoryError
    from gateway import context

    settings = _settings(ctx)

    async def go() -> None:
        try:
            gw = context.create(settings)
        except config_mod.ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            for address in addresses:
                ident = await gw.enroll(address)
                click.echo(f"{ident.name}: key {ident.party.fingerprint} published at the DC")
        except DirectoryError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            await gw.aclose()

    asyncio.run(go())


@main.group()
def ttp() -> None:
    """The Trusted Third Party's audit log and disputes."""


@ttp.command("audit")
@click.pass_context
def ttp_audit(ctx: click.Context) -> None:
    """Check the hash chain of the append-only audit log."""
    from tcms.store import Store

    settings = _settings(ctx)

    async def go() -> tuple[int, str | None, dict[str, int]]:
        store = Store(settings.database.url)
        try:
            await store.upgrade()
            n, bad = await store.verify_audit_chain()
            return n, bad, await store.count_decisions()
        finally:
            await store.close()

    n, bad, counts = asyncio.run(go())
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no decisions"
    if bad:
        click.echo(f"audit log BROKEN after {n - 1} good entries: {bad}")
        sys.exit(1)
    click.echo(f"audit log intact: {n} entries; decisions: {summary}")


@ttp.command("dispute")
@click.argument("bundle", type=click.File("rb"))
@click.option("--url", default=None, help="The TTP's URL (default: [ttp] url).")
@click.option("--as", "filer", default=None, metavar="ADDRESS",
              help="The party filing: the exchange's sender or recipient, whose key is in "
                   "the keystore ([keys] dir).  Default: the bundle's holder.")
@click.pass_context
def ttp_dispute(ctx: click.Context, bundle: Any, url: str | None, filer: str | None) -> None:
    """Submit an evidence BUNDLE to the TTP and print its signed verdict.

    Only a party of the exchange may file: the request is signed with its key."""
    import time

    import httpx

    from tcms import boundedjson
    from ttp import filing

    settings = _settings(ctx)
    body = bundle.read()
    try:
        parsed = boundedjson.loads(body, max_depth=4, max_items=256)
        core = filing.core_of(parsed)
    except (boundedjson.JsonRefused, filing.FilingRefused) as exc:
        raise click.ClickException(f"{bundle.name}: not an evidence bundle ({exc})") from None
    hdr = core.header
    if filer is None:
        filer = (hdr.recipient if parsed.get("holder") == "receiver" else hdr.sender).name
    try:
        me = Keystore(settings.keys.dir, _passphrase(settings)).load(filer)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(f"cannot file as {filer}: {exc}") from None
    target = (url or settings.ttp.url).rstrip("/") + "/dispute"
    headers = {"Content-Type": "application/json",
               **filing.filing_headers(me, core.cid, body, int(time.time()))}
    try:
        res = httpx.post(target, content=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the TTP at {target}: {exc}") from None
    if res.status_code != 200:
        raise click.ClickException(f"the TTP answered {res.status_code}: {res.text[:500]}")
    try:
        verdict = boundedjson.loads(res.content, max_depth=8, max_items=10_000)
    except boundedjson.JsonRefused:
        verdict = None
    if not isinstance(verdict, dict):
        raise click.ClickException("the TTP's answer is not a verdict")
    click.echo(json.dumps(verdict, indent=1))
    sys.exit(0 if verdict.get("valid") else 1)


# --- dc -------------------------------------------------------------------------------------


@main.group()
def dc() -> None:
    """The Distribution Center: register gateways, publish, revoke and look up keys."""


def _dc_client(ctx: click.Context, url: str | None) -> Any:
    from dc.client import DirectoryClient

    settings = _settings(ctx)
    try:
        _, dc_party = Keystore(settings.keys.dir).public(settings.dc.identity)
    except (KeystoreError, ValueError) as exc:
        raise click.ClickException(f"the DC's public keys: {exc}") from None
    return DirectoryClient(url or settings.dc.url, dc_party)


@dc.command("register")
@click.argument("domain")
@click.argument("gateway_keys", type=click.File("r"))
@click.option("--protocol-address", default=None, metavar="ADDRESS",
              help="Where the domain's MTA routes protocol mail to the gateway "
                   "(default: tcms-gateway@DOMAIN; the gateway's [gateway] "
                   "protocol_address).")
@click.pass_context
def dc_register(ctx: click.Context, domain: str, gateway_keys: Any,
                protocol_address: str | None) -> None:
    """Allow the gateway whose public keys are in GATEWAY_KEYS (`tcms keys export`) to
    publish and revoke keys for DOMAIN, and publish the address its peers send protocol
    mail to (run on the DC's host: writes its database)."""
    import time

    from dc import store as dc_store
    from tcms.identity import Party, check_party_name
    from tcms.store import Store

    try:
        gateway = Party.from_json(json.load(gateway_keys))
    except (ValueError, KeyError) as exc:
        raise click.ClickException(f"not a public key file: {exc}") from None
    domain = domain.strip().lower()
    address = protocol_address or f"tcms-gateway@{domain}"
    try:
        address = check_party_name(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--protocol-address") from None
    if address.rsplit("@", 1)[1] != domain:
        raise click.BadParameter(f"{address} is not in {domain}",
                                 param_hint="--protocol-address")
    settings = _settings(ctx)

    async def go() -> None:
        store = Store(settings.database.url)
        try:
            await store.upgrade()
            await dc_store.register_gateway(store, domain, gateway, int(time.time()),
                                            address)
        finally:
            await store.close()

    asyncio.run(go())
    click.echo(f"{gateway.name} [{gateway.fingerprint}] may now publish keys for {domain}; "
               f"its protocol mail goes to {address}")


@dc.command("publish")
@click.argument("address")
@click.option("--gateway", required=True, help="The local gateway identity that signs.")
@click.option("--days", type=int, default=365, show_default=True, help="Validity.")
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_publish(ctx: click.Context, address: str, gateway: str, days: int,
               url: str | None) -> None:
    """Publish the public keys of the local identity ADDRESS, signed by GATEWAY."""
    from dc.records import DirectoryError

    settings = _settings(ctx)
    keys = Keystore(settings.keys.dir, _passphrase(settings))
    try:
        gw = keys.load(gateway)
        _, party = keys.public(address)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    client = _dc_client(ctx, url)

    async def go() -> int:
        try:
            return int(await client.publish(gw, party, days=days))
        finally:
            await client.aclose()

    try:
        version = asyncio.run(go())
    except DirectoryError as exc:
        raise click.ClickException(f"the DC refused: {exc}") from None
    click.echo(f"published {party.name} version {version} [{party.fingerprint}]")


@dc.command("revoke")
@click.argument("address")
@click.argument("fingerprint")
@click.option("--gateway", required=True, help="The local gateway identity that signs.")
@click.option("--reason", default="key compromised", show_default=True)
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_revoke(ctx: click.Context, address: str, fingerprint: str, gateway: str, reason: str,
              url: str | None) -> None:
    """Revoke the key FINGERPRINT of ADDRESS, signed by GATEWAY."""
    from dc.records import DirectoryError

    settings = _settings(ctx)
    try:
        gw = Keystore(settings.keys.dir, _passphrase(settings)).load(gateway)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    client = _dc_client(ctx, url)

    async def go() -> None:
        try:
            await client.revoke(gw, address, fingerprint, reason)
        finally:
            await client.aclose()

    try:
        asyncio.run(go())
    except DirectoryError as exc:
        raise click.ClickException(f"the DC refused: {exc}") from None
    click.echo(f"revoked {address} [{fingerprint}]")


@dc.command("lookup")
@click.argument("address")
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_lookup(ctx: click.Context, address: str, url: str | None) -> None:
    """Look ADDRESS up at the DC and verify the DC's signed answer."""
    from dc.records import DirectoryError

    client = _dc_client(ctx, url)

    async def go() -> Any:
        try:
            return await client.lookup(address)
        finally:
            await client.aclose()

    try:
        rec = asyncio.run(go())
    except DirectoryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(rec.to_json(), indent=1))
    sys.exit(0 if rec.status == "active" else 1)


@dc.group("updates")
def dc_updates() -> None:
    """Signed security-module updates (The Update Framework)."""


def _repo(ctx: click.Context) -> Any:
    from dc.updates import UpdateError, UpdateRepository

    settings = _settings(ctx)
    try:
        return UpdateRepository.load(settings.dc.updates_dir, _passphrase(settings))
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None


@dc_updates.command("init")
@click.pass_context
def dc_updates_init(ctx: click.Context) -> None:
    """Create the update repository and its four role keys (encrypted at rest)."""
    import datetime as dt

    from dc.updates import UpdateError, UpdateRepository

    settings = _settings(ctx)
    try:
        UpdateRepository.init(settings.dc.updates_dir, _passphrase(settings),
                              now=dt.datetime.now(dt.UTC))
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"update repository created in {settings.dc.updates_dir}; give gateways "
               "its root: tcms dc updates root > root.json")


@dc_updates.command("root")
@click.pass_context
def dc_updates_root(ctx: click.Context) -> None:
    """Print the trusted root metadata that gateways pin."""
    sys.stdout.buffer.write(_repo(ctx).trusted_root())


@dc_updates.command("publish")
@click.argument("name")
@click.argument("module", type=click.File("rb"))
@click.pass_context
def dc_updates_publish(ctx: click.Context, name: str, module: Any) -> None:
    """Publish the security MODULE (JSON) under NAME, signed by the repository's keys."""
    import datetime as dt

    from dc.updates import UpdateError

    try:
        version = _repo(ctx).publish(name, module.read(), now=dt.datetime.now(dt.UTC))
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"published {name} (targets version {version})")


@dc_updates.command("refresh")
@click.pass_context
def dc_updates_refresh(ctx: click.Context) -> None:
    """Re-sign the timestamp role (run daily: clients refuse an expired timestamp)."""
    import datetime as dt

    _repo(ctx).refresh_timestamp(dt.datetime.now(dt.UTC))
    click.echo("timestamp re-signed")


@dc_updates.command("apply")
@click.argument("name")
@click.option("--root", "root_file", type=click.File("rb"), required=True,
              help="The pinned trusted root (from `tcms dc updates root`).")
@click.option("--cache", type=click.Path(file_okay=False), default="var/update-cache",
              show_default=True, help="Where TUF keeps its trusted metadata.")
@click.option("--url", default=None, help="The DC's URL (default: [dc] url).")
@click.pass_context
def dc_updates_apply(ctx: click.Context, name: str, root_file: Any, cache: str,
                     url: str | None) -> None:
    """Fetch the module NAME through TUF, verify it and apply it (a gateway's step)."""
    from dc.updater import ModuleUpdater
    from dc.updates import UpdateError

    updater = ModuleUpdater(url or _settings(ctx).dc.url, root_file.read(), Path(cache))
    try:
        module = updater.apply(name)
    except UpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(module))


# --- tx -------------------------------------------------------------------------------------


@main.group()
def tx() -> None:
    """See every certified exchange, its state and deadlines, and export its evidence."""


def _with_store(ctx: click.Context, fn: Any) -> Any:
    return with_store(ctx, fn)


def _when(t: int | None) -> str:
    from tcms.protocol.checks import utc

    return utc(t) if t else "-"


@tx.command("list")
@click.option("--owner", help="Only the exchanges of this local user.")
@click.option("--active", is_flag=True, help="Only exchanges that have not ended.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_context
def tx_list(ctx: click.Context, owner: str | None, active: bool, limit: int) -> None:
    """One line per exchange and role: id, phase, next deadline, parties, subject."""
    runs = _with_store(ctx, lambda s: s.list_runs(owner=owner, active_only=active,
                                                  limit=limit))
    if not runs:
        click.echo("no exchanges")
    for r in runs:
        click.echo(f"{r.tx}  {r.role:8} {r.phase:10} next {_when(r.deadline):23} "
                   f"{r.owner} <-> {r.peer}  {r.subject!r}")


@tx.command("show")
@click.argument("tx_id")
@click.pass_context
def tx_show(ctx: click.Context, tx_id: str) -> None:
    """Everything about the exchange TX_ID (a unique prefix is enough)."""
    async def load(store: Any) -> Any:
        runs = await store.find_runs(tx_id)
        return [(r, await store.messages_of(r.cid)) for r in runs]

    found = _with_store(ctx, load)
    if not found:
        raise click.ClickException(f"no exchange {tx_id}")
    for run, msgs in found:
        click.echo(f"exchange {run.tx} ({run.role} side), cid {run.cid.hex()}")
        click.echo(f"  {run.owner} <-> {run.peer}, subject {run.subject!r}")
        click.echo(f"  phase {run.phase}{' (ended)' if run.terminal else ''}, next deadline "
                   f"{_when(run.deadline)}, updated {_when(run.updated_at)}")
        for m in msgs:
            click.echo(f"  {_when(m['at'])} {m['direction']:3} {m['kind']:10} "
                       f"{len(m['data'])} bytes")


@tx.command("export")
@click.argument("tx_id")
@click.option("--role", type=click.Choice(["sender", "receiver"]), default=None,
              help="Which side's evidence (default: the only one stored).")
@click.option("--output", "-o", type=click.File("w"), default="-")
@click.pass_context
def tx_export(ctx: click.Context, tx_id: str, role: str | None, output: Any) -> None:
    """Write the evidence bundle of TX_ID (verify it with `tcms verify`)."""
    runs = _with_store(ctx, lambda s: s.find_runs(tx_id))
    if role:
        runs = [r for r in runs if r.role == role]
    if not runs:
        raise click.ClickException(f"no exchange {tx_id}" + (f" on the {role} side"
                                                             if role else ""))
    if len(runs) > 1:
        raise click.ClickException("both sides are stored here: choose --role")
    output.write(evidence.dumps(evidence.from_stored(runs[0].role, runs[0].state)) + "\n")


# --- tsrg -----------------------------------------------------------------------------------


@main.group()
def tsrg() -> None:
    """The TSRG generator: raw output for external test batteries."""


@tsrg.command("stream")
@click.option("--source", type=click.Choice(
    ["modern", "modern-stage1", "modern-stage2", "paper", "paper-stage1", "paper-stage2",
     "chacha20", "minstd"]), default="modern", show_default=True,
    help="Which generator or stage (paper-* and minstd are unsafe, for comparison).")
@click.option("--bytes", "nbytes", type=int, default=0,
              help="How many bytes (0: until the reader stops).")
@click.option("--seed", default="tcms-tsrg-battery-seed", show_default=True,
              help="Seed of the deterministic test mode.")
def tsrg_stream(source: str, nbytes: int, seed: str) -> None:
    """Write raw generator output to standard output, e.g.
    `tcms tsrg stream | dieharder -g 200 -d 100`."""
    from tsrg import stats

    src = stats.source(source, seed.encode())
    out = sys.stdout.buffer
    left = nbytes
    try:
        while nbytes == 0 or left > 0:
            n = 1 << 20 if nbytes == 0 else min(1 << 20, left)
            out.write(src(n))
            left -= n
        out.flush()
    except BrokenPipeError:
        pass


# --- demo ---------------------------------------------------------------------------------


@main.command()
@click.option("--scenario", type=click.Choice(
    ["accept", "refuse", "silent-recipient", "sender-stalls", "recipient-stalls", "all"]),
    default="all", show_default=True, help="Which exchange to play.")
@click.option("--out", type=click.Path(file_okay=False), default="demo-out",
              show_default=True, help="Where keys, database and evidence files go.")
def demo(scenario: str, out: str) -> None:
    """Run certified exchanges between two in-process parties and verify the evidence."""
    from tcms import demo as demo_mod

    logging.getLogger().setLevel(logging.WARNING)
    scenarios = demo_mod.SCENARIOS if scenario == "all" else (scenario,)
    for name in scenarios:
        click.echo(f"\n=== scenario: {name} " + "=" * (50 - len(name)))
        asyncio.run(demo_mod.run(Path(out) / name, name, say=click.echo))


def _add_package_commands() -> None:
    """Commands that live with the package that owns them."""
    from gateway.cli import queue_group, tx_purge

    main.add_command(queue_group)
    tx.add_command(tx_purge)


_add_package_commands()

if __name__ == "__main__":
    main()
