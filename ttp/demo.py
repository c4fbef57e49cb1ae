"""A complete certified exchange between two in-process parties, printed step by step.

Everything is real except the transport: real keys (encrypted on disk), a real RFC 3161
time-stamp authority, the TTP's decision logic, the SQL store, and the offline verifier.
Scenarios: ``accept`` (m1..m6), ``refuse`` (signed refusal, abort), ``silent-recipient``
(R1S abort), ``sender-stalls`` (R1R: the TTP releases the key), ``recipient-stalls`` (R2S).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path

from tcms import datakeys, evidence
from tcms.keystore import Keystore
from tcms.protocol import ttp as ttp_role
from tcms.protocol.checks import Trust
from tcms.protocol.events import Accept, Action, Deliver, Notify, Received, Refuse, Send, Tick
from tcms.protocol.events import TimestampReply as TsReply
from tcms.protocol.messages import M1, Deadlines, Description
from tcms.protocol.receiver import Receiver
from tcms.protocol.sender import Sender
from tcms.store import RunRecord, Store
from tss.authority import TimeStampAuthority, create_credentials

SCENARIOS = ("accept", "refuse", "silent-recipient", "sender-stalls", "recipient-stalls")

MAIL = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\n"
        b"Subject: Contract, signed copy\r\nMessage-ID: <demo-1@a.test>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Dear Bob,\r\nthe signed contract is attached in spirit. Regards, Alice\r\n")


def _short(data: bytes) -> str:
    return f"{len(data)} bytes"


async def run(out_dir: Path, scenario: str = "accept",
              say: Callable[[str], None] = print) -> dict[str, object]:
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    step = iter(range(1, 100))

    def log(text: str) -> None:
        say(f"[{next(step):2d}] {text}")

    now = int(time.time())
    passphrase = b"demo-passphrase-not-for-production"
    keys = Keystore(out_dir / "keys", passphrase)
    for name, kind in (("alice@a.test", "user"), ("bob@b.test", "user"),
                       ("ttp@tcms.test", "ttp")):
        if not keys._path(name).exists():
            keys.create(name, kind)
    alice, bob, ttp = (keys.load(n) for n in ("alice@a.test", "bob@b.test", "ttp@tcms.test"))
    log(f"identities (private keys encrypted in {out_dir / 'keys'}): "
        + ", ".join(f"{i.name} [{i.party.fingerprint[:14]}]" for i in (alice, bob, ttp)))
    tsa = TimeStampAuthority(create_credentials(
        "TCMS Demo TSA", now=dt.datetime.fromtimestamp(now - 3600, dt.UTC)))
    trust = Trust(ttp.party, tsa.creds.ca_cert)
    (out_dir / "trust.json").write_text(json.dumps(evidence.trust_to_json(trust), indent=1))
    store = Store(f"sqlite:///{out_dir / 'demo.db'}",
                  data_keys=datakeys.load_or_create(out_dir / "keys", passphrase))
    await store.upgrade()
    serial = [0]
    decisions: dict[bytes, ttp_role.Decision] = {}

    def tss(m1_or_tsq: bytes, kind: str, at: int) -> bytes:
        serial[0] += 1
        tsq = M1.decode(m1_or_tsq).tsq if kind == "m1" else m1_or_tsq
        return tsa.stamp(tsq, now=dt.datetime.fromtimestamp(at, dt.UTC), serial=serial[0]).reply

    def ttp_call(data: bytes, at: int) -> bytes:
        req = ttp_role.parse_request(data)
        ttp_role.check_request(ttp, req, trust)
        current = decisions.get(req.core.cid)
        decision, answer = ttp_role.decide(ttp, req, current, at)
        if current is not None:
            log(f"TTP: already {current.state}; it repeats its signed answer")
        elif decision is not None:
            decisions[req.core.cid] = decision
            log(f"TTP decides: {decision.state} (requested by {decision.by})")
        return answer

    deadlines = Deadlines(now + 600, now + 1200, now + 1800, now + 7200)
    sender, acts = Sender.start(alice, trust, bob.party, MAIL,
                                Description("Contract, signed copy", len(MAIL),
                                            "<demo-1@a.test>"), deadlines)
    log(f"alice seals the mail for bob: tx {sender.core.header.tx.hex()}, "
        f"c {_short(sender.state.c)}, k = HKDF(k_R, k_T); e_R to bob, e_T to the TTP")
    t = now
    lost: set[str] = set()

    async def persist(machine: Sender | Receiver, role: str) -> None:
        existing = await store.get_run(machine.cid, role)
        own, peer = (alice.name, bob.name) if role == "sender" else (bob.name, alice.name)
        # as a gateway stores a run: its state without c, c apart with a new run
        rec = RunRecord(machine.cid, role, machine.core.header.tx.hex(), own, peer,
                        machine.core.header.description.subject, machine.phase,
                        machine.terminal, machine.deadline, machine.stored(),
                        existing.version if existing else 0,
                        payload=None if existing else machine.payload)
        await store.save_run(rec, now=t, audit=[(role, f"phase.{machine.phase}", "")])

    machines: dict[str, Sender | Receiver] = {"alice": sender}

    def route(who: str, actions: list[Action], at: int) -> None:
        """Carry out a machine's actions: deliver sends, print notices."""
        other = "bob" if who == "alice" else "alice"
        for a in actions:
            if isinstance(a, Notify):
                log(f"{who} is told ({a.kind}): {a.text}")
            elif isinstance(a, Deliver):
                log(f"{who} can now read the original mail ({_short(a.m0)}):")
                say("       | " + a.m0.decode().splitlines()[-1])
            elif isinstance(a, Send):
                log(f"{who} -> {a.to}: {a.kind} ({_short(a.data)})")
                if a.kind in lost:
                    log(f"   ... {a.kind} is lost on the way")
                elif a.to == "tss":
                    route(who, machines[who].handle(TsReply(tss(a.data, a.kind, at)), at), at)
                elif a.to == "ttp":
                    route(who, machines[who].handle(Received(ttp_call(a.data, at)), at), at)
                elif a.kind == "m3":
                    rcv, acts = Receiver.from_m3(
                        bob, trust, a.data, at, lambda n: alice.party if n == alice.name else None)
                    machines["bob"] = rcv
                    route("bob", acts, at)
                else:
                    route(other, machines[other].handle(Received(a.data), at), at)

    if scenario == "sender-stalls":
        lost.add("m5")
    if scenario == "recipient-stalls":
        lost.add("m6")
    route("alice", acts, t)
    receiver = machines["bob"]
    assert isinstance(receiver, Receiver)
    await persist(sender, "sender")
    await persist(receiver, "receiver")
    t += 60
    if scenario == "refuse":
        log("bob refuses the mail")
        route("bob", receiver.handle(Refuse(), t), t)
    elif scenario != "silent-recipient":
        log("bob accepts the mail")
        route("bob", receiver.handle(Accept(), t), t)
    else:
        log("bob never answers")
    # time passes: each deadline fires the recovery procedure it guards
    for at in (deadlines.accept_by + 1, deadlines.m5_by + 1, deadlines.m6_by + 1):
        for who in ("alice", "bob"):
            if not machines[who].terminal:
                route(who, machines[who].handle(Tick(), at), at)
    await persist(sender, "sender")
    await persist(receiver, "receiver")
    log(f"final phases: alice {sender.phase}, bob {receiver.phase}")

    results: dict[str, object] = {"sender_phase": sender.phase, "receiver_phase":
                                  receiver.phase}
    for role, bundle in (("sender", evidence.from_sender(sender)),
                         ("receiver", evidence.from_receiver(receiver))):
        path = out_dir / f"evidence-{role}.json"
        path.write_text(evidence.dumps(bundle))
        try:
            verdict = evidence.verify(bundle, trust)
            log(f"{role}'s evidence {path.name}: VALID, verdict {verdict.kind}")
            for s in verdict.statements:
                say(f"       - {s}")
            results[role] = verdict.kind
            await store.save_evidence(sender.cid, role, verdict.kind, evidence.dumps(bundle), t)
        except evidence.EvidenceInvalid as exc:
            log(f"{role}'s evidence {path.name}: proves nothing ({exc})")
            results[role] = f"invalid: {exc.check}"
    n, bad = await store.verify_audit_chain()
    log(f"audit log: {n} entries, chain {'intact' if bad is None else 'BROKEN: ' + bad}")
    await store.close()
    say(f"\nCheck it yourself:  tcms verify {out_dir / 'evidence-sender.json'} "
        f"--trust {out_dir / 'trust.json'}")
    return results
