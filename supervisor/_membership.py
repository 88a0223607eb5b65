"""Cluster membership through the store: who is alive, where, and what it hosts.

Each node holds a store lease `node/<id>` (its fencing token) and publishes a record under
`members/<id>` (zone, address, functions, load, renewal time), both renewed every
`heartbeat` seconds. A peer whose record was not renewed within `ttl` seconds, or whose
channel broke since its last renewal, is out of routing at once.

A node that was paused (SIGSTOP) notices on waking that it has not renewed for longer
than its ttl: it fences itself (drops its lease, stops acting on what it owned, tells its
listeners) and then rejoins with a new lease and a new fencing token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

log = logging.getLogger("stoic.membership")

MEMBERS_PREFIX = "members/"


@dataclass(frozen=True)
class MemberRecord:
    """What a node publishes about itself."""

    node_id: str
    zone: str
    address: str
    pid: int
    functions: tuple[str, ...] = ()
    load: int = 0
    renewed_at: float = 0.0
    token: int = 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> MemberRecord:
        data: dict[str, Any] = json.loads(raw)
        data["functions"] = tuple(data.get("functions", ()))
        return cls(**data)


@dataclass(frozen=True)
class MembershipConfig:
    heartbeat: float = 0.25
    ttl: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat < self.ttl:
            raise ValueError(
                f"heartbeat: must be > 0 and below ttl ({self.ttl}), got {self.heartbeat}")


@dataclass
class Membership:
    """One node's view of the cluster, refreshed every heartbeat."""

    store: Any
    me: MemberRecord
    config: MembershipConfig = field(default_factory=MembershipConfig)
    clock: Callable[[], float] = time.time
    describe: Callable[[], tuple[tuple[str, ...], int]] = lambda: ((), 0)
    on_fenced: Callable[[], None] = lambda: None
    on_change: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self._grant: Any = None
        self._last_renewal = 0.0
        self._peers: dict[str, MemberRecord] = {}
        self._broken: dict[str, float] = {}
        self._owner = f"{self.me.node_id}:{self.me.pid}:{time.time_ns()}"
        self.fenced_count = 0

    # --- queries -------------------------------------------------------------
    @property
    def holds_lease(self) -> bool:
        """Whether this node currently owns its lease (and may act on what it owns)."""
        return self._grant is not None and (
            self.clock() - self._last_renewal < self.config.ttl)

    @property
    def token(self) -> int:
        return int(self._grant.token) if self._grant is not None else 0

    def live_members(self) -> list[MemberRecord]:
        """Every live node, this one included when it holds its lease."""
        now = self.clock()
        out = []
        for rec in self._peers.values():
            if rec.node_id == self.me.node_id:
                continue
            if now - rec.renewed_at >= self.config.ttl:
                continue
            if self._broken.get(rec.node_id, -1.0) >= rec.renewed_at:
                continue
            out.append(rec)
        if self.holds_lease:
            out.append(self._my_record())
        return sorted(out, key=lambda r: r.node_id)

    def peers(self) -> list[MemberRecord]:
        return [r for r in self.live_members() if r.node_id != self.me.node_id]

    def all_records(self) -> list[MemberRecord]:
        """Every record seen, live or not (for status)."""
        return sorted(self._peers.values(), key=lambda r: r.node_id)

    def mark_broken(self, node_id: str) -> None:
        """Take a peer out of routing now (its channel broke); it returns when it renews."""
        self._broken[node_id] = self.clock()
        self.on_change()

    # --- the loop --------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join (acquire the lease), then renew and refresh until cancelled. Signals
        `task_status` once joined. On cancellation, releases the lease and deletes the
        record so peers drop this node at once."""
        await self._join()
        await self._refresh()
        task_status.started()
        try:
            for _ in iter(int, 1):  # until cancelled
                await anyio.sleep(self.config.heartbeat)
                await self._tick()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await self._leave()

    async def _join(self) -> None:
        deadline = self.clock() + 60.0
        while self.clock() < deadline:
            grant = await self.store.acquire_lease(
                f"node/{self.me.node_id}", self._owner, self.config.ttl)
            if grant is not None:
                self._grant = grant
                self._last_renewal = self.clock()
                await self._publish()
                log.info("joined", extra={"node": self.me.node_id, "token": grant.token})
                return
            # another process holds this node id's lease: wait for it to lapse
            await anyio.sleep(self.config.heartbeat)
        raise RuntimeError(f"node id {self.me.node_id!r} is held by another live node")

    async def _tick(self) -> None:
        now = self.clock()
        if self._grant is not None and now - self._last_renewal >= self.config.ttl:
            # We slept through our own lease (paused, starved): whatever we owned may be
            # someone else's now. Fence ourselves before doing anything else.
            log.warning("lease lapsed while paused; fencing and rejoining",
                        extra={"node": self.me.node_id, "gap": now - self._last_renewal})
            self._grant = None
            self.fenced_count += 1
            self.on_fenced()
        try:
            if self._grant is None:
                grant = await self.store.acquire_lease(
                    f"node/{self.me.node_id}", self._owner + f":{self.fenced_count}",
                    self.config.ttl)
                if grant is None:
                    return
                self._owner += f":{self.fenced_count}"
                self._grant = grant
            else:
                self._grant = await self.store.renew_lease(self._grant, self.config.ttl)
            self._last_renewal = self.clock()
            await self._publish()
        except Exception as exc:  # a store hiccup: keep going; the lease check fences us
            if type(exc).__name__ == "LeaseLost":
                self._grant = None
                self.fenced_count += 1
                self.on_fenced()
            log.warning("membership renewal failed: %s", exc, extra={"node": self.me.node_id})
            return
        await self._refresh()

    def _my_record(self) -> MemberRecord:
        functions, load = self.describe()
        return MemberRecord(
            node_id=self.me.node_id, zone=self.me.zone, address=self.me.address,
            pid=self.me.pid, functions=tuple(sorted(functions)), load=load,
            renewed_at=self._last_renewal, token=self.token)

    async def _publish(self) -> None:
        await self.store.put(MEMBERS_PREFIX + self.me.node_id, self._my_record().encode())

    async def _refresh(self) -> None:
        rows = await self.store.scan(MEMBERS_PREFIX)
        before = {(r.node_id, r.functions) for r in self.live_members()}
        peers: dict[str, MemberRecord] = {}
        for key, versioned in rows:
            try:
                rec = MemberRecord.decode(versioned.value)
            except (ValueError, TypeError) as exc:
                log.warning("ignoring malformed member record %s: %s", key, exc)
                continue
            peers[rec.node_id] = rec
        self._peers = peers
        if before != {(r.node_id, r.functions) for r in self.live_members()}:
            self.on_change()

    async def _leave(self) -> None:
        try:
            await self.store.delete(MEMBERS_PREFIX + self.me.node_id)
            if self._grant is not None:
                await self.store.release_lease(self._grant)
        except Exception as exc:
            log.warning("leaving the cluster: %s", exc)
        self._grant = None


def by_zone(records: Sequence[MemberRecord]) -> dict[str, list[MemberRecord]]:
    out: dict[str, list[MemberRecord]] = {}
    for r in records:
        out.setdefault(r.zone, []).append(r)
    return out
