"""Property-based exploration of schedules: an unreliable network between S and R, a
reliable but slow TTP, and parties that cheat (garbage, replays from other runs, stopping
at any step).

Checked in every explored schedule, once all deadlines have passed:
- every honest party's machine has terminated;
- fairness: with both honest, S holds a receipt exactly when R holds m0; an honest S
  whose recipient cheated holds a receipt whenever R got m0; an honest R whose sender
  cheated holds m0 whenever S got a receipt;
- the evidence verifies exactly as the protocol says: S's bundle proves "received" iff S
  holds a receipt, "aborted" iff the TTP aborted; R's bundle proves "received" iff R holds m0.

The number of schedules per property is TCMS_PROPERTY_EXAMPLES: 200 unless set (`make
test`); `make soak` explores 3000.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from conftest import ALICE, BOB, DEADLINES, T0, TRUST, TTP, known, start_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tcms import evidence
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import ProtocolError
from tcms.protocol.events import Accept, Action, Deliver, Received, Refuse, Send, Tick
from tcms.protocol.messages import MessageError, message_type
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender

EXAMPLES = int(os.environ.get("TCMS_PROPERTY_EXAMPLES", "200"))
pytestmark = pytest.mark.slow
END = DEADLINES.resolve_by + 10_000


@dataclass(frozen=True)
class Pristine:
    sender: bytes  # the sender's state right after m2, m3 not yet delivered
    m3: bytes


def _transcript(p: Pristine) -> list[bytes]:
    """Every message of one complete run (and of its recovery paths): replay material."""
    out = [p.m3]
    s = Sender.load(ALICE, TRUST, p.sender)
    r, _ = Receiver.from_m3(BOB, TRUST, p.m3, T0 + 1, known)
    out += [a.data for a in Receiver.load(BOB, TRUST, r.dump()).handle(Refuse(), T0 + 1)
            if isinstance(a, Send)]
    m4 = next(a.data for a in r.handle(Accept(), T0 + 2) if isinstance(a, Send))
    resolve = next(a.data for a in Receiver.load(BOB, TRUST, r.dump()).handle(
        Tick(), DEADLINES.m5_by + 1) if isinstance(a, Send))
    abort = next(a.data for a in Sender.load(ALICE, TRUST, p.sender).handle(
        Tick(), DEADLINES.accept_by + 1) if isinstance(a, Send))
    m5 = next(a.data for a in s.handle(Received(m4), T0 + 3) if isinstance(a, Send))
    m6 = next(a.data for a in r.handle(Received(m5), T0 + 4) if isinstance(a, Send))
    _, resolved = ttp_role.handle(TTP, TRUST, resolve, None, DEADLINES.m5_by + 1)
    _, aborted = ttp_role.handle(TTP, TRUST, abort, None, DEADLINES.m5_by + 1)
    return [*out, m4, m5, m6, resolve, abort, resolved, aborted]


def _pool(n: int) -> list[Pristine]:
    runs = [start_run(f"Subject: run {i}\r\n\r\nbody {i}".encode()) for i in range(n)]
    return [Pristine(r.sender.dump(), r.m3) for r in runs]


POOL = _pool(6)
REPLAYS = [msg for p in POOL[3:] for msg in _transcript(p)]


class Exchange(RuleBasedStateMachine):
    """One exchange (a pristine run from the pool) under an adversarial schedule."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0 + 1
        self.net: list[tuple[str, bytes]] = []  # (to: "S" | "R", data), unordered
        self.ttp_queue: list[tuple[str, bytes]] = []  # (from, request): reliable, delayed
        self.decision: ttp_role.Decision | None = None
        self.s_stopped = False
        self.r_stopped = False
        self.s_stop: str | None = None
        self.r_stop: str | None = None
        self.r_delivered: list[bytes] = []
        self.receiver: Receiver | None = None

    @initialize(
        index=st.integers(0, 2),
        s_stop=st.sampled_from([None] * 6 + ["await-m4", "await-m6", "aborting", "resolving",
                                             "done"]),
        r_stop=st.sampled_from([None] * 6 + ["pending", "await-m5", "resolving", "done"]),
    )
    def setup(self, index: int, s_stop: str | None, r_stop: str | None) -> None:
        self.start(index, s_stop, r_stop)

    def start(self, index: int, s_stop: str | None, r_stop: str | None) -> None:
        """A cheating party stops for good once it reaches the phase drawn here."""
        p = POOL[index]
        self.sender = Sender.load(ALICE, TRUST, p.sender)
        self.m0 = f"Subject: run {index}\r\n\r\nbody {index}".encode()
        self.net.append(("R", p.m3))
        self.s_stop, self.r_stop = s_stop, r_stop

    # -- carrying out actions --------------------------------------------------------------

    def _route(self, who: str, actions: list[Action]) -> None:
        if self.sender.phase == self.s_stop:
            self.s_stopped = True
        if self.receiver is not None and self.receiver.phase == self.r_stop:
            self.r_stopped = True
        for a in actions:
            if isinstance(a, Deliver):
                assert who == "R"
                self.r_delivered.append(a.m0)
            elif isinstance(a, Send):
                if a.to == "peer":
                    self.net.append(("R" if who == "S" else "S", a.data))
                elif a.to == "ttp":
                    self.ttp_queue.append((who, a.data))
                # a.to == "tss": the receipt time stamp is optional; not modelled here

    def _give(self, to: str, data: bytes) -> None:
        if to == "S":
            if not self.s_stopped:
                self._route("S", self.sender.handle(Received(data), self.now))
            return
        if self.r_stopped:
            return
        if self.receiver is None:
            try:
                if message_type(data) != "M3":
                    return  # R has no exchange yet: the gateway drops it
                r, acts = Receiver.from_m3(BOB, TRUST, data, self.now, known)
            except MessageError:
                return
            if r.cid != self.sender.cid:
                return  # another exchange (a replay): not this one
            self.receiver = r
            self._route("R", acts)
        else:
            self._route("R", self.receiver.handle(Received(data), self.now))

    def _ttp(self, who: str, data: bytes) -> None:
        """The TTP processes one request; its answer goes back to the requester, reliably."""
        try:
            req = ttp_role.parse_request(data)
            ttp_role.check_request(TTP, req, TRUST)
        except (MessageError, ProtocolError):
            return
        if req.core.cid != self.sender.cid:
            return
        decision, answer = ttp_role.decide(TTP, req, self.decision, self.now)
        if self.decision is not None:
            assert decision is self.decision  # the first decision stands
        self.decision = decision or self.decision
        if who in ("S", "R"):
            self._give(who, answer)

    # -- the schedule ----------------------------------------------------------------------

    @precondition(lambda self: self.net)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.net) - 1))
        self._give(*self.net.pop(i))

    @precondition(lambda self: self.net)
    @rule()
    def network_flushes_in_order(self) -> None:
        while self.net:
            self._give(*self.net.pop(0))

    @precondition(lambda self: self.net)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.net.pop(data.draw(st.integers(0, len(self.net) - 1)))

    @precondition(lambda self: self.net)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.net.append(self.net[data.draw(st.integers(0, len(self.net) - 1))])

    @precondition(lambda self: self.ttp_queue)
    @rule(data=st.data())
    def ttp_answers(self, data: st.DataObject) -> None:
        self._ttp(*self.ttp_queue.pop(data.draw(st.integers(0, len(self.ttp_queue) - 1))))

    @rule(dt=st.sampled_from([1, 1, 2, 3, 5, 8, 10, 20, 50, 99, 100, 101, 200, 700]))
    def time_passes(self, dt: int) -> None:
        self.now += dt
        if not self.s_stopped:
            self._route("S", self.sender.handle(Tick(), self.now))
        if not self.r_stopped and self.receiver is not None:
            self._route("R", self.receiver.handle(Tick(), self.now))

    @precondition(lambda self: self.receiver is not None and not self.r_stopped)
    @rule(accept=st.booleans())
    def recipient_decides(self, accept: bool) -> None:
        assert self.receiver is not None
        self._route("R", self.receiver.handle(Accept() if accept else Refuse(), self.now))

    @rule(to=st.sampled_from(["S", "R", "TTP"]),
          msg=st.binary(max_size=80) | st.sampled_from(REPLAYS))
    def adversary_injects(self, to: str, msg: bytes) -> None:
        """Garbage, or a valid message from another run, sent to S, R or the TTP."""
        if to == "TTP":
            self._ttp("nobody", msg)
        else:
            self._give(to, msg)

    @invariant()
    def r_only_ever_gets_the_real_m0(self) -> None:
        assert all(m == self.m0 for m in self.r_delivered)
        assert len(self.r_delivered) <= 1

    # -- the end: all deadlines pass --------------------------------------------------------

    def teardown(self) -> None:
        if not hasattr(self, "sender"):
            return
        self.net.clear()  # whatever is still in flight is lost
        for at in (DEADLINES.accept_by + 1, DEADLINES.m5_by + 1, DEADLINES.m6_by + 1, END,
                   END + 100, END + 200):
            self.now = max(self.now, at)
            for _ in range(4):  # the TTP is reliable: requests and answers all arrive
                if not self.s_stopped:
                    self._route("S", self.sender.handle(Tick(), self.now))
                if not self.r_stopped and self.receiver is not None:
                    self._route("R", self.receiver.handle(Tick(), self.now))
                while self.ttp_queue:
                    self._ttp(*self.ttp_queue.pop(0))
                self.net = [(to, d) for to, d in self.net if to == "S"]  # only refusals matter
                while self.net:
                    self._give(*self.net.pop(0))
        check_outcome(self.sender, self.receiver, self.s_stopped, self.r_stopped,
                      self.decision)


def check_outcome(s: Sender, r: Receiver | None, s_stopped: bool, r_stopped: bool,
                  decision: ttp_role.Decision | None) -> None:
    """Termination, fairness and evidence, once every deadline has passed."""
    s_receipt = s.has_receipt
    r_message = r is not None and r.has_message
    if not s_stopped:
        assert s.terminal, f"honest S stuck in {s.phase}"
    if not r_stopped and r is not None:
        assert r.terminal, f"honest R stuck in {r.phase}"
    if not s_stopped and not r_stopped:
        assert s_receipt == r_message, (s.phase, r and r.phase)
    if not s_stopped:
        assert s_receipt or not r_message, "R has m0 but honest S has no receipt"
    if not r_stopped:
        assert r_message or not s_receipt, "S has a receipt but honest R has no m0"
    # the evidence says what the machines say
    kind = _verdict(evidence.from_sender(s))
    assert not kind.startswith("invalid"), (kind, s.phase)  # rows 6-12 of the table
    assert (kind == "received") == s_receipt, (kind, s.phase)
    if decision is not None and decision.state == "aborted" and not s_stopped:
        assert kind == "aborted", kind
    if r is not None and r.phase != "rejected":
        r_kind = _verdict(evidence.from_receiver(r))
        assert not r_kind.startswith("invalid"), (r_kind, r.phase)
        assert (r_kind == "received") == r_message, (r_kind, r.phase)


def _verdict(bundle: dict[str, object]) -> str:
    try:
        return evidence.verify(bundle, TRUST).kind
    except evidence.EvidenceInvalid as exc:
        return f"invalid:{exc.check}"


Exchange.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSchedules = Exchange.TestCase


# --- planned schedules: a fate for every message ------------------------------------------

FATES = st.sampled_from(["deliver", "deliver", "drop", "duplicate", "late"])
LATE = 250  # past accept_by and m5_by when sent at the start: crosses a deadline


@st.composite
def plans(draw: st.DrawFn) -> dict[str, object]:
    return {
        "index": draw(st.integers(0, 2)),
        "fate": {k: draw(FATES) for k in ("m3", "m4", "m5", "m6", "refusal")},
        "decision": draw(st.sampled_from(["accept", "accept", "refuse", "never", "late"])),
        "ttp_delay": draw(st.sampled_from([0, 0, 5, 150, 400])),
        "s_stop": draw(st.sampled_from([None] * 4 + ["await-m4", "await-m6", "aborting",
                                                     "resolving", "done"])),
        "r_stop": draw(st.sampled_from([None] * 4 + ["pending", "await-m5", "resolving",
                                                     "done"])),
        "inject": draw(st.lists(st.tuples(st.sampled_from(["S", "R", "TTP"]),
                                          st.sampled_from(REPLAYS) | st.binary(max_size=40)),
                                max_size=3)),
    }


def play(plan: dict[str, object]) -> None:
    """Run one exchange as the plan says, on a discrete clock, until every deadline passed."""
    w = Exchange.__new__(Exchange)
    Exchange.__init__(w)
    index = plan["index"]
    assert isinstance(index, int)
    w.start(index, plan["s_stop"], plan["r_stop"])  # type: ignore[arg-type]
    fate: dict[str, str] = plan["fate"]  # type: ignore[assignment]
    timed: list[tuple[int, str, bytes]] = []  # (when, to, data)

    def post(to: str, data: bytes) -> None:
        kind = {"M3": "m3", "M4": "m4", "M5": "m5", "M6": "m6", "REFUSE": "refusal"}.get(
            message_type(data), "")
        f = fate.get(kind, "deliver")
        if f == "drop":
            return
        timed.append((w.now + (LATE if f == "late" else 1), to, data))
        if f == "duplicate":
            timed.append((w.now + 2, to, data))

    for to, data in w.net:
        post(to, data)
    w.net = []
    injections = list(plan["inject"])  # type: ignore[call-overload]
    decided = False
    ttp_delay = plan["ttp_delay"]
    assert isinstance(ttp_delay, int)
    pending_ttp: list[tuple[int, str, bytes]] = []
    while w.now < END + 500:
        # deliveries due now
        for item in sorted(x for x in timed if x[0] <= w.now):
            timed.remove(item)
            w._give(item[1], item[2])
        for item in sorted(x for x in pending_ttp if x[0] <= w.now):
            pending_ttp.remove(item)
            w._ttp(item[1], item[2])
        if injections:
            to, msg = injections.pop()
            w._ttp("nobody", msg) if to == "TTP" else w._give(to, msg)
        r = w.receiver
        if r is not None and not decided and not w.r_stopped and r.phase == "pending":
            decision = plan["decision"]
            if decision in ("accept", "refuse") or (
                    decision == "late" and w.now > DEADLINES.accept_by - 20):
                decided = True
                w._route("R", r.handle(Refuse() if decision == "refuse" else Accept(), w.now))
        # carry out what the machines produced
        for to, data in w.net:
            post(to, data)
        w.net = []
        for who, data in w.ttp_queue:
            pending_ttp.append((w.now + ttp_delay, who, data))
        w.ttp_queue = []
        w.now += 1 if (timed or pending_ttp) else 25
        if not w.s_stopped:
            w._route("S", w.sender.handle(Tick(), w.now))
        if not w.r_stopped and w.receiver is not None:
            w._route("R", w.receiver.handle(Tick(), w.now))
    check_outcome(w.sender, w.receiver, w.s_stopped, w.r_stopped, w.decision)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_planned_schedules(plan: dict[str, object]) -> None:
    play(plan)
