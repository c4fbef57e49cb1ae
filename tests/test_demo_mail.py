"""`make demo`'s script runs on this machine and ends with verified evidence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_two_organisation_demo(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "demo" / "two_orgs.py"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    for step in ("alice sends a certified mail", "a notice, the mail still sealed",
                 "bob accepts", "the original mail", "the receipt", "tcms verify"):
        assert step in out, step
    assert "VALID evidence (received)" in out
    assert "TCMS-Certified: yes" in out and "here is the signed contract" in out
    # the receipt as Dovecot delivered it, and openssl's verdict on its S/MIME signature
    assert "openssl smime -verify" in out and "Verification successful" in out
    res = subprocess.run(["openssl", "smime", "-verify", "-in", str(tmp_path / "out" /
                          "receipt.eml"), "-CAfile", str(tmp_path / "out" / "mail-ca-a.test.pem"),
                          "-out", "/dev/null"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    bundle = json.loads((tmp_path / "out" / "evidence-receipt.json").read_text())
    assert bundle["holder"] == "sender" and bundle["m6"]
