"""A writer process is SIGKILLed mid-stream; every write it reported acknowledged (printed
after `put` returned, i.e. after its group commit) is in the file when it is reopened."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio

from runtime import open_store

ROOT = Path(__file__).resolve().parents[3]

_WRITER = r'''
import sys, anyio
from runtime import open_store
async def main(url):
    async with open_store(url) as s:
        async def one(i):
            await s.put(f"k/{i:07d}", str(i).encode())
            await s.enqueue("q", str(i).encode())
            print(i, flush=True)
        for start in range(0, 1_000_000, 32):
            async with anyio.create_task_group() as tg:
                for i in range(start, start + 32):
                    tg.start_soon(one, i)
anyio.run(main, sys.argv[1])
'''


def _read_acks(proc: subprocess.Popen[bytes], want: int, within: float) -> list[int]:
    """Lines from the writer until `want` acks were read (then SIGKILL it) or time runs out."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    acked: list[int] = []
    killed = False
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not killed and len(acked) >= want:
                proc.send_signal(signal.SIGKILL)  # mid-stream: writes are in flight
                proc.wait(timeout=10)
                killed = True
            sel.select(timeout=0.1)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk and proc.poll() is not None:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            acked.extend(int(line) for line in lines if line)
    assert killed, f"the writer acknowledged only {len(acked)} writes in {within} s"
    return acked


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE,
                            cwd=str(ROOT))
    try:
        acked = _read_acks(proc, want=1000, within=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    async def missing() -> tuple[list[int], int]:
        async with open_store(url) as s:
            keys = {k for k, _ in await s.scan("k/")}
            items = await s.lease("q", max_items=1_000_000, visibility_timeout=60)
        absent = [i for i in acked if f"k/{i:07d}" not in keys]
        payloads = {int(it.payload) for it in items}
        return absent + [i for i in acked if i not in payloads], len(keys)

    absent, stored = anyio.run(missing)
    assert absent == []
    assert stored >= len(acked)
