"""The Trusted Third Party over HTTP.

- ``POST /abort``   R1S: S's signed abort request (``application/cbor``);
- ``POST /resolve`` R1R (by R) or R2S (by S): core, m2, EOO, m4, e_T (and m5 from S);
- ``GET /release/{cid}``: the signed resolution (k_T wrapped to R) once resolved;
- ``GET /status/{cid}``: aborted | resolved | bad-escrow | none;
- ``POST /dispute``: an evidence bundle (JSON) in, the TTP's signed verdict out; filed only
  by a party of the exchange, proven by its signature (``ttp/filing.py``), at most
  ``dispute_burst`` at once and ``dispute_per_minute`` after that per client address, a
  body of at most ``dispute_max_bytes`` whose JSON nesting and item count are bounded
  before it is parsed (``DisputeLimits``; docs/disputes.md);
- ``GET /identity``: the TTP's public keys and the TSA CA it trusts (a trust file).

Every request is checked (signatures, identities, deadlines) by the sans-IO
``tcms.protocol.ttp``; ``ttp/store.py`` inserts the decision once per exchange, so concurrent
requests, on one process or several sharing PostgreSQL, all get the same signed answer.
The TTP never receives c.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse

from tcms import boundedjson, evidence
from tcms.crypto import sign
from tcms.identity import Identity
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import Trust
from tcms.ratelimit import RateLimiter
from tcms.store import Store
from tcms.web import (
    CBOR,
    ERROR_RESPONSES,
    Refused,
    binary_body,
    error,
    install_error_handlers,
    parse_hex,
    read_body,
)
from ttp import filing
from ttp import store as ttp_store

MAX_REQUEST = 256 * 1024  # requests never carry c, only the core and the escrow
CID = Path(pattern="^[0-9a-fA-F]{64}$", description="cid = H(core), 64 hex digits")
# a bundle is one flat JSON object of some 15 strings: generous bounds on its shape
BUNDLE_MAX_DEPTH = 4
BUNDLE_MAX_ITEMS = 256
BUNDLE_READ_SECONDS = 120  # a slow sender must not hold one of the few dispute slots


@dataclass(frozen=True)
class DisputeLimits:
    """How much ``POST /dispute`` takes ([ttp] dispute_* in the configuration)."""

    max_bytes: int = 8 * 1024 * 1024
    per_minute: float = 6.0
    burst: int = 3
    concurrency: int = 2


def sign_verdict(me: Identity, verdict: dict[str, Any], now: int) -> dict[str, Any]:
    """The TTP's signature over the canonical JSON of a verdict (keys sorted)."""
    body = {**verdict, "arbiter": me.name, "decided_at": now}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = sign(me.sig_key, "VERDICT", canonical)
    return {**body, "signature": base64.b64encode(sig).decode()}


def create_app(store: Store, me: Identity, trust: Trust,
               clock: Callable[[], float] = time.time,
               limits: DisputeLimits | None = None) -> FastAPI:
    app = FastAPI(title="TCMS Trusted Third Party", version="1",
                  description="Recovery (R1S, R1R, R2S) and dispute resolution for TCMS.")
    install_error_handlers(app)
    lim = limits or DisputeLimits()
    rate = RateLimiter(lim.per_minute / 60, lim.burst)
    in_flight = 0  # disputes being read or verified now

    @app.exception_handler(filing.FilingRefused)
    async def _filing(_: Request, exc: filing.FilingRefused) -> JSONResponse:
        return error(exc.status, exc.check, exc.reason)

    async def decide(data: bytes) -> Response:
        req = ttp_role.parse_request(data)
        ttp_role.check_request(me, req, trust)
        now = int(clock())
        current = await ttp_store.get_decision(store, req.core.cid)
        decision, answer = ttp_role.decide(me, req, current, now)
        if decision is not None and current is None:
            stood = await ttp_store.record_decision(store, decision, me.name)
            answer = stood.answer  # a concurrent request may have decided first
        return Response(answer, media_type=CBOR)

    answer_doc = {200: {"content": {CBOR: {}}, "description": "the TTP's signed answer"},
                  **ERROR_RESPONSES}

    @app.post("/abort", response_class=Response, responses=answer_doc,
              openapi_extra=binary_body(CBOR))
    async def abort(request: Request) -> Response:
        """R1S: the sender asks to abort (signed ABORT-REQ)."""
        return await decide(await read_body(request, [CBOR], MAX_REQUEST))

    @app.post("/resolve", response_class=Response, responses=answer_doc,
              openapi_extra=binary_body(CBOR))
    async def resolve(request: Request) -> Response:
        """R1R (by the receiver) or R2S (by the sender): signed RESOLVE-REQ."""
        return await decide(await read_body(request, [CBOR], MAX_REQUEST))

    @app.get("/release/{cid}", response_class=Response, responses={
        200: {"content": {CBOR: {}}, "description": "the signed resolution"},
        404: {"description": "not resolved"}, **ERROR_RESPONSES})
    async def release(cid: str = CID) -> Response:
        """The resolution of a resolved exchange: k_T wrapped to R (only R can open it)."""
        d = await ttp_store.get_decision(store, parse_hex(cid, 32, "cid"))
        if d is None or d.state != ttp_role.RESOLVED:
            return error(404, "not-resolved", "the exchange is not resolved")
        return Response(d.answer, media_type=CBOR)

    @app.get("/status/{cid}", responses=ERROR_RESPONSES)
    async def status(cid: str = CID) -> dict[str, Any]:
        """The TTP's decision about an exchange, if any."""
        d = await ttp_store.get_decision(store, parse_hex(cid, 32, "cid"))
        if d is None:
            return {"cid": cid.lower(), "state": "none"}
        return {"cid": cid.lower(), "state": d.state, "decided_at": d.at, "requested_by": d.by,
                "sender": d.sender, "recipient": d.recipient}

    @app.post("/dispute", responses={
        **ERROR_RESPONSES, 401: {"description": "no filing: a party must sign the request"},
        403: {"description": "not a party of the exchange, or a bad filing signature"},
        429: {"description": "too many disputes from this address (Retry-After)"},
        503: {"description": "too many disputes at once (Retry-After)"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "object"}}}}})
    async def dispute(request: Request) -> JSONResponse:
        """Verify an evidence bundle offline and return the TTP's signed verdict.

        Filed by the exchange's sender or recipient only: the headers ``TCMS-Filer``,
        ``TCMS-Filed-At`` and ``TCMS-Filing-Signature`` carry its Ed25519 signature over
        ``["TCMS1/DISPUTE", cid, filer, H(body), t]`` (ttp/filing.py).  Per client address,
        ``dispute_burst`` filings at once, then ``dispute_per_minute`` (429 with
        Retry-After); bodies up to ``dispute_max_bytes`` (413 ``body.size``); the JSON's
        nesting and item count are bounded before it is parsed (400 ``json.depth`` or
        ``json.size``).  Only an authenticated filing is verified and audited."""
        nonlocal in_flight
        wait = rate.take(request.client.host if request.client else "")
        if wait:
            raise Refused(429, "dispute.rate", "too many disputes from this address",
                          {"Retry-After": RateLimiter.retry_after(wait)})
        filed = filing.parse_headers(request.headers)
        if in_flight >= lim.concurrency:
            raise Refused(503, "dispute.busy", "the TTP is verifying other disputes",
                          {"Retry-After": "5"})
        in_flight += 1
        try:
            return await _decide_dispute(request, filed)
        finally:
            in_flight -= 1

    async def _decide_dispute(request: Request, filed: filing.Filing) -> JSONResponse:
        try:
            async with asyncio.timeout(BUNDLE_READ_SECONDS):
                body = await read_body(request, ["application/json"], lim.max_bytes)
        except TimeoutError:
            raise Refused(408, "body.time", f"the bundle did not arrive within "
                          f"{BUNDLE_READ_SECONDS} s") from None
        bundle = boundedjson.loads(body, max_depth=BUNDLE_MAX_DEPTH, max_items=BUNDLE_MAX_ITEMS)
        now = int(clock())
        role = filing.check_filing(filed, filing.core_of(bundle), body, now)
        try:
            verdict = (await asyncio.to_thread(evidence.verify, bundle, trust)).to_json()
        except evidence.EvidenceInvalid as exc:
            verdict = {"valid": False, "check": exc.check, "reason": exc.reason}
        await store.audit(me.name, "ttp.dispute", json.dumps(
            {"filer": filed.filer, "role": role,
             **{k: verdict.get(k) for k in ("valid", "verdict", "tx", "check")}}), now=now)
        return JSONResponse(sign_verdict(me, verdict, now))

    @app.get("/identity")
    async def identity() -> dict[str, Any]:
        """The TTP's public keys and the TSA CA it trusts (tcms-trust/1)."""
        return evidence.trust_to_json(trust)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "ttp": me.name, "fingerprint": me.party.fingerprint,
                "decisions": await ttp_store.count_decisions(store)}

    return app
