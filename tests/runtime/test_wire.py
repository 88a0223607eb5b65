"""The wire boundary: conversions, server adapters, health/reflection, the worker stream.

Real grpc.aio servers on 127.0.0.1 (free ports) and Unix sockets, with tiny fake handlers.
`serve` and `FakeNode` are reused by test_client.py and test_errors.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import InstanceCrashed
from runtime.wire import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    AttemptInfo,
    CallInfo,
    ControlStub,
    DeployRequest,
    ExecuteRequest,
    ExecuteResult,
    FunctionErrorInfo,
    FunctionSpec,
    InstanceStatus,
    InvocationInfo,
    InvocationState,
    InvokeRequest,
    InvokeResult,
    InvokerStub,
    ListDeadLettersRequest,
    NodeStatus,
    Placement,
    PoolStatus,
    RedriveRequest,
    RetryPolicy,
    Status,
    WorkerStreamClient,
    add_control_service,
    add_health_and_reflection,
    add_invoker_service,
    add_worker_service,
    channel_options,
    open_channel,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_event_loop")]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-scoped: one event loop for the module (see conftest)

# ------------------------------------------------------------------ conversion round trips

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
ctype = st.sampled_from(["application/json", "text/plain", "application/octet-stream"])
i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
nat32 = st.integers(min_value=0, max_value=2**31 - 1)
fl = st.floats(allow_nan=False, allow_infinity=False, width=64)
pos = st.floats(min_value=1e-3, max_value=1e12)  # 0 means "none" on the wire
errors = st.none() | st.builds(FunctionErrorInfo, text, text, text)

STRATEGIES = {
    FunctionErrorInfo: st.builds(FunctionErrorInfo, text, text, text),
    Placement: st.builds(Placement, text, text, i32),
    InvokeRequest: st.builds(InvokeRequest, text, st.binary(max_size=64), ctype, text),
    InvokeResult: st.builds(
        InvokeResult, text, st.binary(max_size=64), ctype, i32,
        st.builds(Placement, text, text, i32), errors,
    ),
    AttemptInfo: st.builds(AttemptInfo, i32, text, text, fl, st.none() | pos, text, text),
    InvocationInfo: st.builds(
        InvocationInfo, text, text, st.sampled_from(InvocationState), st.binary(max_size=32),
        ctype, errors,
        st.lists(st.builds(AttemptInfo, i32, text, text, fl, st.none() | pos, text, text),
                 max_size=3).map(tuple),
        fl,
    ),
    RetryPolicy: st.builds(RetryPolicy, i32, fl, fl, fl, fl, st.lists(text, max_size=3).map(tuple)),
    FunctionSpec: st.builds(
        FunctionSpec, text, text, text, fl, i32, i32, i32, i32, i32,
        st.builds(RetryPolicy, i32, fl, fl, fl, fl, st.lists(text, max_size=3).map(tuple)),
        text, text,
    ),
    DeployRequest: st.builds(DeployRequest, st.lists(text, max_size=3).map(tuple)),
    Status: st.builds(
        Status,
        st.lists(
            st.builds(
                NodeStatus, text, text, text, st.booleans(), fl, i32,
                st.lists(
                    st.builds(
                        PoolStatus, text, text, i32, text,
                        st.lists(st.builds(InstanceStatus, text, i32, text, i32),
                                 max_size=2).map(tuple),
                    ),
                    max_size=2,
                ).map(tuple),
            ),
            max_size=2,
        ).map(tuple),
    ),
    ListDeadLettersRequest: st.builds(ListDeadLettersRequest, i32),
    RedriveRequest: st.builds(RedriveRequest, st.lists(text, max_size=3).map(tuple), st.booleans()),
    ExecuteRequest: st.builds(
        ExecuteRequest, text, i32, text, st.binary(max_size=64), ctype, st.none() | pos,
        st.dictionaries(text, text, max_size=3),
    ),
    ExecuteResult: st.builds(ExecuteResult, st.binary(max_size=64), ctype, errors),
}


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_round_trip(cls: type) -> None:
    @settings(max_examples=60, deadline=None)
    @given(STRATEGIES[cls])
    def check(value: object) -> None:
        msg = value.to_proto()  # type: ignore[attr-defined]
        again = cls.from_proto(type(msg).FromString(msg.SerializeToString()))  # type: ignore[attr-defined]
        assert again == value

    check()


def test_wire_defaults_hide_zero_values() -> None:
    assert ExecuteRequest("i", 1, "f").to_proto().deadline == 0.0
    assert ExecuteRequest.from_proto(ExecuteRequest("i", 1, "f").to_proto()).deadline is None
    assert InvokeRequest.from_proto(InvokeRequest("f", content_type="").to_proto()).content_type == (
        "application/json"
    )
    assert not InvokeResult("x").to_proto().HasField("error")


# ------------------------------------------------------------------ fake node and server


class FakeNode:
    """Implements InvokerHandler and ControlHandler: echoes payloads, records calls."""

    def __init__(self, node_id: str = "n1") -> None:
        self.node_id = node_id
        self.calls: list[tuple[str, object, CallInfo]] = []
        self.raise_: Exception | None = None
        self.entered = anyio.Event()
        self.hang_functions = {"hang"}  # functions that never answer on this node
        self.cancelled: list[InvokeRequest] = []  # hanging calls that were cancelled
        self.cancel_seen = anyio.Event()

    def _record(self, method: str, request: object, call: CallInfo) -> None:
        self.calls.append((method, request, call))
        if self.raise_ is not None:
            raise self.raise_

    async def invoke(self, request: InvokeRequest, call: CallInfo) -> InvokeResult:
        self._record("invoke", request, call)
        if request.function in self.hang_functions:
            self.entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                self.cancelled.append(request)
                self.cancel_seen.set()
        if request.function == "boom":
            return InvokeResult(
                "inv-boom", error=FunctionErrorInfo("ValueError", "boom", "Traceback ...\n")
            )
        return InvokeResult(
            "inv-1", request.payload, request.content_type, 1,
            Placement(self.node_id, "a", os.getpid()),
        )

    async def invoke_async(self, request: InvokeRequest, call: CallInfo) -> str:
        self._record("invoke_async", request, call)
        return f"async-{request.function}"

    async def get_invocation(self, invocation_id: str, call: CallInfo) -> InvocationInfo:
        self._record("get_invocation", invocation_id, call)
        return InvocationInfo(invocation_id, "hello", InvocationState.SUCCEEDED, b'{"ok":1}')

    async def deploy(self, request: DeployRequest, call: CallInfo) -> Sequence[FunctionSpec]:
        self._record("deploy", request, call)
        return [FunctionSpec(name=a, app=a, handler=a) for a in request.apps]

    async def list_functions(self, call: CallInfo) -> Sequence[FunctionSpec]:
        self._record("list_functions", None, call)
        return [FunctionSpec("hello", "examples/hello.py", "hello")]

    async def status(self, call: CallInfo) -> Status:
        self._record("status", None, call)
        return Status((NodeStatus(self.node_id, "a", pools=(PoolStatus("hello", "healthy"),)),))

    async def list_dead_letters(
        self, request: ListDeadLettersRequest, call: CallInfo
    ) -> Sequence[InvocationInfo]:
        self._record("list_dead_letters", request, call)
        return [InvocationInfo("d1", "boom", InvocationState.DEAD_LETTERED)][: request.limit or 10]

    async def redrive(self, request: RedriveRequest, call: CallInfo) -> Sequence[str]:
        self._record("redrive", request, call)
        return ["d1"] if request.all else list(request.invocation_ids)


@contextlib.asynccontextmanager
async def serve(
    node: FakeNode, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, port: int = 0
) -> AsyncIterator[tuple[str, grpc.aio.Server]]:
    """A real grpc.aio server on 127.0.0.1 serving `node`; stopped on exit, even on failure."""
    server = grpc.aio.server(options=channel_options(max_payload_bytes))
    add_invoker_service(server, node, max_payload_bytes=max_payload_bytes)
    add_control_service(server, node)
    await add_health_and_reflection(server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{bound}", server
    finally:
        await server.stop(None)


async def _raw_invoke(target: str, request: InvokeRequest) -> grpc.aio.AioRpcError:
    channel = open_channel(target)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await InvokerStub(channel)._stub.Invoke(request.to_proto(), timeout=10)
        return info.value
    finally:
        await channel.close(None)


# ------------------------------------------------------------------ adapters


async def test_invoke_round_trip_and_call_info() -> None:
    node = FakeNode()
    async with serve(node) as (target, _):
        channel = open_channel(target)
        try:
            with anyio.fail_after(5):  # the caller's deadline travels as grpc-timeout
                result = await InvokerStub(channel).invoke(
                    InvokeRequest("echo", b'{"a": 1}'),
                    metadata={"traceparent": "00-abc-def-01", "stoic-hop": "1"},
                )
            sent_at = time.time()
        finally:
            await channel.close(None)
    assert result.value == {"a": 1}
    assert result.placement == Placement("n1", "a", os.getpid())
    (method, request, call), = node.calls
    assert method == "invoke" and request == InvokeRequest("echo", b'{"a": 1}')
    assert call.metadata["traceparent"] == "00-abc-def-01"
    assert call.metadata["stoic-hop"] == "1"
    assert call.deadline is not None and sent_at + 3.5 < call.deadline < sent_at + 5.5
    assert call.peer.startswith("ipv4:127.0.0.1:")


async def test_no_deadline_is_none() -> None:
    node = FakeNode()
    async with serve(node) as (target, _):
        channel = open_channel(target)
        try:
            await ControlStub(channel).status()
        finally:
            await channel.close(None)
    assert node.calls[0][2].deadline is None


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (InvokeRequest(""), grpc.StatusCode.INVALID_ARGUMENT, "function name is empty"),
        (InvokeRequest("echo", b"{nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "not valid JSON (content type application/json): Expecting property name enclosed "
         "in double quotes: line 1 column 2 (char 1)"),
        (InvokeRequest("echo", b"\xff\xfe\xfd"), grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        (InvokeRequest("echo", b"x" * 1025, "text/plain"), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "payload of 1025 bytes for 'echo' is over the limit of 1024 bytes"),
    ],
    ids=["empty-name", "invalid-json", "invalid-utf8", "too-large"],
)
async def test_bad_input_is_rejected_at_the_boundary(
    request_: InvokeRequest, code: grpc.StatusCode, needle: str
) -> None:
    node = FakeNode()
    async with serve(node, max_payload_bytes=1024) as (target, _):
        err = await _raw_invoke(target, request_)
        # the node is unaffected and keeps serving
        ok = await _raw_ok(target)
    assert err.code() == code
    assert needle in (err.details() or "")
    assert [c[0] for c in node.calls] == ["invoke"]  # only the good call reached the handler
    assert ok


async def _raw_ok(target: str) -> bool:
    channel = open_channel(target)
    try:
        result = await InvokerStub(channel).invoke(InvokeRequest("echo", b"1"))
    finally:
        await channel.close(None)
    return result.value == 1


async def test_default_limit_is_6_mib_and_non_json_payload_passes() -> None:
    node = FakeNode()
    async with serve(node) as (target, _):
        big = await _raw_invoke(target, InvokeRequest("echo", b"x" * (6 * 1024 * 1024 + 1), "a/b"))
        channel = open_channel(target)
        try:
            result = await InvokerStub(channel).invoke(
                InvokeRequest("echo", b"\x00" * (6 * 1024 * 1024), "application/octet-stream")
            )
        finally:
            await channel.close(None)
    assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the limit of 6291456 bytes" in (big.details() or "")
    assert len(result.payload) == 6 * 1024 * 1024


async def test_unexpected_exception_is_internal_with_a_short_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = FakeNode()
    node.raise_ = KeyError("secret-internal-detail")
    async with serve(node) as (target, _):
        err = await _raw_invoke(target, InvokeRequest("echo", b"1"))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error: KeyError (see the node's log)"
    assert "Invoke failed unexpectedly" in caplog.text


async def test_control_rejects_empty_deploy_and_redrive() -> None:
    from runtime import InvalidInput

    node = FakeNode()
    async with serve(node) as (target, _):
        channel = open_channel(target)
        try:
            stub = ControlStub(channel)
            with pytest.raises(InvalidInput, match="no apps to deploy"):
                await stub.deploy(DeployRequest(()))
            with pytest.raises(InvalidInput, match="give invocation ids"):
                await stub.redrive(RedriveRequest())
            assert await stub.redrive(RedriveRequest(all=True)) == ("d1",)
        finally:
            await channel.close(None)


# ------------------------------------------------------------------ health and reflection


async def test_health_answers_serving() -> None:
    async with serve(FakeNode()) as (target, _):
        channel = open_channel(target)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "stoic.v1.Invoker", "stoic.v1.Control"):
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close(None)


def _grpcurl() -> str | None:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    if found is None:
        return None
    try:
        ok = subprocess.run([found, "-version"], capture_output=True, timeout=10).returncode == 0
    except OSError:
        return None
    return found if ok else None


async def _grpcurl_run(*args: str) -> subprocess.CompletedProcess[bytes]:
    grpcurl = _grpcurl()
    if grpcurl is None:
        pytest.skip("grpcurl binary not runnable here")
    return await anyio.run_process([grpcurl, *args], check=False)


async def test_reflection_list_describe_and_invoke_with_grpcurl() -> None:
    async with serve(FakeNode()) as (target, _):
        listed = await _grpcurl_run("-plaintext", target, "list")
        described = await _grpcurl_run("-plaintext", target, "describe", "stoic.v1.Invoker")
        invoked = await _grpcurl_run(
            "-plaintext", "-d", json.dumps({"function": "echo", "payload": "eyJhIjoxfQ=="}),
            target, "stoic.v1.Invoker/Invoke",
        )
        health = await _grpcurl_run("-plaintext", target, "grpc.health.v1.Health/Check")
        missing = await _grpcurl_run(
            "-plaintext", "-d", '{"function": ""}', target, "stoic.v1.Invoker/Invoke"
        )
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.decode().split()
    assert {"stoic.v1.Invoker", "stoic.v1.Control", "grpc.health.v1.Health"} <= set(services)
    assert b"rpc Invoke ( .stoic.v1.InvokeRequest ) returns ( .stoic.v1.InvokeResponse )" in (
        described.stdout
    )
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout)["payload"] == "eyJhIjoxfQ=="
    assert b"SERVING" in health.stdout
    assert missing.returncode != 0
    assert b"InvalidArgument" in missing.stderr and b"function name is empty" in missing.stderr


# ------------------------------------------------------------------ worker stream


class FakeWorker:
    """WorkerHandler: answers each request when the test releases it (or at once)."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.release: dict[str, anyio.Event] = {}
        self.arrived = 0
        self.all_arrived = anyio.Event()
        self.expected = 0

    async def execute(self, request: ExecuteRequest) -> ExecuteResult:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()
        if request.function == "fail":
            raise RuntimeError("worker bug")
        if request.function in ("big", "huge"):  # 3 MiB, or over the 6 MiB payload limit
            size = 3 * 1024 * 1024 if request.function == "big" else 7 * 1024 * 1024
            return ExecuteResult(payload=b"x" * size, content_type="application/octet-stream")
        if self.hold:
            event = self.release.setdefault(request.invocation_id, anyio.Event())
            await event.wait()
        return ExecuteResult(
            payload=json.dumps({"id": request.invocation_id, "attempt": request.attempt}).encode()
        )


@contextlib.asynccontextmanager
async def serve_worker(
    worker: FakeWorker, socket_path: Path
) -> AsyncIterator[grpc.aio.Server]:
    server = grpc.aio.server(options=channel_options())
    add_worker_service(server, worker)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(None)


@pytest.fixture
def sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Unix socket path, removed afterwards. Socket paths are limited to ~107 bytes, and
    pytest's tmp_path can be longer."""
    base = Path(tmp_path_factory.mktemp("w", numbered=True))
    path = base / "w.sock"
    if len(str(path)) > 100:
        path = Path("/tmp") / f"stoic-test-{os.getpid()}-{base.name}.sock"
    yield path
    path.unlink(missing_ok=True)


async def test_worker_results_too_large_for_a_message_do_not_break_the_stream(sock: Path) -> None:
    worker = FakeWorker()
    async with serve_worker(worker, sock), WorkerStreamClient(f"unix://{sock}") as client:
        with anyio.fail_after(30):
            results: list[ExecuteResult] = []

            async def one(function: str) -> None:
                results.append(await client.execute(ExecuteRequest("i", 1, function)))

            async with anyio.create_task_group() as tg:
                # three 3 MiB results ready together: more than one message can carry
                for _ in range(3):
                    tg.start_soon(one, "big")
            huge = await client.execute(ExecuteRequest("h", 1, "huge"))
            after = await client.execute(ExecuteRequest("a", 1, "f"))
            broken = client.closed
    assert [len(r.payload) for r in results] == [3 * 1024 * 1024] * 3
    assert huge.error is not None and huge.error.type == "ResultTooLarge"
    assert "over the limit of 6291456 bytes" in huge.error.message
    assert json.loads(after.payload)["id"] == "a" and not broken


async def test_worker_stream_multiplexes_out_of_order(sock: Path) -> None:
    n = 200
    worker = FakeWorker(hold=True)
    worker.expected = n
    results: dict[str, object] = {}
    async with serve_worker(worker, sock), WorkerStreamClient(f"unix://{sock}") as client:

        async def one(i: int) -> None:
            res = await client.execute(ExecuteRequest(f"inv-{i}", i % 3 + 1, "f", b"1"))
            results[f"inv-{i}"] = json.loads(res.payload)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
                await worker.all_arrived.wait()
                assert client.in_flight == n
                pid, in_flight = await client.ping()
                assert (pid, in_flight) == (os.getpid(), n)
                for i in reversed(range(n)):  # answer in reverse order
                    worker.release.setdefault(f"inv-{i}", anyio.Event()).set()
        assert client.in_flight == 0
        # 200 requests handed over in one go travel in far fewer stream messages
        assert client.messages_sent < n // 2
        failed = await client.execute(ExecuteRequest("x", 1, "fail"))
    assert results == {f"inv-{i}": {"id": f"inv-{i}", "attempt": i % 3 + 1} for i in range(n)}
    assert failed.error is not None and failed.error.type == "RuntimeError"
    assert "worker bug" in failed.error.traceback


def test_chunks_keep_order_and_stay_under_the_message_budget() -> None:
    from runtime.wire import BATCH_BYTES, _chunks

    def msg(size: int) -> Any:
        return ExecuteRequest("i", 1, "f", b"x" * size).to_proto(size)

    small = [msg(10) for _ in range(5)]
    assert list(_chunks(small)) == [small]
    half = BATCH_BYTES // 2
    big = [msg(half), msg(half), msg(3 * BATCH_BYTES), msg(10)]
    chunks = list(_chunks(big))
    assert [len(c) for c in chunks] == [1, 1, 1, 1]  # two halves plus framing are over
    assert [m for c in chunks for m in c] == big
    assert all(sum(m.ByteSize() for m in c) <= BATCH_BYTES or len(c) == 1 for c in chunks)


async def test_worker_stream_break_fails_every_waiter(sock: Path) -> None:
    n = 20
    worker = FakeWorker(hold=True)
    worker.expected = n
    outcomes: list[BaseException] = []
    async with serve_worker(worker, sock) as server:
        async with WorkerStreamClient(f"unix://{sock}", name="w1") as client:

            async def one(i: int) -> None:
                try:
                    await client.execute(ExecuteRequest(f"inv-{i}", 1, "f"))
                except InstanceCrashed as exc:
                    outcomes.append(exc)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(one, i)
                    await worker.all_arrived.wait()
                    await server.stop(None)  # the worker goes away mid-invocation
            assert client.closed
            with pytest.raises(InstanceCrashed, match="w1"):
                await client.execute(ExecuteRequest("late", 1, "f"))
    assert len(outcomes) == n
    assert all("w1" in str(e) and e.retryable for e in outcomes)


async def test_worker_stream_connect_is_bounded_by_the_callers_scope(sock: Path) -> None:
    client = WorkerStreamClient(f"unix://{sock}")  # nothing listens there
    with pytest.raises(TimeoutError), anyio.fail_after(0.3):
        async with client:
            pass
    with pytest.raises(InstanceCrashed):
        await client.execute(ExecuteRequest("i", 1, "f"))


async def test_worker_stream_aclose_and_caller_cancellation(sock: Path) -> None:
    worker = FakeWorker(hold=True)
    worker.expected = 2
    outcomes: list[BaseException] = []
    client = WorkerStreamClient(f"unix://{sock}", name="w2")
    async with serve_worker(worker, sock):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(client.run)

                async def waiter() -> None:
                    try:
                        await client.execute(ExecuteRequest("held", 1, "f"))
                    except InstanceCrashed as exc:
                        outcomes.append(exc)

                tg.start_soon(waiter)
                with anyio.move_on_after(0.05) as scope:  # a caller giving up
                    await client.execute(ExecuteRequest("given-up", 1, "f"))
                assert scope.cancelled_caught
                await worker.all_arrived.wait()
                await client.aclose()
            # run() returned by itself: the task group did not need cancelling
    assert len(outcomes) == 1 and "closed by the node" in str(outcomes[0])
    assert client.closed and client.in_flight == 0


async def test_assign_is_refused_precisely(sock: Path) -> None:
    """Assign: a worker without `assign` (it runs a function) is FAILED_PRECONDITION; a
    function the spare cannot load is INVALID_ARGUMENT naming why; else the pid."""
    from runtime._errors import InstanceCrashed
    from runtime.wire import AssignRefused

    class Spare(FakeWorker):
        async def assign(self, config_json: str) -> int:
            if "broken" in config_json:
                raise AssignRefused("importing broken.py failed: RuntimeError: boom")
            return 4242

    async with serve_worker(FakeWorker(), sock), WorkerStreamClient(f"unix://{sock}") as c:
        with pytest.raises(InstanceCrashed, match="FAILED_PRECONDITION: this worker already"):
            await c.assign("{}")
    async with serve_worker(Spare(), sock), WorkerStreamClient(f"unix://{sock}") as c:
        with pytest.raises(InstanceCrashed,
                           match="INVALID_ARGUMENT: importing broken.py failed: RuntimeError"):
            await c.assign('{"app": "broken"}')
        assert await c.assign("{}") == 4242


def test_transport_failures_map_to_retryable_errors_and_server_statuses_do_not() -> None:
    """A status gRPC core made itself (no `stoic-error` trailer) is a transport failure:
    UNAVAILABLE before connecting is Unreachable, a broken connection (UNAVAILABLE, or
    core's own INTERNAL when a stream breaks as its server goes away) is ConnectionLost.
    An INTERNAL the server sent stays an InternalError."""
    from grpc.aio import AioRpcError, Metadata

    from runtime import ConnectionLost, InternalError, Unreachable
    from runtime.wire import ERROR_TRAILER, error_from_rpc

    def rpc(code: grpc.StatusCode, details: str, trailer: str = "") -> AioRpcError:
        trailers = Metadata((ERROR_TRAILER, trailer)) if trailer else Metadata()
        return AioRpcError(code, Metadata(), trailers, details)

    assert isinstance(error_from_rpc(rpc(grpc.StatusCode.UNAVAILABLE,
                                         "failed to connect to all addresses")), Unreachable)
    lost = error_from_rpc(rpc(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    assert isinstance(lost, ConnectionLost) and lost.retryable
    assert isinstance(error_from_rpc(rpc(grpc.StatusCode.UNAVAILABLE, "Socket closed")),
                      ConnectionLost)
    sent = error_from_rpc(rpc(grpc.StatusCode.INTERNAL, "Internal error from Core",
                              "InternalError"))
    assert type(sent) is InternalError
    assert type(error_from_rpc(rpc(grpc.StatusCode.INTERNAL, "a bug in the node"))) \
        is InternalError
    # a call grpc cancelled under us because its channel closed (runtime.wire._unary)
    closed = error_from_rpc(rpc(grpc.StatusCode.CANCELLED,
                                "the call was cancelled locally (its channel closed)"))
    assert isinstance(closed, ConnectionLost)
    assert not isinstance(error_from_rpc(rpc(grpc.StatusCode.CANCELLED, "by the server")),
                          ConnectionLost)
