"""Malformed time-stamp replies (issue 11, item 8): reading one raised UnicodeDecodeError,
ValueError or IndexError outside any check, so the gateway's m1 outbox row failed with an
unexpected exception and was claimed again forever.  Now each is a named TimestampError:
the sender's machine ignores the reply, and the gateway's outbox turns it into one failed
time stamp (the user is told) instead of a retry loop."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import ALICE, BOB, DATA_KEYS, DEADLINES, T0, TRUST
from fakehttp import serve
from signing import writer

from gateway import dispatch
from gateway.context import GatewayContext
from gateway.queue import Queues
from gateway.runs import outbox, record
from tcms import der
from tcms.config import Settings, TssConfig
from tcms.keystore import Keystore
from tcms.protocol.events import Ignored, TimestampFailed, TimestampReply
from tcms.protocol.messages import Description
from tcms.protocol.sender import Sender
from tcms.store import Store
from tcms.timestamp import TimestampError, token_from_reply

MALFORMED = "malformed time-stamp reply"
BAD_REPLIES = {
    "status-string-not-utf8": (bytes.fromhex("300a300802010230030c01ff"),  # UnicodeDecodeError
                               MALFORMED),
    "fail-info-9-unused-bits": (bytes.fromhex("3009300702010203020980"), MALFORMED),  # ValueError
    "fail-info-empty-bit-string": (bytes.fromhex("3009300702010230000300"),  # IndexError
                                   MALFORMED),
    # found by the fuzz suite: a status of 4800 decimal digits raised ValueError (Python's
    # limit on converting an integer to text) while the refusal was being worded
    "status-number-of-4800-digits": (der.seq(der.seq(der.integer(1 << 16_000))),
                                     "time-stamp refused: unknown status"),
}


@pytest.mark.parametrize(("reply", "why"), BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_reading_a_malformed_reply_is_a_timestamp_error(reply: bytes, why: str) -> None:
    with pytest.raises(TimestampError, match=why):
        token_from_reply(reply)
    sender, _ = Sender.start(ALICE, TRUST, BOB.party, b"m0", Description("t", 2, "<x>"),
                             DEADLINES)
    actions = sender.handle(TimestampReply(reply), T0)
    [ignored] = actions
    assert isinstance(ignored, Ignored) and why in ignored.reason
    assert sender.phase == "stamping"
    sender.handle(TimestampFailed("the TSS sent a malformed reply"), T0)
    assert sender.phase == "failed"


@pytest.mark.parametrize(("reply", "why"), BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
async def test_the_gateway_fails_the_time_stamp_once(tmp_path: Path, reply: bytes,
                                                     why: str) -> None:
    """The gateway's outbox sends m1 to a TSS that answers with a malformed reply: the run
    ends as failed, the m1 row is done, and the user gets a notice naming the cause."""
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}", data_keys=DATA_KEYS)
    await store.upgrade()
    keystore = Keystore(tmp_path / "keys", b"passphrase")
    keystore.save(ALICE)
    with serve(lambda *_: (200, "application/timestamp-reply", reply)) as tss:
        url = tss.url
        sender, actions = Sender.start(ALICE, TRUST, BOB.party, b"m0",
                                       Description("t", 2, "<x>"), DEADLINES, tss=url)
        await store.save_run(record(sender, "sender", ALICE.name, BOB.name), now=T0,
                             outbox=outbox(actions, ALICE.name, BOB.name))
        async with httpx.AsyncClient() as http:
            ctx = GatewayContext(Settings(tss=TssConfig(url=url)), store, keystore, ALICE, TRUST,
                                 dc=None, upstream=None, imap=None,  # type: ignore[arg-type]
                                 http=http, queues=Queues(store), writer=writer())
            (row,) = await store.claim_outbox(T0 + 1, dispatch.LEASE)
            await dispatch.dispatch(ctx, row, T0 + 1)
    assert tss.requests == [("POST", "/m1")]  # asked once, not again
    try:
        run = await store.get_run(sender.cid, "sender")
        assert run is not None and run.phase == "failed"
        rows = await store.messages_of(sender.cid)
        m1 = [r for r in rows if r.kind == "m1"]
        assert len(m1) == 1 and m1[0].sent_at == T0 + 1 and m1[0].attempts == 1
        pending = await store.claim_outbox(T0 + 2, dispatch.LEASE)
        assert [(r.destination, r.kind) for r in pending] == [("mailbox", "failed")]
        assert why.encode() in bytes(pending[0].data)
    finally:
        await store.close()


@pytest.mark.parametrize(("status", "body", "said"), [
    (400, b'{"error": "m1.sig", "reason": "bad signature"}',
     "TSS answered 400 (m1.sig: bad signature)"),
    (400, b'{"error": "m1.sig"}', "TSS answered 400 (m1.sig)"),
    (503, b"<html>down</html>", "TSS answered 503"),
    (400, b'["not", "an", "object"]', "TSS answered 400"),
    (400, b'{"error": 7}', "TSS answered 400"),
    (400, b'{"error": "x", "reason": "' + b"\\u0007" * 3 + b"a" * 5000 + b'"}',
     "TSS answered 400"),  # too long to read: the status alone
    (400, b'{"error": "x\\r\\nInjected: 1", "reason": "' + b"r" * 300 + b'"}',
     "TSS answered 400 (x??Injected: 1: " + "r" * 184 + "...)"),
    # nested deeper than Python's recursion limit, within the 4 KB read: RecursionError
    (400, b'{"error": "x", "reason": ' + b"[" * 1900 + b"]" * 1900 + b"}", "TSS answered 400"),
    (400, b'{"error": "x", "reason": ' + b"[" * 900 + b"]" * 900 + b"}", "TSS answered 400 (x)"),
    (400, b'{"error": "x", "reason": {"a": 1}}', "TSS answered 400 (x)"),
])
def test_a_refusal_is_told_with_its_check_bounded_and_printable(
        status: int, body: bytes, said: str) -> None:
    assert dispatch.answered("TSS", httpx.Response(status, content=body)) == said


async def test_an_answer_larger_than_any_reply_is_not_held(tmp_path: Path) -> None:
    """A TSS answering m1 with megabytes: the gateway reads up to MAX_ANSWER, no more, and
    tries again later (as with a TSS it cannot reach) instead of taking it as a reply."""
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}", data_keys=DATA_KEYS)
    await store.upgrade()
    keystore = Keystore(tmp_path / "keys", b"passphrase")
    keystore.save(ALICE)
    huge = b"\x30" * (dispatch.MAX_ANSWER * 4)
    try:
        with serve(lambda *_: (200, "application/timestamp-reply", huge)) as tss:
            sender, actions = Sender.start(ALICE, TRUST, BOB.party, b"m0",
                                           Description("t", 2, "<x>"), DEADLINES, tss=tss.url)
            await store.save_run(record(sender, "sender", ALICE.name, BOB.name), now=T0,
                                 outbox=outbox(actions, ALICE.name, BOB.name))
            async with httpx.AsyncClient() as http:
                ctx = GatewayContext(Settings(tss=TssConfig(url=tss.url)), store, keystore,
                                     ALICE, TRUST, dc=None, upstream=None,  # type: ignore[arg-type]
                                     imap=None, http=http,  # type: ignore[arg-type]
                                     queues=Queues(store), writer=writer())
                (row,) = await store.claim_outbox(T0 + 1, dispatch.LEASE)
                with pytest.raises(dispatch.Retry, match="more than"):
                    await dispatch.dispatch(ctx, row, T0 + 1)
        run = await store.get_run(sender.cid, "sender")
        assert run is not None and run.phase == sender.phase  # not taken as a reply
    finally:
        await store.close()


async def test_a_compressed_answer_is_read_decoded_and_bounded_as_decoded() -> None:
    """Content-Encoding: the answer is the decoded bytes (taken once, not decoded twice),
    and a small compressed answer that decodes to more than MAX_ANSWER is not held."""
    plain = b'{"error": "m1.sig", "reason": "bad signature"}'
    bomb = gzip.compress(bytes(dispatch.MAX_ANSWER * 8))

    def answer(request: httpx.Request) -> httpx.Response:
        body = gzip.compress(plain) if request.url.path == "/small" else bomb
        return httpx.Response(400, content=body, headers={
            "Content-Encoding": "gzip", "Content-Type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        ctx = SimpleNamespace(http=http)
        r = await dispatch._post(ctx, "http://tss/small", b"q", "application/cbor")  # type: ignore[arg-type]
        assert r.status_code == 400 and r.content == plain
        assert dispatch.answered("TSS", r) == "TSS answered 400 (m1.sig: bad signature)"
        with pytest.raises(dispatch.Retry, match="more than"):
            await dispatch._post(ctx, "http://tss/bomb", b"q", "application/cbor")  # type: ignore[arg-type]


async def test_a_ttp_refusal_is_logged_bounded_and_printable(
        caplog: pytest.LogCaptureFixture) -> None:
    """What a refusing TTP says reaches the log as answered() words it: one line, bounded
    (its text could forge log lines)."""
    body = b"refused\r\n2026-12-07 INFO tcms.gateway: a forged line" + b"x" * 500
    done: list[int] = []

    async def outbox_done(row_id: int, now: int) -> None:
        done.append(row_id)

    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda _: httpx.Response(400, content=body))) as http:
        ctx = SimpleNamespace(settings=Settings(), http=http,
                              store=SimpleNamespace(outbox_done=outbox_done))
        rec = SimpleNamespace(tx="ab" * 16)
        row = SimpleNamespace(kind="abort", data=b"request", id=7)
        await dispatch.to_ttp(ctx, rec, row, T0)  # type: ignore[arg-type]
    assert done == [7]
    (line,) = [r.getMessage() for r in caplog.records if "refused abort" in r.getMessage()]
    assert "\n" not in line and "\r" not in line and len(line) < 400
    assert line.endswith("the TTP refused abort: TTP answered 400")
