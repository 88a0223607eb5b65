"""One conformance suite: every test runs against every backend, each a real one (a
SQLite file, a redis-server and a PostgreSQL server started by the fixtures).

Leases and visibility timeouts are wall-clock here (several processes share a store), so
those tests use short TTLs and poll with deadlines; the memory backend's injectable clock
is tested on its own at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from runtime import (
    LeaseLost,
    MemoryStore,
    StateNamespace,
    Store,
    StoreClosed,
    VersionConflict,
    open_store,
)

ROOT = Path(__file__).resolve().parents[3]
BACKENDS = ["memory", "sqlite", "redis", "postgresql"]
T = TypeVar("T")

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("postgres_url")
    async with open_store(url) as s:
        yield s


@pytest.fixture
def ns() -> str:
    """A fresh key/queue prefix: tests share one redis and one PostgreSQL server."""
    return f"t{uuid.uuid4().hex[:10]}/"


async def poll(check: Callable[[], Awaitable[T]], within: float = 5.0) -> T:
    """`check()`'s first truthy result, polled every 20 ms; AssertionError after `within`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await anyio.sleep(0.02)
    raise AssertionError(f"condition not met within {within} s")


# --- versioned values -------------------------------------------------------------------


async def test_versions_and_compare_and_set(store: Store, ns: str) -> None:
    k = ns + "a"
    assert await store.get(k) is None
    assert await store.put(k, b"1", expected_version=0) == 1
    with pytest.raises(VersionConflict) as info:
        await store.put(k, b"x", expected_version=0)
    assert (info.value.key, info.value.expected, info.value.actual) == (k, 0, 1)
    assert await store.put(k, b"2", expected_version=1) == 2
    assert await store.put(k, b"3") == 3  # unconditional
    with pytest.raises(VersionConflict):
        await store.put(k, b"x", expected_version=2)
    got = await store.get(k)
    assert got is not None and (got.value, got.version) == (b"3", 3)
    with pytest.raises(VersionConflict):
        await store.put(ns + "absent", b"x", expected_version=4)
    with pytest.raises(VersionConflict):
        await store.delete(k, expected_version=1)
    assert await store.delete(k, expected_version=3)
    assert await store.get(k) is None
    assert not await store.delete(k)
    assert await store.put(k, b"again") == 1  # a deleted key starts over


async def test_cas_race_exactly_one_wins(store: Store, ns: str) -> None:
    k = ns + "race"
    await store.put(k, b"0")
    wins: list[int] = []
    losers: list[int] = []

    async def writer(i: int) -> None:
        try:
            await store.put(k, str(i).encode(), expected_version=1)
            wins.append(i)
        except VersionConflict as exc:
            assert exc.actual == 2
            losers.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(writer, i)
    assert len(wins) == 1 and len(losers) == 19
    got = await store.get(k)
    assert got is not None and (got.value, got.version) == (str(wins[0]).encode(), 2)


async def test_scan_order_limit_and_start_after(store: Store, ns: str) -> None:
    names = ["b", "a", "c", "ab", "a/b", "Z", "é", "中"]
    for name in names:
        await store.put(ns + "s/" + name, name.encode())
    await store.put(ns + "s", b"not under s/")
    await store.put(ns + "t/x", b"other")
    expected = [ns + "s/" + n for n in sorted(names)]  # code-point order
    assert [k for k, _ in await store.scan(ns + "s/")] == expected
    assert [(k, v.value) for k, v in await store.scan(ns + "s/", limit=2)] == [
        (expected[0], b"Z"), (expected[1], b"a")]
    assert [k for k, _ in await store.scan(ns + "s/", start_after=ns + "s/ab")] == \
        expected[expected.index(ns + "s/ab") + 1:]
    assert [k for k, _ in await store.scan(ns + "s/", start_after=ns + "s/b", limit=1)] == \
        [ns + "s/c"]
    assert [k for k, _ in await store.scan(ns + "s/", start_after=ns)] == expected
    assert await store.scan(ns + "s/", start_after=ns + "s/中") == []
    assert await store.scan(ns + "nothing/") == []


async def test_one_mebibyte_values_and_payloads(store: Store, ns: str) -> None:
    big = os.urandom(1024 * 1024)
    assert await store.put(ns + "big", big) == 1
    got = await store.get(ns + "big")
    assert got is not None and got.value == big
    [(_, scanned)] = await store.scan(ns + "big")
    assert scanned.value == big
    item_id = await store.enqueue(ns + "q", big)
    [item] = await store.lease(ns + "q", max_items=1, visibility_timeout=5)
    assert (item.id, item.payload) == (item_id, big)


# --- leases -----------------------------------------------------------------------------


async def test_lease_expiry_takeover_and_increasing_tokens(store: Store, ns: str) -> None:
    name = ns + "lease"
    assert await store.get_lease(name) is None
    g1 = await store.acquire_lease(name, "one", 0.3)
    assert g1 is not None and g1.owner == "one"
    live = await store.get_lease(name)
    assert live is not None and (live.owner, live.token) == ("one", g1.token)
    assert await store.acquire_lease(name, "two", 0.3) is None
    g1 = await store.renew_lease(g1, 0.3)
    g2 = await poll(lambda: store.acquire_lease(name, "two", 5.0))
    assert g2.owner == "two" and g2.token > g1.token
    with pytest.raises(LeaseLost):
        await store.renew_lease(g1, 0.3)
    await store.release_lease(g1)  # a stale release changes nothing
    live = await store.get_lease(name)
    assert live is not None and live.token == g2.token
    await store.release_lease(g2)
    assert await store.get_lease(name) is None
    with pytest.raises(LeaseLost):
        await store.renew_lease(g2, 1.0)
    g3 = await store.acquire_lease(name, "three", 1.0)
    assert g3 is not None and g3.token > g2.token  # tokens never go back, even after release


async def test_lapsed_lease_untaken_can_be_renewed(store: Store, ns: str) -> None:
    g = await store.acquire_lease(ns + "l", "one", 0.05)
    assert g is not None
    await poll(lambda: _is_none(store.get_lease(ns + "l")))
    renewed = await store.renew_lease(g, 5.0)
    assert renewed.token == g.token and renewed.expires_at > g.expires_at


async def test_concurrent_acquire_one_winner(store: Store, ns: str) -> None:
    winners = []

    async def contender(i: int) -> None:
        grant = await store.acquire_lease(ns + "l", f"owner-{i}", 10.0)
        if grant is not None:
            winners.append(grant)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(contender, i)
    assert len(winners) == 1


async def _is_none(value: Awaitable[Any]) -> bool:
    return (await value) is None


# --- queue ------------------------------------------------------------------------------


async def test_visibility_timeout_redelivery_and_attempts(store: Store, ns: str) -> None:
    q = ns + "q"
    item_id = await store.enqueue(q, b"job")
    [first] = await store.lease(q, max_items=10, visibility_timeout=0.3)
    assert (first.id, first.payload, first.attempts) == (item_id, b"job", 1)
    assert await store.lease(q, max_items=10, visibility_timeout=0.3) == []
    [again] = await poll(lambda: store.lease(q, max_items=10, visibility_timeout=0.3))
    assert (again.id, again.attempts) == (item_id, 2)
    [third] = await poll(lambda: store.lease(q, max_items=10, visibility_timeout=5.0))
    assert third.attempts == 3
    # stale receipts (the item was redelivered) change nothing
    assert not await store.ack(q, first)
    assert not await store.retry(q, again, delay=0.0, error="late")
    assert not await store.dead_letter(q, first, reason="late")
    assert await store.lease(q, max_items=10, visibility_timeout=5.0) == []
    assert await store.ack(q, third)
    assert not await store.ack(q, third)  # a second ack is a no-op
    assert await store.lease(q, max_items=10, visibility_timeout=0.1) == []


async def test_fifo_batches_and_no_double_delivery(store: Store, ns: str) -> None:
    q = ns + "q"
    ids = [await store.enqueue(q, str(i).encode()) for i in range(30)]
    got = await store.lease(q, max_items=10, visibility_timeout=30)
    assert [i.id for i in got] == ids[:10]
    seen = [i.id for i in got]

    async def consumer() -> None:
        for _ in range(20):
            batch = await store.lease(q, max_items=3, visibility_timeout=30)
            if not batch:
                return
            seen.extend(i.id for i in batch)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(consumer)
    assert sorted(seen) == sorted(ids)  # each exactly once


async def test_idempotent_enqueue(store: Store, ns: str) -> None:
    q = ns + "q"
    a = await store.enqueue(q, b"x", idempotency_key="k")
    assert await store.enqueue(q, b"y", idempotency_key="k") == a
    other = await store.enqueue(ns + "other", b"z", idempotency_key="k")  # per queue
    assert other != a
    items = await store.lease(q, max_items=10, visibility_timeout=5)
    assert [(i.id, i.payload) for i in items] == [(a, b"x")]
    assert await store.ack(q, items[0])
    assert await store.enqueue(q, b"y", idempotency_key="k") == a  # remembered after ack
    assert await store.lease(q, max_items=10, visibility_timeout=5) == []


async def test_delay_is_respected(store: Store, ns: str) -> None:
    q = ns + "q"
    start = time.time()
    await store.enqueue(q, b"later", delay=0.4)
    await store.enqueue(q, b"now")
    assert [i.payload for i in await store.lease(q, max_items=10, visibility_timeout=5)] == \
        [b"now"]
    [later] = await poll(lambda: store.lease(q, max_items=10, visibility_timeout=5))
    assert later.payload == b"later" and time.time() - start >= 0.4


async def test_retry_keeps_attempts_dead_letter_and_redrive(store: Store, ns: str) -> None:
    q = ns + "q"
    a_id = await store.enqueue(q, b"a")
    [a] = await store.lease(q, max_items=1, visibility_timeout=5)
    assert await store.retry(q, a, delay=0.0, error="boom")
    [a] = await store.lease(q, max_items=1, visibility_timeout=5)
    assert (a.id, a.attempts, a.error) == (a_id, 2, "boom")
    assert await store.retry(q, a, delay=0.3, error="boom again")
    assert await store.lease(q, max_items=1, visibility_timeout=5) == []  # retry delay
    [a] = await poll(lambda: store.lease(q, max_items=1, visibility_timeout=5))
    assert a.attempts == 3
    assert await store.dead_letter(q, a, reason="gave up")
    assert not await store.ack(q, a)  # dead letters cannot be acked
    b_id = await store.enqueue(q, b"b")
    [b] = await store.lease(q, max_items=1, visibility_timeout=5)
    assert await store.dead_letter(q, b, reason="bad input")
    assert await store.lease(q, max_items=5, visibility_timeout=5) == []
    dead = await store.list_dead_letters(q)
    assert [(d.id, d.attempts, d.error) for d in dead] == [(a_id, 3, "gave up"),
                                                          (b_id, 1, "bad input")]
    assert [d.id for d in await store.list_dead_letters(q, limit=1)] == [a_id]
    assert await store.redrive(q, [b_id, "no-such-id"]) == [b_id]
    assert [d.id for d in await store.list_dead_letters(q)] == [a_id]
    assert await store.redrive(q, None) == [a_id]
    assert await store.redrive(q, None) == []
    back = await store.lease(q, max_items=5, visibility_timeout=5)
    assert sorted((i.id, i.attempts) for i in back) == sorted([(a_id, 1), (b_id, 1)])
    assert await store.list_dead_letters(q) == []


async def test_queues_are_separate(store: Store, ns: str) -> None:
    await store.enqueue(ns + "q1", b"one")
    [item] = await store.lease(ns + "q1", max_items=5, visibility_timeout=5)
    assert await store.lease(ns + "q2", max_items=5, visibility_timeout=5) == []
    assert not await store.ack(ns + "q2", item)
    assert await store.ack(ns + "q1", item)


# --- function state ---------------------------------------------------------------------


async def test_state_namespace(store: Store, ns: str) -> None:
    counter = StateNamespace(store, ns.rstrip("/") + "-counter")
    other = StateNamespace(store, ns.rstrip("/") + "-other")
    assert await counter.compare_and_set("n", 0, b"1") == 1
    with pytest.raises(VersionConflict):
        await counter.compare_and_set("n", 0, b"1")
    await counter.put("m", b"x")
    await other.put("n", b"theirs")
    got = await counter.get("n")
    assert got is not None and got.value == b"1"
    assert [k for k, _ in await counter.scan()] == ["m", "n"]
    assert [k for k, _ in await counter.scan(start_after="m")] == ["n"]
    assert await counter.delete("m", expected_version=1)
    assert [k for k, _ in await counter.scan()] == ["n"]
    with pytest.raises(ValueError):
        await counter.get("")

    async def increment() -> None:
        for _ in range(50):
            cur = await counter.get("n")
            assert cur is not None
            try:
                await counter.compare_and_set("n", cur.version, str(int(cur.value) + 1).encode())
                return
            except VersionConflict:
                continue
        raise AssertionError("too many conflicts")

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(increment)
    final = await counter.get("n")
    assert final is not None and final.value == b"11"


# --- backend-specific -------------------------------------------------------------------


async def test_memory_store_on_an_injected_clock() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    g = await store.acquire_lease("l", "a", 10.0)
    assert g is not None and g.expires_at == 1010.0
    now[0] = 1010.0
    assert await store.get_lease("l") is None
    assert (g2 := await store.acquire_lease("l", "b", 10.0)) is not None and g2.token == 2
    await store.enqueue("q", b"x", delay=5.0)
    assert await store.lease("q", max_items=1, visibility_timeout=3.0) == []
    now[0] += 5.0
    [item] = await store.lease("q", max_items=1, visibility_timeout=3.0)
    now[0] += 3.0
    [again] = await store.lease("q", max_items=1, visibility_timeout=3.0)
    assert again.attempts == 2 and not await store.ack("q", item)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_sqlite_store_under_trio(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'trio.db'}") as s:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(s.put, f"k{i:02d}", b"v")
        assert len(await s.scan("k")) == 20
        closed = s
    with pytest.raises(StoreClosed):
        await closed.get("k00")


_SHARER = r'''
import sys, time, anyio
from runtime import open_store
async def main(url, tag, n):
    async with open_store(url) as s:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(s.enqueue, "shared", f"{tag}-{i}".encode())
        print("enqueued", flush=True)
        deadline = time.monotonic() + 60
        idle_since = None
        while time.monotonic() < deadline:
            items = await s.lease("shared", max_items=8, visibility_timeout=30)
            if not items:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break
                await anyio.sleep(0.02)
                continue
            idle_since = None
            for it in items:
                if await s.ack("shared", it):
                    print(it.payload.decode(), flush=True)
anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
'''


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    n = 300
    procs = [subprocess.Popen([sys.executable, "-c", _SHARER, url, tag, str(n)],
                              stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
             for tag in ("p1", "p2")]
    try:
        outs = [p.communicate(timeout=90)[0].split("\n") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert [p.returncode for p in procs] == [0, 0]
    acked = [line for out in outs for line in out if line and line != "enqueued"]
    expected = [f"{tag}-{i}" for tag in ("p1", "p2") for i in range(n)]
    assert sorted(acked) == sorted(expected)  # every item acked exactly once overall
