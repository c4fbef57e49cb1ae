"""The verdict of `tcms verify` for every combination of the optional items of a bundle,
checked against the table in docs/evidence.md (read from the document itself)."""

from __future__ import annotations

import base64
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, BOB, DEADLINES, T0, TRUST, TTP
from test_evidence import completed_run

from tcms import evidence
from tcms.crypto import sign
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import sign_refusal, sign_resolve_request
from tcms.protocol.messages import M3, Core
from tcms.protocol.ttpmessages import AbortRequest, BadEscrow

M0 = b"Subject: every combination\r\n\r\nThe body.\r\n"
DOC = Path(__file__).resolve().parent.parent / "docs" / "evidence.md"
FLAGS = ("m4", "m5", "m6", "receipt_token", "refusal", "k_r", "k_t", "c")
ANSWERS = ("none", "ABORTED", "RESOLVED", "BAD-ESCROW", "REJECTED")


def all_items() -> tuple[dict[str, str], dict[str, str]]:
    """One exchange's bundle holding every optional item (m4, m5, m6 and the receipt time
    stamp from a completed run, a refusal R signed as well) and the TTP's four answers
    for that exchange, base64-encoded as in a bundle."""
    run, r = completed_run(M0)
    bundle = evidence.from_sender(run.sender)
    m3 = M3.decode(run.m3)
    core: Core = m3.core
    bundle["refusal"] = base64.b64encode(sign_refusal(BOB, core, m3.eoo).encode()).decode()
    t = DEADLINES.m5_by + 1
    abort = AbortRequest(core, t, sign(ALICE.sig_key, "ABORT-REQ", core.cid, t)).encode()
    m4 = r.state.m4
    assert m4 is not None
    r1r = sign_resolve_request(BOB, "R", core, m3.token, m3.eoo, m4, m3.e_t, None, t).encode()
    late = DEADLINES.resolve_by + 1
    r1r_late = sign_resolve_request(BOB, "R", core, m3.token, m3.eoo, m4, m3.e_t, None,
                                    late).encode()
    reason = "e_T does not open"  # an honest S's escrow never does this: signed directly
    answers = {
        "ABORTED": ttp_role.handle(TTP, TRUST, abort, None, t)[1],
        "RESOLVED": ttp_role.handle(TTP, TRUST, r1r, None, t)[1],
        "BAD-ESCROW": BadEscrow(core.cid, reason, t,
                                sign(TTP.sig_key, "BAD-ESCROW", core.cid, reason, t)).encode(),
        "REJECTED": ttp_role.handle(TTP, TRUST, r1r_late, None, late)[1],
    }
    return bundle, {k: base64.b64encode(v).decode() for k, v in answers.items()}


FULL, ANSWER_ITEMS = all_items()


# --- the table, as the document states it ----------------------------------------------


@dataclass(frozen=True)
class Row:
    number: int
    cells: dict[str, str]
    verdict: tuple[str, str]  # ("valid", kind) or ("invalid", check)

    def matches(self, combo: dict[str, Any]) -> bool:
        for name in ("m4", "m5", "m6", "receipt_token", "refusal"):
            cell = self.cells[name]
            if cell != "·" and (cell == "yes") != combo[name]:
                return False
        answer = self.cells["ttp_answer"]
        if answer.startswith("not "):
            if combo["ttp_answer"] == answer[4:]:
                return False
        elif answer != "·" and combo["ttp_answer"] not in answer.split(" or "):
            return False
        content = self.cells["k_r, k_t, c"]
        has_all = combo["k_r"] and combo["k_t"] and combo["c"]
        return content == "·" or (content == "all") == has_all


def documented_table() -> list[Row]:
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| row | m4 |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in itertools.takewhile(lambda x: x.startswith("|"), lines[start + 2:]):
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        if m := re.fullmatch(r"INVALID \(`([a-z_.0-9]+)`\)", cells["verdict"]):
            verdict = ("invalid", m.group(1))
        else:
            m = re.fullmatch(r"`([a-z-]+)`", cells["verdict"])
            assert m, cells["verdict"]
            verdict = ("valid", m.group(1))
        rows.append(Row(int(cells["row"]), cells, verdict))
    return rows


TABLE = documented_table()


def combinations() -> list[dict[str, Any]]:
    """The power set of the optional fields, ttp_answer absent or each of its kinds."""
    out = []
    for present in itertools.product((False, True), repeat=len(FLAGS)):
        for answer in ANSWERS:
            out.append({**dict(zip(FLAGS, present, strict=True)), "ttp_answer": answer})
    return out


COMBINATIONS = combinations()


def name(combo: dict[str, Any]) -> str:
    parts = [f for f in FLAGS if combo[f]]
    if combo["ttp_answer"] != "none":
        parts.append(combo["ttp_answer"])
    return "+".join(parts) or "bare"


def test_the_table_covers_every_combination_once() -> None:
    assert len(COMBINATIONS) == 2 ** len(FLAGS) * len(ANSWERS) == 1280
    assert [r.number for r in TABLE] == list(range(1, len(TABLE) + 1))
    invalid = [r for r in TABLE if r.verdict[0] == "invalid"]
    valid = [r for r in TABLE if r.verdict[0] == "valid"]
    assert invalid + valid == TABLE  # the invalid rows come first
    kinds = set()
    for combo in COMBINATIONS:
        if any(r.matches(combo) for r in invalid):
            continue
        matching = [r for r in valid if r.matches(combo)]
        assert len(matching) == 1, (name(combo), [r.number for r in matching])
        kinds.add(matching[0].verdict[1])
    assert kinds == {"received", "bad-escrow", "aborted", "refused", "sent", "sealed"}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=name)
def test_verdict_of_every_combination_is_the_documented_one(combo: dict[str, Any]) -> None:
    bundle: dict[str, Any] = {k: FULL[k] for k in ("format", "holder", "core", "token", "eoo")}
    for f in FLAGS:
        bundle[f] = FULL[f] if combo[f] else None
    answer = combo["ttp_answer"]
    bundle["ttp_answer"] = None if answer == "none" else ANSWER_ITEMS[answer]
    expected = next(r for r in TABLE if r.matches(combo)).verdict
    try:
        v = evidence.verify(bundle, TRUST)
    except evidence.EvidenceInvalid as exc:
        assert ("invalid", exc.check) == expected, exc
        return
    assert ("valid", v.kind) == expected
    # m0 is shown exactly when k_r, k_t and c are all present
    assert (v.m0 == M0) == (combo["k_r"] and combo["k_t"] and combo["c"])
    assert v.m0 is None or v.m0 == M0
    if v.kind == "received":
        stamped = combo["receipt_token"]
        assert v.event_at == (T0 + 6 if stamped else
                              DEADLINES.m5_by + 1 if answer == "RESOLVED" else None)


def test_the_issue_bundle_is_invalid() -> None:
    """Issue 11: m4, k_R, k_T and c set to null (core, token, eoo, m5, m6 kept) was
    `VALID evidence (received)`."""
    bundle = {**FULL, "m4": None, "k_r": None, "k_t": None, "c": None, "refusal": None,
              "receipt_token": None}
    with pytest.raises(evidence.EvidenceInvalid) as e:
        evidence.verify(bundle, TRUST)
    assert e.value.check == "m5"
    with pytest.raises(evidence.EvidenceInvalid) as e:  # with m4: no content, no receipt
        evidence.verify({**bundle, "m4": FULL["m4"]}, TRUST)
    assert e.value.check == "content" and "k_r, k_t, c" in e.value.reason


def test_left_out_is_the_same_as_null() -> None:
    bundle = {k: v for k, v in FULL.items() if k not in ("refusal", "receipt_token", "holder")}
    v = evidence.verify(bundle, TRUST)
    assert v.kind == "received" and v.event_at is None and v.m0 == M0


def test_every_extra_item_is_stated() -> None:
    v = evidence.verify({**FULL, "ttp_answer": ANSWER_ITEMS["ABORTED"]}, TRUST)
    assert v.kind == "received"
    assert any("bob@b.test refused the mail" in s for s in v.statements)
    assert any("the TTP aborted the exchange" in s for s in v.statements)
    v = evidence.verify({**FULL, "m6": None, "receipt_token": None, "refusal": None,
                         "ttp_answer": ANSWER_ITEMS["REJECTED"]}, TRUST)
    assert v.kind == "sent" and any("declined a request" in s for s in v.statements)
