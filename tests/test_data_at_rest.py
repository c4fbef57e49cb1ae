"""Data at rest (issue 11, item 15): the SQLite files were created 0644 and held certified
mail in clear (``submissions.raw``) and both key shares (``runs.state``), so a local user
decrypted an unaccepted exchange from ``a.db`` alone.  Now state files are 0600 and mail,
machine state, protocol messages and evidence are sealed with a data key kept in the
keystore: a copy of the database, a SQLite file or a ``pg_dump``, reveals no mail and no
key share.  The key rotates (`tcms keys data-key rotate`, `tcms db reencrypt`, `tcms keys
data-key retire`), and a store without the key names the error.  The same with two real
gateways exchanging mail: tests/test_gateway_e2e.py,
test_a_copy_of_either_gateways_database_reveals_no_mail (it shares that module's gateways)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ALICE, BOB, T0, pg_database, start_run, stored_values
from gateways import query
from mailstack import PATIENCE

from gateway.queue import Queues
from gateway.runs import record
from tcms import datakeys
from tcms.datakeys import DataKeyMismatch, DataKeyMissing
from tcms.store import OutMessage, Store, models

PASSPHRASE = "data-at-rest-passphrase"


def tcms(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args], env=env,
                          capture_output=True, text=True, timeout=PATIENCE)


def env_of(keys: Path, db_url: str, passphrase: str | None = PASSPHRASE) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
    env.update({"TCMS_KEYS__DIR": str(keys), "TCMS_DATABASE__URL": db_url})
    if passphrase is not None:
        env["TCMS_KEYS__PASSPHRASE"] = passphrase
    return env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def forms(secret: bytes) -> list[bytes]:
    """How a secret would show in a file or a dump: as it is, in hex (bytea in pg_dump),
    in base64 (JSON evidence, MIME)."""
    return [secret, secret.hex().encode(), base64.b64encode(secret)]


def sqlite_bytes(db_url: str) -> bytes:
    """The SQLite database as a local user copying its files would have it."""
    path = Path(db_url.split(":///", 1)[1])
    return b"".join(f.read_bytes() for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                    if f.exists())


def pg_dump(db_url: str) -> bytes:
    exe = shutil.which("pg_dump") or next(iter(sorted(Path("/usr/lib/postgresql").glob(
        "*/bin/pg_dump"))), None)
    assert exe, "pg_dump is not installed"
    res = subprocess.run([str(exe), "--dbname", db_url], capture_output=True, timeout=PATIENCE)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


def dump_of(db_url: str) -> bytes:
    return sqlite_bytes(db_url) if db_url.startswith("sqlite") else pg_dump(db_url)


def assert_nowhere(dump: bytes, secrets: dict[str, bytes]) -> None:
    for what, secret in secrets.items():
        for form in forms(secret):
            assert form not in dump, f"{what} is readable in the database ({form[:40]!r})"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'gw.db'}"
        return
    pg = pg_database()
    url = asyncio.run(pg.__aenter__())
    try:
        yield url
    finally:
        asyncio.run(pg.__aexit__(None, None, None))


def mail(marker: str) -> bytes:
    return (f"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: offer\r\n\r\n"
            f"The secret terms: {marker}\r\n").encode()


async def store_rows(db_url: str, keys_dir: Path, marker: str) -> dict[str, bytes]:
    """What a gateway stores for one exchange: the submission, the sender's run (both key
    shares; c in table pieces) with its outbox (m3, holding c), and its evidence.
    Returns the secrets."""
    store = Store(db_url, data_keys=datakeys.load(keys_dir, PASSPHRASE.encode()))
    try:
        await store.upgrade()
        m0 = mail(marker)
        sid = await store.add_submission(message_id=f"<{uuid.uuid4()}@a.test>", sender=ALICE.name,
                                         recipients=[BOB.name], subject="offer", raw=m0,
                                         now=T0)
        run = start_run(m0)
        await store.save_run(record(run.sender, "sender", ALICE.name, BOB.name,
                                    submission_id=sid), now=T0,
                             outbox=[OutMessage("peer", "m3", run.m3, ALICE.name, BOB.name)])
        st = run.sender.state
        await store.save_evidence(run.sender.cid, "sender", "origin", json.dumps(
            {"k_R": base64.b64encode(st.k_r).decode()}), T0)
        return {"the mail": marker.encode(), "k_R": st.k_r, "k_T": st.k_t, "c": st.c}
    finally:
        await store.close()


def key_ids(out: str) -> list[str]:
    return re.findall(r"\b[0-9a-f]{8}\b", out)


def test_rotate_reencrypt_and_retire_through_tcms(tmp_path: Path, db_url: str) -> None:
    keys = tmp_path / "keys"
    env = env_of(keys, db_url)
    created = tcms(["keys", "data-key", "create"], env)
    assert created.returncode == 0, created.stderr
    first = key_ids(created.stdout)[0]
    assert mode(keys / datakeys.FILE) == 0o600 and mode(keys) == 0o700
    secrets = asyncio.run(store_rows(db_url, keys, f"first-{uuid.uuid4().hex}"))
    # a mail stored in clear by a gateway from before encryption: still readable
    legacy = f"legacy-{uuid.uuid4().hex}"
    query(db_url, "INSERT INTO submissions (message_id, sender, recipients, subject, raw, "
                  "created_at) VALUES (?, ?, ?, ?, ?, ?)", "<legacy@a.test>", ALICE.name,
          "[]", "old", mail(legacy), T0)

    rotated = tcms(["keys", "data-key", "rotate"], env)
    assert rotated.returncode == 0, rotated.stderr
    second = key_ids(rotated.stdout)[0]
    assert second != first
    if db_url.startswith("sqlite"):
        listed = tcms(["keys", "data-key", "list"], env_of(keys, db_url, None)).stdout
        assert f"{first}  created" in listed, listed
        assert re.search(rf"{second}  created .* current", listed), listed
    # new rows are sealed under the new key, old ones still open
    newer = asyncio.run(store_rows(db_url, keys, f"second-{uuid.uuid4().hex}"))
    usage = tcms(["db", "key-usage"], env).stdout
    for column, n in (("runs.state", 1), ("pieces.data", 2)):  # pieces: the mail and c
        line = usage.split(column)[1].split("\n")[0]
        assert f"{n} under {first}" in line and f"{n} under {second} (current)" in line, usage
    subs = usage.split("submissions.raw")[1].split("\n")[0]
    assert "1 in clear" in subs and "under" not in subs, usage  # new mail: in pieces

    async def raws() -> list[bytes]:
        store = Store(db_url, data_keys=datakeys.load(keys, PASSPHRASE.encode()))
        try:
            ids = await stored_values(store, models.submissions.c.id)
            return [await Queues(store).mail_of("submission", i) for i in ids]
        finally:
            await store.close()

    assert [secrets["the mail"] in r or legacy.encode() in r or newer["the mail"] in r
            for r in asyncio.run(raws())] == [True, True, True]

    refused = tcms(["keys", "data-key", "retire", first], env)
    assert refused.returncode == 1 and "still seals" in refused.stderr, refused.stderr
    again = tcms(["db", "reencrypt"], env)
    assert again.returncode == 0, again.stderr
    # state, m3, the mail and c (pieces), evidence, and the mail kept in clear
    assert "6 value(s) sealed again" in again.stdout, again.stdout
    assert "pieces.data: 2" in again.stdout, again.stdout
    assert "in clear" not in again.stdout and f"under {first}" not in again.stdout
    assert_nowhere(dump_of(db_url), {**secrets, "the legacy mail": legacy.encode(),
                                     **{f"new {k}": v for k, v in newer.items()}})
    retired = tcms(["keys", "data-key", "retire", first], env)
    assert retired.returncode == 0, retired.stderr
    assert [kid for kid, _, _ in datakeys.describe(keys)] == [int(second, 16)]
    assert len(asyncio.run(raws())) == 3  # every value opens with what is left
    if db_url.startswith("sqlite"):
        path = Path(db_url.split(":///", 1)[1])
        assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_the_keyring_refuses_what_would_lose_a_key(tmp_path: Path) -> None:
    pw = PASSPHRASE.encode()
    first = datakeys.create(tmp_path, pw)
    with pytest.raises(datakeys.KeyringError, match="exists already"):
        datakeys.create(tmp_path, pw)
    with pytest.raises(datakeys.KeyringError, match="the current one"):
        datakeys.retire(tmp_path, pw, first.current)
    with pytest.raises(datakeys.KeyringError, match="do not open with this passphrase"):
        datakeys.load(tmp_path, b"another passphrase")
    # two processes creating it at once end with one keyring, the same for both
    assert datakeys.load_or_create(tmp_path, pw).keys == first.keys
    sealed = first.seal(b"mail", "submissions.raw")
    # a gateway holding only the first version meets a value of the second: it re-reads
    # the keyring (rotated elsewhere and copied here) and opens it
    second = datakeys.rotate(tmp_path, pw)
    assert first.open(second.seal(b"later", "runs.state"), "runs.state") == b"later"
    assert second.open(sealed, "submissions.raw") == b"mail"
    with pytest.raises(DataKeyMismatch):
        second.open(sealed, "runs.state")


def test_a_store_without_the_data_key_names_the_error(tmp_path: Path) -> None:
    keys, db_url = tmp_path / "keys", f"sqlite:///{tmp_path / 'gw.db'}"
    datakeys.create(keys, PASSPHRASE.encode())
    asyncio.run(store_rows(db_url, keys, "x"))
    tx = query(db_url, "SELECT tx FROM runs")[0][0]
    assert isinstance(tx, str)
    exported = tcms(["tx", "export", tx], env_of(keys, db_url))
    assert exported.returncode == 0 and '"holder": "sender"' in exported.stdout, exported
    # no passphrase: the keys cannot be opened, and the sealed state says so by name
    missing = tcms(["tx", "export", tx], env_of(keys, db_url, None))
    assert missing.returncode == 1, missing.stdout
    assert "DataKeyMissing: runs.state is encrypted" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    wrong = tcms(["tx", "list"], env_of(keys, db_url, "not the passphrase"))
    assert wrong.returncode == 1 and "KeyringError" in wrong.stderr, wrong.stderr

    async def without_key() -> None:
        store = Store(db_url)
        try:
            with pytest.raises(DataKeyMissing, match=r"runs\.state"):
                await store.list_runs()
            with pytest.raises(Exception, match="DataKeyMissing"):  # never written in clear
                await store.add_submission(message_id="<m>", sender="a@a.test",
                                           recipients=[], subject="s", raw=b"mail", now=T0)
        finally:
            await store.close()

    asyncio.run(without_key())
    # a sealed value moved to another column does not open there
    with sqlite3.connect(tmp_path / "gw.db") as db:
        db.execute("UPDATE submissions SET raw = (SELECT state FROM runs)")

    async def moved() -> None:
        store = Store(db_url, data_keys=datakeys.load(keys, PASSPHRASE.encode()))
        try:
            with pytest.raises(DataKeyMismatch, match=r"submissions\.raw"):
                await stored_values(store, models.submissions.c.raw)
        finally:
            await store.close()

    asyncio.run(moved())


def test_sqlite_files_are_created_and_kept_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "new" / "gw.db"
        existing = tmp_path / "old.db"
        sqlite3.connect(existing).close()
        existing.chmod(0o644)

        async def use(path: Path) -> list[int]:
            store = Store(f"sqlite:///{path}")
            try:
                await store.upgrade()
                await store.audit("admin", "test", "", now=T0)
                files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
                assert all(f.exists() for f in files)  # WAL mode: the companions are open
                return [mode(f) for f in files]
            finally:
                await store.close()

        assert asyncio.run(use(fresh)) == [0o600] * 3
        assert mode(fresh.parent) == 0o700
        assert asyncio.run(use(existing)) == [0o600] * 3
    finally:
        os.umask(old)
