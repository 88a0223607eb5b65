from runtime._proto.stoic.v1 import invoker_pb2 as _invoker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeployRequest(_message.Message):
    __slots__ = ("apps",)
    APPS_FIELD_NUMBER: _ClassVar[int]
    apps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, apps: _Optional[_Iterable[str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff", "backoff_multiplier", "max_backoff", "max_event_age", "retry_on")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENT_AGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff: float
    backoff_multiplier: float
    max_backoff: float
    max_event_age: float
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff: _Optional[float] = ..., backoff_multiplier: _Optional[float] = ..., max_backoff: _Optional[float] = ..., max_event_age: _Optional[float] = ..., retry_on: _Optional[_Iterable[str]] = ...) -> None: ...

class FunctionSpec(_message.Message):
    __slots__ = ("name", "app", "handler", "timeout", "retries", "memory_mb", "concurrency", "min_instances", "min_zones", "async_retry", "on_success", "on_failure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MIN_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MIN_ZONES_FIELD_NUMBER: _ClassVar[int]
    ASYNC_RETRY_FIELD_NUMBER: _ClassVar[int]
    ON_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    app: str
    handler: str
    timeout: float
    retries: int
    memory_mb: int
    concurrency: int
    min_instances: int
    min_zones: int
    async_retry: RetryPolicy
    on_success: str
    on_failure: str
    def __init__(self, name: _Optional[str] = ..., app: _Optional[str] = ..., handler: _Optional[str] = ..., timeout: _Optional[float] = ..., retries: _Optional[int] = ..., memory_mb: _Optional[int] = ..., concurrency: _Optional[int] = ..., min_instances: _Optional[int] = ..., min_zones: _Optional[int] = ..., async_retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., on_success: _Optional[str] = ..., on_failure: _Optional[str] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("functions",)
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionSpec]
    def __init__(self, functions: _Optional[_Iterable[_Union[FunctionSpec, _Mapping]]] = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ("functions",)
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionSpec]
    def __init__(self, functions: _Optional[_Iterable[_Union[FunctionSpec, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("id", "pid", "state", "in_flight")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    id: str
    pid: int
    state: str
    in_flight: int
    def __init__(self, id: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., in_flight: _Optional[int] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("function", "state", "restarts", "last_exit_reason", "instances")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_REASON_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    function: str
    state: str
    restarts: int
    last_exit_reason: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    def __init__(self, function: _Optional[str] = ..., state: _Optional[str] = ..., restarts: _Optional[int] = ..., last_exit_reason: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "zone", "address", "healthy", "lease_age", "pid", "pools")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    LEASE_AGE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    zone: str
    address: str
    healthy: bool
    lease_age: float
    pid: int
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    def __init__(self, node_id: _Optional[str] = ..., zone: _Optional[str] = ..., address: _Optional[str] = ..., healthy: _Optional[bool] = ..., lease_age: _Optional[float] = ..., pid: _Optional[int] = ..., pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("invocations",)
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[_invoker_pb2.Invocation]
    def __init__(self, invocations: _Optional[_Iterable[_Union[_invoker_pb2.Invocation, _Mapping]]] = ...) -> None: ...

class RedriveRequest(_message.Message):
    __slots__ = ("invocation_ids", "all")
    INVOCATION_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    invocation_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, invocation_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class RedriveResponse(_message.Message):
    __slots__ = ("invocation_ids",)
    INVOCATION_IDS_FIELD_NUMBER: _ClassVar[int]
    invocation_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, invocation_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("invocation_id",)
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    def __init__(self, invocation_id: _Optional[str] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("spans_json",)
    SPANS_JSON_FIELD_NUMBER: _ClassVar[int]
    spans_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spans_json: _Optional[_Iterable[str]] = ...) -> None: ...
