"""c kept apart from a run's state (table pieces): a run stored before that table, with c
in its state, goes on, and its c moves to the pieces at its next step."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import ALICE, BOB, DATA_KEYS, DEADLINES, T0, TRUST, one, stamp
from fakehttp import serve
from signing import writer

from gateway import dispatch
from gateway.context import GatewayContext
from gateway.queue import Queues
from gateway.runs import outbox
from tcms import evidence
from tcms.config import Settings, TssConfig
from tcms.keystore import Keystore
from tcms.protocol.messages import M3, Description
from tcms.protocol.sender import Sender
from tcms.store import RunRecord, Store


async def test_a_run_stored_with_c_in_its_state_moves_c_at_its_next_step(
        tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'gw.db'}", data_keys=DATA_KEYS)
    await store.upgrade()
    keystore = Keystore(tmp_path / "keys", b"passphrase")
    keystore.save(ALICE)
    m0 = b"Subject: old\r\n\r\n" + b"x" * 5000
    sender, actions = Sender.start(ALICE, TRUST, BOB.party, m0,
                                   Description("old", len(m0), "<x>"), DEADLINES)
    c = sender.payload
    # as a gateway stored it before table pieces: the whole state, c inside, no pieces
    hdr = sender.core.header
    await store.save_run(RunRecord(sender.cid, "sender", hdr.tx.hex(), ALICE.name, BOB.name,
                                   "old", sender.phase, False, sender.deadline,
                                   sender.dump()), now=T0,
                         outbox=outbox(actions, ALICE.name, BOB.name))
    assert await store.get_payload(sender.cid, "sender") is None
    reply = stamp(one(actions, "m1"), T0)
    try:
        with serve(lambda *_: (200, "application/timestamp-reply", reply)) as tss:
            async with httpx.AsyncClient() as http:
                ctx = GatewayContext(Settings(tss=TssConfig(url=tss.url)), store, keystore,
                                     ALICE, TRUST, dc=None, upstream=None,  # type: ignore[arg-type]
                                     imap=None, http=http, queues=Queues(store),  # type: ignore[arg-type]
                                     writer=writer())
                (row,) = await store.claim_outbox(T0 + 1, dispatch.LEASE)
                await dispatch.dispatch(ctx, row, T0 + 1)
        run = await store.get_run(sender.cid, "sender")
        assert run is not None and run.phase == "await-m4"
        assert await store.get_payload(sender.cid, "sender") == c  # moved to the pieces
        assert c not in run.state  # and out of the state
        # the m3 it queued carries c (made from the old state): mailed as it is
        (m3,) = [r for r in await store.messages_of(sender.cid) if r.kind == "m3"]
        assert M3.decode(m3.data).c == c
        # its evidence is whole: the state and c
        items = evidence.stored_items("sender", run.state,
                                      await store.get_payload(sender.cid, "sender"))
        assert items["c"] == c and evidence.verify_items(items, TRUST).kind == "sent"
    finally:
        await store.close()
