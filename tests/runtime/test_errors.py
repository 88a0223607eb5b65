"""The one error table: every domain error maps to its status and back, in process and over
a real server."""

from __future__ import annotations

import grpc
import pytest

import runtime
from runtime import (
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
)
from runtime._errors import STATUS_TABLE, error_from_status, status_for
from runtime.wire import InvokeRequest, InvokerStub, open_channel
from tests.runtime.test_wire import FakeNode, serve

EXPECTED = {
    FunctionNotFound: grpc.StatusCode.NOT_FOUND,
    InvocationNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    InvocationTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    PoolStopping: grpc.StatusCode.UNAVAILABLE,  # a node re-routes it; named in the trailer
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InstanceCrashed: grpc.StatusCode.ABORTED,
    InternalError: grpc.StatusCode.INTERNAL,
}


def test_table_is_the_documented_one() -> None:
    assert dict(STATUS_TABLE) == EXPECTED


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_error_maps_to_its_status_and_back(cls: type[StoicError]) -> None:
    code, details, name = status_for(cls("what went wrong"))
    assert code == EXPECTED[cls] and details == "what went wrong"
    back = error_from_status(code, details, name)
    assert type(back) is cls and str(back) == "what went wrong"
    assert back.retryable == cls.default_retryable


def test_code_alone_gives_the_first_class_of_the_table() -> None:
    assert type(error_from_status(grpc.StatusCode.NOT_FOUND, "x")) is FunctionNotFound
    # a trailer naming a class of another code is not trusted
    assert type(error_from_status(grpc.StatusCode.NOT_FOUND, "x", "Unavailable")) is (
        FunctionNotFound
    )
    other = error_from_status(grpc.StatusCode.UNIMPLEMENTED, "no such method")
    assert type(other) is StoicError and str(other) == "UNIMPLEMENTED: no such method"


def test_builtin_timeout_and_unknown_exceptions() -> None:
    assert status_for(TimeoutError())[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    code, details, _ = status_for(ZeroDivisionError("secret"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details


def test_error_shapes() -> None:
    timeout = InvocationTimeout("slow")
    assert isinstance(timeout, TimeoutError) and timeout.retryable
    assert InstanceCrashed("died").retryable and not InvalidInput("bad").retryable
    assert not LimitExceeded("big", retryable=False).retryable
    err = FunctionError("ValueError", "bad value", "Traceback...", invocation_id="i1")
    assert (err.type, err.message, err.traceback, err.invocation_id) == (
        "ValueError", "bad value", "Traceback...", "i1"
    )
    assert str(err) == "ValueError: bad value"
    assert set(runtime.__all__) >= {c.__name__ for c in EXPECTED} | {"FunctionError"}


@pytest.mark.anyio
@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
async def test_over_the_wire(cls: type[StoicError]) -> None:
    node = FakeNode()
    node.raise_ = cls(f"{cls.__name__} for 'echo'")
    async with serve(node) as (target, _):
        channel = open_channel(target)
        try:
            with pytest.raises(StoicError) as info:
                await InvokerStub(channel).invoke(InvokeRequest("echo", b"1"))
        finally:
            await channel.close(None)
    assert type(info.value) is cls
    assert str(info.value) == f"{cls.__name__} for 'echo'"
    cause = info.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError) and cause.code() == EXPECTED[cls]
