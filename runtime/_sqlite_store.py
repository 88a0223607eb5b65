"""SQLite store (interim): one file, WAL, group commits from a dedicated writer thread."""

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
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, token INTEGER NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lease_tokens (name TEXT PRIMARY KEY, token INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queue (id TEXT PRIMARY KEY, queue TEXT NOT NULL, payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL, enqueued_at REAL NOT NULL,
    receipt TEXT, dead INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS queue_ready ON queue (queue, dead, visible_at);
CREATE TABLE IF NOT EXISTS queue_idem (queue TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (queue, key));
"""


class VersionConflict(Exception):
    def __init__(self, key: str, expected: int | None, actual: int) -> None:
        super().__init__(f"version conflict on {key!r}: expected {expected}, found {actual}")
        self.key, self.expected, self.actual = key, expected, actual


class LeaseLost(Exception):
    pass


@dataclass(frozen=True)
class Versioned:
    value: bytes
    version: int


@dataclass(frozen=True)
class LeaseGrant:
    name: str
    owner: str
    token: int
    expires_at: float


@dataclass(frozen=True)
class QueueItem:
    id: str
    payload: bytes
    attempts: int
    enqueued_at: float
    receipt: str
    error: str = ""


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._ops: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stoic-sqlite", daemon=True)
        self._closed = False
        conn = self._connect()
        conn.executescript(SCHEMA)
        conn.close()
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _run(self) -> None:
        conn = self._connect()
        while True:
            first = self._ops.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < 256:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._ops.put(None)
                    break
                batch.append(nxt)
            results: list[tuple[Any, Any, bool]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, fut, _loop in batch:
                    conn.execute("SAVEPOINT op")
                    try:
                        res = fn(conn)
                        conn.execute("RELEASE op")
                        results.append((fut, res, True))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append((fut, exc, False))
                conn.execute("COMMIT")
            except Exception as exc:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                results = [(fut, exc, False) for _fn, fut, _loop in batch]
            for (fut, res, ok), (_fn, _f, loop) in zip(results, batch, strict=True):
                loop.call_soon_threadsafe(_resolve, fut, res, ok)
        conn.close()

    async def _do(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._ops.put((fn, fut, loop))
        return await fut

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ops.put(None)
            await asyncio.to_thread(self._thread.join, 10)

    # --- kv ---
    async def get(self, key: str) -> Versioned | None:
        def op(c: sqlite3.Connection) -> Versioned | None:
            row = c.execute("SELECT value, version FROM kv WHERE key=?", (key,)).fetchone()
            return Versioned(bytes(row[0]), row[1]) if row else None
        result: Versioned | None = await self._do(op)
        return result

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        def op(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT version FROM kv WHERE key=?", (key,)).fetchone()
            cur = row[0] if row else 0
            if expected_version is not None and cur != expected_version:
                raise VersionConflict(key, expected_version, cur)
            c.execute("INSERT INTO kv (key, value, version) VALUES (?, ?, ?) ON CONFLICT(key) "
                      "DO UPDATE SET value=excluded.value, version=excluded.version",
                      (key, value, cur + 1))
            return int(cur + 1)
        result: int = await self._do(op)
        return result

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT version FROM kv WHERE key=?", (key,)).fetchone()
            cur = row[0] if row else 0
            if expected_version is not None and cur != expected_version:
                raise VersionConflict(key, expected_version, cur)
            return c.execute("DELETE FROM kv WHERE key=?", (key,)).rowcount > 0
        result: bool = await self._do(op)
        return result

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        def op(c: sqlite3.Connection) -> list[tuple[str, Versioned]]:
            rows = c.execute(
                "SELECT key, value, version FROM kv WHERE substr(key, 1, ?) = ? AND key > ? "
                "ORDER BY key LIMIT ?",
                (len(prefix), prefix, start_after or "", -1 if limit is None else limit)).fetchall()
            return [(r[0], Versioned(bytes(r[1]), r[2])) for r in rows]
        result: list[tuple[str, Versioned]] = await self._do(op)
        return result

    # --- leases ---
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        def op(c: sqlite3.Connection) -> LeaseGrant | None:
            now = time.time()
            row = c.execute("SELECT owner, token, expires_at FROM leases WHERE name=?",
                            (name,)).fetchone()
            if row and row[2] > now and row[0] != owner:
                return None
            trow = c.execute("SELECT token FROM lease_tokens WHERE name=?", (name,)).fetchone()
            token = (trow[0] if trow else 0) + 1
            c.execute("INSERT OR REPLACE INTO lease_tokens (name, token) VALUES (?, ?)",
                      (name, token))
            c.execute("INSERT OR REPLACE INTO leases (name, owner, token, expires_at) "
                      "VALUES (?, ?, ?, ?)", (name, owner, token, now + ttl))
            return LeaseGrant(name, owner, token, now + ttl)
        result: LeaseGrant | None = await self._do(op)
        return result

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        def op(c: sqlite3.Connection) -> LeaseGrant:
            now = time.time()
            row = c.execute("SELECT owner, token, expires_at FROM leases WHERE name=?",
                            (grant.name,)).fetchone()
            if not row or row[1] != grant.token or row[0] != grant.owner:
                raise LeaseLost(f"lease {grant.name!r} was taken over")
            c.execute("UPDATE leases SET expires_at=? WHERE name=?", (now + ttl, grant.name))
            return LeaseGrant(grant.name, grant.owner, grant.token, now + ttl)
        result: LeaseGrant = await self._do(op)
        return result

    async def release_lease(self, grant: LeaseGrant) -> None:
        await self._do(lambda c: c.execute(
            "DELETE FROM leases WHERE name=? AND token=?", (grant.name, grant.token)))

    # --- queue ---
    async def enqueue(self, queue_name: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        def op(c: sqlite3.Connection) -> str:
            if idempotency_key:
                row = c.execute("SELECT id FROM queue_idem WHERE queue=? AND key=?",
                                (queue_name, idempotency_key)).fetchone()
                if row:
                    return str(row[0])
            item_id = uuid.uuid4().hex
            now = time.time()
            c.execute("INSERT INTO queue (id, queue, payload, visible_at, enqueued_at) "
                      "VALUES (?, ?, ?, ?, ?)", (item_id, queue_name, payload, now + delay, now))
            if idempotency_key:
                c.execute("INSERT INTO queue_idem (queue, key, id) VALUES (?, ?, ?)",
                          (queue_name, idempotency_key, item_id))
            return item_id
        result: str = await self._do(op)
        return result

    async def lease(self, queue_name: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        def op(c: sqlite3.Connection) -> list[QueueItem]:
            now = time.time()
            rows = c.execute(
                "SELECT id, payload, attempts, enqueued_at, error FROM queue WHERE queue=? AND "
                "dead=0 AND visible_at<=? ORDER BY visible_at LIMIT ?",
                (queue_name, now, max_items)).fetchall()
            out = []
            for r in rows:
                receipt = uuid.uuid4().hex
                c.execute("UPDATE queue SET attempts=attempts+1, visible_at=?, receipt=? "
                          "WHERE id=?", (now + visibility_timeout, receipt, r[0]))
                out.append(QueueItem(r[0], bytes(r[1]), r[2] + 1, r[3], receipt, r[4]))
            return out
        result: list[QueueItem] = await self._do(op)
        return result

    async def ack(self, queue_name: str, item: QueueItem) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM queue WHERE id=? AND receipt=? AND dead=0",
                             (item.id, item.receipt)).rowcount > 0
        result: bool = await self._do(op)
        return result

    async def retry(self, queue_name: str, item: QueueItem, *, delay: float,
                    error: str = "") -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute("UPDATE queue SET visible_at=?, receipt=NULL, error=? WHERE id=? "
                             "AND receipt=? AND dead=0",
                             (time.time() + delay, error, item.id, item.receipt)).rowcount > 0
        result: bool = await self._do(op)
        return result

    async def dead_letter(self, queue_name: str, item: QueueItem, *, reason: str = "") -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute("UPDATE queue SET dead=1, receipt=NULL, error=? WHERE id=? AND "
                             "receipt=? AND dead=0", (reason, item.id, item.receipt)).rowcount > 0
        result: bool = await self._do(op)
        return result

    async def list_dead_letters(self, queue_name: str, *, limit: int = 100) -> list[QueueItem]:
        def op(c: sqlite3.Connection) -> list[QueueItem]:
            rows = c.execute("SELECT id, payload, attempts, enqueued_at, error FROM queue "
                             "WHERE queue=? AND dead=1 ORDER BY enqueued_at LIMIT ?",
                             (queue_name, limit)).fetchall()
            return [QueueItem(r[0], bytes(r[1]), r[2], r[3], "", r[4]) for r in rows]
        result: list[QueueItem] = await self._do(op)
        return result

    async def redrive(self, queue_name: str, item_ids: list[str] | None = None) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            if item_ids is None:
                ids = [r[0] for r in c.execute(
                    "SELECT id FROM queue WHERE queue=? AND dead=1", (queue_name,))]
            else:
                ids = list(item_ids)
            out = []
            for i in ids:
                if c.execute("UPDATE queue SET dead=0, attempts=0, visible_at=?, error='' "
                             "WHERE id=? AND queue=? AND dead=1",
                             (time.time(), i, queue_name)).rowcount:
                    out.append(i)
            return out
        result: list[str] = await self._do(op)
        return result


def _resolve(fut: asyncio.Future[Any], res: Any, ok: bool) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(res)
    else:
        fut.set_exception(res)


def _make_parent_dir(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


@contextlib.asynccontextmanager
async def open_sqlite(path: str) -> AsyncIterator[SQLiteStore]:
    await asyncio.to_thread(_make_parent_dir, path)
    store = await asyncio.to_thread(SQLiteStore, path)
    try:
        yield store
    finally:
        await store.close()

