"""`redis://host:port/db`: the store on Redis, every multi-step operation one Lua script.

Layout (all keys under `stoic:`): `kv:<key>` hashes (value, version) and a sorted set
`kvidx` of all keys (score 0) for prefix scans in byte order; `lease:<name>` hashes and
`leasetok:<name>` counters (fencing tokens never go back, even after a release); per queue
one hash per item, a `ready` sorted set scored by the time the item becomes visible (a
leased item is re-scored to the end of its visibility timeout, so redelivery needs no
sweeper), a `dead` sorted set scored by enqueue time and an `idem` hash.
Times are wall-clock seconds from the caller (several processes share the store).
Durability is whatever the server is configured for (appendonly/fsync).
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

P = "stoic:"
_PUT = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= cur then return {-1, cur} end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', cur + 1)
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return {cur + 1, cur}
"""
_DELETE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {-1, cur} end
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return {n, cur}
"""
_ACQUIRE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local exp = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
local now = tonumber(ARGV[2])
if owner and exp > now and owner ~= ARGV[1] then return nil end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'expires_at', now + tonumber(ARGV[3]))
return token
"""
_RENEW = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local token = redis.call('HGET', KEYS[1], 'token')
if owner ~= ARGV[1] or token ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'expires_at', tonumber(ARGV[3]) + tonumber(ARGV[4]))
return 1
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: ready, idem; ARGV: prefix, id, payload, visible_at, now, idempotency key
_ENQUEUE = """
if ARGV[6] ~= '' then
  local existing = redis.call('HGET', KEYS[2], ARGV[6])
  if existing then return existing end
end
redis.call('HSET', ARGV[1] .. ARGV[2], 'payload', ARGV[3], 'attempts', 0, 'enqueued_at', ARGV[5],
           'receipt', '', 'error', '')
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[2])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], ARGV[6], ARGV[2]) end
return ARGV[2]
"""
# KEYS: ready; ARGV: prefix, now, max, visibility, receipt seed
_LEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local receipt = ARGV[5] .. ':' .. i
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[4]), id)
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'receipt', receipt)
  local f = redis.call('HMGET', key, 'payload', 'enqueued_at', 'error')
  table.insert(out, {id, f[1], attempts, f[2], receipt, f[3]})
end
return out
"""
# KEYS: ready, dead; ARGV: prefix, id, receipt, op, score, error
_SETTLE = """
local key = ARGV[1] .. ARGV[2]
if redis.call('HGET', key, 'receipt') ~= ARGV[3] or not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
if ARGV[4] == 'ack' then
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], ARGV[2])
elseif ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[5]), ARGV[2])
  redis.call('HSET', key, 'receipt', '', 'error', ARGV[6])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', key, 'enqueued_at')), ARGV[2])
  redis.call('HSET', key, 'receipt', '', 'error', ARGV[6])
end
return 1
"""
# KEYS: ready, dead; ARGV: prefix, now, ids...
_REDRIVE = """
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('HSET', ARGV[1] .. id, 'attempts', 0, 'error', '', 'receipt', '')
    redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), id)
    table.insert(out, id)
  end
end
return out
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """The Redis store; create it with `open_redis` (or `open_store`)."""

    def __init__(self, url: str, client: Any) -> None:
        import redis.exceptions

        self.url = url
        self._r = client
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._enqueue = client.register_script(_ENQUEUE)
        self._lease = client.register_script(_LEASE)
        self._settle = client.register_script(_SETTLE)
        self._redrive = client.register_script(_REDRIVE)

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return unavailable_on(self.url, *self._errors)

    async def close(self) -> None:
        await self._r.aclose()

    # --- versioned values ---
    async def get(self, key: str) -> Versioned | None:
        with self._guard():
            value, version = await self._r.hmget(P + "kv:" + key, "value", "version")
        return None if version is None else Versioned(bytes(value), int(version))

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        with self._guard():
            new, cur = await self._put(
                keys=[P + "kv:" + key, P + "kvidx"],
                args=[bytes(value), "" if expected_version is None else expected_version, key])
        if int(new) < 0:
            raise VersionConflict(key, expected_version, int(cur))
        return int(new)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        with self._guard():
            n, cur = await self._delete(
                keys=[P + "kv:" + key, P + "kvidx"],
                args=["" if expected_version is None else expected_version, key])
        if int(n) < 0:
            raise VersionConflict(key, expected_version, int(cur))
        return int(n) > 0

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        if start_after is not None and start_after >= prefix:
            low = b"(" + start_after.encode()
        else:
            low = b"[" + prefix.encode()
        # no UTF-8 string contains the byte 0xff, so this bounds every key with the prefix
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        with self._guard():
            keys = await self._r.zrangebylex(P + "kvidx", low, high, start=0,
                                             num=limit if limit is not None else -1)
            if not keys:
                return []
            async with self._r.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hmget(P + "kv:" + _s(k), "value", "version")
                rows = await pipe.execute()
        return [(_s(k), Versioned(bytes(v), int(ver)))
                for k, (v, ver) in zip(keys, rows, strict=True) if ver is not None]

    # --- leases ---
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        now = time.time()
        with self._guard():
            token = await self._acquire(keys=[P + "lease:" + name, P + "leasetok:" + name],
                                        args=[owner, repr(now), repr(ttl)])
        return None if token is None else LeaseGrant(name, owner, int(token), now + ttl)

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        now = time.time()
        with self._guard():
            ok = await self._renew(keys=[P + "lease:" + grant.name],
                                   args=[grant.owner, grant.token, repr(now), repr(ttl)])
        if not int(ok):
            raise LeaseLost(grant.name)
        return LeaseGrant(grant.name, grant.owner, grant.token, now + ttl)

    async def release_lease(self, grant: LeaseGrant) -> None:
        with self._guard():
            await self._release(keys=[P + "lease:" + grant.name], args=[grant.token])

    async def get_lease(self, name: str) -> LeaseGrant | None:
        with self._guard():
            owner, token, expires = await self._r.hmget(
                P + "lease:" + name, "owner", "token", "expires_at")
        if owner is None or float(expires) <= time.time():
            return None
        return LeaseGrant(name, _s(owner), int(token), float(expires))

    # --- queue ---
    def _q(self, queue: str) -> tuple[str, str, str, str]:
        base = f"{P}q:{queue}:"
        return base + "item:", base + "ready", base + "dead", base + "idem"

    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        items, ready, _dead, idem = self._q(queue)
        now = time.time()
        with self._guard():
            item_id = await self._enqueue(keys=[ready, idem], args=[
                items, uuid.uuid4().hex, bytes(payload), repr(now + delay), repr(now),
                "" if idempotency_key is None else "k" + idempotency_key])
        return _s(item_id)

    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        items, ready, _dead, _idem = self._q(queue)
        with self._guard():
            rows = await self._lease(keys=[ready], args=[
                items, repr(time.time()), max_items, repr(visibility_timeout),
                uuid.uuid4().hex])
        return [QueueItem(_s(r[0]), bytes(r[1]), int(r[2]), float(r[3]), _s(r[4]),
                          _s(r[5] or b"")) for r in rows]

    async def _settle_item(self, queue: str, item: QueueItem, op: str, score: float,
                           error: str) -> bool:
        items, ready, dead, _idem = self._q(queue)
        with self._guard():
            ok = await self._settle(keys=[ready, dead], args=[
                items, item.id, item.receipt, op, repr(score), error])
        return bool(int(ok))

    async def ack(self, queue: str, item: QueueItem) -> bool:
        return await self._settle_item(queue, item, "ack", 0.0, "")

    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool:
        return await self._settle_item(queue, item, "retry", time.time() + delay, error)

    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool:
        return await self._settle_item(queue, item, "dead", 0.0, reason)

    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]:
        items, _ready, dead, _idem = self._q(queue)
        if limit <= 0:
            return []
        with self._guard():
            ids = await self._r.zrange(dead, 0, limit - 1)
            if not ids:
                return []
            async with self._r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hmget(items + _s(i), "payload", "attempts", "enqueued_at", "error")
                rows = await pipe.execute()
        return [QueueItem(_s(i), bytes(f[0]), int(f[1]), float(f[2]), "", _s(f[3] or b""))
                for i, f in zip(ids, rows, strict=True) if f[0] is not None]

    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]:
        items, ready, dead, _idem = self._q(queue)
        with self._guard():
            ids = (list(item_ids) if item_ids is not None
                   else [_s(i) for i in await self._r.zrange(dead, 0, -1)])
            if not ids:
                return []
            out = await self._redrive(keys=[ready, dead], args=[items, repr(time.time()), *ids])
        return [_s(i) for i in out]


@contextlib.asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[RedisStore]:
    """Connect to `redis://host:port/db`; raises `StoreUnavailable(url)` (no password) if the
    server cannot be reached."""
    import redis.asyncio as aioredis
    import redis.exceptions

    client = aioredis.from_url(url, decode_responses=False, socket_connect_timeout=5)
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        await client.aclose()
        raise StoreUnavailable(url, exc) from exc
    store = RedisStore(url, client)
    try:
        yield store
    finally:
        await store.close()
