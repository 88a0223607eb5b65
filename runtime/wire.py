"""The one wire boundary: protobuf messages <-> frozen dataclasses, servicer adapters, stubs.

This is the only module that imports the generated code in `runtime._proto`. Everything
else (the node, pools, the worker process, the client's callers) passes the small frozen
dataclasses defined here. Each dataclass has `to_proto()` and `from_proto(msg)`; they are
meant for this module and its tests.

Conventions on the wire that the dataclasses hide:
- "no deadline" is `0` in `ExecuteRequest.deadline` and `None` here;
- an unset `error` message is `None` here;
- an empty `content_type` means "application/json".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn, Protocol

import anyio
import anyio.abc
import grpc
import grpc.aio
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime._aio import stray_cancellation
from runtime._errors import (
    ERROR_TRAILER,
    ConnectionLost,
    FunctionError,
    InstanceCrashed,
    InternalError,
    InvalidInput,
    InvocationTimeout,
    LimitExceeded,
    StoicError,
    Unreachable,
    error_from_status,
    status_for,
)
from runtime._proto.stoic.v1 import (
    control_pb2,
    control_pb2_grpc,
    invoker_pb2,
    invoker_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

__all__ = [
    "JSON",
    "AttemptInfo",
    "ExecuteRequest",
    "ExecuteResult",
    "WorkerTiming",
    "AssignRefused",
    "FunctionErrorInfo",
    "FunctionSpec",
    "InstanceStatus",
    "InvocationInfo",
    "InvocationState",
    "InvokeRequest",
    "InvokeResult",
    "NodeStatus",
    "Placement",
    "PoolStatus",
    "RetryPolicy",
    "Status",
    "DeployRequest",
    "ListDeadLettersRequest",
    "RedriveRequest",
    "PingResult",
    "is_json",
    "decode_payload",
    "CallInfo",
    "InvokerHandler",
    "ControlHandler",
    "WorkerHandler",
    "InvokerStub",
    "ControlStub",
    "WorkerStreamClient",
    "add_invoker_service",
    "add_control_service",
    "add_worker_service",
    "add_health_and_reflection",
    "channel_options",
    "open_channel",
    "check_invoke_request",
    "error_from_rpc",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "INVOKER_SERVICE",
    "CONTROL_SERVICE",
    "WORKER_SERVICE",
]

JSON = "application/json"


def is_json(content_type: str) -> bool:
    """True for an empty content type (the default) and for application/json[; params]."""
    if not content_type:
        return True
    return content_type.split(";", 1)[0].strip().lower() == JSON


def decode_payload(payload: bytes, content_type: str) -> Any:
    """JSON-decode `payload` for a JSON content type (None when empty); other content
    types come back as bytes. Raises `InvalidInput` for invalid JSON."""
    if not is_json(content_type):
        return payload
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise InvalidInput(f"payload is not valid JSON: {exc}") from exc


def _json_safe(payload: bytes, content_type: str) -> Any:
    if is_json(content_type):
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            pass
    return payload.decode("utf-8", "replace")


# --------------------------------------------------------------------------- invoker


@dataclass(frozen=True)
class FunctionErrorInfo:
    """What a user's handler raised: exception type name, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    def to_proto(self) -> invoker_pb2.FunctionError:
        return invoker_pb2.FunctionError(
            type=self.type, message=self.message, traceback=self.traceback
        )

    @classmethod
    def from_proto(cls, msg: invoker_pb2.FunctionError) -> FunctionErrorInfo:
        return cls(type=msg.type, message=msg.message, traceback=msg.traceback)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


def _error_from(msg: Any) -> FunctionErrorInfo | None:
    return FunctionErrorInfo.from_proto(msg.error) if msg.HasField("error") else None


@dataclass(frozen=True)
class Placement:
    """Where an invocation ran: node, zone and the function actor's pid."""

    node_id: str = ""
    zone: str = ""
    pid: int = 0

    def to_proto(self) -> invoker_pb2.Placement:
        return invoker_pb2.Placement(node_id=self.node_id, zone=self.zone, pid=self.pid)

    @classmethod
    def from_proto(cls, msg: invoker_pb2.Placement) -> Placement:
        return cls(node_id=msg.node_id, zone=msg.zone, pid=msg.pid)


@dataclass(frozen=True)
class InvokeRequest:
    """A request to run `function` with `payload` (bytes of `content_type`)."""

    function: str
    payload: bytes = b""
    content_type: str = JSON
    idempotency_key: str = ""

    def to_proto(self) -> invoker_pb2.InvokeRequest:
        return invoker_pb2.InvokeRequest(
            function=self.function,
            payload=self.payload,
            content_type=self.content_type,
            idempotency_key=self.idempotency_key,
        )

    @classmethod
    def from_proto(cls, msg: invoker_pb2.InvokeRequest) -> InvokeRequest:
        return cls(
            function=msg.function,
            payload=msg.payload,
            content_type=msg.content_type or JSON,
            idempotency_key=msg.idempotency_key,
        )


@dataclass(frozen=True)
class InvokeResult:
    """The answer to an Invoke: the handler's result, or `error` when the handler raised
    (a handler error is a successful RPC, as Lambda's FunctionError)."""

    invocation_id: str
    payload: bytes = b""
    content_type: str = JSON
    attempts: int = 1
    placement: Placement = field(default_factory=Placement)
    error: FunctionErrorInfo | None = None

    def to_proto(self) -> invoker_pb2.InvokeResponse:
        return invoker_pb2.InvokeResponse(
            invocation_id=self.invocation_id,
            payload=self.payload,
            content_type=self.content_type,
            attempts=self.attempts,
            placement=self.placement.to_proto(),
            error=self.error.to_proto() if self.error is not None else None,
        )

    @property
    def value(self) -> Any:
        """The result: JSON-decoded for a JSON content type (None for an empty payload),
        else the raw bytes. Raises `FunctionError` when the handler raised."""
        if self.error is not None:
            raise FunctionError(
                self.error.type, self.error.message, self.error.traceback,
                invocation_id=self.invocation_id,
            )
        return decode_payload(self.payload, self.content_type)

    @classmethod
    def from_proto(cls, msg: invoker_pb2.InvokeResponse) -> InvokeResult:
        return cls(
            invocation_id=msg.invocation_id,
            payload=msg.payload,
            content_type=msg.content_type or JSON,
            attempts=msg.attempts,
            placement=Placement.from_proto(msg.placement),
            error=_error_from(msg),
        )


class InvocationState(enum.IntEnum):
    """Life cycle of an asynchronous invocation (values equal the proto enum's)."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    DEAD_LETTERED = 5


@dataclass(frozen=True)
class AttemptInfo:
    """One attempt of an invocation. `ended_at` is None while running (0 on the wire)."""

    attempt: int
    node_id: str = ""
    zone: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    outcome: str = ""  # "succeeded", "error", "crash", "timeout", ...
    detail: str = ""

    def to_proto(self) -> invoker_pb2.Attempt:
        return invoker_pb2.Attempt(
            attempt=self.attempt,
            node_id=self.node_id,
            zone=self.zone,
            started_at=self.started_at,
            ended_at=self.ended_at or 0.0,
            outcome=self.outcome,
            detail=self.detail,
        )

    @classmethod
    def from_proto(cls, msg: invoker_pb2.Attempt) -> AttemptInfo:
        return cls(
            attempt=msg.attempt,
            node_id=msg.node_id,
            zone=msg.zone,
            started_at=msg.started_at,
            ended_at=msg.ended_at or None,
            outcome=msg.outcome,
            detail=msg.detail,
        )


@dataclass(frozen=True)
class InvocationInfo:
    """State, result and attempt history of an invocation (GetInvocation, dead letters)."""

    invocation_id: str
    function: str
    state: InvocationState
    payload: bytes = b""
    content_type: str = JSON
    error: FunctionErrorInfo | None = None
    attempts: tuple[AttemptInfo, ...] = ()
    submitted_at: float = 0.0

    def to_proto(self) -> invoker_pb2.Invocation:
        return invoker_pb2.Invocation(
            invocation_id=self.invocation_id,
            function=self.function,
            state=int(self.state),  # type: ignore[arg-type]
            payload=self.payload,
            content_type=self.content_type,
            error=self.error.to_proto() if self.error is not None else None,
            attempts=[a.to_proto() for a in self.attempts],
            submitted_at=self.submitted_at,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the result decoded when it is JSON), e.g. for the CLI."""
        return {
            "invocation_id": self.invocation_id,
            "function": self.function,
            "state": self.state.name,
            "result": _json_safe(self.payload, self.content_type) if self.payload else None,
            "error": dataclasses.asdict(self.error) if self.error is not None else None,
            "attempts": [dataclasses.asdict(a) for a in self.attempts],
            "submitted_at": self.submitted_at,
        }

    @classmethod
    def from_proto(cls, msg: invoker_pb2.Invocation) -> InvocationInfo:
        try:
            state = InvocationState(msg.state)
        except ValueError:
            state = InvocationState.UNSPECIFIED
        return cls(
            invocation_id=msg.invocation_id,
            function=msg.function,
            state=state,
            payload=msg.payload,
            content_type=msg.content_type or JSON,
            error=_error_from(msg),
            attempts=tuple(AttemptInfo.from_proto(a) for a in msg.attempts),
            submitted_at=msg.submitted_at,
        )


# --------------------------------------------------------------------------- control


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of asynchronous invocations (durations in seconds)."""

    max_attempts: int = 3
    initial_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff: float = 60.0
    max_event_age: float = 6 * 3600.0
    retry_on: tuple[str, ...] = ("error", "crash", "timeout")

    def to_proto(self) -> control_pb2.RetryPolicy:
        return control_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff,
            backoff_multiplier=self.backoff_multiplier,
            max_backoff=self.max_backoff,
            max_event_age=self.max_event_age,
            retry_on=list(self.retry_on),
        )

    @classmethod
    def from_proto(cls, msg: control_pb2.RetryPolicy) -> RetryPolicy:
        return cls(
            max_attempts=msg.max_attempts,
            initial_backoff=msg.initial_backoff,
            backoff_multiplier=msg.backoff_multiplier,
            max_backoff=msg.max_backoff,
            max_event_age=msg.max_event_age,
            retry_on=tuple(msg.retry_on),
        )


@dataclass(frozen=True)
class FunctionSpec:
    """A deployed function: where its handler comes from and how it runs
    (durations in seconds)."""

    name: str
    app: str
    handler: str
    timeout: float = 30.0
    retries: int = 2
    memory_mb: int = 256
    concurrency: int = 1
    min_instances: int = 1
    min_zones: int = 1
    async_retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_success: str = ""
    on_failure: str = ""

    def to_proto(self) -> control_pb2.FunctionSpec:
        return control_pb2.FunctionSpec(
            name=self.name,
            app=self.app,
            handler=self.handler,
            timeout=self.timeout,
            retries=self.retries,
            memory_mb=self.memory_mb,
            concurrency=self.concurrency,
            min_instances=self.min_instances,
            min_zones=self.min_zones,
            async_retry=self.async_retry.to_proto(),
            on_success=self.on_success,
            on_failure=self.on_failure,
        )

    @classmethod
    def from_proto(cls, msg: control_pb2.FunctionSpec) -> FunctionSpec:
        return cls(
            name=msg.name,
            app=msg.app,
            handler=msg.handler,
            timeout=msg.timeout,
            retries=msg.retries,
            memory_mb=msg.memory_mb,
            concurrency=msg.concurrency,
            min_instances=msg.min_instances,
            min_zones=msg.min_zones,
            async_retry=(
                RetryPolicy.from_proto(msg.async_retry)
                if msg.HasField("async_retry")
                else RetryPolicy()
            ),
            on_success=msg.on_success,
            on_failure=msg.on_failure,
        )


@dataclass(frozen=True)
class DeployRequest:
    """Python module names or file paths visible to the nodes."""

    apps: tuple[str, ...]

    def to_proto(self) -> control_pb2.DeployRequest:
        return control_pb2.DeployRequest(apps=list(self.apps))

    @classmethod
    def from_proto(cls, msg: control_pb2.DeployRequest) -> DeployRequest:
        return cls(apps=tuple(msg.apps))


@dataclass(frozen=True)
class InstanceStatus:
    """One function actor process: state is "starting", "ready", "busy" or "stopping"."""

    id: str
    pid: int = 0
    state: str = ""
    in_flight: int = 0

    def to_proto(self) -> control_pb2.InstanceStatus:
        return control_pb2.InstanceStatus(
            id=self.id, pid=self.pid, state=self.state, in_flight=self.in_flight
        )

    @classmethod
    def from_proto(cls, msg: control_pb2.InstanceStatus) -> InstanceStatus:
        return cls(id=msg.id, pid=msg.pid, state=msg.state, in_flight=msg.in_flight)


@dataclass(frozen=True)
class PoolStatus:
    """A function's pool supervisor: state is "healthy" or "failing"."""

    function: str
    state: str = ""
    restarts: int = 0
    last_exit_reason: str = ""
    instances: tuple[InstanceStatus, ...] = ()

    def to_proto(self) -> control_pb2.PoolStatus:
        return control_pb2.PoolStatus(
            function=self.function,
            state=self.state,
            restarts=self.restarts,
            last_exit_reason=self.last_exit_reason,
            instances=[i.to_proto() for i in self.instances],
        )

    @classmethod
    def from_proto(cls, msg: control_pb2.PoolStatus) -> PoolStatus:
        return cls(
            function=msg.function,
            state=msg.state,
            restarts=msg.restarts,
            last_exit_reason=msg.last_exit_reason,
            instances=tuple(InstanceStatus.from_proto(i) for i in msg.instances),
        )


@dataclass(frozen=True)
class NodeStatus:
    """One node of the cluster and its pools (`lease_age` in seconds)."""

    node_id: str
    zone: str = ""
    address: str = ""
    healthy: bool = True
    lease_age: float = 0.0
    pid: int = 0
    pools: tuple[PoolStatus, ...] = ()

    def to_proto(self) -> control_pb2.NodeStatus:
        return control_pb2.NodeStatus(
            node_id=self.node_id,
            zone=self.zone,
            address=self.address,
            healthy=self.healthy,
            lease_age=self.lease_age,
            pid=self.pid,
            pools=[p.to_proto() for p in self.pools],
        )

    @classmethod
    def from_proto(cls, msg: control_pb2.NodeStatus) -> NodeStatus:
        return cls(
            node_id=msg.node_id,
            zone=msg.zone,
            address=msg.address,
            healthy=msg.healthy,
            lease_age=msg.lease_age,
            pid=msg.pid,
            pools=tuple(PoolStatus.from_proto(p) for p in msg.pools),
        )


@dataclass(frozen=True)
class Status:
    """The supervision tree as the Status RPC reports it."""

    nodes: tuple[NodeStatus, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole tree."""
        return dataclasses.asdict(self)

    def to_proto(self) -> control_pb2.StatusResponse:
        return control_pb2.StatusResponse(nodes=[n.to_proto() for n in self.nodes])

    @classmethod
    def from_proto(cls, msg: control_pb2.StatusResponse) -> Status:
        return cls(nodes=tuple(NodeStatus.from_proto(n) for n in msg.nodes))


@dataclass(frozen=True)
class ListDeadLettersRequest:
    """At most `limit` dead-lettered invocations; 0 means the server's default."""

    limit: int = 0

    def to_proto(self) -> control_pb2.ListDeadLettersRequest:
        return control_pb2.ListDeadLettersRequest(limit=self.limit)

    @classmethod
    def from_proto(cls, msg: control_pb2.ListDeadLettersRequest) -> ListDeadLettersRequest:
        return cls(limit=msg.limit)


@dataclass(frozen=True)
class RedriveRequest:
    """Re-queue the given dead-lettered invocations, or all of them when `all`."""

    invocation_ids: tuple[str, ...] = ()
    all: bool = False

    def to_proto(self) -> control_pb2.RedriveRequest:
        return control_pb2.RedriveRequest(invocation_ids=list(self.invocation_ids), all=self.all)

    @classmethod
    def from_proto(cls, msg: control_pb2.RedriveRequest) -> RedriveRequest:
        return cls(invocation_ids=tuple(msg.invocation_ids), all=msg.all)


# --------------------------------------------------------------------------- worker


@dataclass(frozen=True)
class ExecuteRequest:
    """One invocation attempt sent by a node to a function actor process.

    `deadline` is unix wall-clock seconds (`time.time()` based) or None for no deadline.
    The stream's `seq` is not here: `WorkerStreamClient` assigns it.
    """

    invocation_id: str
    attempt: int
    function: str
    payload: bytes = b""
    content_type: str = JSON
    deadline: float | None = None
    trace_context: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self, seq: int = 0) -> worker_pb2.ExecuteRequest:
        return worker_pb2.ExecuteRequest(
            seq=seq,
            invocation_id=self.invocation_id,
            attempt=self.attempt,
            function=self.function,
            payload=self.payload,
            content_type=self.content_type,
            deadline=self.deadline or 0.0,
            trace_context=dict(self.trace_context),
        )

    @classmethod
    def from_proto(cls, msg: worker_pb2.ExecuteRequest) -> ExecuteRequest:
        return cls(
            invocation_id=msg.invocation_id,
            attempt=msg.attempt,
            function=msg.function,
            payload=msg.payload,
            content_type=msg.content_type or JSON,
            deadline=msg.deadline or None,
            trace_context=dict(msg.trace_context),
        )


@dataclass(frozen=True)
class WorkerTiming:
    """When (unix nanoseconds) and in which process a worker ran one attempt; a span id
    is the worker's when it chose one (the handler span's, when the handler made spans of
    its own), else 0 (the node chooses)."""

    execute_start: int
    handler_start: int
    handler_end: int
    execute_end: int
    pid: int
    execute_span_id: int = 0
    handler_span_id: int = 0

    def to_proto(self) -> worker_pb2.WorkerTiming:
        return worker_pb2.WorkerTiming(
            execute_start_unix_nano=self.execute_start,
            handler_start_unix_nano=self.handler_start,
            handler_end_unix_nano=self.handler_end,
            execute_end_unix_nano=self.execute_end,
            pid=self.pid, execute_span_id=self.execute_span_id,
            handler_span_id=self.handler_span_id,
        )

    @classmethod
    def from_proto(cls, msg: worker_pb2.WorkerTiming) -> WorkerTiming:
        return cls(msg.execute_start_unix_nano, msg.handler_start_unix_nano,
                   msg.handler_end_unix_nano, msg.execute_end_unix_nano, msg.pid,
                   msg.execute_span_id, msg.handler_span_id)


@dataclass(frozen=True)
class ExecuteResult:
    """The outcome of one attempt inside the worker: a result, or `error` if the handler
    raised (the process survived). `timing` says when it ran (None from older workers)."""

    payload: bytes = b""
    content_type: str = JSON
    error: FunctionErrorInfo | None = None
    timing: WorkerTiming | None = None

    def to_proto(self, seq: int = 0) -> worker_pb2.ExecuteResponse:
        return worker_pb2.ExecuteResponse(
            seq=seq,
            payload=self.payload,
            content_type=self.content_type,
            error=self.error.to_proto() if self.error is not None else None,
            timing=self.timing.to_proto() if self.timing is not None else None,
        )

    @classmethod
    def from_proto(cls, msg: worker_pb2.ExecuteResponse) -> ExecuteResult:
        return cls(payload=msg.payload, content_type=msg.content_type or JSON,
                   error=_error_from(msg),
                   timing=WorkerTiming.from_proto(msg.timing) if msg.HasField("timing") else None)


class PingResult(NamedTuple):
    """A worker's answer to a health ping (unpacks as `pid, in_flight`)."""

    pid: int
    in_flight: int

    def to_proto(self) -> worker_pb2.PingResponse:
        return worker_pb2.PingResponse(pid=self.pid, in_flight=self.in_flight)

    @classmethod
    def from_proto(cls, msg: worker_pb2.PingResponse) -> PingResult:
        return cls(pid=msg.pid, in_flight=msg.in_flight)



# =========================================================================== the boundary
# Everything below turns gRPC calls into handler calls on the dataclasses above and back,
# mapping exceptions through the one table in runtime._errors.

log = logging.getLogger("stoic.wire")

INVOKER_SERVICE = "stoic.v1.Invoker"
CONTROL_SERVICE = "stoic.v1.Control"
WORKER_SERVICE = "stoic.v1.Worker"

DEFAULT_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
"""Largest accepted Invoke payload (as AWS Lambda's synchronous limit)."""

# Headroom above the payload limit for the rest of the message, so that an oversized
# payload reaches our check (and gets a message naming the limit) instead of gRPC's own.
_MESSAGE_HEADROOM = 1024 * 1024


def channel_options(max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> list[tuple[str, Any]]:
    """gRPC options for servers and channels carrying payloads up to `max_payload_bytes`
    (gRPC's default message limit is 4 MiB, below the payload limit). Messages far past the
    limit are refused by gRPC itself, also with RESOURCE_EXHAUSTED."""
    size = max_payload_bytes + _MESSAGE_HEADROOM
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
    ]


def open_channel(
    target: str, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to `target` ("127.0.0.1:50051", "unix:///path").
    Must be created and used inside the running asyncio event loop."""
    return grpc.aio.insecure_channel(target, options=channel_options(max_payload_bytes))


@dataclass(frozen=True)
class CallInfo:
    """What a server handler knows about the call besides its request.

    `deadline` is unix wall-clock seconds (`time.time()` based) derived from the caller's
    grpc-timeout, or None. `metadata` holds the text headers (W3C `traceparent`,
    `tracestate`, Stoic's hop header); binary (`-bin`) headers are left out.
    """

    deadline: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    peer: str = ""

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None."""
        return None if self.deadline is None else self.deadline - time.time()


def _call_info(context: grpc.aio.ServicerContext[Any, Any]) -> CallInfo:
    remaining = context.time_remaining()
    metadata: dict[str, str] = {}
    items: Any = context.invocation_metadata() or ()
    for key, value in items:
        if isinstance(value, str):
            metadata[key] = value
    return CallInfo(
        deadline=None if remaining is None else time.time() + remaining,
        metadata=metadata,
        peer=context.peer() or "",
    )


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception
) -> NoReturn:
    code, details, name = status_for(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, InternalError):
        log.error("%s failed unexpectedly", method, exc_info=exc)
    await context.abort(code, details, trailing_metadata=((ERROR_TRAILER, name),))
    raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


def check_invoke_request(
    request: InvokeRequest, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> None:
    """Validate an Invoke request at the boundary.

    Raises `InvalidInput` for an empty function name or a JSON content type (or none)
    whose payload is not valid JSON (naming the error's position); `LimitExceeded`
    (RESOURCE_EXHAUSTED, as gRPC's own message-size limit) for a payload over
    `max_payload_bytes`, naming the size and the limit. An empty JSON payload is accepted
    and means "no event" (None).
    """
    if not request.function:
        raise InvalidInput("function name is empty")
    size = len(request.payload)
    if size > max_payload_bytes:
        raise LimitExceeded(
            f"payload of {size} bytes for {request.function!r} is over the limit of "
            f"{max_payload_bytes} bytes",
            retryable=False,
        )
    if request.payload and is_json(request.content_type):
        try:
            json.loads(request.payload)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise InvalidInput(
                f"payload for {request.function!r} is not valid JSON "
                f"(content type {request.content_type or JSON}): {exc}"
            ) from exc


# --------------------------------------------------------------------------- handlers


class InvokerHandler(Protocol):
    """What a node implements to serve stoic.v1.Invoker. Requests arrive validated
    (`check_invoke_request`). Raise Stoic's exceptions for platform failures."""

    async def invoke(self, request: InvokeRequest, call: CallInfo) -> InvokeResult: ...

    async def invoke_async(self, request: InvokeRequest, call: CallInfo) -> str:
        """Make the invocation durable and return its id."""
        ...

    async def get_invocation(self, invocation_id: str, call: CallInfo) -> InvocationInfo: ...


class ControlHandler(Protocol):
    """What a node implements to serve stoic.v1.Control."""

    async def deploy(self, request: DeployRequest, call: CallInfo) -> Sequence[FunctionSpec]: ...

    async def list_functions(self, call: CallInfo) -> Sequence[FunctionSpec]: ...

    async def status(self, call: CallInfo) -> Status: ...

    async def list_dead_letters(
        self, request: ListDeadLettersRequest, call: CallInfo
    ) -> Sequence[InvocationInfo]: ...

    async def redrive(self, request: RedriveRequest, call: CallInfo) -> Sequence[str]: ...

    async def get_trace(self, invocation_id: str, call: CallInfo) -> Sequence[str]:
        """The spans recorded for an invocation, one JSON object per span."""
        ...


class WorkerHandler(Protocol):
    """What a function actor process implements: run one attempt. A handler's exception
    must come back as `ExecuteResult(error=...)`; an exception escaping `execute` is
    reported the same way (type, message, traceback) and logged as a worker bug."""

    async def execute(self, request: ExecuteRequest) -> ExecuteResult: ...


class AssignRefused(Exception):
    """Raised by a worker handler's `assign` when it cannot take the assignment:
    `precondition` True when it already runs a function (FAILED_PRECONDITION), False when
    the function cannot be loaded (INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, precondition: bool = False) -> None:
        super().__init__(message)
        self.precondition = precondition


async def _write_results(
    write: Callable[[list[Any]], Awaitable[None]], outbox: list[Any], wake: asyncio.Event,
    finished: Callable[[], bool], what: str,
) -> None:
    """A server stream's only writer: whenever woken, send what `outbox` holds, at most
    MAX_BATCH items and BATCH_BYTES per message; return once `finished()` says no more
    results will come, or when a write fails (the peer went away: nobody is left to read
    the results, which are dropped)."""
    while True:
        await wake.wait()
        wake.clear()
        while outbox:
            batch = outbox[:MAX_BATCH]
            del outbox[:MAX_BATCH]
            try:
                for chunk in _chunks(batch):
                    await write(chunk)
            except Exception as exc:  # grpc raises its own internal types here
                log.debug("%s closed while writing results: %r", what, exc)
                outbox.clear()
                return
        if finished():
            return


MAX_STREAM_CALLS = 4096
"""At most this many calls in flight on one InvokeStream; more get RESOURCE_EXHAUSTED."""


class _InvokerServicer(invoker_pb2_grpc.InvokerServicer):
    def __init__(self, handler: InvokerHandler, max_payload_bytes: int) -> None:
        self._handler = handler
        self._max = max_payload_bytes

    async def Invoke(self, request: Any, context: Any) -> Any:
        try:
            req = InvokeRequest.from_proto(request)
            check_invoke_request(req, self._max)
            result = await self._handler.invoke(req, _call_info(context))
            return result.to_proto()
        except Exception as exc:
            await _abort(context, "Invoke", exc)

    async def InvokeStream(self, request_iterator: Any, context: Any) -> None:
        # Each call runs concurrently as if it were a unary Invoke (same checks, same
        # handler, same status mapping), with the deadline and metadata its message
        # carries. One writer sends every result ready at that moment as one message (one
        # write at a time on a stream). Plain asyncio tasks in a TaskGroup, not anyio's:
        # this is the hot path, and anyio's per-task bookkeeping costs several % of a
        # node's CPU per call here; cancellation still propagates (structured, no task
        # outlives the stream).
        outbox: list[Any] = []
        wake = asyncio.Event()
        done = False
        running: dict[int, asyncio.Task[None]] = {}
        expired: set[int] = set()
        stream = _call_info(context)
        loop = asyncio.get_running_loop()

        def send(result: Any) -> None:
            outbox.append(result)
            wake.set()

        def expire(call_id: int, task: asyncio.Task[None]) -> None:
            if running.get(call_id) is task:
                expired.add(call_id)
                task.cancel()

        async def run_one(msg: Any) -> None:
            # A call's `timeout` ends it as a unary call's grpc-timeout would: cancelled,
            # answered DEADLINE_EXCEEDED. One timer handle per call, no cancel scope.
            call_id = msg.call_id
            me = asyncio.current_task()
            timer = None
            if 0 < msg.timeout < math.inf and me is not None:
                timer = loop.call_later(msg.timeout, expire, call_id, me)
            try:
                result = await self._stream_call(msg, stream)
            except asyncio.CancelledError:
                if call_id in expired:
                    expired.discard(call_id)
                    result = invoker_pb2.StreamedResult(
                        call_id=call_id, code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                        message=f"{msg.request.function}: no answer within the call's "
                                f"timeout of {msg.timeout:g}s",
                        error=InvocationTimeout.__name__)
                elif running.get(call_id) is me:
                    raise  # the stream ends: cancelled with it
                else:
                    return  # cancelled by the client (which took it out): it waits for nothing
            finally:
                if timer is not None:
                    timer.cancel()
                if running.get(call_id) is me:
                    del running[call_id]
            send(result)

        async def write_loop() -> None:
            await _write_results(
                lambda chunk: context.write(invoker_pb2.InvokeStreamResponse(results=chunk)),
                outbox, wake, lambda: done and not running, "invoke stream")

        def reject(call_id: int, code: grpc.StatusCode, message: str, error: type) -> None:
            send(invoker_pb2.StreamedResult(call_id=call_id, code=code.value[0],
                                            message=message, error=error.__name__))

        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(write_loop())
            try:
                async for msg in request_iterator:
                    for call_id in msg.cancel:
                        task = running.pop(call_id, None)
                        if task is not None:
                            task.cancel()
                    for call in msg.calls:
                        if call.call_id in running:
                            reject(call.call_id, grpc.StatusCode.INVALID_ARGUMENT,
                                   f"call id {call.call_id} is already in flight on this "
                                   "stream", InvalidInput)
                        elif len(running) >= MAX_STREAM_CALLS:
                            reject(call.call_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"over {MAX_STREAM_CALLS} calls in flight on one stream; "
                                   "wait for results or open another stream", LimitExceeded)
                        else:
                            running[call.call_id] = tg.create_task(run_one(call))
            finally:
                done = True  # the client finished sending: end after the last result
                wake.set()
            if writer.done():
                for task in list(running.values()):
                    task.cancel()

    async def _stream_call(self, msg: Any, stream: CallInfo) -> Any:
        """One call of an InvokeStream: its StreamedResult (never raises but for
        cancellation). The deadline is enforced where the node waits (for an instance, for
        the worker, for a peer), as for a unary call; the client cancels the call when it
        gives up earlier."""
        try:
            if not msg.HasField("request"):
                raise InvalidInput(f"call {msg.call_id} has no request")
            if msg.timeout < 0 or not math.isfinite(msg.timeout):
                raise InvalidInput(f"call {msg.call_id}: timeout must be >= 0 seconds "
                                   f"(0: none), got {msg.timeout}")
            req = InvokeRequest.from_proto(msg.request)
            check_invoke_request(req, self._max)
            deadline = stream.deadline
            if msg.timeout > 0:
                mine = time.time() + msg.timeout
                deadline = mine if deadline is None else min(deadline, mine)
            metadata = {**stream.metadata, **msg.metadata} if msg.metadata else stream.metadata
            call = CallInfo(deadline=deadline, metadata=metadata, peer=stream.peer)
            result = await self._handler.invoke(req, call)
            return invoker_pb2.StreamedResult(call_id=msg.call_id, response=result.to_proto())
        except Exception as exc:
            code, details, name = status_for(exc)
            if code is grpc.StatusCode.INTERNAL and not isinstance(exc, InternalError):
                log.error("InvokeStream call failed unexpectedly", exc_info=exc)
            return invoker_pb2.StreamedResult(call_id=msg.call_id, code=code.value[0],
                                              message=details, error=name)

    async def InvokeAsync(self, request: Any, context: Any) -> Any:
        try:
            req = InvokeRequest.from_proto(request)
            check_invoke_request(req, self._max)
            invocation_id = await self._handler.invoke_async(req, _call_info(context))
            return invoker_pb2.InvokeAsyncResponse(invocation_id=invocation_id)
        except Exception as exc:
            await _abort(context, "InvokeAsync", exc)

    async def GetInvocation(self, request: Any, context: Any) -> Any:
        try:
            if not request.invocation_id:
                raise InvalidInput("invocation id is empty")
            info = await self._handler.get_invocation(request.invocation_id, _call_info(context))
            return info.to_proto()
        except Exception as exc:
            await _abort(context, "GetInvocation", exc)


class _ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, handler: ControlHandler) -> None:
        self._handler = handler

    async def Deploy(self, request: Any, context: Any) -> Any:
        try:
            req = DeployRequest.from_proto(request)
            if not req.apps:
                raise InvalidInput("no apps to deploy")
            specs = await self._handler.deploy(req, _call_info(context))
            return control_pb2.DeployResponse(functions=[s.to_proto() for s in specs])
        except Exception as exc:
            await _abort(context, "Deploy", exc)

    async def ListFunctions(self, request: Any, context: Any) -> Any:
        try:
            specs = await self._handler.list_functions(_call_info(context))
            return control_pb2.ListFunctionsResponse(functions=[s.to_proto() for s in specs])
        except Exception as exc:
            await _abort(context, "ListFunctions", exc)

    async def Status(self, request: Any, context: Any) -> Any:
        try:
            return (await self._handler.status(_call_info(context))).to_proto()
        except Exception as exc:
            await _abort(context, "Status", exc)

    async def ListDeadLetters(self, request: Any, context: Any) -> Any:
        try:
            req = ListDeadLettersRequest.from_proto(request)
            if req.limit < 0:
                raise InvalidInput(f"limit must be >= 0, got {req.limit}")
            infos = await self._handler.list_dead_letters(req, _call_info(context))
            return control_pb2.ListDeadLettersResponse(invocations=[i.to_proto() for i in infos])
        except Exception as exc:
            await _abort(context, "ListDeadLetters", exc)

    async def Redrive(self, request: Any, context: Any) -> Any:
        try:
            req = RedriveRequest.from_proto(request)
            if not req.all and not req.invocation_ids:
                raise InvalidInput("give invocation ids to redrive, or all")
            ids = await self._handler.redrive(req, _call_info(context))
            return control_pb2.RedriveResponse(invocation_ids=list(ids))
        except Exception as exc:
            await _abort(context, "Redrive", exc)

    async def GetTrace(self, request: Any, context: Any) -> Any:
        try:
            if not request.invocation_id:
                raise InvalidInput("invocation_id is empty")
            spans = await self._handler.get_trace(request.invocation_id, _call_info(context))
            return control_pb2.GetTraceResponse(spans_json=list(spans))
        except Exception as exc:
            await _abort(context, "GetTrace", exc)


class _WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, handler: WorkerHandler) -> None:
        self._handler = handler
        self.in_flight = 0

    async def Execute(self, request_iterator: Any, context: Any) -> None:
        # Requests run concurrently. Results go to one writer task, which writes every
        # result ready at that moment as one message: one write at a time on a stream,
        # and under load one write carries many results. Plain asyncio tasks (the hot
        # path; see InvokeStream), in a TaskGroup: none outlives the stream.
        outbox: list[Any] = []
        wake = asyncio.Event()
        finished = False
        running = 0

        async def run_one(msg: Any) -> None:
            nonlocal running
            self.in_flight += 1
            try:
                try:
                    result = await self._handler.execute(ExecuteRequest.from_proto(msg))
                except Exception as exc:
                    log.error("worker handler raised for %s", msg.invocation_id, exc_info=exc)
                    result = ExecuteResult(
                        error=FunctionErrorInfo(
                            type(exc).__name__, str(exc), traceback.format_exc()
                        )
                    )
                if len(result.payload) > DEFAULT_MAX_PAYLOAD_BYTES:
                    # over the channel's message limit: sending it would break the stream
                    # for every invocation on it; it is this handler's error instead (as
                    # Lambda's)
                    result = ExecuteResult(error=FunctionErrorInfo(
                        "ResultTooLarge",
                        f"the handler's result of {len(result.payload)} bytes is over the "
                        f"limit of {DEFAULT_MAX_PAYLOAD_BYTES} bytes", ""), timing=result.timing)
                outbox.append(result.to_proto(msg.seq))
            finally:
                self.in_flight -= 1
                running -= 1
                wake.set()

        async def write_loop() -> None:
            # if the node goes away, the results are dropped: it re-dispatches what it missed
            await _write_results(
                lambda chunk: context.write(worker_pb2.ResultBatch(results=chunk)),
                outbox, wake, lambda: finished and not running, "worker stream")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(write_loop())
            try:
                async for msg in request_iterator:
                    for req in msg.requests:
                        running += 1
                        tg.create_task(run_one(req))
            finally:
                finished = True  # the node closed its side: end after the last result
                wake.set()

    async def Ping(self, request: Any, context: Any) -> Any:
        return worker_pb2.PingResponse(pid=os.getpid(), in_flight=self.in_flight)

    async def Assign(self, request: Any, context: Any) -> Any:
        assign = getattr(self._handler, "assign", None)
        if assign is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this worker already runs a function")
            raise AssertionError("unreachable: abort raises")
        try:
            pid = await assign(request.config_json)
        except AssignRefused as exc:
            code = (grpc.StatusCode.FAILED_PRECONDITION if exc.precondition
                    else grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, str(exc))
        return worker_pb2.AssignResponse(pid=pid)


def add_invoker_service(
    server: grpc.aio.Server,
    handler: InvokerHandler,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> None:
    """Serve stoic.v1.Invoker on `server` with `handler`. Create the server with
    `channel_options(max_payload_bytes)` so that payloads up to the limit get through.

    Boundary checks (see `check_invoke_request`): empty name and invalid JSON are
    INVALID_ARGUMENT; a payload over `max_payload_bytes` is RESOURCE_EXHAUSTED naming the
    size and the limit. Exceptions from the handler map through `runtime._errors`;
    unexpected ones become INTERNAL with a short message and are logged."""
    invoker_pb2_grpc.add_InvokerServicer_to_server(
        _InvokerServicer(handler, max_payload_bytes), server
    )


def add_control_service(server: grpc.aio.Server, handler: ControlHandler) -> None:
    """Serve stoic.v1.Control on `server` with `handler` (exceptions mapped as for Invoker)."""
    control_pb2_grpc.add_ControlServicer_to_server(_ControlServicer(handler), server)


def add_worker_service(server: grpc.aio.Server, handler: WorkerHandler) -> None:
    """Serve stoic.v1.Worker on `server`: every request of an Execute stream runs
    concurrently through `handler.execute`; Ping answers with this process's pid and the
    number of requests in flight, without involving the handler."""
    worker_pb2_grpc.add_WorkerServicer_to_server(_WorkerServicer(handler), server)


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Sequence[str] = (INVOKER_SERVICE, CONTROL_SERVICE)
) -> health_async.HealthServicer:
    """Add grpc.health.v1 (SERVING for "" and each of `service_names`) and server
    reflection (for `service_names` and the health service) to `server`, so that
    `grpcurl -plaintext HOST:PORT list|describe|stoic.v1.Invoker/Invoke` work. Returns the
    health servicer, e.g. to call `enter_graceful_shutdown()` before stopping."""
    health = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *service_names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    names = (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return health


def new_server(max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> grpc.aio.Server:
    """A grpc.aio server sized for Stoic's payloads (add services, then a port)."""
    return grpc.aio.server(options=channel_options(max_payload_bytes))


def check_health(target: str, timeout: float = 1.0) -> bool:
    """Blocking: whether the server at `target` answers grpc.health.v1 Check with SERVING
    within `timeout` seconds (False when it cannot be reached)."""
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


# --------------------------------------------------------------------------- stubs


def _scope_timeout() -> float | None:
    """The time left in the caller's anyio cancel scopes, or None: the caller's deadline
    travels as the call's grpc-timeout (and comes back out as `CallInfo.deadline`)."""
    deadline = anyio.current_effective_deadline()
    if deadline == math.inf:
        return None
    return max(deadline - anyio.current_time(), 0.0)


async def _unary(call: Any) -> Any:
    """Await a grpc.aio unary call so that anyio cancellation works: grpc re-raises a
    cancellation as a CancelledError of its own, which an anyio cancel scope would not
    recognize (it would escape `fail_after`/`move_on_after`). So wait on an anyio Event
    set when the call is done, cancel the RPC if that wait is cancelled, and only then
    collect the (finished) call's result.

    A call that grpc cancelled itself (its channel was closed under it, as when a worker's
    stream breaks mid-ping) raises AioRpcError CANCELLED here, not grpc's CancelledError:
    that one, escaping into a task group, would silently cancel the whole group."""
    done = anyio.Event()
    call.add_done_callback(lambda _call: done.set())
    try:
        await done.wait()
    except BaseException:
        call.cancel()
        raise
    try:
        if not call.cancelled():
            return await call
    except asyncio.CancelledError:
        if not stray_cancellation():
            raise  # a real cancellation of ours
    raise grpc.aio.AioRpcError(
        grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details=_LOCALLY_CANCELLED, debug_error_string="")


def error_from_rpc(exc: grpc.aio.AioRpcError) -> StoicError:
    """The Stoic exception for a failed RPC (caller does `raise error_from_rpc(e) from e`).

    An UNAVAILABLE status that the server did not send itself (no `stoic-error` trailer)
    is a transport failure: `Unreachable` when the connection could not be made (the
    request never reached the server: safe to send elsewhere), else `ConnectionLost`
    (the connection broke; the server may have run the call). gRPC core's own INTERNAL
    ("Internal error from Core", seen when a stream breaks as its server goes away) is
    `ConnectionLost` too: the server sent nothing; so is a call cancelled under us
    because its channel closed (see `_unary`)."""
    code = exc.code()
    details = exc.details() or ""
    name = ""
    trailers: Any = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key == ERROR_TRAILER and isinstance(value, str):
            name = value
    if code is grpc.StatusCode.UNAVAILABLE and not name:
        lowered = details.lower()
        if "failed to connect" in lowered or "connection refused" in lowered:
            return Unreachable(details)
        return ConnectionLost(details)
    if code is grpc.StatusCode.INTERNAL and not name and details == _CORE_INTERNAL:
        return ConnectionLost(details)
    if code is grpc.StatusCode.CANCELLED and not name and details == _LOCALLY_CANCELLED:
        return ConnectionLost(details)
    return error_from_status(code, details, name)


#: The details gRPC core gives a call it failed itself (no status came from the server).
_CORE_INTERNAL = "Internal error from Core"
#: The details `_unary` gives a call grpc cancelled under us (its channel closed).
_LOCALLY_CANCELLED = "the call was cancelled locally (its channel closed)"


def _metadata(metadata: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return tuple((k.lower(), v) for k, v in metadata.items()) if metadata else None


class InvokerStub:
    """Calls stoic.v1.Invoker over a grpc.aio channel with the dataclasses. Every method
    raises the mapped Stoic exception for a failed RPC (`error_from_rpc`). The deadline is
    the caller's: the time left in its anyio cancel scopes becomes the grpc-timeout.
    Cancellation cancels the RPC."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = invoker_pb2_grpc.InvokerStub(channel)

    async def invoke(
        self,
        request: InvokeRequest,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        try:
            msg = await _unary(self._stub.Invoke(
                request.to_proto(), timeout=_scope_timeout(), metadata=_metadata(metadata)
            ))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return InvokeResult.from_proto(msg)

    async def invoke_async(
        self,
        request: InvokeRequest,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        try:
            msg = await _unary(self._stub.InvokeAsync(
                request.to_proto(), timeout=_scope_timeout(), metadata=_metadata(metadata)
            ))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return str(msg.invocation_id)

    async def get_invocation(
        self,
        invocation_id: str,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> InvocationInfo:
        try:
            msg = await _unary(self._stub.GetInvocation(
                invoker_pb2.GetInvocationRequest(invocation_id=invocation_id),
                timeout=_scope_timeout(), metadata=_metadata(metadata),
            ))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return InvocationInfo.from_proto(msg)


_STATUS_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


class InvokeStreamClient:
    """Sync invocations multiplexed over one long-lived `Invoker.InvokeStream` on a channel:
    what a unary `Invoke` costs per call in grpc.aio (a call object, its batch of
    operations, a completion) is paid once per stream; calls queued together travel
    together (at most MAX_BATCH per message). Behaves like `InvokerStub.invoke`: same
    result, same exceptions, the caller's deadline becomes the call's `timeout`, and
    cancelling the caller cancels the call on the node.

    The stream opens on first use and again after it broke. A broken stream fails every
    call waiting on it: `Unreachable` when the node could not be reached (no call got
    there), else `ConnectionLost` (a call may have run). `aclose()` ends it; it must run
    on the event loop the client was used on.
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> None:
        self._stub = invoker_pb2_grpc.InvokerStub(channel)
        self._max_message = max_payload_bytes + _MESSAGE_HEADROOM
        self._call: Any = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sent: set[int] = set()
        self._queue: list[Any] = []
        self._cancels: list[int] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _open(self) -> None:
        # each stream has its own pending calls: a stream that breaks fails only its own
        self._call = call = self._stub.InvokeStream()
        self._pending = {}
        self._sent = sent = set[int]()  # calls handed to gRPC on this stream (they may have run)
        self._wake = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._write_loop(call, self._wake, sent)),
                       asyncio.ensure_future(self._read_loop(call, self._pending, sent))]

    async def invoke(
        self, request: InvokeRequest, *, metadata: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        size = len(request.payload)
        if size > self._max_message - 64 * 1024:
            # gRPC would refuse the message, and with it the whole stream: refuse the call
            raise LimitExceeded(
                f"payload of {size} bytes for {request.function!r} is over the message "
                f"limit of {self._max_message} bytes", retryable=False)
        if self._call is None:
            self._open()
        self._next_id += 1
        call_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        pending, sent = self._pending, self._sent
        pending[call_id] = future
        timeout = _scope_timeout()
        self._queue.append(invoker_pb2.StreamedInvoke(
            call_id=call_id, request=request.to_proto(), timeout=timeout or 0.0,
            metadata={k.lower(): v for k, v in metadata.items()} if metadata else None))
        self._wake.set()
        try:
            result = await future
        except BaseException:
            if not future.done() and self._call is not None:
                self._cancels.append(call_id)  # the node stops working on it
                self._wake.set()
            raise
        finally:
            pending.pop(call_id, None)
            sent.discard(call_id)
        if result.code:
            code = _STATUS_BY_NUMBER.get(result.code, grpc.StatusCode.UNKNOWN)
            raise error_from_status(code, result.message, result.error)
        return InvokeResult.from_proto(result.response)

    async def _write_loop(self, call: Any, wake: asyncio.Event, sent: set[int]) -> None:
        # The only writer on the stream (one write at a time); callers queue instead.
        try:
            while True:
                await wake.wait()
                wake.clear()
                while self._queue or self._cancels:
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                    cancels, self._cancels = self._cancels, []
                    for chunk in _chunks(batch) if batch else [[]]:
                        sent.update(c.call_id for c in chunk)
                        await call.write(invoker_pb2.InvokeStreamRequest(
                            calls=chunk, cancel=cancels))
                        cancels = []
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the stream is broken; the read loop reports why

    async def _read_loop(self, call: Any, pending: dict[int, asyncio.Future[Any]],
                         sent: set[int]) -> None:
        error: StoicError
        try:
            while True:
                msg = await call.read()
                if msg is _EOF:
                    error = ConnectionLost("the node ended the invoke stream")
                    break
                for result in msg.results:
                    future = pending.get(result.call_id)
                    if future is not None and not future.done():
                        future.set_result(result)
        except grpc.aio.AioRpcError as exc:
            error = error_from_rpc(exc)
        except asyncio.CancelledError:
            if not stray_cancellation():
                self._fail_all(call, pending, sent,
                               ConnectionLost("the invoke stream was closed"))
                raise
            error = ConnectionLost("the invoke stream broke (cancelled by grpc)")
        self._fail_all(call, pending, sent, error)

    def _fail_all(self, call: Any, pending: dict[int, asyncio.Future[Any]], sent: set[int],
                  error: StoicError) -> None:
        """Fail the calls waiting on `call`: with `error` those that were sent (they may
        have run), with Unreachable those that never left (safe to send elsewhere)."""
        if self._call is call:  # the next invoke opens a new stream
            self._call = None
            self._queue.clear()
            self._cancels.clear()
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            call.cancel()
        for call_id, future in pending.items():
            if not future.done():
                future.set_exception(
                    type(error)(str(error)) if call_id in sent
                    else Unreachable(f"not sent, the invoke stream broke: {error}"))

    async def aclose(self) -> None:
        """End the stream; calls waiting on it raise ConnectionLost. Idempotent (a later
        `invoke` would open a new stream on the same channel)."""
        call, self._call = self._call, None
        tasks, self._tasks = self._tasks, []
        if call is not None:
            call.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if call is not None:
            # let grpc finish the cancelled call
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(call.code(), 1.0)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost("the client was closed"))


class ControlStub:
    """Calls stoic.v1.Control over a grpc.aio channel (errors and deadline as InvokerStub)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = control_pb2_grpc.ControlStub(channel)

    async def _unary(
        self, method: Any, request: Any, metadata: Mapping[str, str] | None
    ) -> Any:
        try:
            return await _unary(
                method(request, timeout=_scope_timeout(), metadata=_metadata(metadata))
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def deploy(
        self, request: DeployRequest, *, metadata: Mapping[str, str] | None = None,
    ) -> tuple[FunctionSpec, ...]:
        msg = await self._unary(self._stub.Deploy, request.to_proto(), metadata)
        return tuple(FunctionSpec.from_proto(f) for f in msg.functions)

    async def list_functions(
        self, *, metadata: Mapping[str, str] | None = None
    ) -> tuple[FunctionSpec, ...]:
        msg = await self._unary(
            self._stub.ListFunctions, control_pb2.ListFunctionsRequest(), metadata
        )
        return tuple(FunctionSpec.from_proto(f) for f in msg.functions)

    async def status(
        self, *, metadata: Mapping[str, str] | None = None
    ) -> Status:
        msg = await self._unary(self._stub.Status, control_pb2.StatusRequest(), metadata)
        return Status.from_proto(msg)

    async def list_dead_letters(
        self, request: ListDeadLettersRequest, *, metadata: Mapping[str, str] | None = None,
    ) -> tuple[InvocationInfo, ...]:
        msg = await self._unary(self._stub.ListDeadLetters, request.to_proto(), metadata)
        return tuple(InvocationInfo.from_proto(i) for i in msg.invocations)

    async def redrive(
        self, request: RedriveRequest, *, metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, ...]:
        msg = await self._unary(self._stub.Redrive, request.to_proto(), metadata)
        return tuple(msg.invocation_ids)

    async def get_trace(
        self, invocation_id: str, *, metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, ...]:
        msg = await self._unary(
            self._stub.GetTrace, control_pb2.GetTraceRequest(invocation_id=invocation_id),
            metadata)
        return tuple(msg.spans_json)


# --------------------------------------------------------------------------- worker stream


async def _wait_ready(channel: grpc.aio.Channel) -> None:
    """Wait until `channel` is connected, bounded by the caller's scope. Polls the
    connectivity state instead of awaiting grpc's `channel_ready()`: that one, when
    cancelled, leaves callbacks behind that fire into a closed event loop later."""
    delay = 0.001
    while channel.get_state(try_to_connect=True) is not grpc.ChannelConnectivity.READY:
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.05)


_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


MAX_BATCH = 16
"""At most this many requests (or results) in one message of a stream (a worker's Execute,
a client's InvokeStream). Small enough that under load several messages are in flight at
once, so client, node and worker work in parallel instead of passing one big batch
around in turn (measured: 16 gave ~1.3x the throughput of 256 at 64 calls in flight)."""


BATCH_BYTES = 1024 * 1024
"""A stream message carries items of at most this many bytes together; a bigger item (up to
the payload limit) goes alone. So a message never exceeds the channel's message limit
(payload limit plus headroom), however many large payloads are ready at once."""


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    """`items` (protobuf messages) split into runs of at most BATCH_BYTES, in order; an item
    bigger than that is a run of its own."""
    if len(items) == 1:
        yield items
        return
    chunk: list[Any] = []
    total = 0
    for item in items:
        size = item.ByteSize()
        if chunk and total + size > BATCH_BYTES:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


class WorkerStreamClient:
    """A node's connection to one function actor process: one long-lived bidirectional
    Execute stream carrying every invocation, multiplexed by `seq`.

    Use as `async with WorkerStreamClient("unix:///path/w.sock") as worker: ...`, or run
    `await tg.start(worker.run)` in a task group of your own and `await worker.aclose()`.
    `run` reports started once the channel is connected and the stream is open.

    When the stream breaks (the process died) or is closed, every waiting `execute` and
    every later one raises `InstanceCrashed` naming why.
    """

    def __init__(
        self, target: str, *, name: str = "", max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> None:
        self.target = target
        self.name = name or target
        self._max = max_payload_bytes
        self._pending: dict[int, asyncio.Future[ExecuteResult]] = {}
        self._next_seq = 1
        self.messages_sent = 0  # stream messages written (each carries one or more requests)
        self._call: Any = None
        self._stub: Any = None
        self._broken: str | None = None
        self._scope: anyio.CancelScope | None = None
        self._open = False
        self._queue: list[Any] = []
        self._wake = asyncio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._broken is not None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, open the stream, report started, then read responses until the stream
        ends, breaks or `aclose()` is called. Never raises for a broken stream (the waiters
        get InstanceCrashed). Waits for the connection as long as the caller's scope
        allows (bound it: `with anyio.fail_after(t): await tg.start(worker.run)`).
        Cancellation closes the channel."""
        reason = "worker stream closed"
        channel = open_channel(self.target, max_payload_bytes=self._max)
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                await _wait_ready(channel)
                self._stub = worker_pb2_grpc.WorkerStub(channel)
                self._call = self._stub.Execute()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    self._open = True
                    task_status.started()
                    reason = await self._read_loop()
                    tg.cancel_scope.cancel()
        finally:
            self._open = False
            self._fail_all(reason)
            with anyio.CancelScope(shield=True):  # cleanup must finish even when cancelled
                if self._call is not None:
                    self._call.cancel()
                await channel.close(None)

    async def _write_loop(self) -> None:
        # The only writer on the stream. Callers queue requests instead of writing
        # themselves, because grpc cancels the whole stream when a write is cancelled:
        # one caller giving up must not break the stream for everyone else. Every request
        # queued while the previous write was in progress goes out in one message.
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Woken by the first request of a loop turn, this runs in the next turn: the
            # requests queued by the other tasks of that turn join this message.
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                try:
                    for chunk in _chunks(batch):
                        self.messages_sent += 1
                        await self._call.write(worker_pb2.ExecuteBatch(requests=chunk))
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    return  # the stream is broken; the read loop reports why
                except asyncio.CancelledError:
                    if not stray_cancellation():
                        raise
                    return  # grpc cancelled its own write: the stream is broken

    async def _read_loop(self) -> str:
        call = self._call
        try:
            while True:
                batch = await call.read()
                if batch is _EOF:
                    return f"worker {self.name} closed the stream"
                for msg in batch.results:
                    future = self._pending.pop(msg.seq, None)
                    if future is not None and not future.done():  # else: its caller gave up
                        future.set_result(ExecuteResult.from_proto(msg))
        except grpc.aio.AioRpcError as exc:
            return f"worker {self.name} stream broke: {exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            # grpc.aio may cancel its own internal read task when the stream breaks; that
            # is a broken stream, not a cancellation of ours (then nobody cancels us)
            if not stray_cancellation():
                raise
            return f"worker {self.name} stream broke (cancelled by grpc)"

    def _fail_all(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        pending, self._pending = self._pending, {}
        self._queue.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(InstanceCrashed(reason))

    async def execute(self, request: ExecuteRequest) -> ExecuteResult:
        """Send one attempt and wait for its result. Raises `InstanceCrashed` if the stream
        is or becomes broken before the answer arrives. Cancelling the caller stops the
        wait only: the worker still runs the attempt (kill the process to stop it)."""
        if self._broken is not None:
            raise InstanceCrashed(self._broken)
        if not self._open:
            raise InstanceCrashed(f"worker {self.name} stream is not open (run() not started)")
        seq = self._next_seq
        self._next_seq += 1
        future: asyncio.Future[ExecuteResult] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        self._queue.append(request.to_proto(seq))
        self._wake.set()
        try:
            return await future
        finally:
            self._pending.pop(seq, None)

    async def ping(self) -> PingResult:
        """Ask the worker for its pid and in-flight count; bound it with the caller's scope
        (`with anyio.fail_after(ping_timeout): await worker.ping()`), whose deadline is
        also the RPC's. Raises `InvocationTimeout` (a TimeoutError) if the RPC's deadline
        passes first, `InstanceCrashed` if the worker cannot be reached."""
        if self._stub is None:
            raise InstanceCrashed(f"worker {self.name} is not connected")
        try:
            msg = await _unary(self._stub.Ping(worker_pb2.PingRequest(), timeout=_scope_timeout()))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise InvocationTimeout(f"worker {self.name} did not answer a ping") from exc
            raise InstanceCrashed(
                f"worker {self.name} ping failed: {exc.code().name}: {exc.details()}"
            ) from exc
        return PingResult.from_proto(msg)

    async def assign(self, config_json: str) -> int:
        """Give a spare worker its function (`Assign`); its pid. Bound it with the caller's
        scope. Raises InstanceCrashed naming why the worker refused or could not answer."""
        if self._stub is None:
            raise InstanceCrashed(f"worker {self.name} is not connected")
        try:
            msg = await _unary(self._stub.Assign(
                worker_pb2.AssignRequest(config_json=config_json), timeout=_scope_timeout()))
        except grpc.aio.AioRpcError as exc:
            raise InstanceCrashed(
                f"worker {self.name} assign failed: {exc.code().name}: {exc.details()}"
            ) from exc
        return int(msg.pid)

    async def aclose(self) -> None:
        """Close the stream: `run` returns and waiters get InstanceCrashed. Idempotent."""
        self._fail_all(f"worker {self.name} stream closed by the node")
        if self._scope is not None:
            self._scope.cancel()

    async def __aenter__(self) -> WorkerStreamClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self.run)
        except BaseException:
            await self._tg.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        await self.aclose()
        tg, self._tg = self._tg, None
        if tg is None:
            return None
        return await tg.__aexit__(*exc_info)
