from runtime._proto.stoic.v1 import invoker_pb2 as _invoker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssignRequest(_message.Message):
    __slots__ = ("config_json",)
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    def __init__(self, config_json: _Optional[str] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("seq", "invocation_id", "attempt", "function", "payload", "content_type", "deadline", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    invocation_id: str
    attempt: int
    function: str
    payload: bytes
    content_type: str
    deadline: float
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, seq: _Optional[int] = ..., invocation_id: _Optional[str] = ..., attempt: _Optional[int] = ..., function: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., deadline: _Optional[float] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("seq", "payload", "content_type", "error", "timing")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    seq: int
    payload: bytes
    content_type: str
    error: _invoker_pb2.FunctionError
    timing: WorkerTiming
    def __init__(self, seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., error: _Optional[_Union[_invoker_pb2.FunctionError, _Mapping]] = ..., timing: _Optional[_Union[WorkerTiming, _Mapping]] = ...) -> None: ...

class WorkerTiming(_message.Message):
    __slots__ = ("execute_start_unix_nano", "handler_start_unix_nano", "handler_end_unix_nano", "execute_end_unix_nano", "pid", "execute_span_id", "handler_span_id")
    EXECUTE_START_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    HANDLER_START_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    HANDLER_END_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_END_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLER_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    execute_start_unix_nano: int
    handler_start_unix_nano: int
    handler_end_unix_nano: int
    execute_end_unix_nano: int
    pid: int
    execute_span_id: int
    handler_span_id: int
    def __init__(self, execute_start_unix_nano: _Optional[int] = ..., handler_start_unix_nano: _Optional[int] = ..., handler_end_unix_nano: _Optional[int] = ..., execute_end_unix_nano: _Optional[int] = ..., pid: _Optional[int] = ..., execute_span_id: _Optional[int] = ..., handler_span_id: _Optional[int] = ...) -> None: ...

class ExecuteBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ExecuteRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ExecuteRequest, _Mapping]]] = ...) -> None: ...

class ResultBatch(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ExecuteResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ExecuteResponse, _Mapping]]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("pid", "in_flight")
    PID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    pid: int
    in_flight: int
    def __init__(self, pid: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...
