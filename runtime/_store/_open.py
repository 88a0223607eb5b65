"""`open_store(url)`: the backend chosen by the URL's scheme."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from runtime._store._base import Store, parse_store_url


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    """Open the store at `url` for the duration of the context, and close it after.

    - `memory://`: one process only, for unit tests;
    - `sqlite:///absolute/path.db`: the embedded default (created with its folder);
    - `redis://[:password@]host:port/db` (or `rediss://`);
    - `postgresql://user:password@host:port/db` (or `postgres://`).

    Raises `InvalidStoreURL` for a malformed URL or unknown scheme before touching anything,
    and `StoreUnavailable` (naming the URL without its password, cause chained) if the file
    or server cannot be opened. Cancelling while opening closes whatever was opened.
    """
    parsed = parse_store_url(url)
    if parsed.backend == "memory":
        from runtime._store._memory import MemoryStore

        yield MemoryStore(url=url)
    elif parsed.backend == "sqlite":
        from runtime._store._sqlite import open_sqlite

        async with open_sqlite(url, parsed.path) as sqlite_store:
            yield sqlite_store
    elif parsed.backend == "redis":
        from runtime._store._redis import open_redis

        async with open_redis(url) as redis_store:
            yield redis_store
    else:
        from runtime._store._postgres import open_postgres

        async with open_postgres(url) as pg_store:
            yield pg_store
