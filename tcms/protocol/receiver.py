"""The receiver's role machine (R).

Phases::

    pending --accept--> await-m5 --m5--> done
       | refuse / accept_by   | m5_by
       v                      v
    refused / expired      resolving --RESOLVED--> done
                              '------ABORTED--> aborted

``rejected``: m3 failed a check (R sent nothing).  ``cheated``: S's keys or escrow do not
open c (R holds the proof).  ``failed``: the TTP rejected R's request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tcms.identity import Identity, Party
from tcms.protocol import checks
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.events import (
    Accept,
    Action,
    Deliver,
    Event,
    Ignored,
    Notify,
    Received,
    Refuse,
    Send,
    Tick,
)
from tcms.protocol.machine import RETRY_SECONDS, ExchangeState, PayloadMissing, RoleMachine
from tcms.protocol.messages import M3, M5, Core, message_type
from tcms.protocol.ttpmessages import (
    Aborted,
    BadEscrow,
    Rejection,
    Resolved,
    ResolveRequest,
    decode_ttp_answer,
)


@dataclass(frozen=True)
class ReceiverState(ExchangeState):
    m3: bytes
    sent_at: int = 0
    k_r: bytes | None = None
    k_t: bytes | None = None


class Receiver(RoleMachine[ReceiverState]):
    STATE = ReceiverState
    TERMINAL = ("done", "refused", "expired", "aborted", "rejected", "cheated", "failed")
    PAYLOAD_PHASES = ("await-m5", "resolving")  # m5 or the TTP's release opens c

    def __init__(self, me: Identity, trust: Trust, state: ReceiverState,
                 payload: bytes | None = None) -> None:
        super().__init__(me, trust, state)
        msg = M3.decode(state.m3)
        self.msg = msg if payload is None else replace(msg, c=payload)

    @property
    def payload(self) -> bytes:
        return self.msg.c

    def _without_payload(self) -> ReceiverState:
        return replace(self.state, m3=self.m3_without_payload())

    def m3_without_payload(self) -> bytes:
        """m3 as received, with c left out (a store keeps c apart)."""
        return replace(self.msg, c=b"").encode()

    def _c(self) -> bytes:
        if not self.msg.c:
            raise PayloadMissing("receiver: c is needed and was not loaded")
        return self.msg.c

    @classmethod
    def from_m3(cls, me: Identity, trust: Trust, data: bytes, now: int,
                known_sender: Callable[[str], Party | None]) -> tuple[Receiver, list[Action]]:
        """Start R's machine from an m3.  Raises MessageError if m3 cannot even be parsed
        (there is no exchange to record); a parsed m3 that fails a check gives a machine in
        phase ``rejected`` that sends nothing."""
        m3 = M3.decode(data)
        try:
            info, k_r = checks.check_m3(me, m3, trust, now, known_sender)
        except ProtocolError as exc:
            state = ReceiverState("rejected", data, reason=str(exc))
            return cls(me, trust, state), [Ignored(str(exc), check=exc.check)]
        sent_at = checks.token_time(info)
        state = ReceiverState("pending", data, sent_at=sent_at, k_r=k_r)
        hdr = m3.core.header
        text = (f"certified mail from {hdr.sender.name}: {hdr.description.subject!r}, "
                f"{hdr.description.size} bytes, time-stamped {checks.utc(sent_at)}; accept or "
                f"refuse by {checks.utc(hdr.deadlines.accept_by)}")
        return cls(me, trust, state), [Notify("notice", text)]

    # -- queries --------------------------------------------------------------------------

    @property
    def core(self) -> Core:
        return self.msg.core

    @property
    def cid(self) -> bytes:
        return self.msg.cid

    @property
    def has_message(self) -> bool:
        return self.state.phase == "done"

    @property
    def deadline(self) -> int | None:
        d = self.core.header.deadlines
        if self.state.phase == "pending":
            return d.accept_by
        if self.state.phase == "await-m5":
            return d.m5_by
        if self.state.phase == "resolving":
            return self.state.retry_at
        return None

    def m0(self) -> bytes:
        """The original mail (phase ``done`` only)."""
        st = self.state
        assert st.k_r is not None and st.k_t is not None
        return checks.decrypt_payload(self.core, self._c(), st.k_r, st.k_t)

    # -- transitions ----------------------------------------------------------------------

    def _dispatch(self, event: Event, now: int) -> list[Action]:
        if isinstance(event, Accept):
            return self._on_accept(now)
        if isinstance(event, Refuse):
            return self._on_refuse()
        if isinstance(event, Tick):
            return self._on_tick(now)
        if isinstance(event, Received):
            return self._on_received(event.data, now)
        return [Ignored(f"receiver: event {type(event).__name__} does not apply")]

    def _on_accept(self, now: int) -> list[Action]:
        if self.state.phase != "pending":
            return [Ignored(f"receiver: accept in phase {self.state.phase}", repeat=True)]
        if now > self.core.header.deadlines.accept_by:
            return self._on_tick(now)
        m4 = checks.sign_m4(self.me, self.core, self.msg.eoo).encode()
        self._set(phase="await-m5", m4=m4)
        return [Send("peer", "m4", m4)]

    def _on_refuse(self) -> list[Action]:
        if self.state.phase != "pending":
            return [Ignored(f"receiver: refuse in phase {self.state.phase}", repeat=True)]
        refusal = checks.sign_refusal(self.me, self.core, self.msg.eoo).encode()
        self._set(phase="refused", refusal=refusal, reason="refused by the recipient")
        return [Send("peer", "refusal", refusal)]

    def _resolve_request(self, now: int) -> ResolveRequest:
        st = self.state
        assert st.m4 is not None
        m3 = self.msg
        return checks.sign_resolve_request(self.me, "R", self.core, m3.token, m3.eoo, st.m4,
                                           m3.e_t, None, now)

    def _on_tick(self, now: int) -> list[Action]:
        st = self.state
        d = self.core.header.deadlines
        if st.phase == "pending" and now > d.accept_by:
            self._set(phase="expired", reason="not accepted before the deadline")
            return [Notify("expired", "the certified mail expired unanswered")]
        if st.phase == "await-m5" and now > d.m5_by:
            self._set(phase="resolving", retry_at=now + RETRY_SECONDS)
            return [Send("ttp", "resolve", self._resolve_request(now).encode())]
        if st.phase == "resolving" and st.retry_at is not None and now >= st.retry_at:
            self._set(retry_at=now + RETRY_SECONDS)
            return [Send("ttp", "resolve", self._resolve_request(now).encode())]
        return []

    def _finish(self, k_t: bytes, **changes: object) -> list[Action]:
        st = self.state
        assert st.k_r is not None
        try:
            m0 = checks.decrypt_payload(self.core, self._c(), st.k_r, k_t)
        except ProtocolError as exc:
            # both shares match their commitments yet c does not open: S cheated
            self._set(**{**changes, "phase": "cheated", "k_t": k_t,
                         "reason": f"the mail does not decrypt: {exc}"})
            return [Notify("failed", f"the sender's mail does not decrypt: {exc}")]
        self._set(phase="done", k_t=k_t, **changes)
        return [Deliver(m0)]

    def _on_received(self, data: bytes, now: int) -> list[Action]:
        kind = message_type(data)
        st = self.state
        if kind == "M3":
            return [Ignored("receiver: duplicate m3", repeat=True)]
        if kind == "M5":
            if st.phase not in ("await-m5", "resolving"):
                return [Ignored(f"receiver: m5 in phase {st.phase}", repeat=True)]
            m5 = M5.decode(data)
            k_t = checks.open_m5(self.me, self.core, m5)
            actions = self._finish(k_t, m5=data, reason="m5")
            if self.state.phase == "done":
                m6 = checks.sign_m6(self.me, self.core, data).encode()
                self._set(m6=m6)
                actions.append(Send("peer", "m6", m6))
            return actions
        if kind in ("ABORTED", "RESOLVED", "BAD-ESCROW", "REJECTED"):
            if st.phase != "resolving":
                return [Ignored(f"receiver: TTP answer in phase {st.phase}", repeat=True)]
            answer = decode_ttp_answer(data)
            checks.check_ttp_answer(self.core, answer, self.trust)
            if isinstance(answer, Resolved):
                k_t = checks.open_release(self.me, self.core, answer)
                return self._finish(k_t, ttp_answer=data, reason="released by the TTP")
            if isinstance(answer, Aborted):
                self._set(phase="aborted", ttp_answer=data, reason="aborted by the sender")
                return [Notify("aborted", "the sender aborted the exchange at the TTP")]
            if isinstance(answer, BadEscrow):
                self._set(phase="cheated", ttp_answer=data, reason=f"bad escrow: {answer.reason}")
                return [Notify("failed", f"the sender's escrow is invalid: {answer.reason}")]
            assert isinstance(answer, Rejection)
            self._set(phase="failed", ttp_answer=data, reason=f"TTP rejected: {answer.reason}")
            return [Notify("failed", f"the TTP rejected the request: {answer.reason}")]
        return [Ignored(f"receiver: unexpected message {kind}")]
