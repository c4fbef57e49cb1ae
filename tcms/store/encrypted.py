"""Columns encrypted at rest with the data key (tcms/datakeys.py).

``EncryptedBinary("runs.state")`` seals a value as it is written and opens it as it is
read, so every query through SQLAlchemy sees clear values and the database holds sealed
ones.  The keys are those of the Store whose engine runs the query: each Store registers
its keyring (or None) for its engine's dialect.  A Store without keys reads values stored
in clear before encryption and raises DataKeyMissing for a sealed one or any write.

An error raised while writing reaches the caller wrapped by SQLAlchemy
(``StatementError``, its ``orig`` the DataKeyError): ``data_key_error`` finds it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import LargeBinary, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import StatementError
from sqlalchemy.types import TypeDecorator

from tcms.datakeys import (
    DataKeyError,
    DataKeyMismatch,
    DataKeys,
    key_id_of,
    open_value,
    seal_value,
)

TEXT_PREFIX = "tcms-sealed:"  # a sealed value in a text column: then base64
_KEYS: WeakKeyDictionary[Dialect, DataKeys | None] = WeakKeyDictionary()


def attach(dialect: Dialect, keys: DataKeys | None) -> None:
    """The keys that statements run through ``dialect`` (one Store's engine) use."""
    _KEYS[dialect] = keys


def keys_of(dialect: Dialect) -> DataKeys | None:
    return _KEYS.get(dialect)


def data_key_error(exc: BaseException) -> DataKeyError | None:
    """The DataKeyError behind ``exc`` (itself, or wrapped by SQLAlchemy), if any."""
    if isinstance(exc, DataKeyError):
        return exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, DataKeyError):
        return exc.orig
    return None


class EncryptedBinary(TypeDecorator[bytes]):
    """A binary column sealed with the data key; ``column`` is bound into each value."""

    impl = LargeBinary
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return seal_value(keys_of(dialect), bytes(value), self.column)

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return open_value(keys_of(dialect), bytes(value), self.column)


class EncryptedText(TypeDecorator[str]):
    """A text column sealed with the data key: ``tcms-sealed:`` and the sealed value in
    base64.  A value without that prefix was stored in clear before encryption."""

    impl = Text
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or value == "":
            return None if value is None else ""
        sealed = seal_value(keys_of(dialect), str(value).encode(), self.column)
        return TEXT_PREFIX + base64.b64encode(sealed).decode()

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or not str(value).startswith(TEXT_PREFIX):
            return value if value is None else str(value)
        return open_value(keys_of(dialect), stored_text(str(value), self.column),
                          self.column).decode()


def stored_text(value: str, column: str) -> bytes:
    """The sealed value a text column holds (after ``tcms-sealed:``)."""
    try:
        sealed = base64.b64decode(value[len(TEXT_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        sealed = b""
    if key_id_of(sealed) is None:
        raise DataKeyMismatch(f"a value of {column} is not valid sealed text")
    return sealed
