"""Run real `tcms serve` processes for tests: ports, environment, start, wait, stop."""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import TSA, TTP
from mailstack import PATIENCE, distinct_ports, listens

from tcms.identity import Identity
from tcms.keystore import Keystore
from tss import credentials

PASSPHRASE = "service-test-passphrase"
DC = Identity.from_seed("dc@tcms.test", b"dc" * 16, kind="dc")


# every server process a test starts, until it is stopped: stopped at exit too, so that an
# interrupted run (Ctrl-C, or SIGTERM: see conftest.py) leaves none behind; and each one
# gets SIGTERM from the kernel should the test process die without running atexit (SIGKILL)
_LIVE: set[subprocess.Popen[bytes]] = set()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a test's server process: it is stopped when the test run ends, however it
    ends.  Call it from the main thread: the kernel's SIGTERM follows the death of the
    thread that started the process, not of the whole test process."""
    assert threading.current_thread() is threading.main_thread(), "spawn from the main thread"
    proc = subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)
    _LIVE.add(proc)
    return proc


@atexit.register
def stop_every_process() -> None:
    for proc in list(_LIVE):
        stop_process(proc)


def prepare_keys(directory: Path) -> None:
    """The test TTP identity and the test TSA, as the services load them from disk."""
    Keystore(directory, PASSPHRASE.encode()).save(TTP)
    Keystore(directory, PASSPHRASE.encode()).save(DC)
    credentials.save(directory, TSA.creds, PASSPHRASE.encode())


@dataclass
class Services:
    """One `tcms serve` process (TSS and/or TTP) with its own ports."""

    workdir: Path
    db_url: str
    which: str = "all"
    tls: tuple[Path, Path] | None = None
    tss_port: int = 0
    ttp_port: int = 0
    dc_port: int = 0
    metrics_port: int = 0  # the process's Prometheus endpoint
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. TCMS_TTP__DISPUTE_BURST
    proc: subprocess.Popen[bytes] | None = None
    _log_path: Path = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.tss_port, self.ttp_port, self.dc_port, self.metrics_port = distinct_ports(4)
        self._log_path = self.workdir / "serve.log"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def tss(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.tss_port}"

    @property
    def ttp(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ttp_port}"

    @property
    def dc(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.dc_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TCMS_")}
        env.update({
            "TCMS_KEYS__DIR": str(self.workdir / "keys"),
            "TCMS_KEYS__PASSPHRASE": PASSPHRASE,
            "TCMS_DATABASE__URL": self.db_url,
            "TCMS_TSS__LISTEN": f"127.0.0.1:{self.tss_port}",
            "TCMS_TTP__LISTEN": f"127.0.0.1:{self.ttp_port}",
            "TCMS_TTP__IDENTITY": TTP.name,
            "TCMS_TTP__URL": self.ttp,
            "TCMS_DC__LISTEN": f"127.0.0.1:{self.dc_port}",
            "TCMS_DC__IDENTITY": DC.name,
            "TCMS_DC__URL": self.dc,
            "TCMS_DC__UPDATES_DIR": str(self.workdir / "updates"),
            "TCMS_METRICS__LISTEN": f"127.0.0.1:{self.metrics_port}",
        })
        env.update(self.extra_env)
        if self.tls:
            for svc in ("TSS", "TTP", "DC"):
                env[f"TCMS_{svc}__TLS_CERT"] = str(self.tls[0])
                env[f"TCMS_{svc}__TLS_KEY"] = str(self.tls[1])
        return env

    def start(self) -> Services:
        """Start `tcms serve` and wait until every service answers.  A port chosen by
        free_port() can be taken by another socket before the server binds it; then the
        server exits with "address already in use" and is started again on fresh ports."""
        for attempt in range(3):
            if self._start_once():
                return self
            if "address already in use" not in self.log_text().lower() or attempt == 2:
                break
            self.tss_port, self.ttp_port, self.dc_port, self.metrics_port = distinct_ports(4)
        raise RuntimeError(f"tcms serve exited: {self.log_text()}")

    def _start_once(self) -> bool:
        self._log_path = self.workdir / f"serve-{self.ttp_port}.log"
        log = open(self._log_path, "ab")  # noqa: SIM115
        self.proc = spawn([sys.executable, "-m", "tcms.cli", "serve", self.which],
                          env=self.env(), cwd=self.workdir, stdout=log,
                          stderr=subprocess.STDOUT)
        urls = {"all": [self.tss, self.ttp, self.dc], "tss": [self.tss], "ttp": [self.ttp],
                "dc": [self.dc]}[self.which]
        verify: bool | ssl.SSLContext = (ssl.create_default_context(cafile=str(self.tls[0]))
                                         if self.tls else True)
        deadline = time.time() + PATIENCE  # it waits while the process lives
        for url in urls:
            while True:
                if self.proc.poll() is not None:
                    return False
                port = int(url.rsplit(":", 1)[1])
                try:  # its own listener, not another test run's that took the port first
                    if listens(self.proc.pid, port) and httpx.get(
                            url + "/health", verify=verify, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"tcms serve did not start: {self.log_text()}")
                time.sleep(0.1)
        return True

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Signal a test's server process (woken first if stopped) and reap it; kill it if it
    does not end within 15 s."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _LIVE.discard(proc)
