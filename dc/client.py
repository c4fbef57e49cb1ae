"""A client of the DC for gateways: publish, revoke, and verified lookups (of keys and of
domains' gateways).

Whatever the DC answers, the client raises only DirectoryError (the DC refused, or its
answer is malformed, forged or stale: check ``dc.answer``, ``dc.sig``, …) or, when the DC
cannot be reached, httpx.HTTPError (try again later).  Answers are read up to MAX_ANSWER
bytes, and JSON answers are bounded in depth and size before they are parsed."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

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
from tcms import boundedjson
from tcms.identity import Identity, Party
from tcms.text import printable
from tcms.web import CBOR, read_answer

MAX_ANSWER = 64 * 1024  # a key record is under 1 KB, a JSON answer a few hundred bytes


class DirectoryClient:
    def __init__(self, url: str, dc: Party, *, clock: Callable[[], float] = time.time,
                 verify_tls: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self.dc = dc
        self.clock = clock
        self._http = httpx.AsyncClient(timeout=30, verify=verify_tls)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str,
                    data: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": CBOR} if data is not None else None
        async with self._http.stream(method, self.url + path, content=data,
                                     headers=headers) as r:
            body = await read_answer(r, MAX_ANSWER)
        if body is None:
            raise DirectoryError("dc.answer", f"the DC's answer is larger than {MAX_ANSWER} "
                                 "bytes")
        return r.status_code, body

    async def _post(self, path: str, data: bytes) -> dict[str, Any]:
        status, body = await self._call("POST", path, data)
        if status != 200:
            try:
                refusal = _json_object(body)
            except DirectoryError:
                refusal = {}
            check, reason = refusal.get("error"), refusal.get("reason")
            if isinstance(check, str) and isinstance(reason, str):
                raise DirectoryError(printable(check, 60), printable(reason))
            raise DirectoryError("dc", f"the DC answered {status}")
        return _json_object(body)

    async def publish(self, gateway: Identity, party: Party, *, days: int = 365) -> int:
        now = int(self.clock())
        req = Publish(domain_of(party.name), party, now, now + days * 86400, now)
        res = await self._post("/keys", req.signed_by(gateway).encode())
        version = res.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DirectoryError("dc.answer", "the DC's answer names no key version")
        return version

    async def revoke(self, gateway: Identity, address: str, fingerprint: str,
                     reason: str) -> None:
        now = int(self.clock())
        req = Revoke(domain_of(address), address, fingerprint, reason, now)
        res = await self._post("/revoke", req.signed_by(gateway).encode())
        if res.get("status") != "revoked":
            raise DirectoryError("dc.answer", "the DC's answer does not say revoked")

    async def lookup(self, address: str, fingerprint: str | None = None) -> KeyRecord:
        """The DC's verified record (any status); raises DirectoryError."""
        path = "/keys/" + urllib.parse.quote(address, safe="@") + (
            "/" + urllib.parse.quote(fingerprint, safe=":") if fingerprint else "")
        status, body = await self._call("GET", path)
        if status == 404:
            raise DirectoryError("unknown", f"the DC knows no key for {address}")
        if status != 200:
            raise DirectoryError("dc", f"the DC answered {status}")
        return verify_record(body, self.dc.sig_pk, address, int(self.clock()))

    async def gateway_of(self, domain: str) -> GatewayRecord:
        """The DC's verified record of the gateway registered for ``domain``: where its
        protocol mail goes.  Raises DirectoryError (check ``unknown``: none registered)."""
        status, body = await self._call(
            "GET", "/gateways/" + urllib.parse.quote(domain.lower(), safe=""))
        if status == 404:
            raise DirectoryError("unknown", f"no TCMS gateway is registered for {domain}")
        if status != 200:
            raise DirectoryError("dc", f"the DC answered {status}")
        return verify_gateway_record(body, self.dc.sig_pk, domain, int(self.clock()))

    async def usable_party(self, address: str) -> Party | None:
        """The address's current key if the DC says it may be used now, else None."""
        try:
            rec = await self.lookup(address)
        except DirectoryError:
            return None
        return rec.party if usable(rec, int(self.clock())) else None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = boundedjson.loads(body, max_depth=4, max_items=64)
    except boundedjson.JsonRefused as exc:
        raise DirectoryError("dc.answer", f"the DC's answer is not JSON ({exc.check})") from None
    if not isinstance(value, dict):
        raise DirectoryError("dc.answer", "the DC's answer is not a JSON object")
    return value
