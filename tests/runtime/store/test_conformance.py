"""One conformance suite for every store backend, each against a real server/file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import InvalidStoreURL, LeaseLost, StoreUnavailable, VersionConflict, open_store
from tests.fixtures.postgres_server import postgres_url  # noqa: F401 - fixture
from tests.fixtures.redis_server import redis_url  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["memory", "sqlite", "redis", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("postgres_url")
    async with open_store(url) as s:
        s.test_prefix = f"t{uuid.uuid4().hex[:8]}/"  # isolates tests sharing a redis server
        yield s


async def poll(check: Callable[[], Awaitable[Any]], within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await anyio.sleep(0.02)
    raise AssertionError("condition not met in time")


pytestmark = pytest.mark.anyio


async def test_put_get_versions_and_cas(store: Any) -> None:
    k = store.test_prefix + "a"
    assert await store.get(k) is None
    assert await store.put(k, b"1", expected_version=0) == 1
    with pytest.raises(VersionConflict):
        await store.put(k, b"x", expected_version=0)
    assert await store.put(k, b"2", expected_version=1) == 2
    with pytest.raises(VersionConflict):
        await store.put(k, b"x", expected_version=1)
    got = await store.get(k)
    assert (got.value, got.version) == (b"2", 2)
    with pytest.raises(VersionConflict):
        await store.delete(k, expected_version=1)
    assert await store.delete(k, expected_version=2)
    assert await store.get(k) is None


async def test_cas_race_exactly_one_wins(store: Any) -> None:
    k = store.test_prefix + "race"
    await store.put(k, b"0")
    wins: list[int] = []

    async def writer(i: int) -> None:
        try:
            await store.put(k, str(i).encode(), expected_version=1)
            wins.append(i)
        except VersionConflict:
            pass

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(writer, i)
    assert len(wins) == 1
    assert (await store.get(k)).value == str(wins[0]).encode()


async def test_scan_order_limit_start_after_and_large_values(store: Any) -> None:
    p = store.test_prefix
    for name in ["b", "a", "c", "ab"]:
        await store.put(p + "s/" + name, name.encode())
    await store.put(p + "t/x", b"other")
    keys = [k for k, _ in await store.scan(p + "s/")]
    assert keys == [p + "s/a", p + "s/ab", p + "s/b", p + "s/c"]
    assert [k for k, _ in await store.scan(p + "s/", limit=2)] == [p + "s/a", p + "s/ab"]
    assert [k for k, _ in await store.scan(p + "s/", start_after=p + "s/ab")] == [p + "s/b", p + "s/c"]
    big = os.urandom(1024 * 1024)
    await store.put(p + "big", big)
    assert (await store.get(p + "big")).value == big


async def test_lease_expiry_takeover_and_increasing_tokens(store: Any) -> None:
    name = store.test_prefix + "lease"
    g1 = await store.acquire_lease(name, "one", 0.3)
    assert g1 is not None
    assert await store.acquire_lease(name, "two", 0.3) is None
    g1 = await store.renew_lease(g1, 0.3)
    g2 = await poll(lambda: store.acquire_lease(name, "two", 5.0), within=5)
    assert g2.token > g1.token
    with pytest.raises(LeaseLost):
        await store.renew_lease(g1, 0.3)
    await store.release_lease(g2)
    g3 = await store.acquire_lease(name, "three", 1.0)
    assert g3 is not None and g3.token > g2.token


async def test_queue_visibility_redelivery_and_attempts(store: Any) -> None:
    q = store.test_prefix + "q"
    item_id = await store.enqueue(q, b"job")
    [first] = await store.lease(q, max_items=10, visibility_timeout=0.3)
    assert (first.id, first.payload, first.attempts) == (item_id, b"job", 1)
    assert await store.lease(q, max_items=10, visibility_timeout=0.3) == []
    [again] = await poll(lambda: store.lease(q, max_items=10, visibility_timeout=5.0))
    assert again.attempts == 2
    assert not await store.ack(q, first)  # a stale receipt cannot remove it
    assert await store.ack(q, again)
    assert await store.lease(q, max_items=10, visibility_timeout=0.1) == []


async def test_idempotent_enqueue_and_delay(store: Any) -> None:
    q = store.test_prefix + "q"
    a = await store.enqueue(q, b"x", idempotency_key="k")
    b = await store.enqueue(q, b"y", idempotency_key="k")
    assert a == b
    await store.enqueue(q, b"later", delay=0.4)
    items = await store.lease(q, max_items=10, visibility_timeout=5)
    assert [i.payload for i in items] == [b"x"]
    [later] = await poll(lambda: store.lease(q, max_items=10, visibility_timeout=5))
    assert later.payload == b"later"


async def test_retry_keeps_attempts_dead_letter_and_redrive(store: Any) -> None:
    q = store.test_prefix + "q"
    await store.enqueue(q, b"job")
    [it] = await store.lease(q, max_items=1, visibility_timeout=5)
    assert await store.retry(q, it, delay=0.0, error="boom")
    [it] = await store.lease(q, max_items=1, visibility_timeout=5)
    assert it.attempts == 2
    assert await store.dead_letter(q, it, reason="gave up")
    assert await store.lease(q, max_items=1, visibility_timeout=5) == []
    dead = await store.list_dead_letters(q)
    assert [d.id for d in dead] == [it.id] and "gave up" in dead[0].error
    assert await store.redrive(q, None) == [it.id]
    [back] = await store.lease(q, max_items=1, visibility_timeout=5)
    assert back.id == it.id and back.attempts == 1
    assert await store.list_dead_letters(q) == []


async def test_malformed_and_unreachable_urls() -> None:
    with pytest.raises(InvalidStoreURL):
        async with open_store("mysql://x"):
            pass
    with pytest.raises(InvalidStoreURL):
        async with open_store("sqlite://relative.db"):
            pass
    with pytest.raises(StoreUnavailable) as info:
        async with open_store("redis://user:s3cret@127.0.0.1:1/0"):
            pass
    assert "s3cret" not in str(info.value) and "127.0.0.1:1" in str(info.value)
    with pytest.raises(StoreUnavailable) as info:
        async with open_store("postgresql://user:s3cret@127.0.0.1:1/db"):
            pass
    assert "s3cret" not in str(info.value)


_CONSUMER = r'''
import sys, anyio
from runtime import open_store
async def main(url, tag, n):
    async with open_store(url) as s:
        for i in range(n):
            await s.enqueue("shared", f"{tag}-{i}".encode())
        done = 0
        idle = 0
        while idle < 50:
            items = await s.lease("shared", max_items=8, visibility_timeout=30)
            if not items:
                idle += 1
                await anyio.sleep(0.02)
                continue
            idle = 0
            for it in items:
                if await s.ack("shared", it):
                    print(it.payload.decode(), flush=True)
anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
'''


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", _CONSUMER, url, tag, "300"],
                              stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
             for tag in ("p1", "p2")]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    acked = outs[0] + outs[1]
    assert sorted(acked) == sorted([f"p1-{i}" for i in range(300)] + [f"p2-{i}" for i in range(300)])


_WRITER = r'''
import sys, anyio
from runtime import open_store
async def main(url):
    async with open_store(url) as s:
        async def one(i):
            await s.put(f"k/{i:06d}", str(i).encode())
            print(i, flush=True)
        for start in range(0, 1_000_000, 16):
            async with anyio.create_task_group() as tg:
                for i in range(start, start + 16):
                    tg.start_soon(one, i)
anyio.run(main, sys.argv[1])
'''


def test_sqlite_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    import signal

    url = f"sqlite:///{tmp_path / 'durable.db'}"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE,
                            text=True, cwd=str(ROOT))
    acked: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= 500:
            break
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read().split()
    proc.wait(timeout=10)
    acked += [int(x) for x in rest]

    async def check() -> list[int]:
        async with open_store(url) as s:
            missing = []
            for i in acked:
                if await s.get(f"k/{i:06d}") is None:
                    missing.append(i)
            return missing

    assert anyio.run(check) == []
