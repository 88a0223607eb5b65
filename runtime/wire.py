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

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime._proto.stoic.v1 import control_pb2, invoker_pb2, worker_pb2

__all__ = [
    "JSON",
    "AttemptInfo",
    "ExecuteRequest",
    "ExecuteResult",
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
]

JSON = "application/json"


def is_json(content_type: str) -> bool:
    """True for an empty content type (the default) and for application/json[; params]."""
    if not content_type:
        return True
    return content_type.split(";", 1)[0].strip().lower() == JSON


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
class ExecuteResult:
    """The outcome of one attempt inside the worker: a result, or `error` if the handler
    raised (the process survived)."""

    payload: bytes = b""
    content_type: str = JSON
    error: FunctionErrorInfo | None = None

    def to_proto(self, seq: int = 0) -> worker_pb2.ExecuteResponse:
        return worker_pb2.ExecuteResponse(
            seq=seq,
            payload=self.payload,
            content_type=self.content_type,
            error=self.error.to_proto() if self.error is not None else None,
        )

    @classmethod
    def from_proto(cls, msg: worker_pb2.ExecuteResponse) -> ExecuteResult:
        return cls(payload=msg.payload, content_type=msg.content_type or JSON, error=_error_from(msg))


@dataclass(frozen=True)
class PingResult:
    """A worker's answer to a health ping."""

    pid: int
    in_flight: int

    def to_proto(self) -> worker_pb2.PingResponse:
        return worker_pb2.PingResponse(pid=self.pid, in_flight=self.in_flight)

    @classmethod
    def from_proto(cls, msg: worker_pb2.PingResponse) -> PingResult:
        return cls(pid=msg.pid, in_flight=msg.in_flight)

