"""`tcms verify` on bad input: every file is read strictly and within bounds, every
refusal is named, no traceback, and the exit status is the one `tcms verify --help` gives."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ALICE, TRUST, start_run
from mailstack import PATIENCE
from services import Services, prepare_keys
from test_evidence_table import FULL

from tcms import evidence
from ttp import filing


def tcms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args], capture_output=True,
                          text=True, timeout=PATIENCE)


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(evidence.trust_to_json(TRUST)))
    return path


def verify(tmp_path: Path, trust: Path, bundle: str | bytes) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bundle.json"
    if isinstance(bundle, str):
        bundle = bundle.encode()
    path.write_bytes(bundle)
    res = tcms("verify", str(path), "--trust", str(trust))
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    return res


def with_fields(*pairs: tuple[str, Any]) -> str:
    """A JSON object with these (name, value) pairs in order, duplicates kept."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


def test_help_states_the_exit_statuses() -> None:
    res = tcms("verify", "--help")
    assert res.returncode == 0
    codes = dict(re.findall(r"^\s+([012])\s+(.+)$", res.stdout, re.M))
    assert codes["0"].startswith("the evidence is valid")
    assert codes["1"].startswith("the evidence is invalid")
    assert codes["2"].startswith("the input cannot be used")
    assert f"{evidence.MAX_BUNDLE_BYTES >> 20} MiB" in res.stdout


def test_valid_bundle_exits_0(tmp_path: Path, trust: Path) -> None:
    res = verify(tmp_path, trust, evidence.dumps(FULL))
    assert res.returncode == 0 and "VALID evidence (received)" in res.stdout


def test_deep_nesting_exits_2(tmp_path: Path, trust: Path) -> None:
    for text in ("[" * 100_000, '{"format": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        res = verify(tmp_path, trust, text)
        assert res.returncode == 2
        assert "nested deeper than 8 levels" in res.stderr


def test_duplicate_field_exits_2(tmp_path: Path, trust: Path) -> None:
    """Issue 12: {"core": <another exchange>, ..., "core": <this one>} was VALID."""
    other = evidence.from_sender(start_run(b"Subject: other\r\n\r\nx").sender)
    assert other["core"] != FULL["core"]
    text = with_fields(("core", other["core"]), *FULL.items())
    res = verify(tmp_path, trust, text)
    assert res.returncode == 2 and "an object has the key 'core' twice" in res.stderr
    assert "VALID" not in res.stdout


@pytest.mark.parametrize(("bundle", "check", "reason"), [
    ({**FULL, "note": "x"}, "format", "unknown field 'note'"),  # issue 12
    ({**FULL, "m4": None, "k_r": None, "k_t": None, "c": None}, "m5",
     "m5 answers an m4 that is not in the bundle"),  # issue 11
])
def test_json_that_is_not_a_valid_bundle_exits_1(tmp_path: Path, trust: Path, bundle: Any,
                                                 check: str, reason: str) -> None:
    res = verify(tmp_path, trust, json.dumps(bundle))
    assert res.returncode == 1, res.stderr
    assert res.stdout.startswith(f"INVALID evidence: check {check} failed: ")
    assert reason in res.stdout


@pytest.mark.parametrize(("bundle", "check", "reason"), [
    ({**FULL, "m6": 5}, "m6", "must be a base64 string or null"),
    ({**FULL, "core": {"x": 1}}, "core", "must be a base64 string or null"),
    ({**FULL, "holder": 1}, "holder", "must be"),
    ({**FULL, "format": ["tcms-evidence/1"]}, "format", "not an evidence bundle"),
    ([FULL], "format", "a JSON object is expected"),
    ("just a string", "format", "a JSON object is expected"),
    ({**FULL, "k_t": "no base64"}, "k_t", "not valid base64"),
    ({**FULL, "k_t": "é"}, "k_t", "not valid base64"),
])
def test_fields_are_typed(bundle: Any, check: str, reason: str) -> None:
    """What `tcms verify` runs (exit status 1 on EvidenceInvalid, as above)."""
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify(evidence.loads(json.dumps(bundle).encode()), TRUST)
    assert e.value.check == check and reason in e.value.reason


def test_not_json_exits_2(tmp_path: Path, trust: Path) -> None:
    res = verify(tmp_path, trust, "{not json")
    assert res.returncode == 2
    assert res.stderr.startswith("Error: the bundle cannot be read: not JSON")


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not JSON"),
    (with_fields(*FULL.items()).encode() + b" trailing", "not JSON"),
    (with_fields(*FULL.items(), ("holder", "sender")).encode(), "the key 'holder' twice"),
    (b'{"format": NaN}', "NaN is not a JSON number"),
    (b'{"format": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"format": ' + b"1" * 5000 + b"}", "not JSON"),
    (b'{"format": "\xff"}', "not JSON (RFC 8259, UTF-8)"),
    (b"[]" * 1000, "more than 256 items"),
    (b"[" * 9 + b"]" * 9, "nested deeper than 8 levels"),
    (b'"\\' * 100_000, "not JSON"),  # a string never closed: one linear scan
])
def test_bundle_is_read_strictly(data: bytes, message: str) -> None:
    """What `tcms verify` runs (exit status 2 on BundleUnreadable, as above)."""
    with pytest.raises(evidence.BundleUnreadable, match="the bundle cannot be read: ") as e:
        evidence.loads(data)
    assert message in str(e.value)


def test_oversized_bundle_exits_2_without_parsing(tmp_path: Path, trust: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as f:  # sparse: cheap to make
        f.truncate(evidence.MAX_BUNDLE_BYTES + 1)
    res = tcms("verify", str(path), "--trust", str(trust))
    assert res.returncode == 2 and "larger than 134217728 bytes" in res.stderr


def trust_json() -> dict[str, Any]:
    return evidence.trust_to_json(TRUST)


@pytest.mark.parametrize(("content", "message"), [
    (b"not json", "not JSON"),
    (json.dumps({**trust_json(), "ttp": {}}).encode(), "ttp: field 'name' is missing"),
    (json.dumps({**trust_json(), "ttp": {**trust_json()["ttp"], "name": 1}}).encode(),
     "ttp: field 'name' must be a string"),
])
def test_unusable_trust_file_exits_2(tmp_path: Path, content: bytes, message: str) -> None:
    trust = tmp_path / "trust.json"
    trust.write_bytes(content)
    res = verify(tmp_path, trust, evidence.dumps(FULL))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("Error: cannot use the trust file: ") and message in res.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"[" * 100_000, "nested deeper than 8 levels"),
    (json.dumps({**trust_json(), "ttp": "x"}).encode(), "field 'ttp' must be a JSON object"),
    (json.dumps({**trust_json(), "extra": 1}).encode(), "unknown field 'extra'"),
    (json.dumps({k: v for k, v in trust_json().items() if k != "tsa_ca"}).encode(),
     "field 'tsa_ca' is missing"),
    (json.dumps({**trust_json(), "format": "x"}).encode(), "format must be tcms-trust/1"),
    (json.dumps({**trust_json(), "tsa_ca": "x"}).encode(), "tsa_ca: not a PEM certificate"),
    (json.dumps({**trust_json(), "ttp": {**trust_json()["ttp"], "sig_pk": "AAAA"}}).encode(),
     "ttp: public keys must be 32 bytes"),
    (json.dumps({**trust_json(), "ttp": {**trust_json()["ttp"], "sig_pk": "*"}}).encode(),
     "ttp: "),
    (json.dumps({**trust_json(), "ttp": {**trust_json()["ttp"], "name": " "}}).encode(),
     "ttp: not a valid identity name"),
    (json.dumps({**trust_json(), "ttp": {**trust_json()["ttp"], "fingerprint": "x"}}).encode(),
     "ttp: fingerprint mismatch"),
    (with_fields(*trust_json().items(), ("format", "tcms-trust/1")).encode(),
     "the key 'format' twice"),
    (json.dumps([]).encode(), "the trust file must be a JSON object"),
    (b" " * (evidence.MAX_TRUST_BYTES + 1), "larger than"),
])
def test_trust_file_is_read_strictly(content: bytes, message: str) -> None:
    """What `tcms verify` runs (exit status 2 on TrustFileError, as above)."""
    with pytest.raises(evidence.TrustFileError) as e:
        evidence.load_trust(content)
    assert message in str(e.value)


def test_trust_file_round_trip() -> None:
    assert evidence.load_trust(json.dumps(trust_json()).encode()) == TRUST


def test_files_that_cannot_be_read_exit_2(tmp_path: Path, trust: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(evidence.dumps(FULL))
    for args in ((str(tmp_path / "missing.json"), "--trust", str(trust)),
                 (str(good), "--trust", str(tmp_path / "missing.json")),
                 (str(tmp_path), "--trust", str(trust)),  # a directory
                 (str(good), "--trust", "/proc/self/mem"),  # opens, but reading fails
                 ("/proc/self/mem", "--trust", str(trust))):
        res = tcms("verify", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr
    res = tcms("verify", str(good), "--trust", str(trust), "--extract",
               str(tmp_path / "no" / "such" / "dir" / "m0"))
    assert res.returncode == 2 and "cannot write" in res.stderr


def test_extract_without_content_says_so(tmp_path: Path, trust: Path) -> None:
    sealed = {**FULL, "m4": None, "m5": None, "m6": None, "receipt_token": None,
              "refusal": None, "k_t": None}
    path = tmp_path / "sealed.json"
    path.write_text(evidence.dumps(sealed))
    res = tcms("verify", str(path), "--trust", str(trust), "--extract", str(tmp_path / "m0"))
    assert res.returncode == 0 and "VALID evidence (sealed)" in res.stdout
    assert "nothing extracted" in res.stderr and not (tmp_path / "m0").exists()


def test_loads_reads_back_what_dumps_writes() -> None:
    big = {**FULL, "c": base64.b64encode(bytes(3 << 20)).decode()}
    assert evidence.loads(evidence.dumps(big).encode()) == big
    with pytest.raises(evidence.EvidenceInvalid, match="unknown field"):
        evidence.dumps({**FULL, "extra": None})


# --- reading is linear: `"\` repeated was quadratic in the JSON reader's pre-scan ----------

UNCLOSED = b'"\\' * (1 << 19)  # 1 MiB: a string opened at every quote, never closed


def test_tcms_verify_reads_in_linear_time(tmp_path: Path, trust: Path) -> None:
    """The scan that bounds depth and items searched forwards from every failed match:
    1 MiB of this took hours.  The subprocess timeout (60 s) is the generous bound."""
    res = verify(tmp_path, trust, UNCLOSED)
    assert res.returncode == 2 and "not JSON" in res.stderr, res.stderr


def test_dispute_reads_in_linear_time(tmp_path: Path) -> None:
    """The TTP parses a dispute's body before it checks who signed it; with the old scan
    1 MiB held its event loop (TSS, TTP and DC) for hours."""
    prepare_keys(tmp_path / "keys")
    svc = Services(tmp_path, f"sqlite:///{tmp_path / 'tcms.db'}", which="ttp").start()
    try:
        filed = filing.filing_headers(ALICE, bytes(32), UNCLOSED, int(time.time()))
        r = httpx.post(svc.ttp + "/dispute", content=UNCLOSED, timeout=PATIENCE,
                       headers={"Content-Type": "application/json", **filed})
        assert r.status_code == 400 and r.json()["error"] == "json", r.text
        assert httpx.get(svc.ttp + "/health", timeout=10).status_code == 200
    finally:
        svc.stop()
