"""The Trusted Third Party over HTTP.

- ``POST /abort``   R1S: S's signed abort request (``application/cbor``);
- ``POST /resolve`` R1R (by R) or R2S (by S): core, m2, EOO, m4, e_T (and m5 from S);
- ``GET /release/{cid}``: the signed resolution (k_T wrapped to R) once resolved;
- ``GET /status/{cid}``: aborted | resolved | bad-escrow | none;
- ``POST /dispute``: an evidence bundle (JSON) in, the TTP's signed verdict out;
- ``GET /identity``: the TTP's public keys and the TSA CA it trusts (a trust file).

Every request is checked (signatures, identities, deadlines) by the sans-IO
``tcms.protocol.ttp``; the store inserts the decision once per exchange, so concurrent
requests, on one process or several sharing PostgreSQL, all get the same signed answer.
The TTP never receives c.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse

from tcms import evidence
from tcms.crypto import sign
from tcms.identity import Identity
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import Trust
from tcms.store import Store
from tcms.web import CBOR, ERROR_RESPONSES, error, install_error_handlers, parse_hex, read_body

MAX_REQUEST = 256 * 1024  # requests never carry c, only the core and the escrow
CID = Path(pattern="^[0-9a-fA-F]{64}$", description="cid = H(core), 64 hex digits")
MAX_BUNDLE = 64 * 1024 * 1024


def _binary_body(media: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"type": "string", "format": "binary"}}}}}


def sign_verdict(me: Identity, verdict: dict[str, Any], now: int) -> dict[str, Any]:
    """The TTP's signature over the canonical JSON of a verdict (keys sorted)."""
    body = {**verdict, "arbiter": me.name, "decided_at": now}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = sign(me.sig_key, "VERDICT", canonical)
    return {**body, "signature": base64.b64encode(sig).decode()}


def create_app(store: Store, me: Identity, trust: Trust,
               clock: Callable[[], float] = time.time) -> FastAPI:
    app = FastAPI(title="TCMS Trusted Third Party", version="1",
                  description="Recovery (R1S, R1R, R2S) and dispute resolution for TCMS.")
    install_error_handlers(app)

    async def decide(data: bytes) -> Response:
        req = ttp_role.parse_request(data)
        ttp_role.check_request(me, req, trust)
        now = int(clock())
        current = await store.get_decision(req.core.cid)
        decision, answer = ttp_role.decide(me, req, current, now)
        if decision is not None and current is None:
            stood = await store.record_decision(decision, me.name)
            answer = stood.answer  # a concurrent request may have decided first
        return Response(answer, media_type=CBOR)

    answer_doc = {200: {"content": {CBOR: {}}, "description": "the TTP's signed answer"},
                  **ERROR_RESPONSES}

    @app.post("/abort", response_class=Response, responses=answer_doc,
              openapi_extra=_binary_body(CBOR))
    async def abort(request: Request) -> Response:
        """R1S: the sender asks to abort (signed ABORT-REQ)."""
        return await decide(await read_body(request, [CBOR], MAX_REQUEST))

    @app.post("/resolve", response_class=Response, responses=answer_doc,
              openapi_extra=_binary_body(CBOR))
    async def resolve(request: Request) -> Response:
        """R1R (by the receiver) or R2S (by the sender): signed RESOLVE-REQ."""
        return await decide(await read_body(request, [CBOR], MAX_REQUEST))

    @app.get("/release/{cid}", response_class=Response, responses={
        200: {"content": {CBOR: {}}, "description": "the signed resolution"},
        404: {"description": "not resolved"}, **ERROR_RESPONSES})
    async def release(cid: str = CID) -> Response:
        """The resolution of a resolved exchange: k_T wrapped to R (only R can open it)."""
        d = await store.get_decision(parse_hex(cid, 32, "cid"))
        if d is None or d.state != ttp_role.RESOLVED:
            return error(404, "not-resolved", "the exchange is not resolved")
        return Response(d.answer, media_type=CBOR)

    @app.get("/status/{cid}", responses=ERROR_RESPONSES)
    async def status(cid: str = CID) -> dict[str, Any]:
        """The TTP's decision about an exchange, if any."""
        d = await store.get_decision(parse_hex(cid, 32, "cid"))
        if d is None:
            return {"cid": cid.lower(), "state": "none"}
        return {"cid": cid.lower(), "state": d.state, "decided_at": d.at, "requested_by": d.by,
                "sender": d.sender, "recipient": d.recipient}

    @app.post("/dispute", responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "object"}}}}})
    async def dispute(request: Request) -> JSONResponse:
        """Verify an evidence bundle offline and return the TTP's signed verdict."""
        raw = await read_body(request, ["application/json"], MAX_BUNDLE)
        try:
            bundle = json.loads(raw)
        except ValueError:
            return error(400, "format", "the bundle is not JSON")
        now = int(clock())
        try:
            verdict = evidence.verify(bundle, trust).to_json()
        except evidence.EvidenceInvalid as exc:
            verdict = {"valid": False, "check": exc.check, "reason": exc.reason}
        await store.audit(me.name, "ttp.dispute", json.dumps(
            {k: verdict.get(k) for k in ("valid", "verdict", "tx", "check")}), now=now)
        return JSONResponse(sign_verdict(me, verdict, now))

    @app.get("/identity")
    async def identity() -> dict[str, Any]:
        """The TTP's public keys and the TSA CA it trusts (tcms-trust/1)."""
        return evidence.trust_to_json(trust)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "ttp": me.name, "fingerprint": me.party.fingerprint,
                "decisions": await store.count_decisions()}

    return app
