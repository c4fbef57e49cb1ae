"""Two organisations, one certified mail, printed step by step.

Starts a real Postfix and Dovecot for the mail domains a.test and b.test, the TSS, TTP and
DC, and one TCMS gateway per organisation (tests/mailstack.py, tests/gateways.py).  Then,
with nothing but Python's standard smtplib and imaplib, through the gateways' SMTP and
IMAP proxies (TLS):

  alice@a.test sends "[certified] ..." -> bob@b.test sees a notice -> bob accepts it by
  moving it to Certified.Accept -> bob reads the original -> alice gets the receipt ->
  anyone verifies the evidence offline with `tcms verify`.

Every mail a gateway writes to a user is S/MIME signed with a certificate its
organisation's CA issued: the receipt, as Dovecot delivers it, is written to
demo-out/receipt.eml and checked with `openssl smime -verify -CAfile <a.test's CA>`.

Protocol mail between the gateways goes to each one's protocol address
(tcms-gateway@a.test, tcms-gateway@b.test), which Postfix routes to the gateway's LMTP
intake (one transport_maps line each); users' mailboxes never see it.

Needs root and Debian's postfix, dovecot-imapd, dovecot-lmtpd (`make demo` installs
them).  It keeps its state in SQLite; no PostgreSQL is needed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from gateways import attachment, move, parse, start_orgs, subject_starts, wait_mail  # noqa: E402
from signing import text_of  # noqa: E402

MAIL = (b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\n"
        b"Subject: [certified] Signed contract, please confirm\r\n"
        b"Message-ID: <demo-contract@a.test>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Dear Bob,\r\n\r\nhere is the signed contract. Kind regards,\r\nAlice\r\n")

step_no = 0


def step(text: str) -> None:
    global step_no
    step_no += 1
    print(f"\n[{step_no}] {text}")


def show(text: str, indent: str = "    | ") -> None:
    print(textwrap.indent(text.rstrip(), indent, lambda _: True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-out"),
                    help="where the evidence and trust file are written")
    args = ap.parse_args()
    missing = [c for c in ("postfix", "dovecot") if shutil.which(c) is None]
    if missing:
        print(f"missing: {', '.join(missing)}; install postfix dovecot-imapd dovecot-lmtpd "
              "(as root: make demo does)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tcms-demo-"))
    step("Starting Postfix + Dovecot (a.test, b.test), the TSS, TTP and DC, and two "
         "gateways ...")
    orgs = start_orgs(work, f"sqlite:///{work / 'services.db'}",
                      f"sqlite:///{work / 'a.db'}", f"sqlite:///{work / 'b.db'}")
    try:
        a, b, imap = orgs.a, orgs.b, orgs.proxy
        show(f"gateway a.test: SMTP 127.0.0.1:{a.submission} (STARTTLS), IMAP "
             f"127.0.0.1:{a.imaps} (TLS)\ngateway b.test: SMTP 127.0.0.1:{b.submission} "
             f"(STARTTLS), IMAP 127.0.0.1:{b.imaps} (TLS)\neach gateway signs its users' "
             "mail (S/MIME) with a certificate from its organisation's CA")

        step("alice sends a certified mail to bob with smtplib (STARTTLS, AUTH) through "
             "gateway a.test")
        show(MAIL.decode())
        with a.smtp("alice@a.test") as s:
            s.sendmail("alice@a.test", ["bob@b.test"], MAIL)
        show("the gateway answered 250: stored durably, queued for certification")

        step("alice's mailbox (imaplib through her gateway): the submission receipt")
        _, raw = wait_mail(imap, "alice@a.test", subject_starts("Sent for certification"))
        msg = parse(raw)
        show(f"Subject: {msg['Subject']}\n\n{text_of(msg)}")

        step("bob's mailbox (imaplib through his gateway): a notice, the mail still sealed")
        uid, raw = wait_mail(imap, "bob@b.test", subject_starts("Certified mail from"))
        msg = parse(raw)
        show(f"Subject: {msg['Subject']}\n\n{text_of(msg)}")

        step("bob accepts: his client moves the notice into Certified.Accept")
        move(imap, "bob@b.test", uid, "Certified.Accept")

        step("bob's INBOX: the original mail, as alice wrote it, with certification headers")
        t0 = time.time()
        _, raw = wait_mail(imap, "bob@b.test",
                           lambda m: m["TCMS-Certified"] is not None and
                           "Signed contract" in str(m["Subject"]))
        show(raw.decode(errors="replace").replace("\r\n", "\n"))

        step("alice's INBOX (imaplib on Dovecot): the receipt, signed, the evidence attached")
        _, raw = wait_mail(orgs.direct, "alice@a.test", subject_starts("Receipt:"))
        msg = parse(raw)
        show(f"Subject: {msg['Subject']}\n\n{text_of(msg)}")
        print(f"    (the whole exchange after bob's click took {time.time() - t0:.1f} s)")
        show(f"Content-Type: {msg.get_content_type()}; parts: "
             + ", ".join(p.get_content_type() for p in msg.walk()
                         if not p.is_multipart()))
        show("certdata.json, the summary for programs:\n"
             + attachment(raw, "vnd.tcms.certdata+json").decode())

        args.out.mkdir(parents=True, exist_ok=True)
        step("the receipt's S/MIME signature: openssl smime -verify with a.test's CA")
        receipt, ca = args.out / "receipt.eml", args.out / "mail-ca-a.test.pem"
        receipt.write_bytes(raw)
        shutil.copy(a.mail_ca, ca)
        cmd = ["openssl", "smime", "-verify", "-in", str(receipt), "-CAfile", str(ca),
               "-out", "/dev/null"]
        print("    $ " + " ".join(cmd))
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        show(res.stdout + res.stderr)
        if res.returncode != 0:
            return 1

        step("anyone can check the evidence offline: tcms verify")
        evidence = args.out / "evidence-receipt.json"
        evidence.write_bytes(attachment(raw, "vnd.tcms.evidence+json"))
        trust = args.out / "trust.json"
        shutil.copy(a.workdir / "trust.json", trust)
        cmd = ["tcms", "verify", str(evidence), "--trust", str(trust)]
        print("    $ " + " ".join(cmd))
        res = subprocess.run([sys.executable, "-m", "tcms.cli", *cmd[1:]],
                             capture_output=True, text=True, timeout=60)
        show(res.stdout + res.stderr)
        if res.returncode != 0:
            return 1
        print(f"\nDone. The receipt as delivered, its CA, the evidence and the trust file "
              f"are in {args.out}/.")
        return 0
    finally:
        orgs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
