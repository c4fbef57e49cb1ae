"""More processes on the submission ports: ``[gateway] workers`` processes take mail, so
that relaying uses every core.

Every one of them binds the submission and smtps ports with SO_REUSEPORT, and the kernel
spreads new connections over them.  The first process (`tcms serve gateway`) runs
everything; each other one only takes mail, with the same code and guarantees
(gateway/submission.py): untagged mail is relayed and answered with the upstream's answer,
certified mail is stored in SQL before its 250, an answer by mail is applied to its run.
It then writes a byte into a pipe that the first process reads, whose worker acts at once.
The first process starts them (``start``), restarts one that dies, and they die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from gateway import context, memory, submission
from gateway.worker import answer
from tcms.config import Settings
from tcms.protocol.events import Event

log = logging.getLogger("tcms.gateway.workers")
PR_SET_PDEATHSIG = 1
# what a worker tells the first process through the pipe, a byte per mail it took
KINDS = {b"s": "submission", b"a": "answer"}


class Workers:
    """The extra processes of one gateway, and the pipe through which they kick it."""

    def __init__(self, settings: Settings, on_submit: Callable[[str], None]) -> None:
        self.settings, self.on_submit = settings, on_submit
        self.count = settings.gateway.workers - 1
        self.procs: list[subprocess.Popen[bytes]] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._task: asyncio.Task[None] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(  # noqa: S603 - this interpreter, this module
            [sys.executable, "-m", "gateway.workers", str(self._write), str(os.getpid())],
            stdin=subprocess.PIPE, pass_fds=(self._write,))
        # the settings as this process has them (secrets included): through a pipe, from a
        # thread, since they may be more than the pipe holds until the worker reads them
        threading.Thread(target=_hand_over, args=(proc, self.settings.model_dump_json()),
                         name=f"settings for worker {proc.pid}", daemon=True).start()
        return proc

    def _kicked(self) -> None:
        """Bytes from the workers: one per mail they took (``KINDS``), told to this process
        (its metrics count them; its worker looks for the work)."""
        got = b""
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._read, 4096):
                got += data
                if len(got) > 65536:
                    break  # the rest at the next wake-up
        for code, kind in KINDS.items():
            for _ in range(got.count(code)):
                self.on_submit(kind)

    async def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._read, self._kicked)
        self.procs = [self._spawn() for _ in range(self.count)]
        self._task = asyncio.create_task(self._watch())
        log.info("gateway: %d more submission worker process(es): %s", self.count,
                 ", ".join(str(p.pid) for p in self.procs))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log.warning("submission worker %d exited (%s): starting another",
                                proc.pid, proc.returncode)
                    try:
                        self.procs[i] = self._spawn()
                    except OSError as exc:  # out of processes, say: the next round tries
                        log.error("cannot start a submission worker: %r", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.get_running_loop().remove_reader(self._read)
        os.close(self._read)
        os.close(self._write)


async def start(settings: Settings, on_submit: Callable[[str], None]) -> Workers | None:
    """Start ``[gateway] workers`` - 1 more processes, if any."""
    if settings.gateway.workers <= 1:
        return None
    workers = Workers(settings, on_submit)
    await workers.start()
    return workers


def _hand_over(proc: subprocess.Popen[bytes], settings: str) -> None:
    """Write the settings to a new worker; one that dies first is started again by the
    watcher."""
    assert proc.stdin is not None
    try:
        with proc.stdin:
            proc.stdin.write(settings.encode())
    except OSError as exc:
        log.warning("submission worker %d did not take its settings: %r", proc.pid, exc)


def die_with_parent(parent: int) -> None:
    """SIGTERM when the first process dies: asked for by the worker itself, not between
    fork and exec (preexec_fn, not safe in a process with threads, and it keeps Python
    from starting the worker with vfork); a parent gone already ends it at once."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)


async def serve(settings: Settings, kick_fd: int) -> None:
    """One extra process: the submission listeners, until SIGTERM."""
    g = settings.gateway
    ctx = context.create(settings)
    memory.give_back_large_buffers()
    os.set_blocking(kick_fd, False)

    codes = {kind: code for code, kind in KINDS.items()}

    def kick(kind: str) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: the first process
            os.write(kick_fd, codes[kind])          # is kicked already (one count lost)

    async def answer_by_mail(user: str, tx: str, event: Event) -> str:
        return await answer(ctx, user, tx, event, int(time.time()))

    handler = submission.SubmissionHandler(
        ctx.store, ctx.upstream, g.tag, on_login=ctx.enroll, on_submit=kick,
        answer=answer_by_mail, domains=tuple(g.domains), max_recipients=g.max_recipients)
    assert g.tls_cert and g.tls_key
    tls = submission.tls_context(str(g.tls_cert), str(g.tls_key))
    servers = await submission.start(handler, tls=tls, submission=g.split(g.submission),
                                     smtps=g.split(g.smtps), max_size=g.max_message_size)
    log.info("submission worker %d listening: submission %s, smtps %s", os.getpid(),
             g.submission, g.smtps)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await ctx.aclose()


def main() -> None:
    die_with_parent(int(sys.argv[2]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s "
                        f"[worker {os.getpid()}]: %(message)s")
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    asyncio.run(serve(settings, int(sys.argv[1])))


if __name__ == "__main__":
    main()
