from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvocationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOCATION_STATE_UNSPECIFIED: _ClassVar[InvocationState]
    QUEUED: _ClassVar[InvocationState]
    RUNNING: _ClassVar[InvocationState]
    SUCCEEDED: _ClassVar[InvocationState]
    FAILED: _ClassVar[InvocationState]
    DEAD_LETTERED: _ClassVar[InvocationState]
INVOCATION_STATE_UNSPECIFIED: InvocationState
QUEUED: InvocationState
RUNNING: InvocationState
SUCCEEDED: InvocationState
FAILED: InvocationState
DEAD_LETTERED: InvocationState

class InvokeRequest(_message.Message):
    __slots__ = ("function", "payload", "content_type", "idempotency_key")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    function: str
    payload: bytes
    content_type: str
    idempotency_key: str
    def __init__(self, function: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class FunctionError(_message.Message):
    __slots__ = ("type", "message", "traceback")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    traceback: str
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("node_id", "zone", "pid")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    zone: str
    pid: int
    def __init__(self, node_id: _Optional[str] = ..., zone: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("invocation_id", "payload", "content_type", "attempts", "placement", "error")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    payload: bytes
    content_type: str
    attempts: int
    placement: Placement
    error: FunctionError
    def __init__(self, invocation_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., attempts: _Optional[int] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., error: _Optional[_Union[FunctionError, _Mapping]] = ...) -> None: ...

class InvokeAsyncResponse(_message.Message):
    __slots__ = ("invocation_id",)
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    def __init__(self, invocation_id: _Optional[str] = ...) -> None: ...

class GetInvocationRequest(_message.Message):
    __slots__ = ("invocation_id",)
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    def __init__(self, invocation_id: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("attempt", "node_id", "zone", "started_at", "ended_at", "outcome", "detail")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    node_id: str
    zone: str
    started_at: float
    ended_at: float
    outcome: str
    detail: str
    def __init__(self, attempt: _Optional[int] = ..., node_id: _Optional[str] = ..., zone: _Optional[str] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Invocation(_message.Message):
    __slots__ = ("invocation_id", "function", "state", "payload", "content_type", "error", "attempts", "submitted_at")
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    invocation_id: str
    function: str
    state: InvocationState
    payload: bytes
    content_type: str
    error: FunctionError
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    submitted_at: float
    def __init__(self, invocation_id: _Optional[str] = ..., function: _Optional[str] = ..., state: _Optional[_Union[InvocationState, str]] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., error: _Optional[_Union[FunctionError, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., submitted_at: _Optional[float] = ...) -> None: ...

class StreamedInvoke(_message.Message):
    __slots__ = ("call_id", "request", "timeout", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    request: InvokeRequest
    timeout: float
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, call_id: _Optional[int] = ..., request: _Optional[_Union[InvokeRequest, _Mapping]] = ..., timeout: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InvokeStreamRequest(_message.Message):
    __slots__ = ("calls", "cancel")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[StreamedInvoke]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, calls: _Optional[_Iterable[_Union[StreamedInvoke, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamedResult(_message.Message):
    __slots__ = ("call_id", "code", "message", "error", "response")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    code: int
    message: str
    error: str
    response: InvokeResponse
    def __init__(self, call_id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., response: _Optional[_Union[InvokeResponse, _Mapping]] = ...) -> None: ...

class InvokeStreamResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StreamedResult]
    def __init__(self, results: _Optional[_Iterable[_Union[StreamedResult, _Mapping]]] = ...) -> None: ...
