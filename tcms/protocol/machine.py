"""What every role machine shares: its state, persistence, and the rule that an input
failing a check is ignored with its reason and changes nothing."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, ClassVar, Generic, Self, TypeVar

from tcms.identity import Identity
from tcms.protocol.checks import ProtocolError, Trust
from tcms.protocol.events import Action, Event, Ignored
from tcms.protocol.messages import MessageError
from tcms.protocol.state import dump_state, load_state
from tcms.timestamp import TimestampError

RETRY_SECONDS = 60  # a machine waiting for the TTP asks again this often


@dataclass(frozen=True)
class ExchangeState:
    """What both roles keep of an exchange: the phase, the later messages and the TTP's
    answer as they arrive, when to ask the TTP again, and why the run ended.  (Stored as a
    CBOR map by field name: tcms/protocol/state.py.)"""

    phase: str
    _: KW_ONLY
    m4: bytes | None = None
    m5: bytes | None = None
    m6: bytes | None = None
    refusal: bytes | None = None
    ttp_answer: bytes | None = None
    retry_at: int | None = None
    reason: str = ""


StateT = TypeVar("StateT", bound=ExchangeState)


class PayloadMissing(RuntimeError):
    """A step needs c, and the machine was loaded without it: the caller's error (load it
    with its payload in the phases ``needs_payload`` names).  Never a protocol verdict."""


class RoleMachine(Generic[StateT]):
    """A role's machine.  Its payload is c, the encrypted mail, as large as the mail: a
    store keeps it apart from the state (``stored``) and hands it back to ``load`` only
    in the phases whose steps read it (``needs_payload``)."""

    STATE: ClassVar[type[Any]]
    TERMINAL: ClassVar[tuple[str, ...]]
    PAYLOAD_PHASES: ClassVar[tuple[str, ...]]  # the phases whose steps read c

    def __init__(self, me: Identity, trust: Trust, state: StateT,
                 payload: bytes | None = None) -> None:
        """``payload``: c, for a state stored without it (a role's subclass takes it)."""
        self.me = me
        self.trust = trust
        self.state = state

    def dump(self) -> bytes:
        """The whole state, c included."""
        return dump_state(self.state)

    def stored(self) -> bytes:
        """The state without c (kept apart: ``payload``)."""
        return dump_state(self._without_payload())

    @property
    def payload(self) -> bytes:
        """c as this machine holds it: b"" when loaded without it."""
        raise NotImplementedError

    def _without_payload(self) -> StateT:
        raise NotImplementedError

    @classmethod
    def needs_payload(cls, phase: str) -> bool:
        return phase in cls.PAYLOAD_PHASES

    @classmethod
    def load(cls, me: Identity, trust: Trust, data: bytes,
             payload: bytes | None = None) -> Self:
        """The machine of a stored state (``dump`` or ``stored``), with ``payload`` as its
        c if given (a state from ``dump`` holds c itself)."""
        return cls(me, trust, load_state(cls.STATE, data), payload)

    @property
    def phase(self) -> str:
        return self.state.phase

    @property
    def terminal(self) -> bool:
        return self.state.phase in self.TERMINAL

    def _set(self, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]

    def handle(self, event: Event, now: int) -> list[Action]:
        """Apply one event at time ``now``; return what to do.  A message or event that
        fails a check yields one ``Ignored`` naming the check, and the state is unchanged."""
        saved = self.state
        try:
            return self._dispatch(event, now)
        except (ProtocolError, MessageError, TimestampError) as exc:
            self.state = saved
            check = exc.check if isinstance(exc, ProtocolError) else "format"
            return [Ignored(str(exc), check=check)]

    def _dispatch(self, event: Event, now: int) -> list[Action]:
        raise NotImplementedError
