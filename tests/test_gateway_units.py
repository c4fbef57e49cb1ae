"""The gateway's pure parts: the certification tag, and the mails a person sees."""

from __future__ import annotations

import email
import email.policy
from email.header import Header

import pytest
from conftest import ALICE, BOB
from signing import text_of, writer

from gateway import notices
from gateway.subject import (
    is_tagged,
    may_carry_tag,
    strip_tag,
    subject_error,
    subject_of,
    without_tag,
)
from tcms.evidence import Verdict

TAG = "[certified]"


@pytest.mark.parametrize("subject", [
    "[certified] Contract", "Re: offer [CERTIFIED]", "x[Certified]y",
    Header("[Certified] Vertrag über Grüße", "utf-8").encode(),
])
def test_the_tag_is_found_in_any_case_and_encoding(subject: str) -> None:
    assert is_tagged(f"Subject: {subject}\r\n\r\nbody".encode(), TAG)


@pytest.mark.parametrize("subject", ["Contract", "[certify] x", "certified", ""])
def test_untagged_subjects(subject: str) -> None:
    assert not is_tagged(f"Subject: {subject}\r\n\r\nbody".encode(), TAG)


@pytest.mark.parametrize("tag", [
    TAG, "[secure mail]", "\u0417\u0410\u0412\u0415\u0420\u0415\u041d\u041e",  # not ASCII
])
def test_a_header_block_that_may_carry_the_tag_is_told_without_parsing_it(tag: str) -> None:
    """What a submitted mail's header block too large to parse is judged by: whenever
    its Subject carries the tag as the email package reads it (any case, folded, RFC 2047,
    8-bit), it may; and a block without the tag in any form surely does not."""
    import random

    rng = random.Random(5)
    pieces = [b"Subject: ", b"Subject:", b"X-Y: ", tag[:3].encode(), tag[3:].encode(),
              tag.upper().encode(), tag.encode(), b"\r\n", b"\n", b"\r", b" ", b"\t", b"a",
              b"=?utf-8?q?", b"?=", b"=5B", "\u0131".encode(), b"\xff", b"[", b"]"]
    told = 0
    for _ in range(20000):
        block = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) + b"\r\n\r\n"
        if is_tagged(block, tag):
            assert may_carry_tag(block, tag), block
        elif not may_carry_tag(block, tag):
            told += 1
    # it does not just say "maybe" (but always does for a tag not in ASCII)
    assert told > 1000 if tag.isascii() else told == 0
    assert may_carry_tag(b"Subject: [Certi\r\n fied] x\r\n\r\n", "[certi fied]")
    assert not may_carry_tag(b"Subject: a\r\n" + b"X-Filler: [certified\r\n" * 1000, "[secret]")


@pytest.mark.parametrize("subject", ["[certified] Vertrag über Grüße 契約", "tab\tinside", ""])
def test_subjects_that_can_go_into_headers(subject: str) -> None:
    assert subject_error(subject) is None


@pytest.mark.parametrize(("subject", "why"), [
    ("a\rb", "line break (U+000D)"), ("a\nb", "line break (U+000A)"),
    ("a\vb", "line break (U+000B)"), ("a\fb", "line break (U+000C)"),
    ("a\u2028b", "line break (U+2028)"), ("a\u2029b", "line break (U+2029)"),
    ("a\x85b", "line break (U+0085)"), ("a\x00b", "control character (U+0000)"),
    ("a\x1bb", "control character (U+001B)"), ("a\x7fb", "control character (U+007F)"),
])
def test_subjects_that_would_break_a_header_say_why(subject: str, why: str) -> None:
    assert subject_error(subject) == f"the Subject holds a {why}"


def test_without_tag_leaves_the_rest_of_the_subject() -> None:
    assert without_tag("Re: [CERTIFIED]  the  offer", TAG) == "Re: the offer"
    assert without_tag("[certified]", TAG) == ""


def test_strip_tag_changes_only_the_subject_and_bcc() -> None:
    raw = (b"From: a@a.test\r\nSubject: [Certified] hello\r\n world\r\nBcc: secret@b.test\r\n"
           b"X-Other: 1\r\n\r\nbody\r\n[certified] stays in the body\r\n")
    out = strip_tag(raw, TAG)
    assert out == (b"From: a@a.test\r\nSubject: hello world\r\nX-Other: 1\r\n\r\n"
                   b"body\r\n[certified] stays in the body\r\n")


def test_strip_tag_re_encodes_a_non_ascii_subject() -> None:
    raw = ("Subject: " + Header("[certified] Grüße 契約", "utf-8").encode() + "\n\nb").encode()
    out = strip_tag(raw, TAG)
    assert subject_of(out) == "Grüße 契約"
    assert out.endswith(b"\n\nb")
    out.decode("ascii")  # headers stay 7-bit


def test_strip_tag_of_a_mail_without_body_or_subject() -> None:
    assert strip_tag(b"From: a@a.test\r\n", TAG) == b"From: a@a.test\r\n"


def test_a_notice_is_signed_for_one_user_and_one_exchange() -> None:
    sig = notices.sign_notice(ALICE, "ab" * 16, "bob@b.test")
    assert notices.notice_is_genuine(ALICE.party, "ab" * 16, "bob@b.test", sig)
    assert not notices.notice_is_genuine(ALICE.party, "ab" * 16, "carol@b.test", sig)
    assert not notices.notice_is_genuine(ALICE.party, "cd" * 16, "bob@b.test", sig)
    assert not notices.notice_is_genuine(BOB.party, "ab" * 16, "bob@b.test", sig)
    assert not notices.notice_is_genuine(ALICE.party, "ab" * 16, "bob@b.test", "not base64!")


def test_the_notice_says_what_and_how() -> None:
    info = notices.NoticeInfo("ab" * 16, "bob@b.test", "alice@a.test", "Contract " * 60, 1234,
                              "2026-11-23 10:00:00 UTC", "2026-11-26 10:00:00 UTC",
                              "Certified.Accept", "Certified.Refuse",
                              "tcms+accept-x@b.test", "tcms+refuse-x@b.test")
    raw = writer().notice(info, ALICE, "id-1")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(msg["Subject"]).startswith("Certified mail from alice@a.test: Contract")
    assert len(str(msg["Subject"])) <= notices.MAX_SUBJECT + 1
    assert msg[notices.DELIVERY_ID] == "id-1" and msg["Auto-Submitted"] == "auto-generated"
    assert msg["Reply-To"] == "tcms+accept-x@b.test"
    assert notices.notice_is_genuine(ALICE.party, "ab" * 16, "bob@b.test",
                                     str(msg[notices.NOTICE_SIG]))
    text = text_of(msg)
    for needle in ("1234 bytes", "Certified.Accept", "Certified.Refuse", "2026-11-26",
                   "tcms+refuse-x@b.test"):
        assert needle in text


def test_the_delivered_original_keeps_every_byte() -> None:
    m0 = b"Subject: hi\r\nX: y\r\n\r\nbody\r\n"
    out = notices.delivered(m0, tx="t", stamped="s", delivered_at="d", how="m5",
                            delivery_id="id")
    assert out.endswith(m0)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert "exchange=t" in str(msg["TCMS-Certified"]) and msg[notices.DELIVERY_ID] == "id"


def test_receipt_and_status_carry_the_evidence() -> None:
    verdict = Verdict("received", ["bob received it"], "t" * 32, "alice@a.test", "bob@b.test",
                      "S", 1_800_000_000, 1_800_000_060)
    raw = writer().receipt(owner="alice@a.test", peer="bob@b.test", subject="S", tx="t" * 32,
                           verdict=verdict, bundle='{"format": "x"}', delivery_id="r",
                           issued=1_800_000_100)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type().endswith("evidence+json")]
    assert len(parts) == 1 and parts[0].get_payload(decode=True) == b'{"format": "x"}'
    raw = writer().status("uncertifiable", owner="alice@a.test", peer="x@y.test", subject="S",
                          text="no key", tx="", delivery_id="u", issued=1_800_000_100)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert "NOT sent" in text_of(msg) and str(msg["Subject"]).startswith("Not sent:")
