"""The RFC 3161 authority and verifier against OpenSSL, a tool nobody here wrote."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms, core, tsp
from mailstack import PATIENCE
from reencode import REENCODINGS, reencodings

from tcms import der, token_layout
from tcms.timestamp import (
    TimestampError,
    TimeStampResp,
    make_request,
    token_from_reply,
    verify_token,
)
from tss.authority import POLICY_OID, TimeStampAuthority, create_credentials, granted

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def tsa() -> TimeStampAuthority:
    return TimeStampAuthority(create_credentials("Interop TSA", now=NOW - dt.timedelta(days=1)))


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=PATIENCE)


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_openssl_query_reply_verify(tsa: TimeStampAuthority, tmp_path: Path,
                                    digest: str) -> None:
    (tmp_path / "data.txt").write_bytes(b"certified mail body\n")
    ca, cert = tsa.creds.pem_chain()
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "tsa.pem").write_bytes(cert)
    res = openssl("ts", "-query", "-data", "data.txt", f"-{digest}", "-cert", "-out",
                  "req.tsq", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stamp = tsa.stamp((tmp_path / "req.tsq").read_bytes(), now=NOW, serial=1001)
    (tmp_path / "resp.tsr").write_bytes(stamp.reply)
    res = openssl("ts", "-verify", "-queryfile", "req.tsq", "-in", "resp.tsr", "-CAfile",
                  "ca.pem", "-untrusted", "tsa.pem", cwd=tmp_path)
    assert "Verification: OK" in res.stdout, res.stdout + res.stderr
    res = openssl("ts", "-verify", "-data", "data.txt", "-in", "resp.tsr", "-CAfile",
                  "ca.pem", "-untrusted", "tsa.pem", cwd=tmp_path)
    assert "Verification: OK" in res.stdout
    text = openssl("ts", "-reply", "-in", "resp.tsr", "-text", cwd=tmp_path).stdout
    assert f"Policy OID: {POLICY_OID}" in text and "Serial number: 0x03E9" in text
    assert "Accuracy: unspecified seconds, 0x01F4 millis" in text
    # another file's data does not verify
    (tmp_path / "other.txt").write_bytes(b"something else\n")
    res = openssl("ts", "-verify", "-data", "other.txt", "-in", "resp.tsr", "-CAfile",
                  "ca.pem", "-untrusted", "tsa.pem", cwd=tmp_path)
    assert "Verification: OK" not in res.stdout


def test_our_verifier_reads_the_token(tsa: TimeStampAuthority) -> None:
    imprint = hashlib.sha256(b"x").digest()
    req, nonce = make_request(imprint)
    token = token_from_reply(tsa.stamp(req, now=NOW, serial=7).reply)
    info = verify_token(token, imprint, tsa.creds.ca_cert, nonce=nonce)
    assert (info.serial, info.gen_time, info.policy, info.nonce) == (7, NOW, POLICY_OID, nonce)
    with pytest.raises(TimestampError, match="nonce"):
        verify_token(token, imprint, tsa.creds.ca_cert, nonce=nonce + 1)
    with pytest.raises(TimestampError, match="imprint"):
        verify_token(token, hashlib.sha256(b"y").digest(), tsa.creds.ca_cert)
    other = create_credentials("Other", now=NOW - dt.timedelta(days=1))
    with pytest.raises(TimestampError, match="trusted CA"):
        verify_token(token, imprint, other.ca_cert)


def test_tsa_certificate_rules(tsa: TimeStampAuthority) -> None:
    imprint = hashlib.sha256(b"x").digest()
    req, _ = make_request(imprint)
    late = NOW + dt.timedelta(days=365 * 11)  # after the certificate expires
    token = token_from_reply(tsa.stamp(req, now=late, serial=8).reply)
    with pytest.raises(TimestampError, match="not valid at the token's time"):
        verify_token(token, imprint, tsa.creds.ca_cert)


@pytest.mark.parametrize(("request_bytes", "fail_info"), [
    (b"garbage", "bad_data_format"),
    (tsp.TimeStampReq({"version": "v1", "message_imprint": {
        "hash_algorithm": {"algorithm": "md5"}, "hashed_message": b"\0" * 16}}).dump(),
     "bad_alg"),
    (tsp.TimeStampReq({"version": "v1", "message_imprint": {
        "hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"\0" * 31}}).dump(),
     "bad_data_format"),
    (make_request(b"\0" * 32, policy="1.2.3.4")[0], "unaccepted_policy"),
], ids=["garbage", "md5", "short-imprint", "unknown-policy"])
def test_bad_requests_get_an_rfc3161_rejection(tsa: TimeStampAuthority, tmp_path: Path,
                                              request_bytes: bytes, fail_info: str) -> None:
    stamp = tsa.stamp(request_bytes, now=NOW, serial=9)
    assert stamp.token is None and stamp.error
    resp = TimeStampResp.load(stamp.reply)
    assert resp["status"]["status"].native == "rejection"
    assert resp["status"]["fail_info"].native == {fail_info}
    with pytest.raises(TimestampError, match="refused"):
        token_from_reply(stamp.reply)
    (tmp_path / "bad.tsr").write_bytes(stamp.reply)
    text = openssl("ts", "-reply", "-in", "bad.tsr", "-text", cwd=tmp_path).stdout
    assert "Status: Rejected." in text


def test_hand_assembled_tokens_are_canonical_der(tsa: TimeStampAuthority) -> None:
    """The TSA writes tokens from cached DER fragments; asn1crypto, re-encoding every field
    from scratch, must produce exactly the same bytes (DER: minimal lengths, sorted SETs)."""
    from asn1crypto import cms as asn1_cms

    for nonce, when in ((None, NOW), (2**70 + 5, NOW.replace(microsecond=120000)),
                        (1, NOW.replace(microsecond=1))):
        req, _ = make_request(hashlib.sha256(b"der").digest(), nonce=nonce)
        if nonce is None:
            req = tsp.TimeStampReq({"version": "v1", "message_imprint": tsp.TimeStampReq.load(
                req)["message_imprint"], "cert_req": True}).dump()
        token = token_from_reply(tsa.stamp(req, now=when, serial=2**64 + 3).reply)
        assert asn1_cms.ContentInfo.load(token).dump(force=True) == token
        info = verify_token(token, hashlib.sha256(b"der").digest(), tsa.creds.ca_cert)
        assert info.gen_time == when and info.serial == 2**64 + 3 and info.nonce == nonce


# --- one token, one encoding ------------------------------------------------------------------


@pytest.mark.parametrize("kind", REENCODINGS)
def test_a_token_has_one_encoding(tsa: TimeStampAuthority, kind: str) -> None:
    """verify_token accepted 9 kinds of re-encoding (issue 11, item 9): each is refused."""
    imprint = hashlib.sha256(b"one encoding").digest()
    req, nonce = make_request(imprint)
    token = token_from_reply(tsa.stamp(req, now=NOW, serial=11).reply)
    verify_token(token, imprint, tsa.creds.ca_cert, nonce=nonce)
    variants = reencodings(token, tsa.creds.ca_cert)
    assert sorted(variants) == sorted(REENCODINGS)
    other, reason = variants[kind]
    assert other != token
    with pytest.raises(TimestampError, match=reason):
        verify_token(other, imprint, tsa.creds.ca_cert, nonce=nonce)


# --- lengths whose last octet is 0x80 (found by the fuzz suite) ------------------------------


def _reencodings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of asn1crypto's re-encodings of constructed values."""
    count = [0]
    for cls in (core.Sequence, core.SequenceOf):
        original = cls._set_contents

        def counting(self: object, force: bool = False, _original: object = original) -> None:
            count[0] += 1
            _original(self, force)  # type: ignore[operator]

        monkeypatch.setattr(cls, "_set_contents", counting)
    return count


def _token_of_length_80(tsa: TimeStampAuthority, imprint: bytes) -> bytes:
    """A genuine token whose ContentInfo length ends in the octet 0x80 (the nonce's size
    chosen to make it so), as one token in 256 of a real TSA's is."""
    for size in range(1, 300):  # the signature's length varies by a byte or two: try again
        for _ in range(4):
            token = token_from_reply(tsa.stamp(make_request(imprint, nonce=1 << (8 * size))[0],
                                               now=NOW, serial=7).reply)
            if token[1] == 0x82 and token[3] == 0x80:
                return token
    raise AssertionError("no nonce size gives such a length")


def _token_with_ess_ids(tsa: TimeStampAuthority, n: int) -> bytes:
    """A token whose signingCertificateV2 lists ``n`` more ESS certificate identifiers,
    padded so that its ContentInfo length ends in 0x80 (it cannot verify: the signed
    attributes changed; what matters is what reading it costs)."""
    good = token_from_reply(tsa.stamp(make_request(bytes(32))[0], now=NOW, serial=8).reply)
    sd = cms.ContentInfo.load(good)["content"]
    si = sd["signer_infos"][0]
    attrs = [a.dump() for a in si["signed_attrs"]][:3]
    for pad in range(300):
        ids = [der.seq(der.octets(bytes(32)))] * n + [der.seq(der.octets(bytes(32 + pad)))]
        scv2 = der.seq(der.oid("1.2.840.113549.1.9.16.2.47"), der.set_of(der.seq(der.seq(*ids))))
        token = token_layout.signed_data_token(
            digest_alg=token_layout.DIGEST_ALGORITHMS["sha256"],
            tst_info=sd["encap_content_info"]["content"].contents,
            certificates=token_layout.certificate_set(sd["certificates"][0].chosen.dump()),
            sid=si["sid"].dump(), signed_attrs=der.set_of(*attrs, scv2),
            signature_alg=token_layout.SIGNATURE_ALGORITHMS["ec", "sha256"],
            signature=si["signature"].native)
        if token[1] == 0x82 and token[3] == 0x80:
            return token
    raise AssertionError("no padding gives such a length")


def test_a_length_ending_in_0x80_is_read_as_it_is(tsa: TimeStampAuthority,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """asn1crypto takes a definite length whose last octet is 0x80 (``30 82 04 80``) for an
    indefinite one and re-encodes the value's whole subtree, once more at every level below:
    a 3.5 KB token listing 64 ESS identifiers took 15 s to read, so one m3 could stall a
    gateway for minutes.  The verifier now reads every part as it was sent: a genuine token
    of such a length verifies, and the crafted one is refused, with no re-encoding."""
    imprint = hashlib.sha256(b"m").digest()
    genuine = _token_of_length_80(tsa, imprint)
    crafted = _token_with_ess_ids(tsa, 64)
    count = _reencodings(monkeypatch)
    info = verify_token(genuine, imprint, tsa.creds.ca_cert)
    assert info.imprint == imprint
    with pytest.raises(TimestampError, match="signingCertificateV2"):
        verify_token(crafted, bytes(32), tsa.creds.ca_cert)
    assert token_from_reply(granted(genuine)) == genuine
    assert count[0] == 0, f"{count[0]} re-encodings"  # before the fix: over 200,000
    # the TSS's reply, now written without asn1crypto, is the one asn1crypto writes
    other = token_from_reply(tsa.stamp(make_request(imprint)[0], now=NOW, serial=9).reply)
    assert granted(other) == TimeStampResp({"status": {"status": "granted"},
                                            "time_stamp_token": cms.ContentInfo.load(other)}
                                           ).dump()
