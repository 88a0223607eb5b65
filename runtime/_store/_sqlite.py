"""`sqlite:///path.db`: the embedded default store. One file in WAL mode, shared safely by
several processes on one machine.

Group commit: every operation is a function of a connection, put on a queue and run by one
writer thread per store. The thread takes everything queued so far (up to `MAX_BATCH`),
runs it in one `BEGIN IMMEDIATE` transaction (each operation inside its own savepoint, so
one operation's failure, e.g. a `VersionConflict`, rolls back only itself), commits once
(one fsync with `synchronous=FULL`) and then wakes each caller with its own result. A caller
is answered only after the commit, so an answered write is durable. Under concurrency the
cost of an fsync is shared by the whole batch. Other processes serialise with us on the
file lock (`busy_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from runtime._store._base import (
    LeaseGrant,
    LeaseLost,
    QueueItem,
    StoreClosed,
    StoreUnavailable,
    VersionConflict,
    Versioned,
)

T = TypeVar("T")
MAX_BATCH = 256
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,
    version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
    token INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lease_tokens (name TEXT PRIMARY KEY, token INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queue (id TEXT PRIMARY KEY, queue TEXT NOT NULL,
    payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL,
    enqueued_at REAL NOT NULL, receipt TEXT, dead INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS queue_ready ON queue (queue, dead, visible_at);
CREATE TABLE IF NOT EXISTS queue_idem (queue TEXT NOT NULL, key TEXT NOT NULL,
    id TEXT NOT NULL, PRIMARY KEY (queue, key));
"""

_Op = Callable[[sqlite3.Connection], Any]


class _Pending:
    """One caller's operation and the way back to its event loop."""

    __slots__ = ("fn", "wake", "done", "ok", "result")

    def __init__(self, fn: _Op, wake: Callable[[Callable[[], None]], object]) -> None:
        self.fn, self.wake = fn, wake
        self.done = anyio.Event()
        self.ok = False
        self.result: Any = None

    def settle(self, ok: bool, result: Any) -> None:
        """Called from the writer thread: hand the result to the caller's loop."""
        self.ok, self.result = ok, result
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone
            self.wake(self.done.set)


def _waker() -> Callable[[Callable[[], None]], object]:
    """A thread-safe, non-blocking `call_soon` into the current event loop."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    # Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is
    # locked" at once (without the busy handler) while another process opening the same
    # file does the same: retry, bounded.
    for attempt in range(50):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.01 * (1 + attempt % 10))  # a retry interval, bounded above
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


class SQLiteStore:
    """The SQLite store; create it with `open_sqlite` (or `open_store`)."""

    def __init__(self, url: str, conn: sqlite3.Connection) -> None:
        self.url = url
        self._conn = conn
        self._ops: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="stoic-sqlite-writer",
                                        daemon=True)
        self._thread.start()

    # --- the writer thread ---
    def _run(self) -> None:
        conn = self._conn
        stop = False
        while not stop:
            first = self._ops.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(conn, batch)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, op.fn(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # this caller's problem only: give it back
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = StoreUnavailable(self.url, exc)
            failure.__cause__ = exc
            outcomes = [(False, failure)] * len(batch)
        for op, (ok, result) in zip(batch, outcomes, strict=True):
            if not ok and isinstance(result, sqlite3.Error):
                wrapped = StoreUnavailable(self.url, result)
                wrapped.__cause__ = result
                result = wrapped
            op.settle(ok, result)

    async def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in the next group commit and return its result once committed.
        If cancelled, the wait is abandoned; the operation may still be applied."""
        if self._closed:
            raise StoreClosed(f"store {self.url} is closed")
        op = _Pending(fn, _waker())
        self._ops.put(op)
        await op.done.wait()
        if op.ok:
            result: T = op.result
            return result
        raise op.result

    async def close(self) -> None:
        """Finish the queued operations, then stop the writer thread."""
        if not self._closed:
            self._closed = True
            self._ops.put(None)
            await anyio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)

    # --- versioned values ---
    async def get(self, key: str) -> Versioned | None:
        def op(c: sqlite3.Connection) -> Versioned | None:
            row = c.execute("SELECT value, version FROM kv WHERE key=?", (key,)).fetchone()
            return Versioned(bytes(row[0]), int(row[1])) if row else None
        return await self._do(op)

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        def op(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT version FROM kv WHERE key=?", (key,)).fetchone()
            cur = int(row[0]) if row else 0
            if expected_version is not None and cur != expected_version:
                raise VersionConflict(key, expected_version, cur)
            c.execute("INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT(key) "
                      "DO UPDATE SET value=excluded.value, version=excluded.version",
                      (key, bytes(value), cur + 1))
            return cur + 1
        return await self._do(op)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT version FROM kv WHERE key=?", (key,)).fetchone()
            cur = int(row[0]) if row else 0
            if expected_version is not None and cur != expected_version:
                raise VersionConflict(key, expected_version, cur)
            return c.execute("DELETE FROM kv WHERE key=?", (key,)).rowcount > 0
        return await self._do(op)

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        low = max(prefix, start_after) if start_after is not None else prefix
        strict = start_after is not None and start_after >= prefix

        def op(c: sqlite3.Connection) -> list[tuple[str, Versioned]]:
            rows = c.execute(
                f"SELECT key, value, version FROM kv WHERE key {'>' if strict else '>='} ? "
                "AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
                (low, len(prefix), prefix, -1 if limit is None else limit)).fetchall()
            return [(r[0], Versioned(bytes(r[1]), int(r[2]))) for r in rows]
        return await self._do(op)

    # --- leases ---
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        def op(c: sqlite3.Connection) -> LeaseGrant | None:
            now = time.time()
            row = c.execute("SELECT owner, expires_at FROM leases WHERE name=?",
                            (name,)).fetchone()
            if row and row[1] > now and row[0] != owner:
                return None
            trow = c.execute("SELECT token FROM lease_tokens WHERE name=?", (name,)).fetchone()
            token = (int(trow[0]) if trow else 0) + 1
            c.execute("INSERT OR REPLACE INTO lease_tokens (name, token) VALUES (?, ?)",
                      (name, token))
            c.execute("INSERT OR REPLACE INTO leases (name, owner, token, expires_at) "
                      "VALUES (?, ?, ?, ?)", (name, owner, token, now + ttl))
            return LeaseGrant(name, owner, token, now + ttl)
        return await self._do(op)

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        def op(c: sqlite3.Connection) -> LeaseGrant:
            now = time.time()
            n = c.execute("UPDATE leases SET expires_at=? WHERE name=? AND owner=? AND token=?",
                          (now + ttl, grant.name, grant.owner, grant.token)).rowcount
            if n == 0:
                raise LeaseLost(grant.name)
            return LeaseGrant(grant.name, grant.owner, grant.token, now + ttl)
        return await self._do(op)

    async def release_lease(self, grant: LeaseGrant) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM leases WHERE name=? AND token=?", (grant.name, grant.token))
        await self._do(op)

    async def get_lease(self, name: str) -> LeaseGrant | None:
        def op(c: sqlite3.Connection) -> LeaseGrant | None:
            row = c.execute("SELECT owner, token, expires_at FROM leases WHERE name=? AND "
                            "expires_at > ?", (name, time.time())).fetchone()
            return LeaseGrant(name, row[0], int(row[1]), float(row[2])) if row else None
        return await self._do(op)

    # --- queue ---
    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        def op(c: sqlite3.Connection) -> str:
            if idempotency_key is not None:
                row = c.execute("SELECT id FROM queue_idem WHERE queue=? AND key=?",
                                (queue, idempotency_key)).fetchone()
                if row:
                    return str(row[0])
            item_id = uuid.uuid4().hex
            now = time.time()
            c.execute("INSERT INTO queue (id, queue, payload, visible_at, enqueued_at) "
                      "VALUES (?, ?, ?, ?, ?)", (item_id, queue, bytes(payload), now + delay, now))
            if idempotency_key is not None:
                c.execute("INSERT INTO queue_idem (queue, key, id) VALUES (?, ?, ?)",
                          (queue, idempotency_key, item_id))
            return item_id
        return await self._do(op)

    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        def op(c: sqlite3.Connection) -> list[QueueItem]:
            now = time.time()
            rows = c.execute(
                "SELECT id, payload, attempts, enqueued_at, error FROM queue WHERE queue=? AND "
                "dead=0 AND visible_at<=? ORDER BY visible_at, rowid LIMIT ?",
                (queue, now, max_items)).fetchall()
            out = []
            for r in rows:
                receipt = uuid.uuid4().hex
                c.execute("UPDATE queue SET attempts=attempts+1, visible_at=?, receipt=? "
                          "WHERE id=?", (now + visibility_timeout, receipt, r[0]))
                out.append(QueueItem(r[0], bytes(r[1]), int(r[2]) + 1, float(r[3]), receipt,
                                     r[4]))
            return out
        return await self._do(op)

    async def ack(self, queue: str, item: QueueItem) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM queue WHERE id=? AND queue=? AND receipt=? AND dead=0",
                             (item.id, queue, item.receipt)).rowcount > 0
        return await self._do(op)

    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute(
                "UPDATE queue SET visible_at=?, receipt=NULL, error=? WHERE id=? AND queue=? "
                "AND receipt=? AND dead=0",
                (time.time() + delay, error, item.id, queue, item.receipt)).rowcount > 0
        return await self._do(op)

    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute(
                "UPDATE queue SET dead=1, receipt=NULL, error=? WHERE id=? AND queue=? AND "
                "receipt=? AND dead=0", (reason, item.id, queue, item.receipt)).rowcount > 0
        return await self._do(op)

    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]:
        def op(c: sqlite3.Connection) -> list[QueueItem]:
            rows = c.execute("SELECT id, payload, attempts, enqueued_at, error FROM queue "
                             "WHERE queue=? AND dead=1 ORDER BY enqueued_at, rowid LIMIT ?",
                             (queue, limit)).fetchall()
            return [QueueItem(r[0], bytes(r[1]), int(r[2]), float(r[3]), "", r[4])
                    for r in rows]
        return await self._do(op)

    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            if item_ids is None:
                ids = [r[0] for r in c.execute(
                    "SELECT id FROM queue WHERE queue=? AND dead=1 ORDER BY rowid", (queue,))]
            else:
                ids = list(item_ids)
            now = time.time()
            return [i for i in ids if c.execute(
                "UPDATE queue SET dead=0, attempts=0, visible_at=?, error='' "
                "WHERE id=? AND queue=? AND dead=1", (now, i, queue)).rowcount]
        return await self._do(op)


@contextlib.asynccontextmanager
async def open_sqlite(url: str, path: str) -> AsyncIterator[SQLiteStore]:
    """Open (creating if needed, with its folder) the SQLite store at `path`; raises
    `StoreUnavailable(url)` if the file cannot be opened or the schema created."""

    def connect() -> sqlite3.Connection:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return _connect(path)

    try:
        conn = await anyio.to_thread.run_sync(connect)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(url, exc) from exc
    store = SQLiteStore(url, conn)
    try:
        yield store
    finally:
        await store.close()
