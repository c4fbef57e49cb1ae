"""A real Postfix and a real Dovecot on this machine, for end-to-end tests.

Two mail domains (a.test, b.test) share one Postfix (SMTP on a high port, relaying by LMTP)
and one Dovecot (IMAP and LMTP on high ports, users from a passwd-file, a master user so
a service can open any mailbox).  Facts and settings: ../shared/reference/real-mail-stack.md.
Needs root and Debian's postfix, dovecot-imapd, dovecot-lmtpd (installed by .ci/run).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Every stack lives in its own directory under ROOT, so two test runs on one machine never
# share a Postfix queue, a Dovecot or a port.  Postfix accepts a config directory only if
# the system's /etc/postfix/main.cf names it: the block between the markers below lists the
# stacks that exist now (a stack that is gone is dropped from it the next time one starts).
ROOT = Path("/tmp")
PREFIX = "tcms-mailstack-"
SYSTEM_MAIN_CF = Path("/etc/postfix/main.cf")
BEGIN, END = "# >>> TCMS test mail stacks (tests/mailstack.py)", "# <<< TCMS test mail stacks"
DOMAINS = ("a.test", "b.test")
MASTER = ("gateway", "gateway-master-secret")
REFUSED_RCPT = "refuse-me@b.test"  # Postfix answers 554 at RCPT
REFUSED_HEADER = "X-Refuse-Me"  # Postfix answers 550 after DATA


_ROUTING = threading.Lock()
# how long a test waits for something that must happen (a server answers, a mail arrives, a
# gateway logs a line) before it fails: a stop for a test that would hang, not a speed limit;
# every wait ends as soon as what it waits for is there (TCMS_TEST_PATIENCE, seconds)
PATIENCE = float(os.environ.get("TCMS_TEST_PATIENCE", "300"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distinct_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets that listen on TCP ``port`` (the kernel's tables)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on ``port``: a server that answers on a port
    chosen by free_port() may be another test run's, which took it first."""
    inodes = _listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


def _wait_port(port: int, pid_file: Path, seconds: float = PATIENCE) -> None:
    """Wait until the daemon whose pid ``pid_file`` holds listens on ``port``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):  # not written yet
            pid = 0
        if pid and listens(pid, port):
            return
        if pid and not Path(f"/proc/{pid}").exists():
            break  # it ended: it could not listen
        time.sleep(0.1)
    raise RuntimeError(f"the server of {pid_file} does not listen on port {port} "
                       "(address already in use?)")


@contextlib.contextmanager
def _postfix_registered(confdir: Path) -> Iterator[None]:
    """Name ``confdir`` (and every other live stack's) in the system's main.cf, and hold the
    lock until the caller has started its Postfix: a stack counts as live once its master
    runs, so another run starting at once must not drop this one's line before that."""
    with open(ROOT / f".{PREFIX}lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = SYSTEM_MAIN_CF.read_text() if SYSTEM_MAIN_CF.exists() else ""
        kept, skip = [], False
        for line in text.splitlines():
            if line == BEGIN:
                skip = True
            elif line == END:
                skip = False
            elif not skip and "added by TCMS's test mail stack" not in line \
                    and "/tmp/tcms-mailstack" not in line:
                kept.append(line)
        live = sorted(str(d / "postfix") for d in ROOT.glob(PREFIX + "*")
                      if (d / "postfix" / "queue" / "pid" / "master.pid").exists())
        if str(confdir) not in live:
            live.append(str(confdir))
        block = [BEGIN, f"alternate_config_directories = {' '.join(live)}",
                 f"maillog_file_prefixes = {ROOT}, /var, /dev/stdout", END]
        body = "\n".join(kept).rstrip("\n")
        # whole or not at all: another run's `postfix -c ... reload` may read it meanwhile
        tmp = SYSTEM_MAIN_CF.with_name(f".main.cf.tcms-{os.getpid()}")
        tmp.write_text((body + "\n" if body else "") + "\n".join(block) + "\n")
        os.replace(tmp, SYSTEM_MAIN_CF)
        yield


@dataclass
class MailStack:
    users: dict[str, str]  # address -> password
    smtp_port: int = field(default_factory=free_port)
    imap_port: int = field(default_factory=free_port)
    imaps_port: int = field(default_factory=free_port)
    lmtp_port: int = field(default_factory=free_port)
    auth_port: int = field(default_factory=free_port)  # Dovecot's SASL, for Postfix
    # single addresses routed by Postfix to another LMTP listener (a gateway's intake)
    routes: dict[str, int] = field(default_factory=dict)
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=PREFIX,
                                                                     dir=ROOT)))
    _watcher: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def cert(self) -> Path:
        """The servers' certificate (CN and SAN 127.0.0.1), also the CA to trust."""
        return self.base / "tls" / "server.crt"

    @property
    def dovecot_dir(self) -> Path:
        return self.base / "dovecot"

    @property
    def postfix_dir(self) -> Path:
        return self.base / "postfix"

    # --- Dovecot ---------------------------------------------------------------------

    def _dovecot_conf(self) -> str:
        d = self.dovecot_dir
        return f"""
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.base}/tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:~/Maildir
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = {d}/masters
  master = yes
}}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service auth {{
  inet_listener auth {{
    address = 127.0.0.1
    port = {self.auth_port}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@a.test
}}
"""

    def _start_dovecot(self) -> None:
        d = self.dovecot_dir
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "dovecot.conf").write_text(self._dovecot_conf())
        lines = [f"{addr}:{{PLAIN}}{pw}::::{d}/mail/{addr}" for addr, pw in self.users.items()]
        (d / "users").write_text("\n".join(lines) + "\n")
        (d / "masters").write_text(f"{MASTER[0]}:{{PLAIN}}{MASTER[1]}\n")
        subprocess.run(["chown", "-R", "dovecot:dovecot", str(d / "mail")], check=True)
        with open(d / "start.log", "wb") as log:  # the daemon keeps its stdio: not a pipe
            res = subprocess.run(["dovecot", "-c", str(d / "dovecot.conf")], stdout=log,
                                 stderr=subprocess.STDOUT, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"dovecot did not start: {(d / 'start.log').read_text()}")
        for port in (self.imap_port, self.imaps_port, self.lmtp_port, self.auth_port):
            _wait_port(port, d / "run" / "master.pid")

    # --- Postfix ---------------------------------------------------------------------

    def _start_postfix(self) -> None:
        p = self.postfix_dir
        p.mkdir(parents=True, exist_ok=True)
        for sub in ("queue", "data"):
            (p / sub).mkdir(exist_ok=True)
        subprocess.run(["chown", "postfix", str(p / "data")], check=True)
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        out = []
        for line in master:
            fields = line.split()
            if len(fields) >= 8 and not line.startswith((" ", "\t", "#")):
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = str(self.smtp_port)
                fields[4] = "n"  # no chroot
                line = " ".join(fields)
            out.append(line)
        (p / "master.cf").write_text("\n".join(out) + "\n")
        (p / "header_checks").write_text(f"/^{REFUSED_HEADER}:/ REJECT refused by policy\n")
        self._write_transport()
        (p / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {p}/queue
data_directory = {p}/data
mail_owner = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
myhostname = mx.tcms.test
mydestination =
relay_domains = {" ".join(DOMAINS)}
transport_maps = texthash:{p}/transport
smtpd_relay_restrictions = permit_mynetworks, reject
# refusals for tests: a recipient refused at RCPT, a header refused after DATA
smtpd_recipient_restrictions = check_recipient_access inline:{{ {REFUSED_RCPT}=REJECT }}
header_checks = regexp:{p}/header_checks
alias_maps =
local_recipient_maps =
message_size_limit = 52428800
local_header_rewrite_clients =
always_add_missing_headers = no
smtpd_tls_cert_file = {self.cert}
smtpd_tls_key_file = {self.base}/tls/server.key
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
maillog_file = {p}/maillog
maillog_file_prefixes = {ROOT}
""")
        with _postfix_registered(p), open(p / "start.log", "wb") as log:
            res = subprocess.run(["script", "-qc", f"postfix -c {p} start", "/dev/null"],
                                 stdout=log, stderr=subprocess.STDOUT, timeout=PATIENCE)
        if res.returncode != 0:
            raise RuntimeError(f"postfix did not start: {(p / 'start.log').read_text()}")
        _wait_port(self.smtp_port, p / "queue" / "pid" / "master.pid")

    def add_submission(self, port: int, relay_to: int) -> None:
        """Postfix's own submission service on ``port``, as an organisation runs it:
        STARTTLS required, SASL (PLAIN, LOGIN) through Dovecot, the stack's users only;
        everything it takes goes to the SMTP server on 127.0.0.1:``relay_to`` (a
        benchmark's smtp-sink).  Postfix is reloaded."""
        line = (f"{port} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt "
                "-o smtpd_tls_auth_only=yes -o smtpd_sasl_auth_enable=yes "
                "-o smtpd_sasl_type=dovecot "
                f"-o smtpd_sasl_path=inet:127.0.0.1:{self.auth_port} "
                "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject "
                "-o smtpd_recipient_restrictions=permit_sasl_authenticated,reject "
                f"-o content_filter=smtp:[127.0.0.1]:{relay_to}")
        with _ROUTING:
            master = self.postfix_dir / "master.cf"
            master.write_text(master.read_text() + line + "\n")
            res = subprocess.run(["script", "-qc", f"postfix -c {self.postfix_dir} reload",
                                  "/dev/null"], capture_output=True, timeout=PATIENCE)
        if res.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {res.stdout!r}")
        _wait_port(port, self.postfix_dir / "queue" / "pid" / "master.pid")

    def _write_transport(self) -> None:
        lines = [f"{addr} lmtp:inet:127.0.0.1:{port}" for addr, port in self.routes.items()]
        lines += [f"{dom} lmtp:inet:127.0.0.1:{self.lmtp_port}" for dom in DOMAINS]
        (self.postfix_dir / "transport").write_text("\n".join(lines) + "\n")

    def route(self, address: str, port: int) -> None:
        """Route one address to an LMTP listener on ``port`` (a gateway's intake), as an
        administrator adds one ``transport_maps`` line; Postfix is reloaded."""
        with _ROUTING:  # two gateways may be set up at once (tests/gateways.py)
            self.routes[address] = port
            self._write_transport()
            res = subprocess.run(["script", "-qc", f"postfix -c {self.postfix_dir} reload",
                                  "/dev/null"], capture_output=True, timeout=PATIENCE)
        if res.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {res.stdout!r}")

    def unroute(self, address: str) -> int:
        """Take one address's route away again (Postfix is reloaded); returns its port."""
        with _ROUTING:
            port = self.routes.pop(address)
            self._write_transport()
            res = subprocess.run(["script", "-qc", f"postfix -c {self.postfix_dir} reload",
                                  "/dev/null"], capture_output=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {res.stdout!r}")
        return port

    def flush(self) -> None:
        """Ask Postfix to try every deferred mail again now (``postfix flush``), as an
        administrator does once a route is fixed."""
        res = subprocess.run(["script", "-qc", f"postfix -c {self.postfix_dir} flush",
                              "/dev/null"], capture_output=True, timeout=PATIENCE)
        if res.returncode != 0:
            raise RuntimeError(f"postfix flush failed: {res.stdout!r}")

    def _make_cert(self) -> None:
        tls = self.base / "tls"
        tls.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tls / "server.key"),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=PATIENCE)

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> MailStack:
        """Start Dovecot and Postfix in the stack's own directory.  A port chosen by
        free_port() can be taken by another process (another test run) before a server
        binds it: then the stack starts again on fresh ports."""
        for attempt in range(3):
            if attempt or len({*self.ports()}) < len(self.ports()):
                (self.smtp_port, self.imap_port, self.imaps_port, self.lmtp_port,
                 self.auth_port) = distinct_ports(5)
            self.stop()
            if self.base.exists():
                shutil.rmtree(self.base)
            self.base.mkdir(parents=True)
            os.chmod(self.base, 0o755)
            atexit.register(self.stop)  # also when a test run is interrupted
            self._watch()
            try:
                self._make_cert()
                self._start_dovecot()
                self._start_postfix()
                return self
            except RuntimeError as e:
                if "address already in use" not in str(e).lower() or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def ports(self) -> list[int]:
        return [self.smtp_port, self.imap_port, self.imaps_port, self.lmtp_port, self.auth_port]

    def _watch(self) -> None:
        """A watcher in a session of its own holds the reading end of a pipe whose writing
        end only this process has: when this process ends, however it ends (Ctrl-C, SIGTERM,
        SIGKILL), the watcher reads end-of-file, stops the stack's servers and deletes its
        directory.  (Dovecot and Postfix are daemons: nothing else ties them to the run.)"""
        if self._watcher is None or self._watcher.poll() is not None:
            self._watcher = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(self.base)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)

    def remove(self) -> None:
        """Stop the servers and delete the stack's directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
        if self._watcher is not None:
            assert self._watcher.stdin is not None
            self._watcher.stdin.close()  # nothing left for it to do: it ends
            self._watcher.wait(timeout=PATIENCE)
            self._watcher = None

    def stop(self) -> None:
        stop_servers(self.base)

    def dovecot_log(self) -> str:
        path = self.dovecot_dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def maillog(self) -> str:
        path = self.postfix_dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


def stop_servers(base: Path) -> None:
    """Stop the Postfix and the Dovecot of the stack in ``base``, if they run."""
    postfix_dir = base / "postfix"
    if (postfix_dir / "main.cf").exists():
        subprocess.run(["script", "-qc", f"postfix -c {postfix_dir} stop", "/dev/null"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=PATIENCE)
    pid_file = base / "dovecot" / "run" / "master.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it has ended (it removes its pid file)
            os.kill(pid, 0)
            if not pid_file.exists():
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":  # the watcher of MailStack._watch: python mailstack.py BASE
    sys.stdin.buffer.read()  # returns once the test process that started it has ended
    stop_servers(Path(sys.argv[1]))
    shutil.rmtree(sys.argv[1], ignore_errors=True)
