"""What an IMAP client command is made of, as gateway/imapwire.py reads it: arguments
(atoms, strings, parenthesised lists), the events a reader gives (a whole ``Command``, a
``Continue`` for a synchronising literal, a ``Rejected`` command, a raw ``Line``), how the
server reads a command (``Reading``) and the bounds of a connection (``Limits``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Atom:
    value: bytes


@dataclass(frozen=True, slots=True)
class String:
    value: bytes
    literal: bool = False
    literal8: bool = False


@dataclass(frozen=True, slots=True)
class ParenList:
    items: tuple[Arg, ...]


Arg = Atom | String | ParenList


@dataclass(frozen=True, slots=True)
class Command:
    """A whole command. ``wire`` is what to send upstream (literals made non-synchronising, the
    skipped rest of the line left out, CRLF at the end); ``spans[i]`` is the slice of ``wire``
    that holds top-level argument ``i``, so that one argument can be replaced."""

    tag: bytes
    name: bytes  # upper case; "UID FETCH" for the UID commands
    args: tuple[Arg, ...]
    wire: tuple[bytes, ...]
    spans: tuple[tuple[int, int], ...]

    def replaced(self, index: int, encoded: bytes) -> list[bytes]:
        """``wire`` with top-level argument ``index`` replaced by ``encoded``."""
        start, end = self.spans[index]
        return [*self.wire[:start], encoded, *self.wire[end:]]


@dataclass(frozen=True, slots=True)
class Continue:
    """The client announced a synchronising literal and waits for a continuation request."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command answered without being read further: ``answer`` (``BAD ...`` or ``NO ...``)
    goes to the client under ``tag`` (``*`` when the tag itself was not readable)."""

    tag: bytes | None
    answer: str


@dataclass(frozen=True, slots=True)
class Line:
    """One raw line (IDLE's DONE, an AUTHENTICATE response), without its CRLF."""

    data: bytes


Event = Command | Continue | Rejected | Line


class LimitExceeded(Exception):
    """A line, a literal or a command is larger than allowed: close the connection."""


@dataclass(frozen=True, slots=True)
class Reading:
    """How the server reads one command's arguments."""

    reads: int | None = None  # top-level arguments read; the rest of the line is skipped
    literal8: bool = False  # ~{n} allowed
    literal_is_text: bool = True  # literal data counts towards Limits.max_text


Policy = Callable[[bytes], Reading | str]  # command name -> how to read it, or the answer


@dataclass(frozen=True, slots=True)
class Limits:
    max_line: int  # one line, without literal data
    max_literal: int  # one literal
    max_text: int  # a command, with literal data unless its Reading says otherwise
    max_command: int  # a command, every literal included
    max_depth: int = 32  # nested parenthesised lists
