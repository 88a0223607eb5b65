"""Store benchmark: per backend, CAS put/get and durable enqueue -> lease -> ack throughput
with 1 and 32 concurrent clients. Starts its own redis-server and PostgreSQL (as the tests
do) and stops them.

    .venv/bin/python -m bench.store_bench [--seconds 2] [--backends sqlite,redis,postgresql]
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


async def _rate(op: Callable[[int, int], Awaitable[None]], clients: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            await op(c, i)
            i += 1
            done += 1

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(clients):
            tg.start_soon(client, c)
    return done / (time.perf_counter() - t0)


async def bench_backend(url: str, seconds: float) -> dict[str, float]:
    from runtime import VersionConflict, open_store

    out: dict[str, float] = {}
    async with open_store(url) as store:
        run = f"b{time.time_ns()}"

        async def cas(c: int, i: int) -> None:
            key = f"{run}/cas/{c}"
            cur = await store.get(key)
            try:
                await store.put(key, b"x" * 100, expected_version=cur.version if cur else 0)
            except VersionConflict:
                pass

        async def queue(c: int, i: int) -> None:
            q = f"{run}-q{c}"
            await store.enqueue(q, b"x" * 100)
            for item in await store.lease(q, max_items=1, visibility_timeout=30):
                await store.ack(q, item)

        async def enqueue(c: int, i: int) -> None:
            await store.enqueue(f"{run}-e", b"x" * 100)

        for clients in (1, 32):
            out[f"cas get+put, {clients} client(s)"] = await _rate(cas, clients, seconds)
            out[f"enqueue->lease->ack, {clients} client(s)"] = await _rate(queue, clients, seconds)
            out[f"durable enqueue, {clients} client(s)"] = await _rate(enqueue, clients, seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="store_bench", description=__doc__)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--backends", default="sqlite,redis,postgresql")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.postgres_server import postgres_server
    from tests.fixtures.redis_server import redis_server

    results: dict[str, dict[str, float]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="stoic-sb-") as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
            elif backend == "redis":
                url = stack.enter_context(redis_server())
            elif backend == "postgresql":
                url = stack.enter_context(postgres_server())
            else:
                url = "memory://"
            print(f"  .. {backend}", file=sys.stderr, flush=True)
            results[backend] = anyio.run(bench_backend, url, args.seconds)
    rows = list(next(iter(results.values())))
    print(f"{'ops/s':40}" + "".join(f"{b:>12}" for b in results))
    for row in rows:
        print(f"{row:40}" + "".join(f"{results[b][row]:12,.0f}" for b in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
