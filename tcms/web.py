"""What the HTTP services (TSS, TTP, DC) share: error answers (a JSON body refused by
tcms.boundedjson is a named 400), bounded request bodies, serving; and, for their clients,
bounded answers."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tcms import boundedjson
from tcms.protocol.checks import ProtocolError
from tcms.protocol.messages import MessageError

log = logging.getLogger("tcms.web")
MAX_BODY = 64 * 1024 * 1024
CBOR = "application/cbor"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed or invalid request; `check` names the failed check"},
    413: {"description": "Request body too large"},
    415: {"description": "Wrong Content-Type"},
}


class Refused(Exception):
    """A request refused before its content is looked at: an HTTP status, a named check."""

    def __init__(self, status: int, check: str, reason: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{check}: {reason}")
        self.status, self.check, self.reason, self.headers = status, check, reason, headers


def error(status: int, check: str, reason: str,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": check, "reason": reason}, status_code=status,
                        headers=headers)


def binary_body(media: str) -> dict[str, Any]:
    """OpenAPI ``openapi_extra``: a required request body of one binary media type."""
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"type": "string", "format": "binary"}}}}}


def install_error_handlers(app: FastAPI) -> None:
    """Every failure is a clear 4xx with a named check; nothing escapes as a 500."""

    @app.exception_handler(ProtocolError)
    async def _protocol(_: Request, exc: ProtocolError) -> JSONResponse:
        return error(400, exc.check, exc.reason)

    @app.exception_handler(MessageError)
    async def _message(_: Request, exc: MessageError) -> JSONResponse:
        return error(400, "format", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, "request", str(exc.detail))

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, exc.check, exc.reason, exc.headers)

    @app.exception_handler(boundedjson.JsonRefused)
    async def _json(_: Request, exc: boundedjson.JsonRefused) -> JSONResponse:
        return error(400, exc.check, exc.reason)


async def read_body(request: Request, content_types: Sequence[str],
                    limit: int = MAX_BODY) -> bytes:
    """The request body, refused (415, 413 ``body.size``, 400) before more than ``limit``
    bytes are held: by its declared length, else while it arrives."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in content_types:
        raise HTTPException(415, f"Content-Type must be {' or '.join(content_types)}")
    too_large = Refused(413, "body.size", f"body larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    if not body:
        raise HTTPException(400, "empty body")
    return bytes(body)


async def read_answer(response: httpx.Response, limit: int) -> bytes | None:
    """A client's read of a streamed answer: its body, or None once it passes ``limit``."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def parse_hex(value: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise HTTPException(400, f"{what} must be hexadecimal") from None
    if len(raw) != size:
        raise HTTPException(400, f"{what} must be {size} bytes")
    return raw


@dataclass(frozen=True)
class Listener:
    app: FastAPI
    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def config(self) -> uvicorn.Config:
        kwargs: dict[str, Any] = {}
        if self.tls_cert and self.tls_key:
            kwargs.update(ssl_certfile=str(self.tls_cert), ssl_keyfile=str(self.tls_key),
                          ssl_version=ssl.PROTOCOL_TLS_SERVER)
        return uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                              access_log=False, timeout_keep_alive=30, **kwargs)


async def serve(listeners: Sequence[Listener]) -> None:
    """Run every listener in this process until interrupted."""
    servers = [uvicorn.Server(x.config()) for x in listeners]
    for x in listeners:
        scheme = "https" if x.tls_cert else "http"
        log.info("%s listening on %s://%s:%d", x.app.title, scheme, x.host, x.port)
    await asyncio.gather(*(s.serve() for s in servers))
