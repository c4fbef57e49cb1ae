"""A client of the DC for gateways: publish, revoke, and verified lookups."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from dc.records import (
    DirectoryError,
    GatewayRecord,
    KeyRecord,
    Publish,
    Revoke,
    domain_of,
    usable,
    verify_gateway_record,
    verify_record,
)
from tcms.identity import Identity, Party
from tcms.web import CBOR


class DirectoryClient:
    def __init__(self, url: str, dc: Party, *, clock: Callable[[], float] = time.time,
                 verify_tls: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self.dc = dc
        self.clock = clock
        self._http = httpx.AsyncClient(timeout=30, verify=verify_tls)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, data: bytes) -> dict[str, object]:
        r = await self._http.post(self.url + path, content=data,
                                  headers={"Content-Type": CBOR})
        if r.status_code != 200:
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
                else {}
            raise DirectoryError(str(body.get("error", r.status_code)),
                                 str(body.get("reason", r.text)))
        result: dict[str, object] = r.json()
        return result

    async def publish(self, gateway: Identity, party: Party, *, days: int = 365) -> int:
        now = int(self.clock())
        req = Publish(domain_of(party.name), party, now, now + days * 86400, now)
        res = await self._post("/keys", req.signed_by(gateway).encode())
        return int(str(res["version"]))

    async def revoke(self, gateway: Identity, address: str, fingerprint: str,
                     reason: str) -> None:
        now = int(self.clock())
        req = Revoke(domain_of(address), address, fingerprint, reason, now)
        await self._post("/revoke", req.signed_by(gateway).encode())

    async def lookup(self, address: str, fingerprint: str | None = None) -> KeyRecord:
        """The DC's verified record (any status); raises DirectoryError."""
        path = f"/keys/{address}" + (f"/{fingerprint}" if fingerprint else "")
        r = await self._http.get(self.url + path)
        if r.status_code == 404:
            raise DirectoryError("unknown", f"the DC knows no key for {address}")
        if r.status_code != 200:
            raise DirectoryError("dc", f"the DC answered {r.status_code}")
        return verify_record(r.content, self.dc.sig_pk, address, int(self.clock()))

    async def gateway_of(self, domain: str) -> GatewayRecord:
        """The DC's verified record of the gateway registered for ``domain``: where its
        protocol mail goes.  Raises DirectoryError (check ``unknown``: none registered)."""
        r = await self._http.get(f"{self.url}/gateways/{domain.lower()}")
        if r.status_code == 404:
            raise DirectoryError("unknown", f"no TCMS gateway is registered for {domain}")
        if r.status_code != 200:
            raise DirectoryError("dc", f"the DC answered {r.status_code}")
        return verify_gateway_record(r.content, self.dc.sig_pk, domain, int(self.clock()))

    async def usable_party(self, address: str) -> Party | None:
        """The address's current key if the DC says it may be used now, else None."""
        try:
            rec = await self.lookup(address)
        except DirectoryError:
            return None
        return rec.party if usable(rec, int(self.clock())) else None
