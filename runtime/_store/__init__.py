"""The store: versioned values with compare-and-set, prefix scans, expiring leases with
fencing tokens and a durable queue, behind one interface with four backends chosen by URL
(memory, SQLite, Redis, PostgreSQL). See `Store` for the contract of each method."""

from runtime._store._base import (
    InvalidStoreURL,
    LeaseGrant,
    LeaseLost,
    QueueItem,
    Store,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    StoreURL,
    VersionConflict,
    Versioned,
    parse_store_url,
    redact,
)
from runtime._store._memory import MemoryStore
from runtime._store._namespace import StateNamespace
from runtime._store._open import open_store

__all__ = [
    "InvalidStoreURL", "LeaseGrant", "LeaseLost", "MemoryStore", "QueueItem", "StateNamespace",
    "Store", "StoreClosed", "StoreError", "StoreUnavailable", "StoreURL", "VersionConflict",
    "Versioned", "open_store", "parse_store_url", "redact",
]
