"""Store benchmark: per backend, CAS get+put, durable enqueue and enqueue -> lease -> ack
throughput with 1 and 32 concurrent clients (100-byte values). Starts its own redis-server
and PostgreSQL (with fsync on) exactly as the tests do (bench/_servers.py) and stops them.
Prints figures; it is never a test.

    .venv/bin/python bench/store_bench.py [--seconds 2] [--backends memory,sqlite,redis,postgresql]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("memory", "sqlite", "redis", "postgresql")
VALUE = b"x" * 100


async def _rate(op: Callable[[int], Awaitable[int]], clients: int, seconds: float) -> float:
    """Operations per second of `op(client)` (which returns how many it did) run by
    `clients` concurrent tasks until `seconds` have passed."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            n = await op(c)  # not `done += await ...`: that reads `done` before awaiting
            done += n

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(clients):
            tg.start_soon(client, c)
    return done / (time.perf_counter() - t0)


async def bench_backend(url: str, seconds: float) -> dict[str, float]:
    """One backend's figures, row name -> operations per second."""
    from runtime import VersionConflict, open_store

    out: dict[str, float] = {}
    async with open_store(url) as store:
        run = f"b{time.time_ns()}"

        async def cas(c: int) -> int:
            key = f"{run}/cas/{c}"
            cur = await store.get(key)
            try:
                await store.put(key, VALUE, expected_version=cur.version if cur else 0)
            except VersionConflict:
                return 0
            return 1

        async def enqueue(c: int) -> int:
            await store.enqueue(f"{run}-e", VALUE)
            return 1

        async def pipeline(c: int) -> int:
            q = f"{run}-q"
            await store.enqueue(q, VALUE)
            acked = 0
            for item in await store.lease(q, max_items=1, visibility_timeout=30):
                acked += await store.ack(q, item)
            return acked

        for clients in (1, 32):
            label = f"{clients} client" + ("s" if clients > 1 else "")
            out[f"CAS get+put, {label}"] = await _rate(cas, clients, seconds)
            out[f"durable enqueue, {label}"] = await _rate(enqueue, clients, seconds)
            out[f"enqueue -> lease -> ack, {label}"] = await _rate(pipeline, clients, seconds)
    return out


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per measurement, one column per backend."""
    rows = list(next(iter(results.values())))
    lines = ["| operations/s | " + " | ".join(results) + " |",
             "| --- |" + " --- |" * len(results)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{results[b][row]:,.0f}" for b in results)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="store_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated, from: " + ", ".join(BACKENDS))
    args = p.parse_args(argv)
    backends = [b for b in args.backends.replace(" ", ",").split(",") if b]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        p.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench._servers import postgres_server, redis_server

    results: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="stoic-store-bench-"))
        for backend in backends:
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
            elif backend == "redis":
                url = stack.enter_context(redis_server())
            elif backend == "postgresql":
                url = stack.enter_context(postgres_server(fsync=True))
            else:
                url = "memory://"
            print(f"  .. {backend}", file=sys.stderr, flush=True)
            results[backend] = anyio.run(bench_backend, url, args.seconds)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
