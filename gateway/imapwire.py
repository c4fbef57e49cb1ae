"""Reading IMAP client commands without I/O: bytes in (``feed``), events out (``next``).

The grammar is the one Dovecot's ``src/lib-imap/imap-parser.c`` accepts (the proxy's upstream),
or a strict subset of it, so that the proxy and the server always agree on where a command
ends and what its arguments are:

- a tag and a command name are words ended by a space (as Dovecot's ``imap_parser_read_word``);
  a tag uses the characters Dovecot accepts in one, a name letters, digits and ``-``;
- arguments: atoms (no ``(){"``, controls, 8-bit), quoted strings with ``\\`` escapes (no CR,
  LF, NUL), literals ``{n}`` and ``{n+}`` (LITERAL+; LITERAL- is the same syntax with a size
  limit, ``{n-}`` is not IMAP and is refused as Dovecot refuses it), literal8 ``~{n}`` and
  ``~{n+}`` only where the command allows it (APPEND), and parenthesised lists;
- spaces between arguments are optional, as in Dovecot;
- a command the server reads only ``n`` arguments of (``Reading.reads``) ends, for the proxy as
  for the server, after its ``n``-th argument: the rest of its line is skipped, never parsed.
  The proxy sends upstream only what was read, so the skipped bytes never reach the server;
- a malformed command is rejected (``Rejected``) and skipped up to the next LF, as Dovecot does.

Literals are rewritten as non-synchronising (``{n+}``) in ``Command.wire``: the caller answers
a synchronising literal itself (``Continue``) and sends every command upstream whole.

Linear time: each byte is looked at a bounded number of times (``work`` counts the steps);
the buffer holds one command and at most one chunk beyond it. Bounded: past ``Limits`` (one
line, one literal, one command) ``LimitExceeded`` is raised and the connection must close.
"""

from __future__ import annotations

import re
from enum import Enum, auto

from gateway.imapcommand import (
    Arg,
    Atom,
    Command,
    Continue,
    Event,
    LimitExceeded,
    Limits,
    Line,
    ParenList,
    Policy,
    Reading,
    Rejected,
    String,
)

SP, CR, LF = 0x20, 0x0D, 0x0A
TAG_RUN = re.compile(rb"[A-Za-z0-9!#$&',\-./:;<=>?@^_`|~\[]*")
NAME_RUN = re.compile(rb"[A-Za-z0-9\-]*")
ATOM_RUN = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]*')
QUOTED_RUN = re.compile(rb'[^"\\\r\n\x00]*')
DIGITS = re.compile(rb"[0-9]*")
MAX_DIGITS = 19


class _S(Enum):
    TAG = auto()
    NAME = auto()
    ARGS = auto()
    ATOM = auto()
    QUOTED = auto()
    LITERAL_SIZE = auto()
    LITERAL_CRLF = auto()
    LITERAL_DATA = auto()
    SKIP = auto()
    LINE = auto()


class CommandReader:
    """Incremental reader of client commands (see the module's docstring)."""

    state: _S
    _waiting: bool

    def __init__(self, policy: Policy, limits: Limits) -> None:
        self.policy = policy
        self.limits = limits
        self.buf = bytearray()
        self.work = 0  # steps taken: bytes scanned, literal bytes copied, tokens made
        self._next_line = False
        self._begin(0)

    # -- the caller's side -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.buf += data

    def expect_line(self) -> None:
        """The next event is a raw ``Line`` (IDLE's DONE, an AUTHENTICATE response)."""
        if self.state is _S.TAG and self.pos == self.start:
            self.state = _S.LINE
        else:
            self._next_line = True

    def pending(self) -> int:
        """Bytes received and not yet part of an event."""
        return len(self.buf) - self.start

    def next(self) -> Event | None:
        """The next event, or None until more bytes are fed."""
        while True:
            event = self._step()
            if event is not None:
                return event
            if self._waiting:
                self._waiting = False
                return None

    # -- state -----------------------------------------------------------------------------

    def _begin(self, at: int) -> None:
        if at > 65536 and at * 2 > len(self.buf):
            del self.buf[:at]  # amortised: only once most of the buffer is consumed
            at = 0
        self.start = self.pos = self.line_start = self.flush = self.tok = at
        self.state = _S.LINE if self._next_line else _S.TAG
        self._next_line = False
        self.tag: bytes | None = None
        self.name = b""
        self.reading = Reading()
        self.stack: list[list[Arg]] = []
        self.args: list[Arg] = []
        self.wire: list[bytes] = []
        self.spans: list[tuple[int, int]] = []
        self.arg_piece = 0
        self.args_end = at
        self.rejection: str | None = None
        self.nontext = 0
        self.literal_size = 0
        self.literal_sync = False
        self.literal8 = False
        self.literal_mark = at
        self.quoted = bytearray()
        self._waiting = False

    def _wait(self) -> None:
        self._waiting = True

    def _run(self, pattern: re.Pattern[bytes]) -> bool:
        """Go over a run of bytes matching ``pattern``; False (waiting) if the data ends in
        it, True if a byte follows."""
        m = pattern.match(self.buf, self.pos, self._line_limit())
        assert m is not None
        self.work += m.end() - self.pos + 1
        self.pos = m.end()
        self._over_line(self.pos)
        if self.pos >= len(self.buf):
            self._wait()
            return False
        return True

    def _find_lf(self) -> int:
        """Where the line's LF is (-1, waiting, if it has not come yet)."""
        limit = self._line_limit()
        found = self.buf.find(b"\n", self.pos, limit)
        end = found if found >= 0 else min(len(self.buf), limit)
        self.work += end - self.pos + 1
        if found < 0:
            self.pos = end
            self._over_line(self.pos)
            self._wait()
        return found

    def _line_limit(self) -> int:
        """Scanning never goes past the longest allowed line."""
        return self.line_start + self.limits.max_line + 1

    def _over_line(self, at: int) -> None:
        """Past the longest line, or (with this line) the largest command: close."""
        lim = self.limits
        if at - self.line_start > lim.max_line:
            raise LimitExceeded("line too long")
        total = at - self.start
        if total > lim.max_command or total - self.nontext > lim.max_text:
            raise LimitExceeded("command too long")

    def _reject(self, answer: str) -> None:
        """Stop reading this command: skip to the end of its line, then answer."""
        self.rejection = answer
        self.state = _S.SKIP

    def _syntax(self, message: str) -> None:
        self._reject(f"BAD Error in IMAP command: {message}")

    # -- one step --------------------------------------------------------------------------

    def _step(self) -> Event | None:
        buf, n = self.buf, len(self.buf)
        s = self.state
        if s is _S.TAG:
            if not self._run(TAG_RUN):
                return None
            if buf[self.pos] != SP or self.pos == self.start or self.pos - self.start > 64:
                self.tag = None
                self._reject("BAD Error in IMAP tag: Invalid tag")
                return None
            self.tag = bytes(buf[self.start:self.pos])
            self.pos += 1
            self.tok = self.pos
            self.state = _S.NAME
            return None
        if s is _S.NAME:
            if not self._run(NAME_RUN):
                return None
            word = bytes(buf[self.tok:self.pos]).upper()
            c = buf[self.pos]
            if c not in (SP, CR) or not word:
                self._syntax("Invalid command name")
                return None
            if not self.name and word == b"UID" and c == SP:
                self.name = b"UID "
                self.pos += 1
                self.tok = self.pos
                return None
            self.name += word
            how = self.policy(self.name)
            if isinstance(how, str):
                self._reject(how)
                return None
            self.reading = how
            self.args_end = self.pos
            if how.reads == 0:
                self.state = _S.SKIP
                return None
            self.state = _S.ARGS
            return None
        if s is _S.ARGS:
            return self._args_step()
        if s is _S.ATOM:
            if not self._run(ATOM_RUN):
                return None
            c = buf[self.pos]
            if c in (SP, CR, LF) or (c == 0x29 and self.stack):  # ')'
                self._add(Atom(bytes(buf[self.tok:self.pos])))
                return None
            self._syntax("Unexpected ')'" if c == 0x29 else "Invalid characters in atom")
            return None
        if s is _S.QUOTED:
            return self._quoted_step()
        if s is _S.LITERAL_SIZE:
            m = DIGITS.match(buf, self.pos, self._line_limit())
            assert m is not None
            self.work += m.end() - self.pos + 1
            self.pos = m.end()
            self._over_line(self.pos)
            if self.pos - self.tok > MAX_DIGITS:
                raise LimitExceeded("literal too large")
            plus = self.pos < n and buf[self.pos] == 0x2B  # '+'
            end = self.pos + 1 if plus else self.pos
            if end >= n:
                self._wait()
                return None
            if self.pos == self.tok or buf[end] != 0x7D:  # '}'
                self._syntax("Invalid literal size")
                return None
            self.literal_size = int(bytes(buf[self.tok:self.pos]))
            self.literal_sync = not plus
            self.pos = end + 1
            if self.literal_size > self.limits.max_literal:
                raise LimitExceeded("literal too large")
            self.state = _S.LITERAL_CRLF
            return None
        if s is _S.LITERAL_CRLF:
            if self.pos + 2 > n:
                self._wait()
                return None
            if buf[self.pos] != CR or buf[self.pos + 1] != LF:
                self._syntax("Missing CRLF after literal size")
                return None
            self.pos += 2
            self._over_line(self.pos)
            total = self.pos + self.literal_size - self.start
            text = total - self.nontext - (0 if self.reading.literal_is_text
                                           else self.literal_size)
            if total > self.limits.max_command or text > self.limits.max_text:
                raise LimitExceeded("command too long")
            self.state = _S.LITERAL_DATA
            if self.literal_sync:
                return Continue()
            return None
        if s is _S.LITERAL_DATA:
            end = self.pos + self.literal_size
            if end > n:
                self._wait()
                return None
            data = bytes(buf[self.pos:end])
            self.work += self.literal_size + 1
            mark = b"~{%d+}\r\n" if self.literal8 else b"{%d+}\r\n"
            self.wire.append(bytes(buf[self.flush:self.literal_mark]))
            self.wire.append(mark % self.literal_size)
            self.wire.append(data)
            if not self.reading.literal_is_text:
                self.nontext += self.literal_size
            self.pos = self.flush = self.line_start = end
            self._add(String(data, literal=True, literal8=self.literal8))
            return None
        if s is _S.SKIP:
            found = self._find_lf()
            if found < 0:
                return None
            self.pos = found + 1
            return self._finish()
        if s is _S.LINE:
            found = self._find_lf()
            if found < 0:
                return None
            line = bytes(buf[self.start:found]).removesuffix(b"\r")
            self._begin(found + 1)
            return Line(line)
        raise AssertionError(s)  # pragma: no cover

    def _args_step(self) -> Event | None:
        buf, n = self.buf, len(self.buf)
        while self.pos < n and buf[self.pos] == SP:
            self.pos += 1
            self.work += 1
        self._over_line(self.pos)
        if self.pos >= n:
            self._wait()
            return None
        c = buf[self.pos]
        self.work += 1
        if c == CR:
            if self.pos + 1 >= n:
                self._wait()
                return None
            if buf[self.pos + 1] != LF:
                self._syntax("CR sent without LF")
                return None
            if self.stack:
                self._syntax("Missing ')'")
                return None
            self.args_end = self.pos
            self.pos += 2
            return self._finish()
        if c == LF:
            self._syntax("LF sent without CR")
            return None
        if not self.stack:
            self._flush()
            self.arg_piece = len(self.wire)
        if c == 0x22:  # '"'
            self.pos += 1
            self.quoted = bytearray()
            self.state = _S.QUOTED
            return None
        if c == 0x7B:  # '{'
            self._literal_size(literal8=False, mark=1)
            return None
        if c == 0x7E:  # '~': literal8 or an atom
            if self.pos + 1 >= n:
                self._wait()
                return None
            if buf[self.pos + 1] == 0x7B:
                if not self.reading.literal8:
                    self._syntax("literal8 not allowed here")
                    return None
                self._literal_size(literal8=True, mark=2)
                return None
        if c == 0x28:  # '('
            if len(self.stack) >= self.limits.max_depth:
                self._syntax("Too deeply nested lists")
                return None
            self.stack.append([])
            self.pos += 1
            return None
        if c == 0x29:  # ')'
            if not self.stack:
                self._syntax("Unexpected ')'")
                return None
            items = self.stack.pop()
            self.pos += 1
            self._add(ParenList(tuple(items)))
            return None
        self.tok = self.pos
        self.state = _S.ATOM
        return None

    def _quoted_step(self) -> Event | None:
        buf, n = self.buf, len(self.buf)
        while True:
            m = QUOTED_RUN.match(buf, self.pos, self._line_limit())
            assert m is not None
            self.work += m.end() - self.pos + 1
            self.quoted += buf[self.pos:m.end()]
            self.pos = m.end()
            self._over_line(self.pos)
            if self.pos >= n:
                self._wait()
                return None
            c = buf[self.pos]
            if c == 0x22:
                self.pos += 1
                self._add(String(bytes(self.quoted)))
                return None
            if c == 0x5C:  # '\\': the next byte stands for itself
                if self.pos + 1 >= n:
                    self._wait()
                    return None
                escaped = buf[self.pos + 1]
                if escaped in (CR, LF, 0):
                    self.pos += 1
                    self._syntax("Missing '\"'")
                    return None
                self.quoted.append(escaped)
                self.pos += 2
                continue
            self._syntax("NULs not allowed in strings" if c == 0 else "Missing '\"'")
            return None

    def _literal_size(self, *, literal8: bool, mark: int) -> None:
        """A literal starts at ``pos`` with a mark of ``mark`` bytes (``{`` or ``~{``)."""
        self.literal8 = literal8
        self.literal_mark = self.pos
        self.pos += mark
        self.tok = self.pos
        self.state = _S.LITERAL_SIZE

    def _flush(self) -> None:
        if self.flush < self.pos:
            self.wire.append(bytes(self.buf[self.flush:self.pos]))
        self.flush = self.pos

    def _add(self, arg: Arg) -> None:
        self.state = _S.ARGS
        self.work += 1
        if self.stack:
            self.stack[-1].append(arg)
            return
        self.args.append(arg)
        self._flush()
        self.spans.append((self.arg_piece, len(self.wire)))
        self.args_end = self.pos
        if self.reading.reads is not None and len(self.args) >= self.reading.reads:
            self.state = _S.SKIP  # the server reads no further: neither does the proxy

    def _finish(self) -> Event:
        end = self.pos
        if self.rejection is not None or self.tag is None:
            event: Event = Rejected(self.tag, self.rejection or "BAD Error in IMAP command")
        else:
            if self.flush < self.args_end:
                self.wire.append(bytes(self.buf[self.flush:self.args_end]))
            self.wire.append(b"\r\n")
            event = Command(self.tag, self.name, tuple(self.args), tuple(self.wire),
                            tuple(self.spans))
        self._begin(end)
        return event

