"""`StateNamespace`: one function's slice of the store's key space (for `ctx.state`)."""

from __future__ import annotations

from runtime._store._base import Store, Versioned

STATE_PREFIX = "state/"


class StateNamespace:
    """Versioned values under `state/<function>/` in `store`, with keys given without the
    prefix. The same semantics (and `VersionConflict`) as the store itself; the store is
    borrowed, not owned: closing it is the caller's business."""

    def __init__(self, store: Store, function_name: str) -> None:
        if not function_name or "/" in function_name:
            raise ValueError(f"function name must be non-empty and contain no '/', "
                             f"got {function_name!r}")
        self.store = store
        self.prefix = f"{STATE_PREFIX}{function_name}/"

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"state key must be a non-empty string, got {key!r}")
        return self.prefix + key

    async def get(self, key: str) -> Versioned | None:
        """The value and version at `key`, or None."""
        return await self.store.get(self._key(key))

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Write `value`, returning the new version; `expected_version` makes it a
        compare-and-set (0: must not exist) raising `VersionConflict`."""
        return await self.store.put(self._key(key), value, expected_version=expected_version)

    async def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        """Write `value` only if `key` is at `expected_version` (0: absent); return the new
        version, or raise `VersionConflict(key, expected, actual)` with the full key."""
        return await self.store.put(self._key(key), value, expected_version=expected_version)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Remove `key`; True if it existed. `expected_version` as for `put`."""
        return await self.store.delete(self._key(key), expected_version=expected_version)

    async def scan(self, prefix: str = "", *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        """(key, value) pairs under `prefix` in key order; keys without the namespace."""
        rows = await self.store.scan(
            self.prefix + prefix, limit=limit,
            start_after=None if start_after is None else self.prefix + start_after)
        return [(k[len(self.prefix):], v) for k, v in rows]
