"""The store's values, errors, interface and URL grammar, shared by every backend.

Times are wall-clock seconds (`time.time()`): several processes on several machines share
one store, so a monotonic clock of one process would mean nothing to the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Versioned:
    """A value and its version (1 for the first write, +1 for every later one)."""

    value: bytes
    version: int


@dataclass(frozen=True)
class LeaseGrant:
    """A held lease. `token` is a fencing token: every grant of one name gets a larger one
    than all grants before it (also across releases), so a resource can refuse a writer
    whose token is older than one it has already seen."""

    name: str
    owner: str
    token: int
    expires_at: float


@dataclass(frozen=True)
class QueueItem:
    """One leased (or dead-lettered) queue item.

    `attempts` counts leases (1 on the first delivery; redelivery after a visibility timeout
    and `retry` both keep counting). `receipt` identifies this one lease: `ack`, `retry` and
    `dead_letter` with an older receipt (the item was redelivered to someone else after the
    visibility timeout) change nothing and return False. `error` is the last error given to
    `retry` or the reason given to `dead_letter`.
    """

    id: str
    payload: bytes
    attempts: int
    enqueued_at: float
    receipt: str
    error: str = ""


# --- errors -----------------------------------------------------------------------------


class StoreError(Exception):
    """Base of the store's own errors."""


class VersionConflict(StoreError):
    """A compare-and-set lost: the key's version is `actual` (0: absent), not `expected`.
    The caller's fault only in the sense that it must re-read and decide again."""

    def __init__(self, key: str, expected: int | None, actual: int) -> None:
        super().__init__(f"version conflict on {key!r}: expected version {expected}, "
                         f"found {actual}")
        self.key, self.expected, self.actual = key, expected, actual


class LeaseLost(StoreError):
    """The lease lapsed and was taken by another owner, or was released: the holder must
    stop acting under it."""

    def __init__(self, name: str, detail: str = "it was taken over or released") -> None:
        super().__init__(f"lease {name!r} is lost: {detail}")
        self.name = name


class InvalidStoreURL(StoreError, ValueError):
    """The store URL is malformed or names an unknown backend (your configuration)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid store URL {redact(url)!r}: {reason}. Expected memory://, "
                         "sqlite:///absolute/path.db, redis://host:port/db or "
                         "postgresql://user:password@host:port/db")
        self.url = redact(url)
        self.reason = reason


class StoreUnavailable(StoreError, ConnectionError):
    """The store cannot be reached or failed under us (the infrastructure's fault;
    retryable). `url` never contains the password; the cause is chained."""

    retryable = True

    def __init__(self, url: str, cause: BaseException | str) -> None:
        super().__init__(f"store {redact(url)} is unavailable: {cause}")
        self.url = redact(url)


class StoreClosed(StoreError):
    """The store was used after `close()` (a programming error)."""


@contextlib.contextmanager
def unavailable_on(url: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn the driver's connection errors into `StoreUnavailable(url)`."""
    try:
        yield
    except errors as exc:
        raise StoreUnavailable(url, exc) from exc


# --- the interface ----------------------------------------------------------------------


class Store(Protocol):
    """The one store interface every backend implements.

    All methods are coroutines usable from any anyio backend's task (SQLite, memory) or from
    asyncio (Redis and PostgreSQL drivers are asyncio-only). Cancelling a call abandons the
    wait, not the operation: a write may or may not have been applied.
    """

    url: str

    async def get(self, key: str) -> Versioned | None:
        """The value at `key`, or None."""
        ...

    async def put(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Write `value` and return its new version. With `expected_version` this is a
        compare-and-set (0: the key must not exist) raising `VersionConflict`."""
        ...

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Remove `key`; True if it existed. `expected_version` as for `put`."""
        ...

    async def scan(self, prefix: str, *, limit: int | None = None,
                   start_after: str | None = None) -> list[tuple[str, Versioned]]:
        """Keys starting with `prefix` (greater than `start_after`) in key order (by code
        point), at most `limit` of them."""
        ...

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> LeaseGrant | None:
        """A new grant for `ttl` seconds, or None while another owner holds a live one.
        Re-acquiring one's own lease gives a new grant with a new token."""
        ...

    async def renew_lease(self, grant: LeaseGrant, ttl: float) -> LeaseGrant:
        """Extend `grant` to now + `ttl`. A lapsed lease that nobody took is renewed;
        raises `LeaseLost` if it was released or taken (its token changed)."""
        ...

    async def release_lease(self, grant: LeaseGrant) -> None:
        """Give the lease up if `grant` still holds it; otherwise do nothing."""
        ...

    async def get_lease(self, name: str) -> LeaseGrant | None:
        """The live grant of `name`, or None if nobody holds it now."""
        ...

    async def enqueue(self, queue: str, payload: bytes, *, delay: float = 0.0,
                      idempotency_key: str | None = None) -> str:
        """Durably add an item visible after `delay` seconds; return its id. A repeated
        `idempotency_key` returns the first item's id and adds nothing."""
        ...

    async def lease(self, queue: str, *, max_items: int,
                    visibility_timeout: float) -> list[QueueItem]:
        """Up to `max_items` visible items, oldest visible first, each hidden for
        `visibility_timeout` seconds (then delivered again unless acked), attempts + 1."""
        ...

    async def ack(self, queue: str, item: QueueItem) -> bool:
        """Remove a leased item. False (nothing changed) if `item.receipt` is stale."""
        ...

    async def retry(self, queue: str, item: QueueItem, *, delay: float, error: str = "") -> bool:
        """Make a leased item visible again after `delay`, keeping its attempt count.
        False (nothing changed) if `item.receipt` is stale."""
        ...

    async def dead_letter(self, queue: str, item: QueueItem, *, reason: str = "") -> bool:
        """Move a leased item to the dead letters. False if `item.receipt` is stale."""
        ...

    async def list_dead_letters(self, queue: str, *, limit: int = 100) -> list[QueueItem]:
        """Dead letters, oldest enqueued first (`receipt` is empty)."""
        ...

    async def redrive(self, queue: str, item_ids: list[str] | None = None) -> list[str]:
        """Put dead letters (all of them if `item_ids` is None) back in the queue, visible
        now with attempts reset to 0; return the ids moved."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


# --- URLs -------------------------------------------------------------------------------

SCHEMES = ("memory", "sqlite", "redis", "rediss", "postgresql", "postgres")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: `backend` is memory | sqlite | redis | postgresql; `path` is the
    SQLite file; `url` is what the driver gets."""

    backend: str
    url: str
    path: str = ""

    @property
    def redacted(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """`url` with any password replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("@")[-1] if "@" in url else url
    if not password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))


def parse_store_url(url: str) -> StoreURL:
    """Check `url` and say which backend serves it; raises `InvalidStoreURL` naming what is
    wrong. Nothing is opened or connected."""
    if not isinstance(url, str) or not url:
        raise InvalidStoreURL(str(url), "empty")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidStoreURL(url, str(exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidStoreURL(url, f"unknown scheme {parts.scheme!r}" if scheme
                              else "no scheme")
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise InvalidStoreURL(url, "memory:// takes no host or path")
        return StoreURL("memory", url)
    if scheme == "sqlite":
        path = url[len(parts.scheme) + len("://"):]
        if parts.netloc or not path.startswith("/") or path.endswith("/"):
            raise InvalidStoreURL(url, "sqlite needs an absolute file path (three slashes)")
        if parts.query or parts.fragment:
            raise InvalidStoreURL(url, "sqlite takes no query or fragment")
        return StoreURL("sqlite", url, path=path)
    if not parts.hostname:
        raise InvalidStoreURL(url, f"{scheme} needs a host")
    if port is not None and port == 0:
        raise InvalidStoreURL(url, "port 0")
    if scheme.startswith("redis"):
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise InvalidStoreURL(url, f"redis database must be a number, got {db!r}")
        return StoreURL("redis", url)
    return StoreURL("postgresql", url)
