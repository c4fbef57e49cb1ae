"""`[gateway] workers` without mail servers: how the first process hands a worker its
settings (through a pipe) and starts another when one dies (gateway/workers.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mailstack import PATIENCE

from gateway.workers import Workers
from tcms.config import GatewayConfig, Settings
from tcms.mailconfig import MailConfig


async def test_a_worker_that_dies_before_reading_its_settings_is_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings larger than a pipe holds (a language per user), and a worker that dies
    before it reads them: the first process neither fails (BrokenPipeError) nor stops
    starting workers; the settings are written from a thread, not the event loop."""
    dies = tmp_path / "python"
    dies.write_text("#!/bin/sh\nexit 3\n")
    dies.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(dies))
    languages = {f"user{i}@example.org": "it" for i in range(12000)}
    settings = Settings(gateway=GatewayConfig(workers=2), mail=MailConfig(languages=languages))
    assert len(settings.model_dump_json()) > 256 * 1024  # more than a pipe's buffer
    workers = Workers(settings, lambda _kind: None)
    await workers.start()
    try:
        first = workers.procs[0]
        deadline = time.monotonic() + PATIENCE
        while workers.procs[0] is first:
            assert time.monotonic() < deadline, "no other worker was started"
            await asyncio.sleep(0.1)
        assert first.returncode == 3
    finally:
        await workers.stop()


async def test_a_worker_that_cannot_be_started_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A failed start (no such program here; fork failing when out of processes) is
    logged and tried again at the next round, not the end of the watcher."""
    dies = tmp_path / "python"
    dies.write_text("#!/bin/sh\nexit 3\n")
    dies.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(dies))
    workers = Workers(Settings(gateway=GatewayConfig(workers=2)), lambda _kind: None)
    await workers.start()
    try:
        first = workers.procs[0]
        monkeypatch.setattr(sys, "executable", str(tmp_path / "missing"))
        deadline = time.monotonic() + PATIENCE
        while "cannot start a submission worker" not in caplog.text:
            assert time.monotonic() < deadline, "the watcher did not try again"
            await asyncio.sleep(0.1)
        monkeypatch.setattr(sys, "executable", str(dies))
        while workers.procs[0] is first:
            assert time.monotonic() < deadline, "no other worker was started"
            await asyncio.sleep(0.1)
    finally:
        await workers.stop()


def test_a_worker_dies_with_the_first_process(tmp_path: Path) -> None:
    """A worker whose first process is killed (SIGKILL: nothing runs to stop it) ends too,
    even while it still waits for its settings."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, subprocess, sys\n"
         "r, w = os.pipe()\n"
         "p = subprocess.Popen([sys.executable, '-m', 'gateway.workers', str(w),"
         " str(os.getpid())], pass_fds=(w,))\n"
         "print(p.pid, flush=True)\n"
         "p.wait()\n"],
        # the worker reads its settings from this pipe, which the test holds open
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path)
    assert parent.stdout is not None and parent.stdin is not None
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + PATIENCE
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived its first process"
            time.sleep(0.1)
    finally:
        parent.stdin.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def test_what_a_worker_took_is_told_to_the_first_process() -> None:
    """A worker writes a byte per mail it took; the first process is told each one, by
    kind (its metrics count them and its worker looks for the work)."""
    told: list[str] = []
    workers = Workers(Settings(), told.append)
    loop = asyncio.get_running_loop()
    loop.add_reader(workers._read, workers._kicked)
    try:
        os.write(workers._write, b"s" * 3 + b"a" + b"s" + b"?")  # an unknown byte: ignored
        deadline = time.monotonic() + PATIENCE
        while len(told) < 5:
            assert time.monotonic() < deadline, told
            await asyncio.sleep(0.01)
    finally:
        loop.remove_reader(workers._read)
        os.close(workers._read)
        os.close(workers._write)
    assert sorted(told) == ["answer"] + ["submission"] * 4
