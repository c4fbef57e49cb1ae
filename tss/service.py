"""The Time Stamping Server over HTTP (RFC 3161 section 3.4).

- ``POST /tsa``: ``application/timestamp-query`` in, ``application/timestamp-reply`` out,
  for any RFC 3161 client (``openssl ts -query`` and curl, for instance).
- ``POST /m1``: the protocol's m1 (``application/cbor``): S's signed request over H(core);
  the signature is checked and who asked is logged with the token.
- ``GET /certs``: the CA and TSA certificates (PEM), to build a trust file.

A malformed query gets an RFC 3161 rejection (HTTP 200 with status ``rejection`` and a
failInfo); a wrong content type or an oversized body gets a 4xx.  Serial numbers come from
the store's log, so they are unique and increasing across restarts.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from fastapi import FastAPI, Request, Response

from tcms.crypto import CryptoError, verify
from tcms.metrics import instrument
from tcms.protocol.checks import ProtocolError
from tcms.protocol.messages import M1
from tcms.store import Store
from tcms.web import CBOR, ERROR_RESPONSES, binary_body, install_error_handlers, read_body
from tss import metrics
from tss.authority import RequestRejected, TimeStampAuthority, granted

QUERY = "application/timestamp-query"
REPLY = "application/timestamp-reply"
MAX_QUERY = 16 * 1024


def create_app(store: Store, tsa: TimeStampAuthority,
               clock: Callable[[], float] = time.time) -> FastAPI:
    app = FastAPI(title="TCMS Time Stamping Server", version="1",
                  description="RFC 3161 time-stamp authority for TCMS (m1/m2).")
    install_error_handlers(app)
    ca_pem, cert_pem = tsa.creds.pem_chain()

    async def stamp(query: bytes, requester: str | None = None,
                    requester_fp: str | None = None) -> Response:
        via = "m1" if requester else "tsa"
        try:
            req = tsa.parse_request(query)
        except RequestRejected as exc:
            metrics.REJECTED.labels(via).inc()
            return Response(tsa.rejection(exc.fail_info, str(exc)), media_type=REPLY)
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        imprint = req["message_imprint"]
        _, token = await store.issue_timestamp(
            now=int(now.timestamp()), hash_alg=imprint["hash_algorithm"]["algorithm"].native,
            imprint=imprint["hashed_message"].native, nonce=req["nonce"].native,
            requester=requester, requester_fp=requester_fp,
            sign=lambda serial: tsa.issue(req, now=now, serial=serial))
        metrics.TOKENS.labels(via).inc()
        return Response(granted(token), media_type=REPLY)

    @app.post("/tsa", response_class=Response, responses={
        200: {"content": {REPLY: {}}, "description": "TimeStampResp (granted or rejection)"},
        **ERROR_RESPONSES},
        openapi_extra=binary_body(QUERY))
    async def tsa_query(request: Request) -> Response:
        """RFC 3161 time-stamp request (DER TimeStampReq)."""
        return await stamp(await read_body(request, [QUERY], MAX_QUERY))

    @app.post("/m1", response_class=Response, responses={
        200: {"content": {REPLY: {}}, "description": "TimeStampResp over H(core)"},
        **ERROR_RESPONSES},
        openapi_extra=binary_body(CBOR))
    async def m1(request: Request) -> Response:
        """The protocol's m1: S's signed RFC 3161 request over cid = H(core)."""
        msg = M1.decode(await read_body(request, [CBOR], MAX_QUERY))
        try:
            verify(msg.sender.sig_pk, msg.sig, "M1", *msg.signed_fields())
        except CryptoError as exc:
            raise ProtocolError("m1.sig", str(exc)) from None
        try:
            req = tsa.parse_request(msg.tsq)
        except RequestRejected as exc:
            metrics.REJECTED.labels("m1").inc()
            return Response(tsa.rejection(exc.fail_info, str(exc)), media_type=REPLY)
        if req["message_imprint"]["hashed_message"].native != msg.cid:
            raise ProtocolError("m1.imprint", "the request does not time-stamp the signed cid")
        return await stamp(msg.tsq, msg.sender.name, msg.sender.fingerprint)

    @app.get("/certs", response_class=Response,
             responses={200: {"content": {"application/x-pem-file": {}}}})
    async def certs() -> Response:
        """The TSA's CA certificate, then the TSA certificate (PEM)."""
        return Response(ca_pem + cert_pem, media_type="application/x-pem-file")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "tsa": tsa.creds.tsa_cert.subject.rfc4514_string(),
                "policy": tsa.policy}

    return instrument(app, "tss")
