"""The IMAP proxy's command reader (gateway/imapwire.py): what it reads, where a command ends
(as Dovecot decides), its limits, and linear work on adversarial input (counted, not timed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mutf7
from gateway.imapcommand import (
    Atom,
    Command,
    Continue,
    Event,
    LimitExceeded,
    Limits,
    Line,
    ParenList,
    Rejected,
    String,
)
from gateway.imappolicy import after_login, before_login, parse_args
from gateway.imapproxy import AFTER_LOGIN, BEFORE_LOGIN
from gateway.imapwire import CommandReader

WIDE = Limits(max_line=1 << 24, max_literal=1 << 24, max_text=1 << 26, max_command=1 << 26)


def read(data: bytes, *, chunks: list[int] | None = None, limits: Limits = WIDE,
         logged_in: bool = True) -> tuple[list[Event], CommandReader]:
    reader = CommandReader(after_login if logged_in else before_login, limits)
    events: list[Event] = []
    pieces, at = [], 0
    for size in chunks or []:
        pieces.append(data[at:at + size])
        at += size
    pieces.append(data[at:])
    for piece in pieces:
        reader.feed(piece)
        while (event := reader.next()) is not None:
            events.append(event)
    return events, reader


def commands(data: bytes) -> list[Command]:
    return [e for e in read(data)[0] if isinstance(e, Command)]


def wire(cmd: Command) -> bytes:
    return b"".join(cmd.wire)


# --- what it reads ----------------------------------------------------------------------------

def test_atoms_quoted_strings_literals_and_lists() -> None:
    events, _ = read(b'a1 FETCH 1:* (FLAGS BODY[HEADER.FIELDS (Subject)]) "q\\"\\\\" {3}\r\nab'
                     b'c\r\n')
    assert isinstance(events[0], Continue)  # a synchronising literal: the client waits
    cmd = events[1]
    assert isinstance(cmd, Command) and cmd.tag == b"a1" and cmd.name == b"FETCH"
    assert cmd.args == (
        Atom(b"1:*"),
        ParenList((Atom(b"FLAGS"), Atom(b"BODY[HEADER.FIELDS"), ParenList((Atom(b"Subject"),)),
                   Atom(b"]"))),
        String(b'q"\\'), String(b"abc", literal=True))
    # upstream, every literal is non-synchronising; the rest is sent as the client wrote it
    assert wire(cmd) == (b'a1 FETCH 1:* (FLAGS BODY[HEADER.FIELDS (Subject)]) "q\\"\\\\" {3+}\r\n'
                         b'abc\r\n')


def test_uid_commands_and_names_in_any_case() -> None:
    (cmd,) = commands(b"t uid fetch 1 FLAGS\r\n")
    assert cmd.name == b"UID FETCH" and cmd.args == (Atom(b"1"), Atom(b"FLAGS"))


def test_the_issue_reproduction_a_literal8_in_noop_ends_the_noop() -> None:
    """Dovecot reads no argument of NOOP and skips its line: ``~{14+}`` is not a literal
    there, and ``s2 SELECT TCMS`` is the next command, for the proxy as for the server."""
    cmds = commands(b"s1 NOOP ~{14+}\r\ns2 SELECT TCMS\r\n")
    assert [(c.tag, c.name, wire(c)) for c in cmds] == [
        (b"s1", b"NOOP", b"s1 NOOP\r\n"),
        (b"s2", b"SELECT", b"s2 SELECT TCMS\r\n")]


def test_a_counted_command_ends_after_its_arguments() -> None:
    """COPY reads two arguments: whatever follows is skipped, never sent upstream."""
    cmds = commands(b"a COPY 1 INBOX {20+}\r\nb SELECT TCMS\r\n\r\n")
    assert wire(cmds[0]) == b"a COPY 1 INBOX\r\n"
    assert cmds[1].name == b"SELECT" and cmds[1].args == (Atom(b"TCMS"),)


@pytest.mark.parametrize(("data", "answer"), [
    (b"a SEARCH ~{3}\r\nabc\r\n", "literal8 not allowed here"),
    (b"a SEARCH {3-}\r\nabc\r\n", "Invalid literal size"),  # LITERAL- is {n+}, as in Dovecot
    (b"a SEARCH {+}\r\n\r\n", "Invalid literal size"),
    (b'a SEARCH "abc\r\n', "Missing '\"'"),
    (b'a SEARCH "a\0c"\r\n', "NULs not allowed"),
    (b"a SEARCH a)\r\n", "Unexpected ')'"),
    (b"a SEARCH (a\r\n", "Missing ')'"),
    (b"a SEARCH a{3}\r\n", "Invalid characters in atom"),
    (b"a SEARCH \xff\r\n", "Invalid characters in atom"),
    (b"a SEARCH ALL\rx\r\n", "CR sent without LF"),
    (b"a SEARCH {3}x\r\n", "Missing CRLF after literal size"),
    (b"a XFOO {5}\r\n", "Unknown command"),
    (b"a GENURLAUTH x INTERNAL\r\n", "URLAUTH is not offered"),
    (b"a COMPRESS DEFLATE\r\n", "COMPRESS is not offered"),
    (b"a] NOOP\r\n", "Invalid tag"),
    (b"a+ NOOP\r\n", "Invalid tag"),
    (b"NOOP\r\n", "Invalid tag"),
])
def test_malformed_commands_are_rejected_and_their_line_skipped(data: bytes, answer: str) -> None:
    events, reader = read(data + b"z NOOP\r\n")
    assert isinstance(events[0], Rejected) and answer in events[0].answer, events
    assert isinstance(events[-1], Command) and events[-1].tag == b"z"  # the next line is read
    assert reader.pending() == 0


def test_literal8_is_read_in_append_only() -> None:
    (cmd,) = commands(b"a APPEND INBOX (\\Seen) ~{3+}\r\na\0c\r\n")
    assert cmd.args[-1] == String(b"a\0c", literal=True, literal8=True)
    assert wire(cmd) == b"a APPEND INBOX (\\Seen) ~{3+}\r\na\0c\r\n"


def test_a_line_after_idle() -> None:
    _, reader = read(b"a IDLE\r\n")
    reader.expect_line()
    reader.feed(b"DONE\r\nb NOOP\r\n")
    assert reader.next() == Line(b"DONE")
    nxt = reader.next()
    assert isinstance(nxt, Command) and nxt.tag == b"b"


def test_before_login_only_the_login_commands() -> None:
    events, _ = read(b"a SELECT INBOX\r\nb LOGIN {3}\r\nbob {3+}\r\npwd\r\n", logged_in=False)
    assert isinstance(events[0], Rejected) and events[0].answer == "BAD Log in first"
    assert isinstance(events[-1], Command) and events[-1].args == (
        String(b"bob", literal=True), String(b"pwd", literal=True))


def test_one_argument_can_be_replaced() -> None:
    (cmd,) = commands(b"a RENAME {4}\r\nTCMS other\r\n")
    assert b"".join(cmd.replaced(0, b'"X"')) == b'a RENAME "X" other\r\n'
    assert b"".join(cmd.replaced(1, b'"Y"')) == b"a RENAME {4+}\r\nTCMS \"Y\"\r\n"


# --- limits -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"a LOGIN " + b"x" * 5000 + b"\r\n",  # one line
    b"a LOGIN {2000+}\r\n",  # one literal
    b"a LOGIN " + b'"A" {0+}\r\n' * 2000,  # one command
    b"a LOGIN " + b'"{ "' * 240_000,  # the issue's 960 KB line
    b"a" * 10_000,  # a tag without end
])
def test_before_login_limits_close_the_connection(data: bytes) -> None:
    with pytest.raises(LimitExceeded):
        read(data, logged_in=False, limits=BEFORE_LOGIN, chunks=[1000] * 20)


def test_after_login_limits_stay_below_the_servers_line_limit() -> None:
    with pytest.raises(LimitExceeded):
        read(b"a SEARCH " + (b'TEXT "' + b"A" * 20_000 + b'" ') * 4, limits=AFTER_LOGIN)
    with pytest.raises(LimitExceeded):  # literal data counts too, except APPEND's message
        read(b"a SEARCH TEXT {70000+}\r\n", limits=AFTER_LOGIN)
    (cmd,) = [e for e in read(b"a APPEND INBOX {70000+}\r\n" + b"x" * 70_000 + b"\r\n",
                              limits=AFTER_LOGIN)[0] if isinstance(e, Command)]
    assert len(cmd.args[1].value) == 70_000  # type: ignore[union-attr]


def test_the_200_mb_of_unfinished_commands_stop_at_the_first_cap() -> None:
    line = b'"' + b"A" * 65000 + b'" {0+}\r\n'
    reader = CommandReader(after_login, AFTER_LOGIN)
    reader.feed(b"a SEARCH ")
    fed = 0
    with pytest.raises(LimitExceeded):
        while fed < 200_000_000:
            reader.feed(line)
            fed += len(line)
            while reader.next() is not None:
                pass
    assert fed < 200_000 and len(reader.buf) < 200_000


# --- linear work --------------------------------------------------------------------------------

PIECES = [b'"{ "', b"{0+}\r\n", b"{0}\r\n", b"~{", b"{", b"\\", b'"', b"(", b")", b" ", b"\r\n",
          b"\r", b"\n", b"A" * 7, b"a NOOP", b"b SEARCH", b"c APPEND X", b"UID ", b"{12345678901",
          b"+}", b"}", b"\0", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=400), st.integers(1, 4), st.lists(
    st.integers(1, 200), max_size=20), st.integers(1, 3000))
def test_work_is_linear_in_the_input(parts: list[bytes], repeat: int, chunks: list[int],
                                     mult: int) -> None:
    data = b"".join(parts) * repeat
    reader = CommandReader(after_login, WIDE)
    at = 0
    for size in [*chunks, len(data)]:
        reader.feed(data[at:at + size])
        at += size
        try:
            while reader.next() is not None:
                pass
        except LimitExceeded:
            break
    assert reader.work <= 8 * len(data) + 64


def test_the_issue_line_costs_linear_work() -> None:
    """960 KB of ``"{ "`` and ``{0+}`` literals: each byte looked at a few times."""
    data = b"x SEARCH " + (b'"{ "' * 1000 + b" {0+}\r\n") * 240
    _, reader = read(data, chunks=[65536] * (len(data) // 65536))
    assert reader.work <= 4 * len(data)


# --- answers from the server, mailbox names -----------------------------------------------------

def test_parse_args_reads_an_answer_with_literals() -> None:
    assert parse_args(b'LIST (\\HasNoChildren) "." {4}\r\nTCMS\r\n') == (
        Atom(b"LIST"), ParenList((Atom(b"\\HasNoChildren"),)), String(b"."),
        String(b"TCMS", literal=True))
    with pytest.raises(ValueError):
        parse_args(b'LIST (\\HasNoChildren "." TCMS\r\n')


@given(st.text())
def test_mutf7_round_trips(name: str) -> None:
    assert mutf7.decode(mutf7.encode(name)) == name


@pytest.mark.parametrize("raw", [b"&AFQ-CMS", b"&AOk-&AOk-", b"&AOk", b"caf\xc3\xa9", b"&,,-"])
def test_mutf7_refuses_what_is_not_canonical(raw: bytes) -> None:
    with pytest.raises(ValueError):
        mutf7.decode(raw)
