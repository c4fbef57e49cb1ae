"""The DC's state in SQL (on the shared ``Store``): gateways, key versions, seen requests."""

from __future__ import annotations

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dc.records import ACTIVE, REVOKED, SUPERSEDED, DirectoryError, KeyRecord
from tcms.crypto import h
from tcms.identity import Party
from tcms.store import Store
from tcms.store import models as m


async def register_gateway(store: Store, domain: str, gateway: Party, now: int,
                           protocol_address: str | None = None) -> str:
    """Register ``gateway`` for ``domain``, with the address its MTA routes protocol mail
    to (default ``tcms-gateway@DOMAIN``); returns that address."""
    address = protocol_address or f"tcms-gateway@{domain}"
    async with store.transaction() as conn:
        await conn.execute(m.dc_gateways.delete().where(m.dc_gateways.c.domain == domain))
        await conn.execute(insert(m.dc_gateways).values(
            domain=domain, gateway=gateway.name, sig_pk=gateway.sig_pk,
            enc_pk=gateway.enc_pk, protocol_address=address, registered_at=now))
        await store.append_audit(conn, now, "dc", "dc.gateway", None,
                                  f"{gateway.name} [{gateway.fingerprint}] for {domain}, "
                                  f"protocol mail to {address}")
    return address


async def gateway_of(store: Store, domain: str) -> tuple[Party, str] | None:
    """The gateway registered for ``domain`` and its protocol address."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(
            m.dc_gateways.c.gateway, m.dc_gateways.c.sig_pk, m.dc_gateways.c.enc_pk,
            m.dc_gateways.c.protocol_address).where(
            m.dc_gateways.c.domain == domain))).first()
    if row is None or row[2] is None or row[3] is None:
        return None
    return Party(str(row[0]), bytes(row[1]), bytes(row[2])), str(row[3])


async def gateway_key(store: Store, domain: str) -> bytes | None:
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(m.dc_gateways.c.sig_pk).where(
            m.dc_gateways.c.domain == domain))).first()
    return bytes(row[0]) if row else None


async def _once(conn: object, request: bytes, now: int) -> None:
    """Refuse a request seen before (replay), whatever its time."""
    try:
        await conn.execute(insert(m.dc_requests).values(  # type: ignore[attr-defined]
            digest=h(request).hex(), at=now))
    except IntegrityError:
        raise DirectoryError("request.replay", "this request was already processed") from None


async def publish(store: Store, party: Party, not_before: int, not_after: int,
                  request: bytes, now: int) -> int:
    """Add a key version; the previous active version of the address is superseded."""
    async with store.transaction() as conn:
        await _once(conn, request, now)
        last = (await conn.execute(select(func.max(m.dc_keys.c.version)).where(
            m.dc_keys.c.address == party.name))).scalar()
        version = int(last or 0) + 1
        await conn.execute(update(m.dc_keys).where(
            m.dc_keys.c.address == party.name, m.dc_keys.c.status == ACTIVE
        ).values(status=SUPERSEDED, changed_at=now))
        await conn.execute(insert(m.dc_keys).values(
            address=party.name, version=version, sig_pk=party.sig_pk, enc_pk=party.enc_pk,
            fingerprint=party.fingerprint, status=ACTIVE, not_before=not_before,
            not_after=not_after, published_at=now, changed_at=now))
        await store.append_audit(conn, now, "dc", "dc.publish", None,
                                  f"{party.name} v{version} [{party.fingerprint}]")
    return version


async def revoke(store: Store, address: str, fingerprint: str, reason: str,
                 request: bytes, now: int) -> int:
    async with store.transaction() as conn:
        await _once(conn, request, now)
        res = await conn.execute(update(m.dc_keys).where(
            m.dc_keys.c.address == address, m.dc_keys.c.fingerprint == fingerprint,
            m.dc_keys.c.status != REVOKED).values(status=REVOKED, changed_at=now,
                                                  reason=reason))
        if res.rowcount == 0:
            raise DirectoryError("revoke.key", "no such unrevoked key for this address")
        await store.append_audit(conn, now, "dc", "dc.revoke", None,
                                  f"{address} [{fingerprint}]: {reason}")
        return int(res.rowcount)


async def current(store: Store, address: str) -> KeyRecord | None:
    """The newest key version of an address (active, superseded or revoked), unsigned."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(m.dc_keys).where(
            m.dc_keys.c.address == address).order_by(m.dc_keys.c.version.desc()).limit(1)
        )).mappings().first()
    if row is None:
        return None
    party = Party(row["address"], bytes(row["sig_pk"]), bytes(row["enc_pk"]))
    return KeyRecord(party, row["status"], row["not_before"], row["not_after"],
                     row["version"], 0, 0)


async def by_fingerprint(store: Store, address: str, fingerprint: str) -> KeyRecord | None:
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(m.dc_keys).where(
            m.dc_keys.c.address == address, m.dc_keys.c.fingerprint == fingerprint
        ))).mappings().first()
    if row is None:
        return None
    party = Party(row["address"], bytes(row["sig_pk"]), bytes(row["enc_pk"]))
    return KeyRecord(party, row["status"], row["not_before"], row["not_after"],
                     row["version"], 0, 0)
