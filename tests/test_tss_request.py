"""The fast reader of the usual TimeStampReq form (tss/request.py) against asn1crypto's full
parse: on valid requests of every shape and on mutated ones, it either answers exactly as
the full parse does or leaves the request to it, and never accepts what that refuses; and
the plain-ASGI path of POST /tsa holds no more than a query and reads the headers FastAPI
reads."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from asn1crypto import tsp
from conftest import TSA
from hypothesis import given, settings
from hypothesis import strategies as st

from tcms import der
from tcms.store import Store
from tcms.timestamp import make_request
from tss.api import MAX_QUERY
from tss.api import create_app as tss_app
from tss.authority import POLICY_OID, RequestRejected
from tss.request import read_common

POLICY_DER = der.oid(POLICY_OID)


def full_parse(data: bytes) -> object:
    try:
        return TSA._parse_any(data)
    except RequestRejected as exc:
        return exc.fail_info


def valid_requests() -> list[bytes]:
    out = []
    for alg, size in (("sha256", 32), ("sha384", 48), ("sha512", 64)):
        for nonce in (None, 0, 1, 127, 128, 255, 256, 2**63, 2**64 - 1, 2**160):
            for cert_req in (True, False):
                for policy in (None, POLICY_OID):
                    imprint = hashlib.new(alg, b"%d" % (nonce or 0)).digest()
                    assert len(imprint) == size
                    req, _ = make_request(imprint, hash_alg=alg, nonce=nonce, cert_req=cert_req,
                                          policy=policy)
                    if nonce is None:  # make_request always adds one: take it out
                        fields = tsp.TimeStampReq.load(req).native
                        del fields["nonce"]
                        req = tsp.TimeStampReq(fields).dump()
                    out.append(req)
    # the AlgorithmIdentifier without its NULL parameters, as some clients send it
    imprint = hashlib.sha256(b"no-null").digest()
    out.append(der.seq(b"\x02\x01\x01", der.seq(
        der.seq(der.oid("2.16.840.1.101.3.4.2.1")), der.octets(imprint)),
        der.integer(5), b"\x01\x01\xff"))
    return out


VALID = valid_requests()


def test_the_fast_reader_takes_the_usual_forms_and_agrees() -> None:
    for req in VALID:
        fast = read_common(req, POLICY_DER)
        assert fast is not None, req.hex()
        assert fast == full_parse(req)


def test_other_forms_go_to_the_full_parse() -> None:
    imprint = bytes(32)
    others = [
        make_request(imprint, policy="1.2.3.4")[0],  # another policy: refused there
        tsp.TimeStampReq({"version": "v2", "message_imprint": {  # another version
            "hash_algorithm": {"algorithm": "sha256"}, "hashed_message": imprint}}).dump(),
        make_request(imprint)[0] + b"\x00",  # something after the request
        b"\x30\x80" + make_request(imprint)[0][2:] + b"\x00\x00",  # indefinite length
    ]
    for req in others:
        assert read_common(req, POLICY_DER) is None
        assert isinstance(full_parse(req), str)  # a failInfo


@settings(max_examples=3000, deadline=None)
@given(base=st.sampled_from(VALID), at=st.integers(0, 200), value=st.integers(0, 255),
       cut=st.integers(0, 3))
def test_mutated_requests_agree(base: bytes, at: int, value: int, cut: int) -> None:
    at %= len(base)
    data = base[:at] + bytes([value]) + base[at + 1:]
    if cut:
        data = data[:len(data) - cut] if cut < 3 else data + b"\x00"
    fast = read_common(data, POLICY_DER)
    if fast is not None:
        assert fast == full_parse(data), data.hex()


# --- the plain-ASGI path of POST /tsa (tss/api.py TssApp): bounded, and equal to FastAPI's ---


async def _post_tsa(app: Any, headers: list[tuple[bytes, bytes]],
                    chunks: list[bytes]) -> tuple[int, int]:
    """(status, bytes the app took) for a POST /tsa whose body the server hands over in
    ``chunks`` (as one that honours Transfer-Encoding over Content-Length would)."""
    taken = [0]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if taken[0] >= len(chunks):
            return {"type": "http.disconnect"}
        taken[0] += 1
        return {"type": "http.request", "body": chunks[taken[0] - 1],
                "more_body": taken[0] < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/tsa", "raw_path": b"/tsa",
             "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), sum(len(c) for c in chunks[:taken[0]])


async def test_the_short_path_holds_no_more_than_a_query(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'tss.db'}")
    await store.upgrade()
    app = tss_app(store, TSA)
    query = [(b"content-type", b"application/timestamp-query")]
    flood = [b"\x30" * 4096] * 1000  # 4 MB offered, in 4 KB chunks
    try:
        # chunked with a small Content-Length beside it (h11 passes both; the chunks count)
        status, taken = await _post_tsa(app, [*query, (b"content-length", b"100"),
                                              (b"transfer-encoding", b"chunked")], flood)
        assert status == 413 and taken <= MAX_QUERY + 4096
        # a server that hands over more than the declared length
        status, taken = await _post_tsa(app, [*query, (b"content-length", b"100")], flood)
        assert status in (400, 413) and taken <= MAX_QUERY + 4096
        # two Content-Types: the short path reads the header FastAPI reads (the first)
        tsq, _ = make_request(b"\x01" * 32)
        length = (b"content-length", str(len(tsq)).encode())
        two = [(b"content-type", b"application/json"), *query, length]
        assert (await _post_tsa(app, two, [tsq]))[0] == 415
        assert (await _post_tsa(app, [*query, length], [tsq]))[0] == 200
    finally:
        await store.close()
