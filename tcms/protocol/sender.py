"""The sender's role machine (S).

Phases::

    stamping --m2--> await-m4 --m4--> await-m6 --m6--> done
                        |  refusal / accept_by       |  m6_by
                        v                            v
                     aborting --ABORTED--> aborted  resolving --RESOLVED--> done
                        '------RESOLVED--> done

``failed`` ends a run that never left S (the TSS refused), or whose TTP answer proves a
fault.  S never sends m5 after it has asked for an abort.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from tcms.crypto import h, sign
from tcms.identity import Identity, Party
from tcms.protocol import checks
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.events import (
    Action,
    Event,
    Ignored,
    Notify,
    Received,
    Send,
    Tick,
    TimestampFailed,
    TimestampReply,
)
from tcms.protocol.machine import RETRY_SECONDS, ExchangeState, RoleMachine
from tcms.protocol.messages import (
    M1,
    M3,
    M4,
    M6,
    Core,
    Deadlines,
    Description,
    Refusal,
    message_type,
)
from tcms.protocol.ttpmessages import (
    Aborted,
    AbortRequest,
    BadEscrow,
    Resolved,
    ResolveRequest,
    decode_ttp_answer,
)
from tcms.timestamp import TimestampError, make_request, token_from_reply, verify_token


@dataclass(frozen=True)
class SenderState(ExchangeState):
    core: bytes
    c: bytes
    e_r: bytes
    e_t: bytes
    k_r: bytes
    k_t: bytes
    tsq: bytes
    nonce: int
    token: bytes | None = None
    eoo: bytes | None = None
    receipt_tsq: bytes | None = None
    receipt_token: bytes | None = None


class Sender(RoleMachine[SenderState]):
    STATE = SenderState
    TERMINAL = ("done", "aborted", "failed")
    PAYLOAD_PHASES = ()  # S never reads c again: see ``m3``

    def __init__(self, me: Identity, trust: Trust, state: SenderState,
                 payload: bytes | None = None) -> None:
        super().__init__(me, trust, state if payload is None else replace(state, c=payload))
        self.core = Core.decode(state.core)

    # -- creation and persistence -------------------------------------------------------

    @property
    def payload(self) -> bytes:
        return self.state.c

    def _without_payload(self) -> SenderState:
        return replace(self.state, c=b"")

    @classmethod
    def start(
        cls,
        me: Identity,
        trust: Trust,
        recipient: Party,
        m0: bytes,
        description: Description,
        deadlines: Deadlines,
        *,
        tss: str = "tss",
        cipher_alg: str | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> tuple[Sender, list[Action]]:
        sealed = checks.seal(me, recipient, trust.ttp, tss, m0, description, deadlines,
                             cipher_alg=cipher_alg, random=random)
        tsq, nonce = make_request(sealed.core.cid, nonce=int.from_bytes(random(8), "big"))
        state = SenderState("stamping", sealed.core.encoded, sealed.c, sealed.e_r, sealed.e_t,
                            sealed.k_r, sealed.k_t, tsq, nonce)
        sender = cls(me, trust, state)
        m1 = M1(me.party, sealed.core.cid, tsq, sign(me.sig_key, "M1", sealed.core.cid, h(tsq)))
        return sender, [Send("tss", "m1", m1.encode())]

    # -- queries --------------------------------------------------------------------------

    @property
    def cid(self) -> bytes:
        return self.core.cid

    @property
    def has_receipt(self) -> bool:
        """S holds m6, or the TTP's resolution (affidavit) for this exchange."""
        if self.state.m6 is not None:
            return True
        return self.state.ttp_answer is not None and message_type(
            self.state.ttp_answer) == "RESOLVED"

    @property
    def deadline(self) -> int | None:
        """When this machine next wants a Tick (None: it waits for nothing time-bound)."""
        d = self.core.header.deadlines
        return {"await-m4": d.accept_by, "await-m6": d.m6_by}.get(
            self.state.phase, self.state.retry_at if self.state.phase in
            ("aborting", "resolving") else None)

    def m3(self) -> M3:
        """m3 with the c this machine holds: a machine loaded without its payload sends
        m3 with c left out (empty), and whoever mails it puts the run's c back in
        (gateway/dispatch.py), so that S never reads c after ``start``."""
        assert self.state.token is not None and self.state.eoo is not None
        return M3(self.core, self.state.c, self.state.e_r, self.state.e_t, self.state.token,
                  self.state.eoo)

    # -- transitions ----------------------------------------------------------------------

    def _dispatch(self, event: Event, now: int) -> list[Action]:
        if isinstance(event, TimestampReply):
            return self._on_timestamp(event.reply, now)
        if isinstance(event, TimestampFailed):
            return self._on_timestamp_failed(event.reason)
        if isinstance(event, Tick):
            return self._on_tick(now)
        if isinstance(event, Received):
            return self._on_received(event.data, now)
        return [Ignored(f"sender: event {type(event).__name__} does not apply")]

    def _on_timestamp(self, reply: bytes, now: int) -> list[Action]:
        st = self.state
        if st.phase == "stamping":
            token = token_from_reply(reply)
            info = checks.check_token(self.core, token, self.trust)
            if info.nonce != st.nonce:
                raise ProtocolError("m2.nonce", "the token's nonce is not the request's")
            eoo = checks.sign_eoo(self.me, self.core, token)
            self._set(token=token, eoo=eoo, phase="await-m4")
            return [Send("peer", "m3", self.m3().encode()),
                    Notify("submitted", f"sent for certification; time stamp "
                           f"{checks.utc(checks.token_time(info))}")]
        if st.receipt_tsq is not None and st.receipt_token is None and st.m6 is not None:
            token = token_from_reply(reply)
            try:  # the receipt token stamps H(m6)
                verify_token(token, h(st.m6), self.trust.tsa_ca)
            except TimestampError as exc:
                raise ProtocolError("m6.token", str(exc)) from None
            self._set(receipt_token=token)
            return []
        return [Ignored("sender: unexpected time-stamp reply")]

    def _on_timestamp_failed(self, reason: str) -> list[Action]:
        if self.state.phase == "stamping":
            self._set(phase="failed", reason=f"time stamp failed: {reason}")
            return [Notify("failed", f"not sent: the time-stamping server failed ({reason})")]
        return [Ignored("sender: time-stamp failure does not apply")]

    def _abort_request(self, now: int) -> AbortRequest:
        return AbortRequest(self.core, now, sign(self.me.sig_key, "ABORT-REQ", self.cid, now))

    def _abort(self, now: int, why: str) -> list[Action]:
        self._set(phase="aborting", reason=why, retry_at=now + RETRY_SECONDS)
        return [Send("ttp", "abort", self._abort_request(now).encode())]

    def _resolve_request(self, now: int) -> ResolveRequest:
        st = self.state
        assert st.token and st.eoo and st.m4 and st.m5
        return checks.sign_resolve_request(self.me, "S", self.core, st.token, st.eoo, st.m4,
                                           st.e_t, st.m5, now)

    def _on_tick(self, now: int) -> list[Action]:
        st = self.state
        d = self.core.header.deadlines
        if st.phase == "await-m4" and now > d.accept_by:
            return self._abort(now, "no m4 before the accept deadline")
        if st.phase == "await-m6" and now > d.m6_by:
            req = self._resolve_request(now)
            self._set(phase="resolving", retry_at=now + RETRY_SECONDS)
            return [Send("ttp", "resolve", req.encode())]
        retry_due = st.retry_at is not None and now >= st.retry_at
        if st.phase in ("aborting", "resolving") and retry_due:
            self._set(retry_at=now + RETRY_SECONDS)
            if st.phase == "aborting":
                return [Send("ttp", "abort", self._abort_request(now).encode())]
            return [Send("ttp", "resolve", self._resolve_request(now).encode())]
        return []

    def _on_received(self, data: bytes, now: int) -> list[Action]:
        kind = message_type(data)
        st = self.state
        if kind in ("M4", "REFUSE"):
            return self._on_answer(kind, data, now)
        if kind == "M6":
            m6 = M6.decode(data)
            if st.phase not in ("await-m6", "resolving") or st.m6 is not None:
                return [Ignored(f"sender: m6 in phase {st.phase}", repeat=True)]
            assert st.m5 is not None
            checks.check_m6(self.core, st.m5, m6)
            tsq, _ = make_request(h(data))
            self._set(m6=data, phase="done", receipt_tsq=tsq, reason="receipt m6")
            return [Send("tss", "receipt-stamp", tsq),
                    Notify("receipt", f"{self.core.header.recipient.name} received the mail")]
        if kind in ("ABORTED", "RESOLVED", "BAD-ESCROW", "REJECTED"):
            return self._on_ttp(data)
        return [Ignored(f"sender: unexpected message {kind}")]

    def _on_answer(self, kind: str, data: bytes, now: int) -> list[Action]:
        """R's answer to m3: m4 (accepted) or a refusal, each only while S waits for it."""
        answer = M4.decode(data) if kind == "M4" else Refusal.decode(data)
        st = self.state
        if st.phase != "await-m4":
            what = "m4" if kind == "M4" else "refusal"
            return [Ignored(f"sender: {what} in phase {st.phase}", repeat=True)]
        assert st.eoo is not None
        if isinstance(answer, Refusal):
            checks.check_refusal(self.core, st.eoo, answer)
            self._set(refusal=data)
            return [*self._abort(now, "refused by the recipient"),
                    Notify("refused", f"{self.core.header.recipient.name} refused the mail")]
        checks.check_m4(self.core, st.eoo, answer)
        if now > self.core.header.deadlines.accept_by:
            # too late: the abort has priority; treat like the deadline
            return self._abort(now, "m4 arrived after the accept deadline")
        m5 = checks.make_m5(self.me, self.core, st.k_t).encode()
        self._set(m4=data, m5=m5, phase="await-m6")
        return [Send("peer", "m5", m5)]

    def _on_ttp(self, data: bytes) -> list[Action]:
        st = self.state
        if st.phase not in ("aborting", "resolving"):
            return [Ignored(f"sender: TTP answer in phase {st.phase}", repeat=True)]
        answer = decode_ttp_answer(data)
        checks.check_ttp_answer(self.core, answer, self.trust)
        rcpt = self.core.header.recipient.name
        if isinstance(answer, Aborted):
            if st.phase == "resolving":
                # only S can abort, and S never aborts after sending m5
                return [Ignored("sender: an abort token answers a resolve request")]
            self._set(phase="aborted", ttp_answer=data)
            return [Notify("aborted", f"the exchange with {rcpt} was aborted; "
                           f"{rcpt} cannot read the mail")]
        if isinstance(answer, Resolved):
            assert st.eoo is not None
            checks.check_m4(self.core, st.eoo, M4.decode(answer.m4))
            self._set(phase="done", ttp_answer=data, m4=answer.m4,
                      reason=f"TTP affidavit: {answer.kind}")
            how = answer.kind.replace("-", " ")  # delivered, made available
            return [Notify("receipt", f"the TTP certifies that the mail was {how} to {rcpt}")]
        if isinstance(answer, BadEscrow):
            self._set(phase="failed", ttp_answer=data, reason=f"bad escrow: {answer.reason}")
            return [Notify("failed", f"the TTP found the escrow invalid: {answer.reason}")]
        self._set(phase="failed", ttp_answer=data, reason=f"TTP rejected: {answer.reason}")
        return [Notify("failed", f"the TTP rejected the request: {answer.reason}")]
