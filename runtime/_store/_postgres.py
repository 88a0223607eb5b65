"""`postgresql://user:password@host:port/db`: the store on PostgreSQL through asyncpg.

Tables are created on open if missing (under an advisory lock, so that several nodes
starting together do not race). Compare-and-set is a conditional UPDATE/INSERT; the
queue is leased with `SELECT ... FOR UPDATE SKIP LOCKED`, so several nodes lease
concurrently without blocking each other or taking the same item. Keys use the "C"
collation, so scans are in code-point order like every other backend.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from runtime._store._base import (
    LeaseGrant,
    LeaseLost,
    QueueItem,
    StoreUnavailable,
    VersionConflict,
    Versioned,
    unavailable_on,
)

SCHEMA_LOCK = 0x570_1C  # pg_advisory_lock key: one schema creator at a time
SCHEMA = """
CREATE TABLE IF NOT EXISTS stoic_kv (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL,
    version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS stoic_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
    token BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS stoic_lease_tokens (name TEXT PRIMARY KEY, token BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS stoic_queue (seq BIGSERIAL, id TEXT PRIMARY KEY, queue TEXT NOT NULL,
    payload BYTEA NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    visible_at DOUBLE PRECISION NOT NULL, enqueued_at DOUBLE PRECISION NOT NULL,
    receipt TEXT, dead BOOLEAN NOT NULL DEFAULT FALSE, error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS stoic_queue_ready ON stoic_queue (queue, dead, visible_at);
CREATE TABLE IF NOT EXISTS stoic_queue_idem (queue TEXT NOT NULL, key TEXT NOT NULL,
    id TEXT NOT NULL, PRIMARY KEY (queue, key));
"""


def _one(status: str) -> bool:
    """asyncpg's command status ("DELETE 1", "UPDATE 0") says whether one row changed."""
    return status.rsplit(" ", 1)[-1] == "1"


class PostgresStore:
    """The PostgreSQL store; create it with `open_postgres` (or `open_store`)."""

    def __init__(self, url: str, pool: Any) -> None:
        import asyncpg

        self.url = url
        self._pool = pool
        self._errors = (OSError, asyncpg.exceptions.ConnectionDoesNotExistError,
                        asyncpg.exceptions.CannotConnectNowError,
                        asyncpg.exceptions.ConnectionFailureError,
                        asyncpg.exceptions.InterfaceError)

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return unavailable_on(self.url, *self._errors)

    async def close(self) -> None:
        await self._pool.close()

    # --- versioned values ---
    async def get(self, key: str) -> Versioned | None:
        with self._guard():
            row = await self._pool.fetchrow(
                "SELECT value, version FROM stoic_kv WHERE key=$1", key)
        return Versioned(bytes(row[0]), int(row[1])) if row else None

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        value = bytes(value)
        with self._guard():
            if expected_version is None:
                version = await self._pool.fetchval(
                    "INSERT INTO stoic_kv (key, value, version) VALUES ($1, $2, 1) ON CONFLICT "
                    "(key) DO UPDATE SET value=excluded.value, version=stoic_kv.version+1 "
                    "RETURNING version", key, value)
                return int(version)
            if expected_version == 0:
                version = await self._pool.fetchval(
                    "INSERT INTO stoic_kv (key, value, version) VALUES ($1, $2, 1) "
                    "ON CONFLICT (key) DO NOTHING RETURNING version", key, value)
            else:
                version = await self._pool.fetchval(
                    "UPDATE stoic_kv SET value=$2, version=version+1 WHERE key=$1 AND "
                    "version=$3 RETURNING version", key, value, expected_version)
            if version is None:
                actual = await self._pool.fetchval(
                    "SELECT version FROM stoic_kv WHERE key=$1", key)
                raise VersionConflict(key, expected_version, int(actual or 0))
            return int(version)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        with self._guard():
            if expected_version is None:
                return _one(await self._pool.execute("DELETE FROM stoic_kv WHERE key=$1", key))
            if expected_version != 0 and _one(await self._pool.execute(
                    "DELETE FROM stoic_kv WHERE key=$1 AND version=$2", key, expected_version)):
                return True
            actual = int(await self._pool.fetchval(
                "SELECT version FROM stoic_kv WHERE key=$1", key) or 0)
        if actual != expected_version:
            raise VersionConflict(key, expected_version, actual)
        return False  # expected absent, and it is

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        strict = start_after is not None and start_after >= prefix
        low = start_after if strict and start_after is not None else prefix
        with self._guard():
            rows = await self._pool.fetch(
                f"SELECT key, value, version FROM stoic_kv WHERE key {'>' if strict else '>='} "
                "$1 AND left(key, $2) = $3 ORDER BY key LIMIT $4",
                low, len(prefix), prefix, limit)
        return [(r[0], Versioned(bytes(r[1]), int(r[2]))) for r in rows]

    # --- leases ---
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        now = time.time()
        with self._guard():
            async with self._pool.acquire() as c, c.transaction():
                # the token row is the lock that serialises grants of this name
                await c.execute("INSERT INTO stoic_lease_tokens (name, token) VALUES ($1, 0) "
                                "ON CONFLICT DO NOTHING", name)
                await c.execute("SELECT token FROM stoic_lease_tokens WHERE name=$1 FOR UPDATE",
                                name)
                row = await c.fetchrow(
                    "SELECT owner, expires_at FROM stoic_leases WHERE name=$1", name)
                if row and row[1] > now and row[0] != owner:
                    return None
                token = await c.fetchval("UPDATE stoic_lease_tokens SET token=token+1 "
                                         "WHERE name=$1 RETURNING token", name)
                await c.execute(
                    "INSERT INTO stoic_leases (name, owner, token, expires_at) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET "
                    "owner=excluded.owner, token=excluded.token, expires_at=excluded.expires_at",
                    name, owner, token, now + ttl)
        return LeaseGrant(name, owner, int(token), now + ttl)

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        now = time.time()
        with self._guard():
            status = await self._pool.execute(
                "UPDATE stoic_leases SET expires_at=$4 WHERE name=$1 AND owner=$2 AND token=$3",
                grant.name, grant.owner, grant.token, now + ttl)
        if not _one(status):
            raise LeaseLost(grant.name)
        return LeaseGrant(grant.name, grant.owner, grant.token, now + ttl)

    async def release_lease(self, grant: LeaseGrant) -> None:
        with self._guard():
            await self._pool.execute("DELETE FROM stoic_leases WHERE name=$1 AND token=$2",
                                     grant.name, grant.token)

    async def get_lease(self, name: str) -> LeaseGrant | None:
        with self._guard():
            row = await self._pool.fetchrow(
                "SELECT owner, token, expires_at FROM stoic_leases WHERE name=$1 AND "
                "expires_at > $2", name, time.time())
        return LeaseGrant(name, row[0], int(row[1]), float(row[2])) if row else None

    # --- queue ---
    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        now = time.time()
        item_id = uuid.uuid4().hex
        with self._guard():
            async with self._pool.acquire() as c, c.transaction():
                if idempotency_key is not None:
                    inserted = await c.fetchval(
                        "INSERT INTO stoic_queue_idem (queue, key, id) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING RETURNING id", queue, idempotency_key, item_id)
                    if inserted is None:
                        return str(await c.fetchval(
                            "SELECT id FROM stoic_queue_idem WHERE queue=$1 AND key=$2",
                            queue, idempotency_key))
                await c.execute("INSERT INTO stoic_queue (id, queue, payload, visible_at, "
                                "enqueued_at) VALUES ($1, $2, $3, $4, $5)",
                                item_id, queue, bytes(payload), now + delay, now)
        return item_id

    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        now = time.time()
        with self._guard():
            rows = await self._pool.fetch(
                "WITH picked AS (SELECT id FROM stoic_queue WHERE queue=$1 AND NOT dead AND "
                "visible_at <= $2 ORDER BY visible_at, seq LIMIT $5 FOR UPDATE SKIP LOCKED) "
                "UPDATE stoic_queue q SET attempts=q.attempts+1, visible_at=$3, "
                "receipt=$4 || ':' || q.id FROM picked WHERE q.id = picked.id "
                "RETURNING q.id, q.payload, q.attempts, q.enqueued_at, q.receipt, q.error, "
                "q.seq", queue, now, now + visibility_timeout, uuid.uuid4().hex, max_items)
        rows = sorted(rows, key=lambda r: r[6])
        return [QueueItem(r[0], bytes(r[1]), int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    async def ack(self, queue: str, item: QueueItem) -> bool:
        with self._guard():
            return _one(await self._pool.execute(
                "DELETE FROM stoic_queue WHERE id=$1 AND queue=$2 AND receipt=$3 AND NOT dead",
                item.id, queue, item.receipt))

    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool:
        with self._guard():
            return _one(await self._pool.execute(
                "UPDATE stoic_queue SET visible_at=$4, receipt=NULL, error=$5 WHERE id=$1 AND "
                "queue=$2 AND receipt=$3 AND NOT dead",
                item.id, queue, item.receipt, time.time() + delay, error))

    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool:
        with self._guard():
            return _one(await self._pool.execute(
                "UPDATE stoic_queue SET dead=TRUE, receipt=NULL, error=$4 WHERE id=$1 AND "
                "queue=$2 AND receipt=$3 AND NOT dead", item.id, queue, item.receipt, reason))

    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]:
        with self._guard():
            rows = await self._pool.fetch(
                "SELECT id, payload, attempts, enqueued_at, error FROM stoic_queue WHERE "
                "queue=$1 AND dead ORDER BY enqueued_at, seq LIMIT $2", queue, limit)
        return [QueueItem(r[0], bytes(r[1]), int(r[2]), float(r[3]), "", r[4]) for r in rows]

    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]:
        now = time.time()
        with self._guard():
            if item_ids is None:
                rows = await self._pool.fetch(
                    "UPDATE stoic_queue SET dead=FALSE, attempts=0, visible_at=$2, error='' "
                    "WHERE queue=$1 AND dead RETURNING id, seq", queue, now)
            else:
                rows = await self._pool.fetch(
                    "UPDATE stoic_queue SET dead=FALSE, attempts=0, visible_at=$2, error='' "
                    "WHERE queue=$1 AND dead AND id = ANY($3::text[]) RETURNING id, seq",
                    queue, now, list(item_ids))
        return [r[0] for r in sorted(rows, key=lambda r: r[1])]


@contextlib.asynccontextmanager
async def open_postgres(url: str) -> AsyncIterator[PostgresStore]:
    """Connect a pool to `url` and create the tables if missing; raises
    `StoreUnavailable(url)` (no password) if the server cannot be reached."""
    import asyncpg

    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=16, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise StoreUnavailable(url, exc) from exc
    try:
        async with pool.acquire() as c:
            await c.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
            try:
                await c.execute(SCHEMA)
            finally:
                await c.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)
        yield PostgresStore(url, pool)
    finally:
        await pool.close()
