"""The Time Stamping Server over HTTP (RFC 3161 section 3.4).

- ``POST /tsa``: ``application/timestamp-query`` in, ``application/timestamp-reply`` out,
  for any RFC 3161 client (``openssl ts -query`` and curl, for instance).
- ``POST /m1``: the protocol's m1 (``application/cbor``): S's signed request over H(core);
  the signature is checked and who asked is logged with the token.
- ``GET /certs``: the CA and TSA certificates (PEM), to build a trust file.

A malformed query gets an RFC 3161 rejection (HTTP 200 with status ``rejection`` and a
failInfo); a wrong content type or an oversized body gets a 4xx; a log that cannot be
written a 503 (and no token).  Every token is in the log, durably, before it is sent
(tss/commit.py writes them in groups); serial numbers come from the log, so they are
unique and increasing across restarts.

A well-formed ``POST /tsa`` (one content type, one declared length within bounds, no
Transfer-Encoding) takes a short path in plain ASGI (``TssApp``), with no middleware,
routing, validation or response objects, and holds no more than that length whatever the
server hands over; every other request, refusals included, goes through the FastAPI routes
below, which say the same for the same input.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from tcms.crypto import CryptoError, verify
from tcms.metrics import instrument
from tcms.protocol.checks import ProtocolError
from tcms.protocol.messages import M1
from tcms.store import Store
from tcms.web import CBOR, ERROR_RESPONSES, binary_body, error, install_error_handlers, read_body
from tss import metrics
from tss.authority import RequestRejected, TimeStampAuthority, granted
from tss.commit import GroupCommit, LogUnavailable

QUERY = "application/timestamp-query"
REPLY = "application/timestamp-reply"
MAX_QUERY = 16 * 1024
_QUERY, _REPLY = QUERY.encode(), REPLY.encode()


class Stamper:
    """Request bytes in, TimeStampResp bytes out, through the group commit."""

    def __init__(self, tsa: TimeStampAuthority, commit: GroupCommit) -> None:
        self.tsa, self.commit = tsa, commit

    async def reply(self, query: bytes, requester: str | None = None,
                    requester_fp: str | None = None, cid: bytes | None = None) -> bytes:
        m1 = requester is not None
        try:
            req = self.tsa.parse_request(query)
        except RequestRejected as exc:
            (metrics.REJECTED_M1 if m1 else metrics.REJECTED_TSA).inc()
            return self.tsa.rejection(exc.fail_info, str(exc))
        if cid is not None and req.imprint != cid:
            raise ProtocolError("m1.imprint", "the request does not time-stamp the signed cid")
        token = await self.commit.issue(req, requester, requester_fp)
        (metrics.TOKENS_M1 if m1 else metrics.TOKENS_TSA).inc()
        return granted(token)


class TssApp(FastAPI):
    """The FastAPI app, with a plain-ASGI path for a well-formed ``POST /tsa`` taken before
    any middleware or routing; every other request goes through FastAPI."""

    stamper: Stamper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/tsa" or scope["method"] != "POST":
            return await super().__call__(scope, receive, send)
        ctype, length = _framing(scope["headers"])
        if ctype is None or ctype.split(b";")[0].strip().lower() != _QUERY \
                or length is None or not length.isdigit() or not 0 < int(length) <= MAX_QUERY:
            return await super().__call__(scope, receive, send)
        body = bytearray()
        while True:  # never more than the declared length, whatever the server hands over
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > int(length):
                await error(413, "body.size", f"body longer than its Content-Length "
                            f"{int(length)}")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        try:
            reply = await self.stamper.reply(bytes(body))
        except LogUnavailable as exc:
            await _log_unavailable(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", _REPLY), (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """(Content-Type, Content-Length) of a request the short path may take: one of each
    and no Transfer-Encoding, else (None, None) and FastAPI reads it (the first of two
    headers, a chunked body bounded as it arrives)."""
    ctype = length = None
    for name, value in headers:
        if name == b"content-type":
            if ctype is not None:
                return None, None
            ctype = value
        elif name == b"content-length":
            if length is not None:
                return None, None
            length = value
        elif name == b"transfer-encoding":
            return None, None
    return ctype, length


def _log_unavailable(exc: LogUnavailable) -> JSONResponse:
    return error(503, "tss.log", f"the time-stamp log cannot be written now: {exc}",
                 {"Retry-After": "1"})


def create_app(store: Store, tsa: TimeStampAuthority,
               clock: Callable[[], float] = time.time) -> FastAPI:
    commit = GroupCommit(store, tsa, clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await commit.close()

    app = TssApp(title="TCMS Time Stamping Server", version="1", lifespan=lifespan,
                 description="RFC 3161 time-stamp authority for TCMS (m1/m2).")
    install_error_handlers(app)
    app.stamper = stamper = Stamper(tsa, commit)
    ca_pem, cert_pem = tsa.creds.pem_chain()

    @app.exception_handler(LogUnavailable)
    async def _unavailable(_: Request, exc: LogUnavailable) -> JSONResponse:
        return _log_unavailable(exc)

    @app.post("/tsa", response_class=Response, responses={
        200: {"content": {REPLY: {}}, "description": "TimeStampResp (granted or rejection)"},
        503: {"description": "The time-stamp log cannot be written now"},
        **ERROR_RESPONSES},
        openapi_extra=binary_body(QUERY))
    async def tsa_query(request: Request) -> Response:
        """RFC 3161 time-stamp request (DER TimeStampReq)."""
        query = await read_body(request, [QUERY], MAX_QUERY)
        return Response(await stamper.reply(query), media_type=REPLY)

    @app.post("/m1", response_class=Response, responses={
        200: {"content": {REPLY: {}}, "description": "TimeStampResp over H(core)"},
        503: {"description": "The time-stamp log cannot be written now"},
        **ERROR_RESPONSES},
        openapi_extra=binary_body(CBOR))
    async def m1(request: Request) -> Response:
        """The protocol's m1: S's signed RFC 3161 request over cid = H(core)."""
        msg = M1.decode(await read_body(request, [CBOR], MAX_QUERY))
        try:
            verify(msg.sender.sig_pk, msg.sig, "M1", *msg.signed_fields())
        except CryptoError as exc:
            raise ProtocolError("m1.sig", str(exc)) from None
        reply = await stamper.reply(msg.tsq, msg.sender.name, msg.sender.fingerprint, msg.cid)
        return Response(reply, media_type=REPLY)

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
