"""What the IMAP proxy lets through, and how its upstream (Dovecot 2.3) reads it.

Commands. Only commands the server knows are sent upstream, each read as the server reads it
(checked against Dovecot 2.3.19 by probing: a command that reads no arguments skips the rest
of its line, one that reads ``n`` arguments skips whatever follows them). An unknown command
would make the server skip its line without reading its literals, so the proxy never sends one.
Refused outright: COMPRESS, the login commands, CATENATE and every URL-based command (URLFETCH,
GENURLAUTH, RESETKEY: a URL could name a message of the hidden folder), NOTIFY, METADATA,
XLIST and Dovecot's internal X- commands.

The hidden folder. A command naming it (or a folder below it) is sent upstream with the name
replaced by a folder that surely does not exist (random, per process), and the name is put
back in the answer: the user sees exactly what the server answers for a missing folder. A
command that would create it (CREATE, RENAME to it) is refused the same way whether or not it
exists. LIST, LSUB and STATUS answers about it are dropped.

Capabilities. Only the ones listed here reach the client.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace

from gateway import mutf7
from gateway.imapcommand import (
    Arg,
    Atom,
    Command,
    Continue,
    LimitExceeded,
    Limits,
    ParenList,
    Reading,
    String,
)
from gateway.imapwire import CommandReader

NO_ARGS = frozenset({b"CAPABILITY", b"NOOP", b"LOGOUT", b"CHECK", b"CLOSE", b"UNSELECT",
                     b"EXPUNGE", b"NAMESPACE", b"IDLE"})
COUNTED = {b"CREATE": 1, b"DELETE": 1, b"RENAME": 2, b"SUBSCRIBE": 1, b"UNSUBSCRIBE": 1,
           b"STATUS": 2, b"COPY": 2, b"MOVE": 2, b"UID COPY": 2, b"UID MOVE": 2,
           b"UID EXPUNGE": 1}
WHOLE = frozenset({b"SELECT", b"EXAMINE", b"LIST", b"LSUB", b"FETCH", b"STORE", b"SEARCH",
                   b"SORT", b"THREAD", b"UID FETCH", b"UID STORE", b"UID SEARCH", b"UID SORT",
                   b"UID THREAD", b"ENABLE", b"ID", b"CANCELUPDATE"})
APPEND = Reading(literal8=True, literal_is_text=False)
REFUSED = {
    b"COMPRESS": "NO [CANNOT] COMPRESS is not offered",
    b"STARTTLS": "BAD Already logged in", b"LOGIN": "BAD Already logged in",
    b"AUTHENTICATE": "BAD Already logged in",
    b"URLFETCH": "NO [CANNOT] URLAUTH is not offered",
    b"GENURLAUTH": "NO [CANNOT] URLAUTH is not offered",
    b"RESETKEY": "NO [CANNOT] URLAUTH is not offered",
    b"NOTIFY": "NO [CANNOT] NOTIFY is not offered",
}
UNKNOWN = "BAD Error in IMAP command: Unknown command"
# before login: the proxy answers every command itself
BEFORE_LOGIN = {b"CAPABILITY": Reading(reads=0), b"NOOP": Reading(reads=0),
                b"LOGOUT": Reading(reads=0), b"STARTTLS": Reading(reads=0), b"ID": Reading(),
                b"LOGIN": Reading(), b"AUTHENTICATE": Reading()}

CAPABILITIES = frozenset({
    "IMAP4REV1", "LITERAL+", "LITERAL-", "ID", "ENABLE", "IDLE", "SORT", "SORT=DISPLAY",
    "MULTIAPPEND", "UNSELECT", "CHILDREN", "NAMESPACE", "UIDPLUS", "LIST-EXTENDED",
    "I18NLEVEL=1", "CONDSTORE", "QRESYNC", "ESEARCH", "ESORT", "SEARCHRES", "WITHIN",
    "CONTEXT=SEARCH", "LIST-STATUS", "BINARY", "MOVE", "SNIPPET=FUZZY", "PREVIEW=FUZZY",
    "PREVIEW", "STATUS=SIZE", "SAVEDATE", "SPECIAL-USE", "OBJECTID"})
CAPABILITY_PREFIXES = ("THREAD=", "APPENDLIMIT=")
CAPABILITY_LIST = re.compile(rb"(^\* CAPABILITY|\[CAPABILITY)((?: [^ \]\r\n]+)*)", re.IGNORECASE)


def after_login(name: bytes) -> Reading | str:
    """How the server reads command ``name``, or the proxy's own answer to it."""
    if name in NO_ARGS:
        return Reading(reads=0)
    if name in COUNTED:
        return Reading(reads=COUNTED[name])
    if name in WHOLE:
        return Reading()
    if name == b"APPEND":
        return APPEND
    return REFUSED.get(name.removeprefix(b"UID "), UNKNOWN)


def before_login(name: bytes) -> Reading | str:
    return BEFORE_LOGIN.get(name, "BAD Log in first")


def keep_capabilities(line: bytes) -> bytes:
    """``line`` (one answer line, never literal data) with only the capabilities the proxy
    supports in its ``* CAPABILITY`` or ``[CAPABILITY ...]`` list."""

    def keep(m: re.Match[bytes]) -> bytes:
        caps = [c for c in m.group(2).split() if c.decode("ascii", "replace").upper()
                in CAPABILITIES or c.upper().startswith(tuple(p.encode() for p in
                                                              CAPABILITY_PREFIXES))]
        return m.group(1) + b"".join(b" " + c for c in caps)

    return CAPABILITY_LIST.sub(keep, line)


# --- the hidden folder --------------------------------------------------------------------


@dataclass(frozen=True)
class HiddenFolder:
    """The protocol folder: ``name`` (UTF-8), the server's hierarchy ``delimiter`` and the
    folder that stands in for it upstream (``substitute``: never exists)."""

    name: str
    delimiter: str = "."
    substitute: str = field(default_factory=lambda: "Gone-" + secrets.token_hex(16))

    def with_delimiter_from(self, answer: bytes) -> HiddenFolder:
        """The folder under the server's hierarchy delimiter, as ``* LIST (...) "." ""``
        answers it (``NIL``: a flat name space); itself if the answer does not parse."""
        try:
            args = parse_args(answer[2:])
        except ValueError:
            return self
        if len(args) > 2 and isinstance(args[2], String):
            return replace(self, delimiter=args[2].value.decode("latin-1"))
        if len(args) > 2 and isinstance(args[2], Atom):
            return replace(self, delimiter="")
        return self

    def _under(self, name: str, hidden: str) -> bool:
        seps = {self.delimiter, "/"} - {""}
        if self.delimiter and name.split(self.delimiter, 1)[0].upper() == "INBOX":
            name = "INBOX" + name[5:]
        return name == hidden or any(name.startswith(hidden + s) for s in seps)

    def names(self, raw: bytes) -> bool:
        """Whether mailbox name ``raw`` (as a client sends it) is the folder or below it:
        read every way the server might read it."""
        text = raw.decode("latin-1")
        if self._under(text, self.name) or \
                self._under(text, mutf7.encode(self.name).decode("latin-1")):
            return True
        try:
            return self._under(mutf7.decode(raw, strict=False), self.name)
        except ValueError:
            return False

    def rewrite(self, raw: bytes) -> bytes:
        """The substitute for mailbox name ``raw`` (which ``names``), encoded as an astring."""
        text = raw.decode("latin-1")
        for form in (self.name, mutf7.encode(self.name).decode("latin-1")):
            if self._under(text, form):
                new = self.substitute.encode() + raw[len(form.encode("latin-1")):]
                break
        else:  # only a non-canonical encoding named it
            decoded = mutf7.decode(raw, strict=False)
            new = mutf7.encode(self.substitute + decoded[len(self.name):])
        return astring(new)

    def restore(self, answer: bytes) -> bytes:
        """An upstream answer with the substitute's name put back."""
        sub = self.substitute.encode()
        return answer.replace(sub, self.name.encode()) if sub in answer else answer

    def listed(self, answer: bytes) -> bool:
        """Whether an untagged LIST, LSUB or STATUS answer (with its literals) is about the
        folder: such answers never reach the client. One that does not parse is dropped."""
        if not answer.startswith(b"* "):
            return False
        kind = answer[2:9].upper()
        if not kind.startswith((b"LIST ", b"LSUB ", b"STATUS ")):
            return False
        try:
            args = parse_args(answer[2:])
        except ValueError:
            return True
        index = 1 if kind.startswith(b"STATUS ") else 3
        box = args[index] if len(args) > index else None
        return not isinstance(box, Atom | String) or self.names(box.value)


# --- vetting a logged-in user's command ---------------------------------------------------

HIDDEN_FIRST = frozenset({b"SELECT", b"EXAMINE", b"DELETE", b"SUBSCRIBE", b"UNSUBSCRIBE",
                          b"STATUS", b"APPEND", b"RENAME"})
HIDDEN_SECOND = frozenset({b"COPY", b"MOVE", b"UID COPY", b"UID MOVE"})
RESERVED = "NO [CANNOT] Invalid mailbox name: Reserved by the mail gateway"


@dataclass(frozen=True)
class Forward:
    wire: list[bytes]
    filed_to: str | None = None  # COPY/MOVE: the destination as the client named it


@dataclass(frozen=True)
class Answer:
    text: str


def astring(data: bytes) -> bytes:
    """``data`` as an IMAP string: quoted, or a non-synchronising literal if it must be."""
    if any(c in data for c in b"\r\n\0"):
        return b"{%d+}\r\n%s" % (len(data), data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _astring(arg: Arg | None) -> bytes | None:
    return arg.value if isinstance(arg, Atom) or (isinstance(arg, String)
                                                  and not arg.literal8) else None


def append_error(args: tuple[Arg, ...]) -> str | None:
    """Why an APPEND is not sent upstream: its shape must be ``mailbox ([flags] [date]
    message)+``, as Dovecot reads it (every literal after the mailbox is a message, flags
    are atoms, a date a quoted string); CATENATE and UTF8 are not offered."""
    if not args or _astring(args[0]) is None:
        return "BAD Invalid arguments"
    i = 1
    while True:
        if i < len(args) and isinstance(args[i], ParenList):
            if not all(isinstance(f, Atom) for f in args[i].items):  # type: ignore[union-attr]
                return "BAD Invalid arguments"
            i += 1
        arg = args[i] if i < len(args) else None
        if isinstance(arg, String) and not arg.literal:
            i += 1
            arg = args[i] if i < len(args) else None
        if isinstance(arg, Atom) and arg.value.upper() in (b"CATENATE", b"UTF8"):
            return f"NO [CANNOT] {arg.value.upper().decode()} is not offered"
        if not (isinstance(arg, String) and arg.literal):
            return "BAD Invalid arguments"
        i += 1
        if i == len(args):
            return None


def vet(cmd: Command, folder: HiddenFolder) -> Forward | Answer:
    """What to do with a logged-in user's command (already read as the server reads it)."""
    if cmd.name == b"APPEND" and (why := append_error(cmd.args)) is not None:
        return Answer(why)
    wire = list(cmd.wire)
    if cmd.name in (b"CREATE", b"RENAME"):
        last = cmd.args[-1] if cmd.args else None
        target = _astring(last if cmd.name == b"CREATE" or len(cmd.args) == 2 else None)
        if target is not None and folder.names(target):
            return Answer(RESERVED)
    index = 0 if cmd.name in HIDDEN_FIRST else 1 if cmd.name in HIDDEN_SECOND else None
    if index is None or index >= len(cmd.args):
        return Forward(wire)
    box = _astring(cmd.args[index])
    if box is not None and folder.names(box):
        return Forward(cmd.replaced(index, folder.rewrite(box)))
    filed_to = None
    if index == 1 and box is not None:
        try:
            filed_to = mutf7.decode(box)
        except ValueError:
            filed_to = None
    return Forward(wire, filed_to)


def parse_args(data: bytes) -> tuple[Arg, ...]:
    """The arguments of one whole line with its literals (an upstream answer such as
    ``LIST (\\HasNoChildren) "." {4}\\r\\nTCMS\\r\\n``); ValueError if it does not parse."""
    size = len(data) + 8
    reader = CommandReader(lambda _: Reading(literal8=True),
                           Limits(size, size, size, size, max_depth=64))
    reader.feed(b"x Y " + data)
    try:
        while isinstance(event := reader.next(), Continue):
            pass
    except LimitExceeded:
        raise ValueError("not a well-formed IMAP line") from None
    if isinstance(event, Command) and reader.pending() == 0:
        return event.args
    raise ValueError("not a well-formed IMAP line")
