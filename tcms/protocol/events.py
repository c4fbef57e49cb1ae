"""Inputs (events) and outputs (actions) of the role machines.  No I/O, no clock: ``now`` is
always given by the caller, and actions are instructions for the caller to carry out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """Bytes arrived from the peer or from the TTP."""

    data: bytes


@dataclass(frozen=True)
class TimestampReply:
    """The TSS answered a request this machine asked for (an RFC 3161 TimeStampResp)."""

    reply: bytes


@dataclass(frozen=True)
class TimestampFailed:
    reason: str


@dataclass(frozen=True)
class Tick:
    """Time has passed: check deadlines and retries."""


@dataclass(frozen=True)
class Accept:
    """The recipient accepted the mail."""


@dataclass(frozen=True)
class Refuse:
    """The recipient refused the mail."""


Event = Received | TimestampReply | TimestampFailed | Tick | Accept | Refuse

# --- actions ----------------------------------------------------------------------------

Destination = Literal["tss", "peer", "ttp"]


@dataclass(frozen=True)
class Send:
    to: Destination
    kind: str
    data: bytes


@dataclass(frozen=True)
class Notify:
    """Tell the machine's user something (a notice, a receipt, a failure)."""

    kind: str
    text: str


@dataclass(frozen=True)
class Deliver:
    """The recipient may now read m0."""

    m0: bytes


@dataclass(frozen=True)
class Ignored:
    """An input was rejected or is redundant; state is unchanged.  ``reason`` says why in
    prose; ``check`` names the failed check (empty when none failed); ``repeat`` is true
    when the input is harmless because it was already handled (a repeated or late message,
    an answer in a phase that has moved on), so a caller never decides from the prose."""

    reason: str
    check: str = ""
    repeat: bool = False


Action = Send | Notify | Deliver | Ignored
