"""The Distribution Center over HTTP: the key directory.

- ``POST /keys``   a registered gateway publishes or rotates an address's keys (DC-PUBLISH);
- ``POST /revoke`` it revokes one (DC-REVOKE);
- ``GET /keys/{address}``: the DC-signed record of the address's newest key
  (``application/cbor``; ``?format=json`` for people), whose status may be ``revoked``;
- ``GET /keys/{address}/{fingerprint}``: the record of one particular key;
- ``GET /gateways/{domain}``: the DC-signed record of the domain's gateway and its protocol
  address (where peers send m3-m6 and refusals for the domain's users);
- ``GET /identity``: the DC's public keys;
- ``GET /updates/{metadata|targets}/{name}``: the TUF repository of signed security modules
  (see ``dc/updates.py``).

Only the gateway registered for a domain (``tcms dc register``) may publish or revoke keys
in it; requests must be fresh (5 minutes) and are refused when replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path as FsPath
from typing import Any, TypeVar

from fastapi import FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse

from dc import records
from dc import store as dc_store
from dc.records import DirectoryError, KeyRecord, Publish, Revoke
from tcms.identity import Identity
from tcms.store import Store
from tcms.web import (
    CBOR,
    ERROR_RESPONSES,
    binary_body,
    error,
    install_error_handlers,
    read_body,
)

MAX_REQUEST = 16 * 1024
ADDRESS = Path(pattern="^[^@\\s/]+@[^@\\s/]+$", max_length=254, description="e-mail address")
DOMAIN = Path(pattern="^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$", max_length=253,
              description="mail domain")
FINGERPRINT = Path(pattern="^[0-9a-f:]{49}$", description="key fingerprint")


FILE_NAME = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="file name")


GatewayRequest = TypeVar("GatewayRequest", Publish, Revoke)


def _by_gateway(done: str) -> dict[str, Any]:
    """The OpenAPI description of a POST that a domain's gateway signs."""
    return {"responses": {200: {"description": done},
                          403: {"description": "not the domain's gateway"}, **ERROR_RESPONSES},
            "openapi_extra": binary_body(CBOR)}


def create_app(store: Store, me: Identity, clock: Callable[[], float] = time.time,
               updates_dir: FsPath | None = None) -> FastAPI:
    app = FastAPI(title="TCMS Distribution Center", version="1",
                  description="Key directory for TCMS users and gateways.")
    install_error_handlers(app)

    @app.exception_handler(DirectoryError)
    async def _directory(_: Request, exc: DirectoryError) -> JSONResponse:
        status = 403 if exc.check in ("gateway", "gateway.sig", "domain") else 400
        return error(status, exc.check, exc.reason)

    async def authorised(req: Publish | Revoke, now: int) -> None:
        pk = await dc_store.gateway_key(store, req.domain)
        if pk is None:
            raise DirectoryError("gateway", f"no gateway is registered for {req.domain}")
        records.check_gateway_request(req, pk, now)

    def answer(rec: KeyRecord, now: int, fmt: str) -> Response:
        signed = replace(rec, issued_at=now,
                         expires_at=now + records.ANSWER_LIFETIME).signed_by(me)
        if fmt == "json":
            return JSONResponse({**signed.to_json(), "record": signed.encode().hex()})
        return Response(signed.encode(), media_type=CBOR)

    async def from_gateway(request: Request, decode: Callable[[bytes], GatewayRequest]
                           ) -> tuple[GatewayRequest, bytes, int]:
        """A request signed by a domain's gateway: read, decoded, checked against the
        gateway registered for its domain (fresh, not replayed: dc/store.py)."""
        data = await read_body(request, [CBOR], MAX_REQUEST)
        req = decode(data)
        now = int(clock())
        await authorised(req, now)
        return req, data, now

    @app.post("/keys", **_by_gateway("published"))
    async def publish(request: Request) -> dict[str, Any]:
        """Publish (or rotate) the keys of an address, signed by its domain's gateway."""
        req, data, now = await from_gateway(request, Publish.decode)
        version = await dc_store.publish(store, req.party, req.not_before, req.not_after,
                                         data, now)
        return {"address": req.party.name, "version": version,
                "fingerprint": req.party.fingerprint}

    @app.post("/revoke", **_by_gateway("revoked"))
    async def revoke(request: Request) -> dict[str, Any]:
        """Revoke one key of an address, signed by its domain's gateway."""
        req, data, now = await from_gateway(request, Revoke.decode)
        await dc_store.revoke(store, records.checked_address(req.address), req.fingerprint,
                              req.reason, data, now)
        return {"address": req.address, "fingerprint": req.fingerprint, "status": "revoked"}

    @app.get("/keys/{address}", response_class=Response, responses={
        200: {"content": {CBOR: {}, "application/json": {}}}, 404: {"description": "unknown"},
        **ERROR_RESPONSES})
    async def lookup(address: str = ADDRESS, format: str = "cbor") -> Response:
        """The DC-signed record of the address's newest key."""
        rec = await dc_store.current(store, records.checked_address(address))
        if rec is None:
            return error(404, "unknown", f"no keys are published for {address}")
        return answer(rec, int(clock()), format)

    @app.get("/keys/{address}/{fingerprint}", response_class=Response, responses={
        200: {"content": {CBOR: {}, "application/json": {}}}, 404: {"description": "unknown"},
        **ERROR_RESPONSES})
    async def lookup_key(address: str = ADDRESS, fingerprint: str = FINGERPRINT,
                         format: str = "cbor") -> Response:
        """The DC-signed record of one key of the address (e.g. to check a revocation)."""
        rec = await dc_store.by_fingerprint(store, records.checked_address(address),
                                            fingerprint)
        if rec is None:
            return error(404, "unknown", "no such key")
        return answer(rec, int(clock()), format)

    @app.get("/gateways/{domain}", response_class=Response, responses={
        200: {"content": {CBOR: {}, "application/json": {}}}, 404: {"description": "unknown"},
        **ERROR_RESPONSES})
    async def gateway(domain: str = DOMAIN, format: str = "cbor") -> Response:
        """The DC-signed record of the gateway registered for a domain: its keys and the
        protocol address that its MTA routes to it."""
        found = await dc_store.gateway_of(store, domain.lower())
        if found is None:
            return error(404, "unknown", f"no gateway is registered for {domain}")
        now = int(clock())
        rec = records.GatewayRecord(domain.lower(), found[0], found[1], now,
                                    now + records.ANSWER_LIFETIME).signed_by(me)
        if format == "json":
            return JSONResponse({**rec.to_json(), "record": rec.encode().hex()})
        return Response(rec.encode(), media_type=CBOR)

    @app.get("/updates/{kind}/{name}", response_class=Response, responses={
        200: {"content": {"application/octet-stream": {}}}, 404: {"description": "no such file"},
        **ERROR_RESPONSES})
    async def updates(kind: str, name: str = FILE_NAME) -> Response:
        """The TUF repository of signed security modules (``kind``: metadata or targets)."""
        if updates_dir is None or kind not in ("metadata", "targets"):
            return error(404, "unknown", "no such update file")
        path = updates_dir / kind / name
        if not path.is_file():
            return error(404, "unknown", "no such update file")
        media = "application/json" if kind == "metadata" else "application/octet-stream"
        return Response(path.read_bytes(), media_type=media)

    @app.get("/identity")
    async def identity() -> dict[str, str]:
        """The DC's public keys (to verify its answers)."""
        return me.party.to_json()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "dc": me.name, "fingerprint": me.party.fingerprint}

    return app

