"""Which data key each stored value is sealed under, and moving every value to the current
key (`tcms db key-usage`, `tcms db reencrypt`): after `tcms keys data-key rotate`, and
once to seal the values a store kept in clear before encryption.

Re-encrypting is safe while gateways run: a value is replaced only if it is still the one
read (a conditional UPDATE), so a row a gateway rewrote meanwhile keeps the gateway's
value, which is sealed under a current key already.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, LargeBinary, Table, Text, and_, func, select, type_coerce, update

from tcms.datakeys import DataKeyMismatch, DataKeyMissing, DataKeys, key_id_of
from tcms.store import models as m
from tcms.store.db import Store
from tcms.store.encrypted import TEXT_PREFIX, EncryptedBinary, EncryptedText, stored_text

BATCH = 100  # values re-sealed per transaction
TEXT_HEAD = len(TEXT_PREFIX) + 8  # the prefix and a sealed header (6 bytes) in base64


@dataclass(frozen=True)
class Encrypted:
    table: Table
    column: Column[Any]
    text: bool

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column.name}"

    def stored(self) -> Any:
        """The column as stored, bypassing the sealing type."""
        return type_coerce(self.column, Text if self.text else LargeBinary)

    def head(self) -> Any:
        n = TEXT_HEAD if self.text else 6
        return type_coerce(func.substr(self.column, 1, n), Text if self.text else LargeBinary)

    def key_id(self, head: Any) -> int | None:
        """The key id of a value from its first bytes (None: in clear)."""
        if head is None:
            return None
        if not self.text:
            return key_id_of(bytes(head), whole=False)
        text = str(head)
        if not text.startswith(TEXT_PREFIX):
            return None
        try:
            sealed = base64.b64decode(text[len(TEXT_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            sealed = b""
        kid = key_id_of(sealed, whole=False) if sealed else None
        if kid is None:
            raise DataKeyMismatch(f"a value of {self.name} is not valid sealed text")
        return kid

    def in_clear(self, stored: Any) -> bool:
        if self.text:
            return not str(stored).startswith(TEXT_PREFIX)
        return key_id_of(bytes(stored)) is None

    def open(self, keys: DataKeys, stored: Any) -> Any:
        """The clear value of a stored one (as the column's type gives it)."""
        if not self.text:
            return keys.open(bytes(stored), self.name)
        if self.in_clear(stored):
            return str(stored)
        return keys.open(stored_text(str(stored), self.name), self.name).decode()


def encrypted_columns() -> list[Encrypted]:
    out = []
    for table in m.metadata.sorted_tables:
        for col in table.columns:
            if isinstance(col.type, (EncryptedBinary, EncryptedText)):
                out.append(Encrypted(table, col, isinstance(col.type, EncryptedText)))
    return out


@dataclass
class Report:
    """Per column: values by key id (None: in clear), and what re-encrypting did."""

    usage: dict[str, Counter[int | None]] = field(default_factory=dict)
    resealed: Counter[str] = field(default_factory=Counter)
    raced: Counter[str] = field(default_factory=Counter)  # rewritten by a gateway meanwhile
    vacuumed: bool | None = None  # SQLite: the file rebuilt and its WAL emptied (or not)


async def _heads(store: Store, col: Encrypted) -> list[tuple[tuple[Any, ...], int | None]]:
    """(primary key, key id) of every non-empty value of ``col``."""
    pk = list(col.table.primary_key.columns)
    q = select(*pk, col.head()).where(func.length(col.column) > 0)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [(tuple(r[:-1]), col.key_id(r[-1])) for r in rows]


async def usage(store: Store) -> dict[str, Counter[int | None]]:
    """How many values of each encrypted column each key id seals (None: in clear)."""
    out = {}
    for col in encrypted_columns():
        out[col.name] = Counter(kid for _, kid in await _heads(store, col))
    return out


async def reencrypt(store: Store) -> Report:
    """Seal every value not under the current key (values in clear included) under it."""
    keys = store.data_keys
    if keys is None:
        raise DataKeyMissing("re-encrypting needs the data keys (the keystore passphrase)")
    report = Report()
    for col in encrypted_columns():
        todo = [pk for pk, kid in await _heads(store, col) if kid != keys.current]
        pk_cols = list(col.table.primary_key.columns)
        for start in range(0, len(todo), BATCH):
            async with store.transaction() as conn:
                for pk in todo[start:start + BATCH]:
                    where = and_(*(c == v for c, v in zip(pk_cols, pk, strict=True)))
                    old = (await conn.execute(select(col.stored()).where(where))).scalar()
                    if old is None:
                        continue
                    res = await conn.execute(update(col.table).where(
                        where, col.stored() == old).values({col.column.name: col.open(keys, old)}))
                    if res.rowcount == 1:
                        report.resealed[col.name] += 1
                    else:
                        report.raced[col.name] += 1
    report.usage = await usage(store)
    if store.url.startswith("sqlite"):
        report.vacuumed = await asyncio.to_thread(_vacuum, store.url.split(":///", 1)[1])
    return report


def _vacuum(path: str) -> bool:
    """Rebuild the SQLite file and empty its WAL, so that no free page or WAL frame keeps a
    value as it was (in clear, or under the old key).  False if a reader kept the WAL
    busy past the timeout (run again)."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        db.execute("VACUUM")
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        db.close()
    return bool(busy == 0)
