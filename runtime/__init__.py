"""Stoic's foundation: actors, the wire, function actor processes, the store, tracing.

`runtime` never imports `supervisor`. Each section below re-exports one part's public API;
implementation modules are private (leading underscore).
"""

__all__: list[str] = []

# --- child interface (shared by actors and OS-process children) ---
from runtime._child import Child, ExitReason

__all__ += ["Child", "ExitReason"]

# --- actors (issue 2) ---
from runtime._actor import (  # noqa: E402
    Actor,
    ActorDeadError,
    ActorRef,
    Down,
    Exit,
    MailboxFull,
    NameTaken,
    Runtime,
    RuntimeClosed,
)
from runtime._clock import Clock, LoopClock  # noqa: E402

__all__ += [
    "Actor", "ActorRef", "ActorDeadError", "MailboxFull", "NameTaken", "Runtime",
    "RuntimeClosed", "Exit", "Down", "Clock", "LoopClock",
]

# --- functions, wire, worker, client (issue 3) ---
from runtime._errors import (  # noqa: E402
    ConnectionLost,
    FunctionError,
    FunctionNotFound,
    InstanceCrashed,
    InternalError,
    InvalidInput,
    InvocationNotFound,
    InvocationTimeout,
    LimitExceeded,
    PoolStopping,
    StoicError,
    Unavailable,
    Unreachable,
)

__all__ += [
    "StoicError", "FunctionNotFound", "InvocationNotFound", "InvalidInput", "InvocationTimeout",
    "Unavailable", "LimitExceeded", "InstanceCrashed", "InternalError", "FunctionError",
    "Unreachable", "ConnectionLost", "PoolStopping",
]
from runtime._client import AsyncClient, Client  # noqa: E402
from runtime.wire import InvokeResult  # noqa: E402

__all__ += ["AsyncClient", "Client", "InvokeResult"]
from runtime._context import Context  # noqa: E402
from runtime._function import (  # noqa: E402
    FunctionConfig,
    FunctionSpec,
    InvalidFunctionConfig,
    function,
    load_apps,
)
from runtime._worker import ForkServer, WorkerProcess, WorkerStartFailed  # noqa: E402

__all__ += [
    "function", "FunctionConfig", "FunctionSpec", "InvalidFunctionConfig", "load_apps",
    "Context", "ForkServer", "WorkerProcess", "WorkerStartFailed",
]

# --- store (issue 4) ---
from runtime._store import (  # noqa: E402
    InvalidStoreURL,
    LeaseGrant,
    LeaseLost,
    MemoryStore,
    QueueItem,
    StateNamespace,
    Store,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    StoreURL,
    VersionConflict,
    Versioned,
    open_store,
    parse_store_url,
)

__all__ += ["open_store", "Store", "VersionConflict", "LeaseLost", "InvalidStoreURL",
            "StoreUnavailable", "StoreError", "StoreClosed", "Versioned", "LeaseGrant",
            "QueueItem", "MemoryStore", "StateNamespace", "StoreURL", "parse_store_url"]

# --- tracing (issue 7) ---
from runtime._tracing import (  # noqa: E402
    ATTR_ATTEMPT,
    ATTR_FUNCTION,
    ATTR_INVOCATION_ID,
    ATTR_REASON,
    ATTR_ROLE,
    SUPERVISOR_EVENTS,
    EventRecord,
    InvalidTelemetryConfig,
    LocalRecorder,
    Metrics,
    SpanRecord,
    Tracing,
    build_resource,
    extract,
    inject,
    render_tree,
)

__all__ += [
    "Tracing", "Metrics", "LocalRecorder", "SpanRecord", "EventRecord", "render_tree",
    "inject", "extract", "build_resource", "InvalidTelemetryConfig", "SUPERVISOR_EVENTS",
    "ATTR_INVOCATION_ID", "ATTR_FUNCTION", "ATTR_ATTEMPT", "ATTR_REASON", "ATTR_ROLE",
]
