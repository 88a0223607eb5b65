"""`ctx.state`: a function's key-value namespace in the cluster's store.

Handlers keep no state in their process; they put it here. Keys live under
`state/<function>/` in the store the node uses (the node passes its URL to its function
actor processes in `STOIC_STORE_URL`); values are bytes with versions, and a write with
`expected_version` is a compare-and-set that raises `VersionConflict` when someone else
wrote first. The store is opened on first use, so functions that keep no state pay nothing.

Sync handlers (which run in worker threads) call `get`/`put`/`delete`/`scan`; async
handlers await `aget`/`aput`/`adelete`/`ascan`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import anyio.from_thread

STATE_PREFIX = "state/"


class FunctionState:
    """One function's namespace. Created per instance; safe to share between invocations."""

    def __init__(self, store_url: str, function: str) -> None:
        self._url = store_url
        self._prefix = f"{STATE_PREFIX}{function}/"
        self._store: Any = None
        self._lock = anyio.Lock()
        self._stack = contextlib.AsyncExitStack()

    async def _open(self) -> Any:
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    from runtime import open_store

                    if not self._url:
                        raise RuntimeError("ctx.state: this node has no store configured")
                    self._store = await self._stack.enter_async_context(open_store(self._url))
        return self._store

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._store = None

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"state key must be a non-empty string, got {key!r}")
        return self._prefix + key

    # --- async API -------------------------------------------------------------------
    async def aget(self, key: str) -> Any:
        """The `Versioned(value, version)` stored at `key`, or None."""
        store = await self._open()
        return await store.get(self._key(key))

    async def aput(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Write `value`; with `expected_version` (0: must not exist) only if the current
        version matches, else `VersionConflict`. Returns the new version."""
        store = await self._open()
        version: int = await store.put(self._key(key), value, expected_version=expected_version)
        return version

    async def adelete(self, key: str, *, expected_version: int | None = None) -> bool:
        store = await self._open()
        deleted: bool = await store.delete(self._key(key), expected_version=expected_version)
        return deleted

    async def ascan(self, prefix: str = "", *, limit: int | None = None) -> list[tuple[str, Any]]:
        """(key, Versioned) pairs under `prefix` in key order (keys without the namespace)."""
        store = await self._open()
        rows = await store.scan(self._prefix + prefix, limit=limit)
        return [(k[len(self._prefix):], v) for k, v in rows]

    # --- sync API (sync handlers run in worker threads) ---------------------------------
    def get(self, key: str) -> Any:
        return anyio.from_thread.run(self.aget, key)

    def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        version: int = anyio.from_thread.run(
            lambda: self.aput(key, value, expected_version=expected_version))
        return version

    def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        deleted: bool = anyio.from_thread.run(
            lambda: self.adelete(key, expected_version=expected_version))
        return deleted

    def scan(self, prefix: str = "", *, limit: int | None = None) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = anyio.from_thread.run(
            lambda: self.ascan(prefix, limit=limit))
        return rows
