"""Stoic's exceptions, and the one table mapping them to and from gRPC status codes.

Every exception says whose fault it is and whether trying again can help (`retryable`).
The server adapters in `runtime.wire` turn a domain exception raised by a handler into a
status with `status_for`; the client turns a status back into the exception with
`error_from_status`. Several classes may share a status code (FunctionNotFound and
InvocationNotFound are both NOT_FOUND): the server then also sends the class name in the
`stoic-error` trailing metadata, and the client prefers it over the code.

`FunctionError` is not in the table: a handler's exception is a *successful* RPC with the
`error` field set; the client raises `FunctionError` from that field. Neither are
`Unreachable` and `ConnectionLost`: the client raises them for an UNAVAILABLE status that
the transport produced, not the server.
"""

from __future__ import annotations

import grpc

__all__ = [
    "StoicError",
    "FunctionNotFound",
    "InvocationNotFound",
    "InvalidInput",
    "InvocationTimeout",
    "Unavailable",
    "PoolStopping",
    "Unreachable",
    "ConnectionLost",
    "LimitExceeded",
    "InstanceCrashed",
    "InternalError",
    "FunctionError",
    "ERROR_TRAILER",
    "STATUS_TABLE",
    "status_for",
    "error_from_status",
]

ERROR_TRAILER = "stoic-error"


class StoicError(Exception):
    """Base of Stoic's errors. `retryable` says whether the same call may succeed later
    (defaults per class; a raiser may override it)."""

    default_retryable = False

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable

    def __str__(self) -> str:
        return self.message


class FunctionNotFound(StoicError):
    """No function of that name is deployed (your request)."""


class InvocationNotFound(StoicError):
    """No invocation with that id is known (your request)."""


class InvalidInput(StoicError):
    """The request is malformed: empty name, invalid JSON, bad configuration (your request)."""


class InvocationTimeout(StoicError, TimeoutError):
    """The invocation did not finish before its deadline (the function's timeout or the
    caller's). Also a builtin `TimeoutError`."""

    default_retryable = True


class Unavailable(StoicError):
    """No healthy instance can take the call now: the function's circuit is open (its
    restart intensity was exceeded; the message names the last exit reason), or no node
    answers. Retrying later may succeed."""

    default_retryable = True


class PoolStopping(Unavailable):
    """A node's pool of the function is stopping (the function was placed on other nodes,
    redeployed, or the node is shutting down) and did not run the request: another node
    may. Nodes re-route it themselves; a client sees it only when no node could take the
    call."""


class Unreachable(Unavailable):
    """Client side: the node could not be reached (connection refused, no route); the
    request never reached it, so sending it to another node is safe."""


class ConnectionLost(Unavailable):
    """Client side: the connection to the node broke during the call; the node may have
    run it, so only calls that are safe to repeat go to another node."""


class LimitExceeded(StoicError):
    """A limit was exceeded: payload size, queue length, concurrency (back off)."""

    default_retryable = True


class InstanceCrashed(StoicError):
    """The function actor process died while running the invocation (segfault, os._exit,
    SIGKILL, out of memory) and no retry was left. Retryable."""

    default_retryable = True


class InternalError(StoicError):
    """A bug in Stoic, not in your request or your function; the message says where."""


class FunctionError(StoicError):
    """The user's handler raised: the exception's type name, message and traceback as
    formatted inside the function actor process."""

    def __init__(
        self,
        type: str,
        message: str,
        traceback: str = "",
        *,
        invocation_id: str = "",
        retryable: bool | None = None,
    ) -> None:
        super().__init__(f"{type}: {message}" if message else type, retryable=retryable)
        self.type = type
        self.message = message
        self.traceback = traceback
        self.invocation_id = invocation_id

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


# The one table. For a code shared by several classes, the first listed is what the client
# raises when the server sent no `stoic-error` trailer.
STATUS_TABLE: tuple[tuple[type[StoicError], grpc.StatusCode], ...] = (
    (FunctionNotFound, grpc.StatusCode.NOT_FOUND),
    (InvocationNotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (InvocationTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (PoolStopping, grpc.StatusCode.UNAVAILABLE),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InstanceCrashed, grpc.StatusCode.ABORTED),
    (InternalError, grpc.StatusCode.INTERNAL),
)

_CODE_BY_CLASS: dict[type[StoicError], grpc.StatusCode] = dict(STATUS_TABLE)
_CLASS_BY_NAME: dict[str, type[StoicError]] = {cls.__name__: cls for cls, _ in STATUS_TABLE}
_CLASS_BY_CODE: dict[grpc.StatusCode, type[StoicError]] = {}
for _cls, _code in STATUS_TABLE:
    _CLASS_BY_CODE.setdefault(_code, _cls)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """The status code, details and `stoic-error` trailer value for an exception raised by
    a handler. Subclasses of a table entry map like the entry; a builtin `TimeoutError` is
    DEADLINE_EXCEEDED; anything else is INTERNAL naming only the exception type (the full
    exception belongs in the server's log, not in the caller's hands)."""
    for klass in type(exc).__mro__:
        code = _CODE_BY_CLASS.get(klass)  # type: ignore[arg-type]
        if code is not None:
            return code, str(exc) or klass.__name__, klass.__name__
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded", (
            InvocationTimeout.__name__
        )
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error: {type(exc).__name__} (see the node's log)",
        InternalError.__name__,
    )


def error_from_status(code: grpc.StatusCode, details: str, error_name: str = "") -> StoicError:
    """The exception for a failed RPC: by the `stoic-error` trailer when the server sent a
    known one, else by the code. Codes outside the table (UNKNOWN, UNIMPLEMENTED,
    CANCELLED, ...) give a plain `StoicError` naming the code."""
    klass = _CLASS_BY_NAME.get(error_name)
    if klass is None or _CODE_BY_CLASS[klass] != code:
        klass = _CLASS_BY_CODE.get(code)
    if klass is None:
        return StoicError(f"{code.name}: {details}" if details else code.name)
    return klass(details or code.name)
