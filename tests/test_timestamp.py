"""The RFC 3161 authority and verifier against OpenSSL, a tool nobody here wrote."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
from asn1crypto import tsp
from reencode import REENCODINGS, reencodings

from tcms.timestamp import (
    TimestampError,
    TimeStampResp,
    make_request,
    token_from_reply,
    verify_token,
)
from tss.authority import POLICY_OID, TimeStampAuthority, create_credentials

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def tsa() -> TimeStampAuthority:
    return TimeStampAuthority(create_credentials("Interop TSA", now=NOW - dt.timedelta(days=1)))


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


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
