"""What the fuzz campaign (bench/fuzz.py, 10^6 inputs) found in the evidence and config
code, through the `tcms` command.  The other findings have their regression tests beside
the code they fixed (test_timestamp, test_tss_replies, test_mailformat,
test_gateway_inbound)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TRUST
from cryptography.hazmat.primitives import serialization
from mailstack import PATIENCE

from tcms import evidence


def tcms(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args], capture_output=True,
                          text=True, timeout=PATIENCE, cwd=cwd, env={**clean, **env})


def test_a_trust_file_whose_certificate_has_an_impossible_version_exits_2(
        tmp_path: Path) -> None:
    """evidence.trust, input 4777 of seed 11: the TSA CA certificate's version field says
    18; cryptography raises InvalidVersion (an Exception, not a ValueError).  `tcms verify`
    must say it cannot use the trust file (exit 2), as for every other bad trust file; the
    gateway reads its trust file with the same function at start."""
    cert = TRUST.tsa_ca.public_bytes(serialization.Encoding.DER)
    at = cert.index(b"\xa0\x03\x02\x01\x02")  # [0] version v3
    cert = cert[:at] + b"\xa0\x03\x02\x01\x11" + cert[at + 5:]
    trust = {**evidence.trust_to_json(TRUST), "tsa_ca": "-----BEGIN CERTIFICATE-----\n"
             + base64.encodebytes(cert).decode() + "-----END CERTIFICATE-----\n"}
    (tmp_path / "trust.json").write_text(json.dumps(trust))
    (tmp_path / "bundle.json").write_text("{}")
    res = tcms(tmp_path, "verify", "bundle.json", "--trust", "trust.json")
    assert "Traceback" not in res.stderr, res.stderr[-400:]
    assert res.returncode == 2 and "cannot use the trust file" in res.stderr, res.stderr


def test_a_variable_name_with_a_thousand_separators_is_a_named_error(tmp_path: Path) -> None:
    """config.env, input 3736 of seed 11: ``TCMS_GATEWAY__MAX_RECIPIENTS`` followed by
    ``__x`` a thousand times nests its value a thousand levels deep (pydantic-settings
    splits names at ``__``); wording the error then raised RecursionError."""
    name = "TCMS_GATEWAY__MAX_RECIPIENTS" + "__x" * 1000
    res = tcms(tmp_path, "config", "check", **{name: "1"})
    assert "Traceback" not in res.stderr, res.stderr[-400:]
    assert res.returncode == 1 and "invalid configuration" in res.stderr, res.stderr
