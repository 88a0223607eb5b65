"""Invoker.InvokeStream, the multiplexed sync invocations the Python client uses, against a
real grpc.aio server on 127.0.0.1: per-call results and statuses on one stream, call ids,
cancellation, per-call deadlines, batching limits, and the client over it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import pytest

from runtime import (
    AsyncClient,
    ConnectionLost,
    FunctionNotFound,
    InvalidInput,
    InvocationTimeout,
    LimitExceeded,
    Unreachable,
)
from runtime._proto.stoic.v1 import invoker_pb2
from runtime.wire import MAX_BATCH, InvokeRequest, InvokerStub, open_channel
from tests.runtime.test_wire import FakeNode, serve

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_event_loop")]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-scoped: one event loop for the module (see conftest)


class RawStream:
    """A hand-driven InvokeStream: send messages, read results by call id."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.results: dict[int, Any] = {}

    async def send(self, *calls: Any, cancel: tuple[int, ...] = ()) -> None:
        await self.call.write(invoker_pb2.InvokeStreamRequest(calls=list(calls), cancel=cancel))

    async def wait_for(self, *call_ids: int) -> list[Any]:
        with anyio.fail_after(10):
            while not all(i in self.results for i in call_ids):
                msg = await self.call.read()
                assert msg is not grpc.aio.EOF, "the node ended the stream"  # type: ignore[attr-defined]
                assert 1 <= len(msg.results) <= MAX_BATCH
                for result in msg.results:
                    assert result.call_id not in self.results, "a call answered twice"
                    self.results[result.call_id] = result
        return [self.results[i] for i in call_ids]


@pytest.fixture
async def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def raw(node: FakeNode) -> AsyncIterator[RawStream]:
    async with serve(node) as (target, _):
        channel = open_channel(target)
        try:
            call = InvokerStub(channel)._stub.InvokeStream()
            yield RawStream(call)
            call.cancel()
        finally:
            await channel.close(None)


def invoke(call_id: int, function: str = "echo", payload: bytes = b'"x"', **kw: Any) -> Any:
    return invoker_pb2.StreamedInvoke(
        call_id=call_id, request=invoker_pb2.InvokeRequest(function=function, payload=payload),
        **kw)


async def test_many_calls_in_one_message_each_answered_by_id(raw: RawStream) -> None:
    await raw.send(*(invoke(i, payload=f'{{"n": {i}}}'.encode()) for i in range(1, 41)))
    results = await raw.wait_for(*range(1, 41))
    assert [r.code for r in results] == [0] * 40
    assert [r.response.payload for r in results] == [f'{{"n": {i}}}'.encode() for i in range(1, 41)]
    assert all(r.response.invocation_id == "inv-1" for r in results)


async def test_a_failed_call_is_a_status_and_the_stream_goes_on(raw: RawStream, node: FakeNode) -> None:
    await raw.send(invoke(1, payload=b"{not json"), invoke(2, function=""),
                   invoker_pb2.StreamedInvoke(call_id=3), invoke(4, timeout=-1.0),
                   invoke(5, function="boom"))
    bad_json, empty, missing, negative, boom = await raw.wait_for(1, 2, 3, 4, 5)
    assert (bad_json.code, bad_json.error) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "InvalidInput")
    assert "not valid JSON" in bad_json.message
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "function name is empty" in empty.message
    assert missing.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "call 3 has no request" in missing.message
    assert negative.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "timeout must be >= 0" in negative.message
    # a handler error is a successful call, as with unary Invoke
    assert boom.code == 0 and boom.response.error.type == "ValueError"
    node.raise_ = FunctionNotFound("function 'nope' is not deployed")
    await raw.send(invoke(6, function="nope"))
    (missing_fn,) = await raw.wait_for(6)
    assert (missing_fn.code, missing_fn.error) == (grpc.StatusCode.NOT_FOUND.value[0], "FunctionNotFound")
    node.raise_ = None
    await raw.send(invoke(7))
    assert (await raw.wait_for(7))[0].code == 0


async def test_duplicate_call_id_in_flight_is_refused(raw: RawStream, node: FakeNode) -> None:
    await raw.send(invoke(1, function="hang"))
    with anyio.fail_after(10):
        await node.entered.wait()
    await raw.send(invoke(1), invoke(2))
    dup, ok = await raw.wait_for(1, 2)
    assert dup.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "call id 1 is already in flight" in dup.message
    assert ok.code == 0


async def test_cancel_stops_the_call_on_the_node_and_sends_nothing(raw: RawStream, node: FakeNode) -> None:
    await raw.send(invoke(1, function="hang"))
    with anyio.fail_after(10):
        await node.entered.wait()
    await raw.send(invoke(2), cancel=(1,))
    await raw.wait_for(2)
    with anyio.fail_after(10):
        await node.cancel_seen.wait()
    # the id is free again, and the cancelled call never answered
    await raw.send(invoke(1))
    (again,) = await raw.wait_for(1)
    assert again.code == 0 and again.response.payload == b'"x"'


async def test_call_timeout_is_deadline_exceeded_and_cancels_the_handler(
    raw: RawStream, node: FakeNode
) -> None:
    started = time.monotonic()
    await raw.send(invoke(1, function="hang", timeout=0.2), invoke(2))
    late, ok = await raw.wait_for(1, 2)
    assert (late.code, late.error) == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "InvocationTimeout")
    assert "within the call's timeout of 0.2s" in late.message
    assert 0.15 < time.monotonic() - started < 5
    assert ok.code == 0
    assert [r.function for r in node.cancelled] == ["hang"]
    deadline = node.calls[0][2].deadline
    assert deadline is not None and deadline - started < time.time()  # a deadline was set


async def test_half_close_ends_the_stream_after_the_last_result(raw: RawStream) -> None:
    await raw.send(*(invoke(i) for i in range(1, 4)))
    await raw.call.done_writing()
    await raw.wait_for(1, 2, 3)
    with anyio.fail_after(10):
        assert await raw.call.read() is grpc.aio.EOF  # type: ignore[attr-defined]
        assert await raw.call.code() is grpc.StatusCode.OK


async def test_client_large_payloads_at_once_go_in_separate_messages() -> None:
    # Three 3 MiB payloads in flight together: one message with all three would be over
    # the channel's message limit (payload limit + 1 MiB) and break the stream.
    node = FakeNode()
    payload = b'"' + b"x" * (3 * 1024 * 1024) + b'"'
    async with serve(node) as (target, _), AsyncClient(target) as client:
        with anyio.fail_after(30):
            results = await asyncio.gather(*(
                client.invoke("echo", raw=payload, content_type="application/json")
                for _ in range(3)))
    assert [len(r.payload) for r in results] == [len(payload)] * 3


async def test_client_errors_and_deadline_over_the_stream() -> None:
    node = FakeNode()
    async with serve(node) as (target, _), AsyncClient(target) as client:
        assert client.multiplex
        with pytest.raises(InvalidInput, match="not valid JSON"):
            await client.invoke("echo", raw=b"{", content_type="application/json")
        with pytest.raises(InvocationTimeout):
            await client.invoke("hang", timeout=0.2)
        with anyio.fail_after(10):
            await node.cancel_seen.wait()  # the node stopped working on it
        # many concurrent calls share one stream
        results = await asyncio.gather(*(client.invoke("echo", i) for i in range(100)))
    assert [r.value for r in results] == list(range(100))
    # the bad JSON never reached the handler: the hang and the 100
    assert [c[0] for c in node.calls].count("invoke") == 101


async def test_unary_and_stream_give_the_same_result() -> None:
    node = FakeNode()
    async with serve(node) as (target, _):
        async with AsyncClient(target, multiplex=False) as unary, AsyncClient(target) as stream:
            one = await unary.invoke("echo", {"a": 1})
            two = await stream.invoke("echo", {"a": 1})
    assert one == two
    first, second = (c[1] for c in node.calls)
    assert first == second and isinstance(first, InvokeRequest) and first.function == "echo"


async def test_client_refuses_a_message_over_the_limit_without_breaking_the_stream() -> None:
    node = FakeNode()
    async with serve(node) as (target, _), AsyncClient(target) as client:
        assert (await client.invoke("echo", 1)).value == 1

        async def too_big() -> Exception:
            with pytest.raises(LimitExceeded, match="over the message limit") as info:
                await client.invoke("echo", raw=b"x" * (8 * 1024 * 1024),
                                    content_type="application/octet-stream")
            return info.value

        with anyio.fail_after(30):
            error, fine = await asyncio.gather(too_big(), client.invoke("echo", 2))
    assert not error.retryable
    assert fine.value == 2
    assert [c[0] for c in node.calls] == ["invoke", "invoke"]  # the big one never left


async def test_a_broken_stream_is_replaced_by_the_next_call() -> None:
    async with serve(FakeNode("first")) as (target, _):
        port = int(target.rsplit(":", 1)[1])
        client = AsyncClient(target)
        assert (await client.invoke("echo", 1)).placement.node_id == "first"
    try:
        # The node is gone. A call made before the client saw the stream break may have
        # been handed to gRPC on it (ConnectionLost, it may have run); once the break is
        # seen, a call is not sent at all (Unreachable, safe to send elsewhere).
        with anyio.fail_after(10), pytest.raises((Unreachable, ConnectionLost)) as info:
            await client.invoke("echo", 2)
        assert info.value.retryable
        async with serve(FakeNode("second"), port=port):
            with anyio.fail_after(10):
                while True:  # the channel reconnects with backoff; each call is bounded
                    try:
                        result = await client.invoke("echo", 3, timeout=2)
                        break
                    except Unreachable:
                        await anyio.sleep(0.05)
    finally:
        await client.aclose()
    assert result.placement.node_id == "second" and result.value == 3
