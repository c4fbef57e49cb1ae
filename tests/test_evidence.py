"""Evidence bundles: what they prove, and `tcms verify` on the command line."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BOB,
    DEADLINES,
    MALLORY_TTP,
    T0,
    TRUST,
    TTP,
    Run,
    known,
    one,
    receive,
    stamp,
    start_run,
)
from mailstack import PATIENCE
from reencode import reencodings

from tcms import evidence
from tcms.protocol.checks import Trust
from tcms.protocol.events import Accept, Refuse, Tick, TimestampReply
from tcms.protocol.receiver import Receiver
from tss.authority import create_credentials

M0 = b"Subject: evidence\r\n\r\nThe body.\r\n"


def completed_run(m0: bytes = M0) -> tuple[Run, Receiver]:
    """A run to its end: m4 to m6, and the receipt time stamp at T0 + 6."""
    run = start_run(m0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, known)
    m4 = one(r.handle(Accept(), T0 + 2), "m4")
    m5 = one(receive(run.sender, m4, T0 + 3), "m5")
    m6 = one(receive(r, m5, T0 + 4), "m6")
    tsq = one(receive(run.sender, m6, T0 + 5), "receipt-stamp")
    run.sender.handle(TimestampReply(stamp(tsq, T0 + 6, kind="tsq")), T0 + 6)
    return run, r


def completed() -> tuple[dict[str, Any], dict[str, Any]]:
    run, r = completed_run()
    return evidence.from_sender(run.sender), evidence.from_receiver(r)


def test_receipt_proves_reception_and_origin() -> None:
    s_bundle, r_bundle = completed()
    v = evidence.verify(s_bundle, TRUST)
    assert v.kind == "received" and v.m0 == M0
    assert v.event_at == T0 + 6 and v.sent_at == T0
    assert any("bob@b.test received m0" in s for s in v.statements)
    assert any("alice@a.test sent m0" in s for s in v.statements)
    assert evidence.verify(r_bundle, TRUST).kind == "received"


def test_m4_alone_is_never_a_receipt() -> None:
    s_bundle, _ = completed()
    for item in ("m6", "receipt_token"):
        s_bundle[item] = None
    v = evidence.verify(s_bundle, TRUST)
    assert v.kind == "sent"  # S can show what it sent, not that R received it


def test_abort_token_proves_the_abort() -> None:
    run = start_run(M0)
    abort = one(run.sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    receive(run.sender, run.to_ttp(abort, DEADLINES.accept_by + 1), DEADLINES.accept_by + 1)
    v = evidence.verify(evidence.from_sender(run.sender), TRUST)
    assert v.kind == "aborted" and v.event_at == DEADLINES.accept_by + 1


def test_refusal_is_evidence_for_the_recipient() -> None:
    run = start_run(M0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, known)
    r.handle(Refuse(), T0 + 2)
    assert evidence.verify(evidence.from_receiver(r), TRUST).kind == "refused"


def test_ttp_affidavit_proves_reception() -> None:
    run = start_run(M0)
    r, _ = Receiver.from_m3(BOB, TRUST, run.m3, T0 + 1, known)
    r.handle(Accept(), T0 + 2)
    req = one(r.handle(Tick(), DEADLINES.m5_by + 1), "resolve")
    receive(r, run.to_ttp(req, DEADLINES.m5_by + 1), DEADLINES.m5_by + 1)
    req = one(run.sender.handle(Tick(), DEADLINES.accept_by + 1), "abort")
    receive(run.sender, run.to_ttp(req, DEADLINES.m5_by + 2), DEADLINES.m5_by + 2)
    v = evidence.verify(evidence.from_sender(run.sender), TRUST)
    assert v.kind == "received" and "delivered" in v.statements[-1]
    assert evidence.verify(evidence.from_receiver(r), TRUST).kind == "received"


def test_untrusted_ttp_or_tsa_is_refused() -> None:
    s_bundle, _ = completed()
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify(s_bundle, Trust(MALLORY_TTP.party, TRUST.tsa_ca))
    assert e.value.check == "hdr.ttp"
    other_ca = create_credentials("Other", now=dt.datetime.fromtimestamp(T0 - 60, dt.UTC))
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify(s_bundle, Trust(TTP.party, other_ca.ca_cert))
    assert e.value.check == "m2.token"


EXPECTED_CHECK = {
    "core": {"format", "m2.token", "hdr.ttp"},
    "token": {"m2.token"},  # strict DER: even unsigned CMS fields are covered
    "eoo": {"m3.eoo"},
    "m4": {"format", "m4.sig", "m4.cid"},
    "m5": {"format", "m5.sig", "m5.cid", "m6.sig"},
    "m6": {"format", "m6.sig", "m6.cid", "m6.token"},
    "receipt_token": {"m6.token"},
    "k_r": {"keys"},
    "k_t": {"keys"},
    "c": {"c"},
}


@pytest.mark.parametrize("item", sorted(EXPECTED_CHECK))
def test_every_tampered_byte_names_a_failed_check(item: str) -> None:
    s_bundle, _ = completed()
    raw = base64.b64decode(s_bundle[item])
    for i in range(len(raw)):
        forged = dict(s_bundle)
        forged[item] = base64.b64encode(raw[:i] + bytes([raw[i] ^ 0x80]) + raw[i + 1:]).decode()
        with pytest.raises(evidence.EvidenceInvalid) as e:
            evidence.verify(forged, TRUST)
        assert e.value.check in EXPECTED_CHECK[item], (item, i, e.value)


def test_missing_and_malformed_fields() -> None:
    s_bundle, _ = completed()
    with pytest.raises(evidence.EvidenceInvalid, match="format"):
        evidence.verify({**s_bundle, "format": "other"}, TRUST)
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify({**s_bundle, "eoo": None}, TRUST)
    assert e.value.check == "eoo"
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify({**s_bundle, "m6": "not base64!"}, TRUST)
    assert e.value.check == "m6"
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify({**s_bundle, "m5": None}, TRUST)
    assert e.value.check == "m6"


# --- the command line -------------------------------------------------------------------


def tcms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcms.cli", *args], capture_output=True,
                          text=True, timeout=PATIENCE)


def test_tcms_verify_cli(tmp_path: Path) -> None:
    s_bundle, _ = completed()
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(evidence.trust_to_json(TRUST)))
    good = tmp_path / "good.json"
    good.write_text(evidence.dumps(s_bundle))
    res = tcms("verify", str(good), "--trust", str(trust), "--extract", str(tmp_path / "m0"))
    assert res.returncode == 0, res.stderr
    assert "VALID evidence (received)" in res.stdout and "bob@b.test received m0" in res.stdout
    assert (tmp_path / "m0").read_bytes() == M0
    res = tcms("verify", str(good), "--trust", str(trust), "--json")
    assert json.loads(res.stdout)["verdict"] == "received"

    bad = tmp_path / "bad.json"
    m6 = bytearray(base64.b64decode(s_bundle["m6"]))
    m6[-3] ^= 1
    bad.write_text(json.dumps({**s_bundle, "m6": base64.b64encode(bytes(m6)).decode()}))
    res = tcms("verify", str(bad), "--trust", str(trust))
    assert res.returncode == 1
    assert "INVALID evidence: check m6.sig failed" in res.stdout
    res = tcms("verify", str(bad), "--trust", str(trust), "--json")
    assert json.loads(res.stdout) == {"valid": False, "check": "m6.sig",
                                      "reason": "signature does not verify"}

    (tmp_path / "junk.json").write_text("{not json")
    res = tcms("verify", str(tmp_path / "junk.json"), "--trust", str(trust))
    assert res.returncode != 0 and "not JSON" in res.stderr


@pytest.mark.parametrize("kind", ["trailing-bytes", "extra-certificate", "sid-other-case",
                                  "digest-params-absent", "signature-alg-null-params"])
def test_tcms_verify_refuses_a_reencoded_receipt_token(tmp_path: Path, kind: str) -> None:
    """The receipt token is covered by no signature in the bundle: only the strict token
    check stands between a re-encoded one and a VALID verdict (issue 11, item 9)."""
    s_bundle, _ = completed()
    token = base64.b64decode(s_bundle["receipt_token"])
    other, reason = reencodings(token, TRUST.tsa_ca)[kind]
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(evidence.trust_to_json(TRUST)))
    path = tmp_path / "bundle.json"
    path.write_text(evidence.dumps(s_bundle))
    assert tcms("verify", str(path), "--trust", str(trust)).returncode == 0
    path.write_text(evidence.dumps({**s_bundle, "receipt_token": base64.b64encode(other).decode()}))
    res = tcms("verify", str(path), "--trust", str(trust), "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["valid"] is False and out["check"] == "m6.token" and reason in out["reason"]


def test_tcms_tx_list_show_export(tmp_path: Path) -> None:
    """The admin's view of a real store (the demo's), and an exported bundle that verifies."""
    res = tcms("demo", "--scenario", "recipient-stalls", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    env_db = f"sqlite:///{tmp_path / 'recipient-stalls' / 'demo.db'}"

    def tx(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
        env["TCMS_DATABASE__URL"] = env_db
        # the demo's keystore holds the data key that seals its runs
        env["TCMS_KEYS__DIR"] = str(tmp_path / "recipient-stalls" / "keys")
        env["TCMS_KEYS__PASSPHRASE"] = "demo-passphrase-not-for-production"
        return subprocess.run([sys.executable, "-m", "tcms.cli", "tx", *args], env=env,
                              capture_output=True, text=True, timeout=PATIENCE)

    listing = tx("list").stdout.splitlines()
    assert len(listing) == 2 and all(" done " in line for line in listing)
    tx_id = listing[0].split()[0]
    shown = tx("show", tx_id[:8]).stdout
    assert f"exchange {tx_id} (sender side)" in shown and "(receiver side)" in shown
    assert shown.count("bytes, kept apart") == 2, shown  # each side's c, in table pieces
    bundle = tmp_path / "bundle.json"
    assert tx("export", tx_id, "--role", "sender", "-o", str(bundle)).returncode == 0
    trust = tmp_path / "recipient-stalls" / "trust.json"
    res = tcms("verify", str(bundle), "--trust", str(trust))
    assert res.returncode == 0 and "made available" in res.stdout, res.stdout
    assert tx("export", tx_id).returncode == 1  # both sides stored: --role is needed
    assert tx("show", "ffffffff").returncode == 1
