"""`memory://`: the store interface inside one process, for unit tests only.

Nothing survives the process and nothing is shared between processes. Every method runs
without awaiting anything, so each is atomic with respect to other tasks. `clock` is
injectable so that lease and visibility tests can run on a virtual clock.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from runtime._store._base import LeaseGrant, LeaseLost, QueueItem, VersionConflict, Versioned


@dataclass
class _Item:
    id: str
    queue: str
    payload: bytes
    attempts: int
    visible_at: float
    enqueued_at: float
    seq: int
    receipt: str = ""
    dead: bool = False
    error: str = ""

    def leased(self) -> QueueItem:
        return QueueItem(self.id, self.payload, self.attempts, self.enqueued_at, self.receipt,
                         self.error)


class MemoryStore:
    """The in-process store. `clock` returns wall-clock-like seconds (default time.time)."""

    def __init__(self, clock: Callable[[], float] = time.time, url: str = "memory://") -> None:
        self.url = url
        self._clock = clock
        self._kv: dict[str, Versioned] = {}
        self._leases: dict[str, LeaseGrant] = {}
        self._tokens: dict[str, int] = {}
        self._items: dict[str, _Item] = {}
        self._queues: dict[str, dict[str, _Item]] = {}  # queue -> its items, by id
        self._idem: dict[tuple[str, str], str] = {}
        self._seq = itertools.count()

    async def close(self) -> None:
        pass

    # --- versioned values ---
    async def get(self, key: str) -> Versioned | None:
        return self._kv.get(key)

    def _check(self, key: str, expected_version: int | None) -> int:
        cur = self._kv.get(key)
        version = cur.version if cur else 0
        if expected_version is not None and version != expected_version:
            raise VersionConflict(key, expected_version, version)
        return version

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        version = self._check(key, expected_version) + 1
        self._kv[key] = Versioned(bytes(value), version)
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        self._check(key, expected_version)
        return self._kv.pop(key, None) is not None

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        keys = sorted(k for k in self._kv
                      if k.startswith(prefix) and (start_after is None or k > start_after))
        return [(k, self._kv[k]) for k in keys[:limit]]

    # --- leases ---
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        now = self._clock()
        cur = self._leases.get(name)
        if cur is not None and cur.expires_at > now and cur.owner != owner:
            return None
        self._tokens[name] = self._tokens.get(name, 0) + 1
        grant = LeaseGrant(name, owner, self._tokens[name], now + ttl)
        self._leases[name] = grant
        return grant

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        cur = self._leases.get(grant.name)
        if cur is None or cur.token != grant.token or cur.owner != grant.owner:
            raise LeaseLost(grant.name)
        renewed = replace(cur, expires_at=self._clock() + ttl)
        self._leases[grant.name] = renewed
        return renewed

    async def release_lease(self, grant: LeaseGrant) -> None:
        cur = self._leases.get(grant.name)
        if cur is not None and cur.token == grant.token:
            del self._leases[grant.name]

    async def get_lease(self, name: str) -> LeaseGrant | None:
        cur = self._leases.get(name)
        return cur if cur is not None and cur.expires_at > self._clock() else None

    # --- queue ---
    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        if idempotency_key is not None and (queue, idempotency_key) in self._idem:
            return self._idem[(queue, idempotency_key)]
        now = self._clock()
        item = _Item(uuid.uuid4().hex, queue, bytes(payload), 0, now + delay, now,
                     next(self._seq))
        self._items[item.id] = item
        self._queues.setdefault(queue, {})[item.id] = item
        if idempotency_key is not None:
            self._idem[(queue, idempotency_key)] = item.id
        return item.id

    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        now = self._clock()
        ready = sorted((i for i in self._queues.get(queue, {}).values()
                        if not i.dead and i.visible_at <= now),
                       key=lambda i: (i.visible_at, i.seq))[:max_items]
        for it in ready:
            it.attempts += 1
            it.visible_at = now + visibility_timeout
            it.receipt = uuid.uuid4().hex
        return [it.leased() for it in ready]

    def _held(self, queue: str, item: QueueItem) -> _Item | None:
        cur = self._items.get(item.id)
        if cur is None or cur.queue != queue or cur.dead or cur.receipt != item.receipt:
            return None
        return cur

    async def ack(self, queue: str, item: QueueItem) -> bool:
        if self._held(queue, item) is None:
            return False
        del self._items[item.id]
        del self._queues[queue][item.id]
        return True

    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool:
        cur = self._held(queue, item)
        if cur is None:
            return False
        cur.visible_at, cur.receipt, cur.error = self._clock() + delay, "", error
        return True

    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool:
        cur = self._held(queue, item)
        if cur is None:
            return False
        cur.dead, cur.receipt, cur.error = True, "", reason
        return True

    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]:
        dead = sorted((i for i in self._queues.get(queue, {}).values() if i.dead),
                      key=lambda i: (i.enqueued_at, i.seq))[:limit]
        return [replace(i.leased(), receipt="") for i in dead]

    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]:
        ids = item_ids if item_ids is not None else [
            i.id for i in sorted(self._queues.get(queue, {}).values(), key=lambda i: i.seq)
            if i.dead]
        out = []
        for i in ids:
            it = self._items.get(i)
            if it is not None and it.queue == queue and it.dead:
                it.dead, it.attempts, it.visible_at, it.error = False, 0, self._clock(), ""
                out.append(i)
        return out
