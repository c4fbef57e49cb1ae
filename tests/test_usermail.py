"""The mails the gateway writes to users, without a mail stack: each kind S/MIME signed
(openssl verifies it against the organisation's CA, and refuses it changed or against
another CA), worded by the templates in the user's language, overridable by the
organisation; the signing certificate's checks; `tcms mail`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import json
from email.message import EmailMessage, MIMEPart
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ALICE
from signing import ca_and_signer, openssl_verify, text_of, writer

from gateway import signingcert, smime
from gateway.notices import NoticeInfo
from gateway.wording import STATUS_KINDS, Wording, WordingError, language_of
from tcms import cli
from tcms.evidence import Verdict

T = 1_800_000_000
INFO = NoticeInfo("ab" * 16, "bob@b.test", "alice@a.test", "Offer <b>now</b> & then", 1234,
                  "2027-01-15 08:00:00 UTC", "2027-01-18 08:00:00 UTC", "Certified.Accept",
                  "Certified.Refuse", "tcms+accept-x@b.test", "tcms+refuse-x@b.test")
VERDICT = Verdict("received", ["bob received it"], "ab" * 16, "alice@a.test", "bob@b.test",
                  "S", T, T + 60, "00" * 32)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(signingcert.pem(ca_and_signer()[0]))
    return path


def every_kind(languages: dict[str, str] | None = None) -> dict[str, bytes]:
    w = writer(languages)
    mails = {"notice": w.notice(INFO, ALICE, "n"),
             "receipt": w.receipt(owner="alice@a.test", peer="bob@b.test", subject="S",
                                  tx="ab" * 16, verdict=VERDICT, bundle='{"x": 1}',
                                  delivery_id="r", issued=T + 70)}
    for kind in STATUS_KINDS:
        bundle = '{"x": 1}' if kind in ("refused", "aborted") else None
        mails[kind] = w.status(kind, owner="bob@b.test", peer="alice@a.test",
                               subject="Grüße", text="why it happened", tx="ab" * 16,
                               delivery_id=kind, issued=T, bundle=bundle,
                               verdict=VERDICT if bundle else None)
    return mails


def parsed(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_every_kind_verifies_with_openssl(tmp_path: Path, ca_pem: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(signingcert.pem(signingcert.create_ca("Other", now=dt.datetime.now(
        dt.UTC))[0]))
    for kind, raw in every_kind().items():
        assert raw.count(b"\n") == raw.count(b"\r\n") and max(raw) < 127, kind
        msg = parsed(raw)
        assert msg.get_content_type() == "multipart/signed", kind
        assert msg.get_param("micalg") == "sha-256"
        assert [p.get_content_type() for p in msg.iter_parts()][1] == smime.SIGNATURE_MEDIA
        res = openssl_verify(raw, ca_pem, tmp_path, f"{kind}.eml")
        assert res.returncode == 0 and "Verification successful" in res.stderr, (kind, res)
        assert openssl_verify(raw, other, tmp_path, "other.eml").returncode != 0
        body = msg.get_body(preferencelist=("html",))
        assert body is not None and text_of(msg).strip(), kind
    # one byte changed in the signed part: refused
    raw = every_kind()["notice"]
    forged = raw.replace(b"1234 bytes", b"1235 bytes")
    assert forged != raw and openssl_verify(forged, ca_pem, tmp_path, "f.eml").returncode != 0


def test_the_notice_keeps_its_headers_and_escapes_html() -> None:
    msg = parsed(every_kind()["notice"])
    assert msg["TCMS-Notice"] == "ab" * 16 and msg["Reply-To"] == "tcms+accept-x@b.test"
    assert msg["From"] == "TCMS certified mail <postmaster@b.test>"
    html = msg.get_body(preferencelist=("html",))
    assert html is not None
    assert "Offer &lt;b&gt;now&lt;/b&gt; &amp; then" in html.get_content()
    assert "Offer <b>now</b> & then" in text_of(msg)  # plain text: as it is


def test_the_receipt_carries_evidence_and_summary() -> None:
    msg = parsed(every_kind()["receipt"])
    parts: dict[str | None, bytes] = {}
    for p in msg.walk():
        if p.get_filename():
            payload = p.get_payload(decode=True)
            assert isinstance(payload, bytes)
            parts[p.get_filename()] = payload
    assert parts[f"evidence-{'ab' * 6}.json"] == b'{"x": 1}'
    summary = json.loads(parts["certdata.json"])
    assert summary["type"] == "receipt" and summary["verdict"] == "received"
    assert summary["times"] == {"sent": "2027-01-15T08:00:00Z", "event": "2027-01-15T08:01:00Z",
                                "issued": "2027-01-15T08:01:10Z"}
    assert summary["issuer"] == "postmaster@a.test" and summary["original_sha256"] == "00" * 32
    assert len(summary["evidence"]["sha256"]) == 64


def test_italian_by_user_or_domain() -> None:
    assert language_of("Mario@Example.IT", "en", {"example.it": "it"}) == "it"
    assert language_of("anna@example.it", "en", {"example.it": "it", "anna@example.it": "en"}) \
        == "en"
    assert language_of("x@y.test", "it", {}) == "it"
    mails = every_kind({"bob@b.test": "it"})
    note = parsed(mails["notice"])
    assert str(note["Subject"]).startswith("Posta certificata da alice@a.test")
    assert "Per ACCETTARE" in text_of(note) and "1234 byte" in text_of(note)
    assert str(parsed(mails["expired"])["Subject"]).startswith("Scaduto:")
    assert str(parsed(mails["receipt"])["Subject"]).startswith("Receipt:")  # alice: English


def test_an_organisation_overrides_a_template(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "notice.txt").write_text("ACME legal: {{ sender }} sent {{ subject }}\n")
    (tmp_path / "de").mkdir()  # a language of its own: incomplete, so refused at start
    (tmp_path / "de" / "subject.txt").write_text("Einschreiben")
    wording = Wording(tmp_path)
    wording.check(["en", "it"])
    note = parsed(writer(templates=tmp_path).notice(INFO, ALICE, "n"))
    assert text_of(note).startswith("ACME legal: alice@a.test sent")
    assert "Answer by" in note.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    with pytest.raises(WordingError, match=r"de/notice\.txt"):
        wording.check(["de"])
    with pytest.raises(WordingError, match="no templates for the language 'fr'"):
        wording.check(["fr"])
    (tmp_path / "en" / "status.txt").write_text("{{ no_such_name }}")
    with pytest.raises(WordingError, match=r"status\.txt"):
        Wording(tmp_path).check(["en"])
    (tmp_path / "en" / "status.txt").write_text("{% if %}")
    with pytest.raises(WordingError, match="line 1"):
        Wording(tmp_path).check(["en"])


def test_the_signed_part_must_be_seven_bit() -> None:
    inner = MIMEPart(policy=smime.POLICY)
    inner.set_content("Grüße\n", cte="8bit")
    with pytest.raises(smime.NotSevenBit):
        smime.canonical(inner)


def test_the_signer_is_checked(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = signingcert.create_ca("Org", now=now)
    key, other = signingcert.new_key(), signingcert.new_key()
    cert = signingcert.issue(ca, ca_key, key.public_key(), ["postmaster@a.test"], now=now)
    signingcert.save_key(tmp_path / "key.pem", key, b"pass")
    (tmp_path / "cert.pem").write_bytes(signingcert.pem(cert, ca))
    signer = signingcert.load_signer(tmp_path / "cert.pem", tmp_path / "key.pem", b"pass")
    assert signer.addresses == ["postmaster@a.test"] and signer.chain == (ca,)
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED" in (tmp_path / "key.pem").read_bytes()
    with pytest.raises(signingcert.SigningCertError, match="wrong passphrase"):
        signingcert.load_signer(tmp_path / "cert.pem", tmp_path / "key.pem", b"nope")
    with pytest.raises(signingcert.SigningCertError, match="not valid now"):
        signingcert.load_signer(tmp_path / "cert.pem", tmp_path / "key.pem", b"pass",
                                now=now + dt.timedelta(days=900))
    signingcert.save_key(tmp_path / "other.pem", other, b"pass")
    with pytest.raises(signingcert.SigningCertError, match="does not match"):
        signingcert.load_signer(tmp_path / "cert.pem", tmp_path / "other.pem", b"pass")
    with pytest.raises(signingcert.SigningCertError, match="does not exist"):
        signingcert.load_signer(tmp_path / "none.pem", tmp_path / "key.pem", b"pass")


def test_tcms_mail_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCMS_KEYS__DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("TCMS_KEYS__PASSPHRASE", "a long passphrase")
    monkeypatch.setenv("TCMS_GATEWAY__DOMAINS", '["a.test"]')
    monkeypatch.setenv("TCMS_MAIL__LANGUAGES", '{"a.test": "it"}')
    run = CliRunner().invoke
    res = run(cli.main, ["mail", "ca", str(tmp_path / "ca"), "--org", "ACME"])
    assert res.exit_code == 0, res.output
    res = run(cli.main, ["mail", "show"])
    assert res.exit_code != 0 and "tcms mail csr" in res.output  # nothing to sign with yet
    res = run(cli.main, ["mail", "issue", "--ca", str(tmp_path / "ca")])
    assert res.exit_code == 0 and "postmaster@a.test" in res.output, res.output
    res = run(cli.main, ["mail", "show"])
    assert res.exit_code == 0 and "O=ACME" in res.output and "a.test: it" in res.output
    res = run(cli.main, ["mail", "preview", "notice", "--to", "x@a.test", "-o",
                         str(tmp_path / "p.eml")])
    assert res.exit_code == 0, res.output
    assert str(parsed((tmp_path / "p.eml").read_bytes())["Subject"]).startswith("Posta")
    assert openssl_verify((tmp_path / "p.eml").read_bytes(), tmp_path / "ca" / "ca.pem",
                          tmp_path).returncode == 0
    # an organisation's CA: a request, signed elsewhere, installed
    res = run(cli.main, ["mail", "csr", str(tmp_path / "req.csr"), "--force"])
    assert res.exit_code == 0 and b"CERTIFICATE REQUEST" in (tmp_path / "req.csr").read_bytes()
    res = run(cli.main, ["mail", "install", str(tmp_path / "keys" / "mail-signing-cert.pem")])
    assert res.exit_code != 0 and "does not match" in res.output  # the key is new now


def test_a_writer_is_plain_data() -> None:
    w = writer({"x@y.test": "it"})
    assert dataclasses.replace(w, language="it").language_of("a@b.test") == "it"
