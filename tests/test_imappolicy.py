"""What the IMAP proxy lets a logged-in user send upstream (gateway/imappolicy.py): the hidden
folder's names rewritten to a missing folder, what is refused, the capabilities shown."""

from __future__ import annotations

import pytest

from gateway.imapcommand import Command
from gateway.imappolicy import Answer, Forward, HiddenFolder, after_login, keep_capabilities, vet
from gateway.imapproxy import AFTER_LOGIN
from gateway.imapwire import CommandReader

FOLDER = HiddenFolder("TCMS", ".", "Gone-x")


def command(data: bytes) -> Command:
    reader = CommandReader(after_login, AFTER_LOGIN)
    reader.feed(data)
    while True:
        event = reader.next()
        if isinstance(event, Command):
            return event
        assert event is not None, data


def sent(data: bytes) -> bytes | str:
    verdict = vet(command(data), FOLDER)
    return b"".join(verdict.wire) if isinstance(verdict, Forward) else verdict.text


@pytest.mark.parametrize(("data", "upstream"), [
    (b"a SELECT TCMS\r\n", b'a SELECT "Gone-x"\r\n'),
    (b'a SELECT "TCMS" (CONDSTORE)\r\n', b'a SELECT "Gone-x" (CONDSTORE)\r\n'),
    (b"a SELECT {4}\r\nTCMS\r\n", b'a SELECT "Gone-x"\r\n'),
    (b"a EXAMINE TCMS.sub\r\n", b'a EXAMINE "Gone-x.sub"\r\n'),
    (b"a STATUS TCMS.&AOk- (MESSAGES)\r\n", b'a STATUS "Gone-x.&AOk-" (MESSAGES)\r\n'),
    (b"a STATUS &AFQ-CMS (MESSAGES)\r\n", b'a STATUS "Gone-x" (MESSAGES)\r\n'),  # not canonical
    (b"a SELECT TCMS.&AOk-&AOk-\r\n", b'a SELECT "Gone-x.&AOk-&AOk-"\r\n'),
    (b"a DELETE TCMS\r\n", b'a DELETE "Gone-x"\r\n'),
    (b"a SUBSCRIBE TCMS\r\n", b'a SUBSCRIBE "Gone-x"\r\n'),
    (b"a UNSUBSCRIBE TCMS\r\n", b'a UNSUBSCRIBE "Gone-x"\r\n'),
    (b"a RENAME TCMS other\r\n", b'a RENAME "Gone-x" other\r\n'),
    (b"a COPY 1 TCMS\r\n", b'a COPY 1 "Gone-x"\r\n'),
    (b"a UID MOVE 1:* TCMS\r\n", b'a UID MOVE 1:* "Gone-x"\r\n'),
    (b"a APPEND TCMS (\\Seen) {1+}\r\nx\r\n", b'a APPEND "Gone-x" (\\Seen) {1+}\r\nx\r\n'),
    (b"a SELECT TCMS.\r\n", b'a SELECT "Gone-x."\r\n'),
    (b"a SELECT {6+}\r\nTCMS.\n\r\n", b'a SELECT {8+}\r\nGone-x.\n\r\n'),
    (b"a CREATE TCMS\r\n", "NO [CANNOT] Invalid mailbox name: Reserved by the mail gateway"),
    (b"a CREATE TCMS.z (USE (\\Drafts))\r\n",
     "NO [CANNOT] Invalid mailbox name: Reserved by the mail gateway"),
    (b"a RENAME INBOX.x TCMS.y\r\n",
     "NO [CANNOT] Invalid mailbox name: Reserved by the mail gateway"),
    (b"a APPEND INBOX CATENATE (URL \"/TCMS/;UID=2\")\r\n", "NO [CANNOT] CATENATE is not offered"),
    (b"a APPEND INBOX (\\Seen) UTF8 (~{1+}\r\nx)\r\n", "NO [CANNOT] UTF8 is not offered"),
    # a date sent as a literal is a message, for Dovecot as for the proxy: two messages
    (b"a APPEND INBOX {26}\r\n01-Jan-2024 00:00:00 +0000 {1}\r\nx\r\n",
     b"a APPEND INBOX {26+}\r\n01-Jan-2024 00:00:00 +0000 {1+}\r\nx\r\n"),
    (b"a APPEND INBOX ({1}\r\nx) {1}\r\nx\r\n", "BAD Invalid arguments"),
    (b"a APPEND ~{4}\r\nTCMS {1}\r\nx\r\n", "BAD Invalid arguments"),
    (b"a APPEND INBOX\r\n", "BAD Invalid arguments"),
    (b"a SELECT TCMSX\r\n", b"a SELECT TCMSX\r\n"),
    (b"a SELECT tcms\r\n", b"a SELECT tcms\r\n"),  # another folder (INBOX only is caseless)
    (b'a LIST "" "*"\r\n', b'a LIST "" "*"\r\n'),
    (b"a APPEND INBOX (\\Seen) \"01-Jan-2024 00:00:00 +0000\" {1}\r\nx {1}\r\ny\r\n",
     b"a APPEND INBOX (\\Seen) \"01-Jan-2024 00:00:00 +0000\" {1+}\r\nx {1+}\r\ny\r\n"),
])
def test_what_goes_upstream(data: bytes, upstream: bytes | str) -> None:
    assert sent(data) == upstream


def test_a_name_below_inbox_is_caseless_in_its_first_part() -> None:
    folder = HiddenFolder("INBOX.TCMS", ".", "Gone-y")
    assert folder.names(b"inbox.TCMS") and folder.names(b"INBOX.TCMS.x")
    assert not folder.names(b"INBOX.tcms")


def test_copy_and_move_name_their_destination_decoded() -> None:
    for data in (b"a COPY 1 Archiv&AOk-\r\n", b"a UID MOVE 1 \"Archiv&AOk-\"\r\n"):
        verdict = vet(command(data), FOLDER)
        assert isinstance(verdict, Forward) and verdict.filed_to == "Archivé"
    assert isinstance(verdict := vet(command(b"a COPY 1 TCMS\r\n"), FOLDER), Forward)
    assert verdict.filed_to is None
    assert isinstance(vet(command(b"a SELECT x\r\n"), FOLDER), Forward)


def test_the_substitute_is_put_back_in_answers() -> None:
    folder = HiddenFolder("TCMS")
    assert folder.substitute != HiddenFolder("TCMS").substitute  # random
    answer = b"a NO Mailbox doesn't exist: " + folder.substitute.encode() + b".x (0.001 secs)\r\n"
    assert folder.restore(answer) == b"a NO Mailbox doesn't exist: TCMS.x (0.001 secs)\r\n"


@pytest.mark.parametrize(("line", "listed"), [
    (b'* LIST (\\HasNoChildren) "." TCMS\r\n', True),
    (b'* LIST (\\HasNoChildren) "." "TCMS.sub"\r\n', True),
    (b'* LIST (\\HasNoChildren) "." {4}\r\nTCMS\r\n', True),
    (b'* LSUB () "." TCMS\r\n', True),
    (b"* STATUS TCMS (MESSAGES 3)\r\n", True),
    (b'* STATUS "TCMS.&AOk-" (MESSAGES 3)\r\n', True),
    (b'* LIST (\\HasNoChildren "." TCMS\r\n', True),  # not readable: dropped
    (b'* LIST (\\HasNoChildren) "." INBOX\r\n', False),
    (b'* LIST (\\HasNoChildren) "." "Certified.Accept"\r\n', False),
    (b"* STATUS INBOX (MESSAGES 3)\r\n", False),
    (b"* 3 EXISTS\r\n", False),
    (b"a OK done\r\n", False),
])
def test_answers_about_the_hidden_folder_are_dropped(line: bytes, listed: bool) -> None:
    assert FOLDER.listed(line) == listed


def test_capabilities_are_the_ones_the_proxy_supports() -> None:
    line = (b"* CAPABILITY IMAP4rev1 IDLE COMPRESS=DEFLATE STARTTLS AUTH=PLAIN LITERAL+ CATENATE"
            b" URL-PARTIAL URLAUTH NOTIFY METADATA THREAD=REFS X-FOO MOVE\r\n")
    assert keep_capabilities(line) == b"* CAPABILITY IMAP4rev1 IDLE LITERAL+ THREAD=REFS MOVE\r\n"
    tagged = b"a OK [CAPABILITY IMAP4rev1 CATENATE IDLE] Capability completed.\r\n"
    assert keep_capabilities(tagged) == \
        b"a OK [CAPABILITY IMAP4rev1 IDLE] Capability completed.\r\n"
    text = b"a OK Capability completed (0.001 + 0.000 secs).\r\n"
    assert keep_capabilities(text) == text
    assert isinstance(vet(command(b"a ID NIL\r\n"), FOLDER), Forward)
    assert not isinstance(vet(command(b"a ID NIL\r\n"), FOLDER), Answer)
