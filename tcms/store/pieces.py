"""Values as large as a mail, kept in sealed pieces (table ``pieces``): written once, a
piece per statement, and read a piece at a time, so that the database driver, the sealing
and the socket buffers never hold more than a piece of a 25 MB mail besides the value.

Owners name what a value belongs to: ``submission/ID`` and ``inbound/ID`` (the mail of
that row), ``c/CID/ROLE`` (a run's c).  They are deleted with what owns them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tcms.store import models as m


def of_run(cid: bytes, role: str) -> str:
    return f"c/{cid.hex()}/{role}"


def of_row(table: str, key: int) -> str:
    """The mail of a row of ``submissions`` or ``inbound``."""
    return f"{'submission' if table == 'submissions' else table}/{key}"


async def write(conn: AsyncConnection, owner: str, value: bytes) -> None:
    """``value`` in pieces, one statement each (in the caller's transaction)."""
    view, size = memoryview(value), len(value)
    for seq, at in enumerate(range(0, max(size, 1), m.PIECE)):
        await conn.execute(insert(m.pieces), dict(
            owner=owner, seq=seq, size=size, data=view[at:at + m.PIECE]))


async def size_of(engine: AsyncEngine, owner: str) -> int | None:
    """The stored value's length, None if there is none."""
    t = m.pieces
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.c.size).where(
            t.c.owner == owner, t.c.seq == 0))).first()
    return None if row is None else int(row[0])


async def each(engine: AsyncEngine, owner: str, size: int,
               start: int = 0) -> AsyncIterator[bytes]:
    """The value (of ``size`` bytes: ``size_of``) a piece at a time from piece ``start``,
    a read each (ValueError if a piece is missing or the pieces do not add up)."""
    t = m.pieces
    got = start * m.PIECE
    for seq in range(start, -(-size // m.PIECE)):
        async with engine.connect() as conn:
            piece = (await conn.execute(select(t.c.data).where(
                t.c.owner == owner, t.c.seq == seq))).scalar()
        if piece is None:
            raise ValueError(f"piece {seq} of {owner} is missing")
        got += len(piece)
        yield bytes(piece)
    if got != size:
        raise ValueError(f"the pieces of {owner} hold {got} bytes, not {size}")


async def read(engine: AsyncEngine, owner: str) -> bytes | None:
    """The whole value, None if there is none (a value of one piece: one read)."""
    t = m.pieces
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.c.size, t.c.data).where(
            t.c.owner == owner, t.c.seq == 0))).first()
    if row is None:
        return None
    size, first = int(row[0]), bytes(row[1])
    if size <= m.PIECE:
        if len(first) != size:
            raise ValueError(f"the pieces of {owner} hold {len(first)} bytes, not {size}")
        return first
    try:
        return b"".join([first, *[piece async for piece in each(engine, owner, size, 1)]])
    except ValueError:
        if await size_of(engine, owner) is None:
            return None  # deleted while it was read (retention)
        raise


async def remove(conn: AsyncConnection, owners: Iterable[str]) -> int:
    """Delete the values of ``owners`` (in the caller's transaction); pieces deleted."""
    names = list(owners)
    if not names:
        return 0
    res = await conn.execute(delete(m.pieces).where(m.pieces.c.owner.in_(names)))
    return int(res.rowcount or 0)
