"""Protocol messages as e-mail: round trips, malformed mail, and the real MTAs in between."""

from __future__ import annotations

import email
import email.base64mime
import os
import smtplib
from collections.abc import Iterator

import pytest
from conftest import BOB, TRUST, known, one, receive, start_run
from mailstack import MailStack
from test_mailstack import USERS, wait_for

from gateway import mailformat
from gateway.mailformat import MailFormatError
from tcms import codec
from tcms.protocol.events import Accept
from tcms.protocol.receiver import Receiver


def messages() -> dict[str, bytes]:
    run = start_run(b"Subject: x\r\n\r\n" + os.urandom(2000))
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, 1_800_000_001, known)
    m4 = one(r.handle(Accept(), 1_800_000_002), "m4")
    m5 = one(receive(run.sender, m4, 1_800_000_003), "m5")
    m6 = one(receive(r, m5, 1_800_000_004), "m6")
    return {"m3": run.m3, "m4": m4, "m5": m5, "m6": m6}


MSGS = messages()
TX = "00112233445566778899aabbccddeeff"


def mail(kind: str) -> bytes:
    return mailformat.build(MSGS[kind], sender="alice@a.test", recipient="bob@b.test", tx=TX,
                            domain="a.test", description="Contract")


@pytest.mark.parametrize("kind", ["m3", "m4", "m5", "m6"])
def test_round_trip(kind: str) -> None:
    raw = mail(kind)
    assert mailformat.is_protocol_mail(raw)
    got = mailformat.parse(raw)
    assert got is not None and got.kind == kind and got.tx == TX and got.data == MSGS[kind]
    assert b"Auto-Submitted: auto-generated" in raw
    assert b"processes it automatically" in raw  # a person can read what it is


def test_a_20_mb_payload_round_trips() -> None:
    blob = codec.encode(["TCMS1/M4", os.urandom(32), os.urandom(20 * 1024 * 1024)])
    raw = mailformat.build(blob, sender="a@a.test", recipient="b@b.test", tx=TX,
                           domain="a.test")
    got = mailformat.parse(raw)
    assert got is not None and got.data == blob


@pytest.mark.parametrize("size", [1, 56, 57, 58, 113, 114, 3000, 200_001])
def test_a_message_written_a_piece_at_a_time_is_the_email_packages_base64(size: int) -> None:
    """MailWriter: any cut of the message into pieces gives the base64 lines the email
    package writes (76 characters, CRLF), in a mail both readings read back."""
    data = codec.encode(["TCMS1/M4", os.urandom(32), os.urandom(size)])
    cuts = sorted(int.from_bytes(os.urandom(4), "big") % len(data) for _ in range(5))
    writer = mailformat.MailWriter("m4", len(data), sender="a@a.test", recipient="b@b.test",
                                   tx=TX, domain="a.test", description="Contract")
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        writer.write(data[start:stop])
    raw = bytes(writer.finish())
    lines = email.base64mime.body_encode(data, eol="\r\n").encode()
    assert lines in raw and raw.count(lines) == 1
    for read in (mailformat.parse, mailformat._parse_full):
        got = read(raw)
        assert got is not None and got.data == data and got.kind == "m4" and got.tx == TX


def test_a_message_of_another_size_than_announced_is_refused() -> None:
    def writer() -> mailformat.MailWriter:
        return mailformat.MailWriter("m4", 100, sender="a@a.test", recipient="b@b.test",
                                     tx=TX, domain="a.test")

    short = writer()
    short.write(os.urandom(99))
    with pytest.raises(MailFormatError, match="shorter"):
        short.finish()
    long = writer()
    with pytest.raises(MailFormatError, match="longer"):
        long.write(os.urandom(171))


def test_ordinary_mail_is_not_protocol_mail() -> None:
    plain = b"From: a@a.test\r\nSubject: TCMS-Message: m3\r\n\r\nTCMS-Message: m4\r\n"
    assert not mailformat.is_protocol_mail(plain)
    assert mailformat.parse(plain) is None


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda r: r.replace(b"TCMS-Message: m3", b"TCMS-Message: m9"), "unknown TCMS-Message"),
    (lambda r: r.replace(b"TCMS-Message: m3", b"TCMS-Message: m4"), "says m4"),
    (lambda r: r.replace(b"TCMS-Transaction: " + TX.encode(), b"TCMS-Transaction: zz"),
     "32 hex"),
    (lambda r: r.replace(b"vnd.tcms.protocol+cbor", b"octet-stream"), "found 0"),
    (lambda r: r.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: 7bit"),
     "must be base64"),
    (lambda r: r[: r.index(b"filename") + 200], "not a protocol message|found 0|base64"),
])
def test_malformed_protocol_mail_names_the_defect(mutate: object, why: str) -> None:
    raw = mutate(mail("m3"))  # type: ignore[operator]
    with pytest.raises(MailFormatError, match=why):
        mailformat.parse(raw)


@pytest.mark.parametrize(("name", "value", "field"), [
    ("Message-ID", "<)", "message_id"),  # the email package raised IndexError
    ("To", 'tcms-Content-Type: multipart/mixed; boundary="==x"gateway@b.test',
     "recipient"),  # it reads a group and raised AttributeError
])
def test_a_header_the_email_package_cannot_parse_is_kept_as_text(name: str, value: str,
                                                                  field: str) -> None:
    """Found by the fuzz suite (tests/fuzzing): with the email package's default policy,
    reading these headers raised from inside the standard library instead of giving the
    protocol message or a MailFormatError (the compat32 policy reads them as text)."""
    lines = mail("m4").split(b"\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(name.encode() + b":"))
    lines[at] = f"{name}: {value}".encode()
    pm = mailformat.parse(b"\r\n".join(lines))
    assert pm is not None and pm.kind == "m4" and pm.data == MSGS["m4"]
    assert getattr(pm, field) == value


def test_only_protocol_messages_travel_by_mail() -> None:
    with pytest.raises(MailFormatError):
        mailformat.build(b"not cbor", sender="a@a.test", recipient="b@b.test", tx=TX,
                         domain="a.test")


@pytest.fixture(scope="module")
def stack() -> Iterator[MailStack]:
    s = MailStack(USERS).start()
    yield s
    s.remove()


def test_protocol_bytes_survive_real_mtas(stack: MailStack) -> None:
    raw = mail("m3")
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as smtp:
        smtp.sendmail("alice@a.test", ["bob@b.test"], raw)
    got = wait_for(stack.imap_port, "bob@b.test", "bob-password", b"TCMS-Message: m3")
    parsed = mailformat.parse(got)
    assert parsed is not None and parsed.data == MSGS["m3"] and parsed.kind == "m3"


def _full_or_error(raw: bytes) -> object:
    try:
        return mailformat._parse_full(raw)
    except MailFormatError as exc:
        return exc


def test_the_fast_reading_agrees_with_the_email_package() -> None:
    """``parse`` reads the mail gateways write without the email package's copies of the
    whole mail; whatever it returns for any mail is what the email package's reading
    returns (on a defect it gives way to that reading, which names the defect)."""
    import random

    rng = random.Random(12)
    seeds = [mail(k) for k in MSGS] + [mail("m4").replace(b"\r\n", b"\n")]
    for i in range(600):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw))
            how = rng.randrange(4)
            if how == 0:
                raw[at] = rng.randrange(256)
            elif how == 1:
                del raw[at:at + rng.randint(1, 80)]
            elif how == 2:
                raw[at:at] = rng.choice([b"\r\n", b"\n", b"\r", b"--", b" ", b"\r\n\r\n"])
            else:  # a line of another mail
                other = rng.choice(seeds).split(b"\r\n")
                raw[at:at] = rng.choice(other) + b"\r\n"
        fast = mailformat._parse_fast(bytes(raw))
        if fast is not None:
            assert fast == _full_or_error(bytes(raw)), (i, bytes(raw))
    for seed in seeds[:-1]:
        assert mailformat._parse_fast(seed) == mailformat._parse_full(seed) is not None
    assert mailformat._parse_fast(seeds[-1]) is None  # LF lines: the email package reads it


def test_a_from_line_ending_the_protocol_parts_headers_is_read_as_the_email_package_does() -> None:
    """Found by an attacker's pass: the email package reads a "From " line that ends a
    part's headers as the first line of its body (a Unix From line out of place), so its
    reading of the base64 differs; the fast reading took the body after the blank line and
    accepted what the email package rejects."""
    raw = mail("m4")
    at = raw.index(b"\r\n\r\n", raw.rindex(b"application/vnd.tcms")) + 2
    evil = raw[:at] + b"From AAAA\r\n" + raw[at:]
    assert mailformat._parse_fast(evil) is None
    with pytest.raises(MailFormatError, match="not a protocol message"):
        mailformat.parse(evil)


def test_the_fast_reading_gives_way_on_many_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gateways write two parts: a mail of many tiny parts (each a header parse, about
    15 us, plus a match object kept for every delimiter: 12 s and 470 MB for 40 MB) goes
    to the email package's reading after a few, not after reading them all first (and
    that reading takes as many as its bound allows)."""
    raw = mail("m4")
    boundary = b"--" + str(email.message_from_bytes(raw).get_boundary()).encode()
    at = raw.index(boundary)
    many = mailformat.MAX_FULL_PARTS - 3  # with the mail's own three: within the bound
    evil = raw[:at] + (boundary + b"\r\nX: y\r\n\r\nz\r\n") * many + raw[at:]
    seen: list[bytes] = []
    real = mailformat._headers

    def counted(block: bytes) -> object:
        seen.append(block)
        return real(block)

    monkeypatch.setattr(mailformat, "_headers", counted)
    assert mailformat._parse_fast(evil) is None
    assert len(seen) <= 10
    pm = mailformat.parse(evil)  # the email package's reading: the same protocol message
    assert pm is not None and pm.data == MSGS["m4"]


@pytest.mark.parametrize("where", ["mail", "part"])
def test_the_fast_reading_gives_way_on_a_big_header_block(where: str) -> None:
    """Gateways write header blocks of a few hundred bytes: the fast reading leaves a
    larger one to the email package instead of parsing it first itself (a 40 MB part
    header block of short lines was 30 s of the fast reading before the full one)."""
    raw = mail("m4")
    filler = b"X-Filler: y\r\n" * (mailformat.MAX_HEAD // 13 + 1)
    at = raw.index(b"\r\n\r\n", raw.rindex(b"application/vnd.tcms") if where == "part" else 0)
    big = raw[:at + 2] + filler + raw[at + 2:]
    assert mailformat._parse_fast(big) is None
    pm = mailformat.parse(big)
    assert pm is not None and pm.data == MSGS["m4"]


def test_telling_protocol_mail_costs_a_few_copies_of_it() -> None:
    """Found by an attacker's pass: is_protocol_mail made a list of the header lines (a
    40 MB mail of short lines without a blank line: 510 MB); the same answer without it."""
    import random
    import tracemalloc

    def by_lines(raw: bytes) -> bool:  # the reading it had
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        return any(line.lower().startswith(b"tcms-message:") for line in head.splitlines())

    rng = random.Random(3)
    pieces = [b"\r", b"\n", b"\r\n", b"TCMS-Message:", b"tcms-MESSAGE: m4", b"X", b" "]
    for _ in range(5000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert mailformat.is_protocol_mail(raw) == by_lines(raw), raw
    raw = b"ab\r\n" * 1_000_000 + b"TCMS-Message: m4\r\n"
    tracemalloc.start()
    try:
        assert mailformat.is_protocol_mail(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(raw)


def _beyond(where: str) -> tuple[bytes, str]:
    """A protocol mail just past one of the full reading's bounds, and the defect named."""
    raw = mail("m4")
    if where == "mail header":  # header lines without a blank line
        head = raw[:raw.index(b"\r\n\r\n") + 2]
        filler = b"X-Filler: y\r\n" * (mailformat.MAX_FULL_HEAD // 13 + 1)
        return head + filler, f"header block larger than {mailformat.MAX_FULL_HEAD} bytes"
    if where == "part header":
        at = raw.index(b"\r\n\r\n", raw.rindex(b"application/vnd.tcms")) + 2
        filler = b"X-Filler: y\r\n" * (mailformat.MAX_FULL_HEAD // 13 + 1)
        return (raw[:at] + filler + raw[at:],
                f"MIME part header blocks larger than {mailformat.MAX_FULL_HEAD} bytes")
    if where == "short lines":  # bare LFs: the full reading; each line a few objects
        at = raw.index(b"\r\n\r\n", raw.index(b"text/plain")) + 4
        return (raw[:at] + b"\n" * 2 * mailformat.MAX_FULL_LINES + raw[at:],
                f"more than {mailformat.MAX_FULL_LINES} lines")
    if where in ("message/rfc822", "multipart/digest"):  # a mail in the mail, whose
        # headers (no bound follows them) could be 40 MB of lines: 6 s, 780 MB
        old = b"text/plain" if where == "message/rfc822" else b"multipart/mixed"
        return raw.replace(old, where.encode(), 1), "a message/* or multipart/digest part"
    boundary = b"--" + str(email.message_from_bytes(raw).get_boundary()).encode()
    at = raw.index(boundary)
    parts = (boundary + b"\r\nX: y\r\n\r\nz\r\n") * (mailformat.MAX_FULL_PARTS - 2)
    if where == "dash lines":  # not delimiters, but the email package may take them for some
        parts = b"\r\n".join([b"--x"] * mailformat.MAX_FULL_PARTS) + b"\r\n"
        at = raw.index(b"\r\n\r\n", raw.index(b"text/plain")) + 4
    return (raw[:at] + parts + raw[at:],
            f"more than {mailformat.MAX_FULL_PARTS} MIME parts")


@pytest.mark.parametrize("where", ["mail header", "part header", "parts", "dash lines",
                                   "short lines", "message/rfc822", "multipart/digest"])
def test_mail_beyond_the_full_readings_bounds_is_refused_before_the_email_package(
        where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an attacker's pass: the full reading ran the email package on any mail
    the fast one declined (40 MB of tiny parts: 11 s; of header lines without a blank
    line, in the mail or in a part: 5.5 s and 780 MB).  Past generous bounds the mail is
    refused naming the defect, without the email package (so is a mail in the mail, whose
    headers the bounds do not follow); the fast reading declines it
    too, so both readings still agree."""
    evil, why = _beyond(where)
    assert mailformat._parse_fast(evil) is None

    def unused(raw: bytes, **kw: object) -> None:
        raise AssertionError("the email package read the whole mail")

    monkeypatch.setattr(mailformat, "message_from_bytes", unused)
    with pytest.raises(MailFormatError) as exc:
        mailformat.parse(evil)
    assert str(exc.value).startswith(why), exc.value


def test_mail_as_an_mta_carries_it_is_within_the_bounds() -> None:
    """A gateway's mail with what MTAs add (trace headers: a few KiB; Postfix keeps at
    most 100 KiB of headers) and a few lines of "--" in its text is read as before."""
    raw = mail("m3")
    trace = b"".join(b"Received: from relay%d.a.test by mx.b.test with ESMTPS id %d;\r\n"
                     b"\tMon, 7 Dec 2026 11:00:00 +0000\r\n" % (i, i) for i in range(1000))
    at = raw.index(b"\r\n\r\n", raw.index(b"text/plain")) + 4
    carried = trace + raw[:at] + b"--\r\n-- \r\n--- a footer ---\r\n" + raw[at:]
    assert 64 * 1024 < carried.index(b"\r\n\r\n") < mailformat.MAX_FULL_HEAD
    pm = mailformat.parse(carried)
    assert pm is not None and pm.kind == "m3" and pm.data == MSGS["m3"]


def test_a_refused_mail_is_an_inbound_rejection_naming_the_defect() -> None:
    """The worker records the outcome as the inbound item's (``rejected``, the reason)
    and goes on with the next item; nothing is retried."""
    import asyncio
    from typing import cast

    from gateway import inbound
    from gateway.context import GatewayContext

    evil, why = _beyond("parts")
    outcome = asyncio.run(inbound.handle(cast(GatewayContext, None), evil, 1_800_000_000))
    assert outcome.status == "rejected" and outcome.detail.startswith(f"mail.format: {why}")
