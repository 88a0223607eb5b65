"""`open_store(url)`: the store backend chosen by URL.

- `memory://`: one process only, for unit tests;
- `sqlite:///path/to/store.db`: the embedded default (one file, WAL, group commits);
- `redis://host:port/db`: Redis (atomic operations as Lua scripts);
- `postgresql://user:password@host:port/db`: PostgreSQL (queue leased with SKIP LOCKED).

A malformed or unknown URL raises `InvalidStoreURL` at once; an unreachable server raises
`StoreUnavailable` naming the URL without its password.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

from runtime._sqlite_store import LeaseGrant, QueueItem, Versioned


class Store(Protocol):
    """The one store interface every backend implements (see docs/architecture.md)."""

    async def get(self, key: str) -> Versioned | None: ...
    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int: ...
    async def delete(self, key: str, *, expected_version: int | None = None) -> bool: ...
    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]: ...
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None: ...
    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant: ...
    async def release_lease(self, grant: LeaseGrant) -> None: ...
    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str: ...
    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]: ...
    async def ack(self, queue: str, item: QueueItem) -> bool: ...
    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool: ...
    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool: ...
    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]: ...
    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]: ...
    async def close(self) -> None: ...


class InvalidStoreURL(ValueError):
    """The store URL is malformed or names an unknown backend (your configuration)."""


class StoreUnavailable(ConnectionError):
    """The store's server cannot be reached; the message names the URL (no password)."""


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    """Open the store at `url` for the duration of the context."""
    from runtime._redis_store import open_redis, redact
    from runtime._sqlite_store import open_sqlite

    parts = urlsplit(url)
    if parts.scheme == "memory":
        from runtime._memory_store import MemoryStore

        yield MemoryStore()
        return
    if parts.scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise InvalidStoreURL(f"sqlite URL must be sqlite:///absolute/path.db, got {url!r}")
        async with open_sqlite(path) as store:
            yield store
        return
    if parts.scheme in ("redis", "rediss", "postgresql", "postgres"):
        if not parts.hostname:
            raise InvalidStoreURL(f"{parts.scheme} URL must name a host: "
                                  f"{parts.scheme}://[user@]host:port/db, got {redact(url)!r}")
        if parts.scheme.startswith("redis"):
            server_cm: Any = open_redis(url)
        else:
            from runtime._postgres_store import open_postgres

            server_cm = open_postgres(url)
        try:
            server_store = await server_cm.__aenter__()
        except ConnectionError as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            yield server_store
        finally:
            await server_cm.__aexit__(None, None, None)
        return
    raise InvalidStoreURL(
        f"unknown store URL {redact(url)!r}: expected memory://, sqlite:///path.db, redis://host:port/db or "
        "postgresql://user@host:port/db")
