"""tcms/store/pieces.py: values as large as a mail in sealed pieces, on SQLite and
PostgreSQL."""

from __future__ import annotations

import os

import pytest
from conftest import stored_values
from sqlalchemy import delete

from tcms.store import Store, pieces
from tcms.store import models as m


@pytest.mark.parametrize("size", [0, 1, m.PIECE - 1, m.PIECE, m.PIECE + 1, 3 * m.PIECE + 7])
async def test_a_value_is_read_back_whole_and_a_piece_at_a_time(store: Store, size: int) -> None:
    value = os.urandom(size)
    async with store.transaction() as conn:
        await pieces.write(conn, "submission/1", value)
    assert await pieces.read(store.engine, "submission/1") == value
    assert await pieces.size_of(store.engine, "submission/1") == size
    got = [p async for p in pieces.each(store.engine, "submission/1", size)]
    assert b"".join(got) == value and all(len(p) <= m.PIECE for p in got)
    assert len(got) == -(-size // m.PIECE)
    assert await pieces.read(store.engine, "submission/2") is None  # another owner's
    # a row a piece (an empty value: one empty piece)
    sealed = await stored_values(store, m.pieces.c.data)
    assert len(sealed) == max(1, len(got))


async def test_a_missing_piece_is_an_error_not_a_shorter_value(store: Store) -> None:
    value = os.urandom(2 * m.PIECE + 5)
    async with store.transaction() as conn:
        await pieces.write(conn, "inbound/7", value)
        await conn.execute(delete(m.pieces).where(m.pieces.c.owner == "inbound/7",
                                                  m.pieces.c.seq == 1))
    with pytest.raises(ValueError, match="piece 1 of inbound/7 is missing"):
        await pieces.read(store.engine, "inbound/7")
    async with store.transaction() as conn:  # removed whole: gone, not an error
        assert await pieces.remove(conn, ["inbound/7"]) == 2
    assert await pieces.read(store.engine, "inbound/7") is None
