"""PostgreSQL store (asyncpg): the same interface; the queue is leased with
SELECT ... FOR UPDATE SKIP LOCKED, so several nodes lease concurrently without blocking."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from runtime._redis_store import redact
from runtime._sqlite_store import LeaseGrant, LeaseLost, QueueItem, VersionConflict, Versioned

SCHEMA = """
CREATE TABLE IF NOT EXISTS stoic_kv (key TEXT PRIMARY KEY, value BYTEA NOT NULL,
    version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS stoic_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
    token BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS stoic_lease_tokens (name TEXT PRIMARY KEY, token BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS stoic_queue (id TEXT PRIMARY KEY, queue TEXT NOT NULL,
    payload BYTEA NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    visible_at DOUBLE PRECISION NOT NULL, enqueued_at DOUBLE PRECISION NOT NULL,
    receipt TEXT, dead BOOLEAN NOT NULL DEFAULT FALSE, error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS stoic_queue_ready ON stoic_queue (queue, dead, visible_at);
CREATE TABLE IF NOT EXISTS stoic_queue_idem (queue TEXT NOT NULL, key TEXT NOT NULL,
    id TEXT NOT NULL, PRIMARY KEY (queue, key));
"""


class PostgresStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def close(self) -> None:
        await self._pool.close()

    # --- kv ---
    async def get(self, key: str) -> Versioned | None:
        row = await self._pool.fetchrow("SELECT value, version FROM stoic_kv WHERE key=$1", key)
        return Versioned(bytes(row[0]), int(row[1])) if row else None

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        async with self._pool.acquire() as c, c.transaction():
            if expected_version == 0:
                row = await c.fetchrow(
                    "INSERT INTO stoic_kv (key, value, version) VALUES ($1, $2, 1) "
                    "ON CONFLICT (key) DO NOTHING RETURNING version", key, value)
                if row is None:
                    cur = await c.fetchval("SELECT version FROM stoic_kv WHERE key=$1", key)
                    raise VersionConflict(key, 0, int(cur or 0))
                return 1
            if expected_version is not None:
                row = await c.fetchrow(
                    "UPDATE stoic_kv SET value=$2, version=version+1 WHERE key=$1 AND "
                    "version=$3 RETURNING version", key, value, expected_version)
                if row is None:
                    cur = await c.fetchval("SELECT version FROM stoic_kv WHERE key=$1", key)
                    raise VersionConflict(key, expected_version, int(cur or 0))
                return int(row[0])
            version = await c.fetchval(
                "INSERT INTO stoic_kv (key, value, version) VALUES ($1, $2, 1) ON CONFLICT "
                "(key) DO UPDATE SET value=excluded.value, version=stoic_kv.version+1 "
                "RETURNING version", key, value)
            return int(version)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        if expected_version is None:
            status = await self._pool.execute("DELETE FROM stoic_kv WHERE key=$1", key)
            return bool(status.endswith(" 1"))
        async with self._pool.acquire() as c, c.transaction():
            status = await c.execute("DELETE FROM stoic_kv WHERE key=$1 AND version=$2",
                                     key, expected_version)
            if not status.endswith(" 1"):
                cur = await c.fetchval("SELECT version FROM stoic_kv WHERE key=$1", key)
                raise VersionConflict(key, expected_version, int(cur or 0))
            return True

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        rows = await self._pool.fetch(
            "SELECT key, value, version FROM stoic_kv WHERE left(key, $1) = $2 AND key > $3 "
            "ORDER BY key COLLATE \"C\" LIMIT $4",
            len(prefix), prefix, start_after or "", limit)
        return [(r[0], Versioned(bytes(r[1]), int(r[2]))) for r in rows]

    # --- leases ---
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        now = time.time()
        async with self._pool.acquire() as c, c.transaction():
            await c.execute("INSERT INTO stoic_lease_tokens (name, token) VALUES ($1, 0) "
                            "ON CONFLICT DO NOTHING", name)
            await c.execute("SELECT token FROM stoic_lease_tokens WHERE name=$1 FOR UPDATE", name)
            row = await c.fetchrow("SELECT owner, expires_at FROM stoic_leases WHERE name=$1",
                                   name)
            if row and row[1] > now and row[0] != owner:
                return None
            token = await c.fetchval("UPDATE stoic_lease_tokens SET token=token+1 WHERE name=$1 "
                                     "RETURNING token", name)
            await c.execute(
                "INSERT INTO stoic_leases (name, owner, token, expires_at) VALUES ($1,$2,$3,$4) "
                "ON CONFLICT (name) DO UPDATE SET owner=excluded.owner, token=excluded.token, "
                "expires_at=excluded.expires_at", name, owner, token, now + ttl)
            return LeaseGrant(name, owner, int(token), now + ttl)

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        now = time.time()
        status = await self._pool.execute(
            "UPDATE stoic_leases SET expires_at=$4 WHERE name=$1 AND owner=$2 AND token=$3",
            grant.name, grant.owner, grant.token, now + ttl)
        if not status.endswith(" 1"):
            raise LeaseLost(f"lease {grant.name!r} was taken over")
        return LeaseGrant(grant.name, grant.owner, grant.token, now + ttl)

    async def release_lease(self, grant: LeaseGrant) -> None:
        await self._pool.execute("DELETE FROM stoic_leases WHERE name=$1 AND token=$2",
                                 grant.name, grant.token)

    # --- queue ---
    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        now = time.time()
        item_id = uuid.uuid4().hex
        async with self._pool.acquire() as c, c.transaction():
            if idempotency_key:
                existing = await c.fetchval(
                    "INSERT INTO stoic_queue_idem (queue, key, id) VALUES ($1,$2,$3) "
                    "ON CONFLICT DO NOTHING RETURNING id", queue, idempotency_key, item_id)
                if existing is None:
                    return str(await c.fetchval(
                        "SELECT id FROM stoic_queue_idem WHERE queue=$1 AND key=$2",
                        queue, idempotency_key))
            await c.execute("INSERT INTO stoic_queue (id, queue, payload, visible_at, "
                            "enqueued_at) VALUES ($1,$2,$3,$4,$5)",
                            item_id, queue, payload, now + delay, now)
        return item_id

    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        now = time.time()
        receipt = uuid.uuid4().hex
        rows = await self._pool.fetch(
            "UPDATE stoic_queue SET attempts=attempts+1, visible_at=$3, receipt=$4 || ':' || id "
            "WHERE id IN (SELECT id FROM stoic_queue WHERE queue=$1 AND NOT dead AND "
            "visible_at <= $2 ORDER BY visible_at LIMIT $5 FOR UPDATE SKIP LOCKED) "
            "RETURNING id, payload, attempts, enqueued_at, receipt, error",
            queue, now, now + visibility_timeout, receipt, max_items)
        return [QueueItem(r[0], bytes(r[1]), int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    async def ack(self, queue: str, item: QueueItem) -> bool:
        status = await self._pool.execute(
            "DELETE FROM stoic_queue WHERE id=$1 AND receipt=$2 AND NOT dead", item.id, item.receipt)
        return bool(status.endswith(" 1"))

    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool:
        status = await self._pool.execute(
            "UPDATE stoic_queue SET visible_at=$3, receipt=NULL, error=$4 WHERE id=$1 AND "
            "receipt=$2 AND NOT dead", item.id, item.receipt, time.time() + delay, error)
        return bool(status.endswith(" 1"))

    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool:
        status = await self._pool.execute(
            "UPDATE stoic_queue SET dead=TRUE, receipt=NULL, error=$3 WHERE id=$1 AND "
            "receipt=$2 AND NOT dead", item.id, item.receipt, reason)
        return bool(status.endswith(" 1"))

    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]:
        rows = await self._pool.fetch(
            "SELECT id, payload, attempts, enqueued_at, error FROM stoic_queue WHERE queue=$1 "
            "AND dead ORDER BY enqueued_at LIMIT $2", queue, limit)
        return [QueueItem(r[0], bytes(r[1]), int(r[2]), float(r[3]), "", r[4]) for r in rows]

    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]:
        now = time.time()
        if item_ids is None:
            rows = await self._pool.fetch(
                "UPDATE stoic_queue SET dead=FALSE, attempts=0, visible_at=$2, error='' "
                "WHERE queue=$1 AND dead RETURNING id", queue, now)
        else:
            rows = await self._pool.fetch(
                "UPDATE stoic_queue SET dead=FALSE, attempts=0, visible_at=$2, error='' "
                "WHERE queue=$1 AND dead AND id = ANY($3::text[]) RETURNING id",
                queue, now, list(item_ids))
        return [r[0] for r in rows]


@contextlib.asynccontextmanager
async def open_postgres(url: str) -> AsyncIterator[PostgresStore]:
    """Connect to `postgresql://user:password@host:port/db`; raises ConnectionError naming
    the URL without its password if the server cannot be reached."""
    import asyncpg

    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=16, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ConnectionError(f"store {redact(url)} is unreachable: {exc}") from exc
    try:
        async with pool.acquire() as c:
            await c.execute("SELECT pg_advisory_lock(7210)")  # one schema creator at a time
            try:
                await c.execute(SCHEMA)
            finally:
                await c.execute("SELECT pg_advisory_unlock(7210)")
        store = PostgresStore(pool)
        yield store
    finally:
        await pool.close()
