"""The Python client against real grpc.aio servers on 127.0.0.1: results, error mapping,
deadlines, metadata, the sync wrapper (also from a plain script) and failover."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import time

import anyio
import anyio.to_thread
import pytest

from runtime import (
    AsyncClient,
    Client,
    ConnectionLost,
    FunctionError,
    InvalidInput,
    InvocationTimeout,
    Unavailable,
    Unreachable,
)
from runtime.wire import InvocationState
from tests.runtime.test_wire import FakeNode, serve

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_event_loop")]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-scoped: one event loop for the module (see conftest)


@pytest.fixture(params=[True, False], ids=["stream", "unary"])
def multiplex(request: pytest.FixtureRequest) -> bool:
    """Invokes over one InvokeStream (the default) or one unary Invoke per call."""
    return bool(request.param)


async def test_async_client_calls_and_results(multiplex: bool) -> None:
    node = FakeNode()
    async with serve(node) as (target, _), AsyncClient(target, multiplex=multiplex) as client:
        result = await client.invoke("echo", {"name": "ada"}, metadata={"traceparent": "00-x"})
        raw = await client.invoke("echo", raw=b"\x00\x01", content_type="application/x-bin")
        none = await client.invoke("echo")
        with pytest.raises(FunctionError) as err:
            await client.invoke("boom", {})
        with pytest.raises(InvalidInput, match="not JSON-serializable"):
            await client.invoke("echo", {1, 2})
        inv = await client.invoke_async("echo", 1, idempotency_key="k1")
        info = await client.get_invocation("abc")
        waited = await client.wait_invocation("abc", timeout=5)
        specs = await client.deploy(["app1", "app2"])
        funcs = await client.functions()
        status = await client.status()
        dead = await client.dead_letters(limit=5)
        redriven_all = await client.redrive("all")
        redriven = await client.redrive(["a", "b"])
    assert result.value == {"name": "ada"} and result.invocation_id == "inv-1"
    assert raw.value == b"\x00\x01"
    assert none.value is None
    assert (err.value.type, err.value.message, err.value.invocation_id) == (
        "ValueError", "boom", "inv-boom"
    )
    assert err.value.traceback.startswith("Traceback")
    assert inv == "async-echo"
    assert info.state == InvocationState.SUCCEEDED and info.to_json()["result"] == {"ok": 1}
    assert waited == info
    assert [s.name for s in specs] == ["app1", "app2"]
    assert [f.name for f in funcs] == ["hello"]
    assert json.loads(json.dumps(status.to_json()))["nodes"][0]["pools"][0]["function"] == "hello"
    assert [d.invocation_id for d in dead] == ["d1"]
    assert redriven_all == ("d1",) and redriven == ("a", "b")
    first_call = node.calls[0]
    assert first_call[2].metadata["traceparent"] == "00-x"
    (async_request,) = [c[1] for c in node.calls if c[0] == "invoke_async"]
    assert async_request.idempotency_key == "k1"  # type: ignore[attr-defined]


async def test_timeout_raises_invocation_timeout_and_reaches_the_server(multiplex: bool) -> None:
    node = FakeNode()
    async with serve(node) as (target, _), AsyncClient(
            target, default_timeout=30, multiplex=multiplex) as client:
        started = time.monotonic()
        with pytest.raises(InvocationTimeout) as info:
            await client.invoke("hang", {}, timeout=0.3)
        elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert 0.25 < elapsed < 5
    call = node.calls[0][2]
    assert call.deadline is not None and call.deadline - time.time() < 0.3


async def test_sync_client_from_a_worker_thread() -> None:
    node = FakeNode()
    async with serve(node) as (target, _):

        def use() -> tuple[object, str]:
            with Client(target) as client:
                value = client.invoke("echo", [1, 2]).value
                try:
                    client.invoke("boom")
                except FunctionError as exc:
                    return value, exc.type
            return value, ""

        value, error_type = await anyio.to_thread.run_sync(use)
    assert value == [1, 2] and error_type == "ValueError"


async def test_sync_clients_share_one_loop_and_closing_one_leaves_the_others_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients opened and closed in several threads while another keeps calling: every
    call answers, and asyncio logs nothing (with a loop per client, a late completion for
    a closed client's loop raised "Event loop is closed" inside another's)."""
    import threading

    caplog.set_level(logging.ERROR, logger="asyncio")
    node = FakeNode()
    results: list[list[object]] = [[] for _ in range(4)]
    last: list[object] = []

    def clients(target: str) -> None:  # blocking: runs in a thread, off the server's loop
        with Client(target) as keeper:

            def churn(n: int) -> None:
                for i in range(15):
                    with Client(target) as client:
                        assert client._loop is keeper._loop
                        results[n].append(client.invoke("echo", [n, i]).value)
                    results[n].append(keeper.invoke("echo", [n, -i]).value)

            threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            last.append(keeper.invoke("echo", "still here").value)

    async with serve(node) as (target, _):
        with anyio.fail_after(90):
            await anyio.to_thread.run_sync(clients, target)
    for n in range(4):
        assert results[n] == [v for i in range(15) for v in ([n, i], [n, -i])]
    assert last == ["still here"]
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_sync_client_in_a_plain_script() -> None:
    node = FakeNode()
    script = textwrap.dedent(
        """
        import sys
        from runtime import Client, FunctionNotFound
        with Client(sys.argv[1], default_timeout=10) as client:
            print(client.invoke("echo", {"from": "script"}).value["from"])
            print(client.status().nodes[0].node_id)
        """
    )
    async with serve(node) as (target, _):
        with anyio.fail_after(30):
            done = await anyio.run_process([sys.executable, "-c", script, target], check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["script", "n1"]


async def test_unreachable_single_target() -> None:
    async with serve(FakeNode()) as (target, _):
        pass  # the port is free again: nothing listens there now
    async with AsyncClient(target) as client:
        with anyio.fail_after(10):
            with pytest.raises(Unreachable) as info:
                await client.status()
    assert isinstance(info.value, Unavailable) and info.value.retryable


async def test_failover_to_the_next_target_when_one_is_stopped(multiplex: bool) -> None:
    a, b = FakeNode("a"), FakeNode("b")
    async with serve(b) as (target_b, _), serve(a) as (target_a, server_a):
        async with AsyncClient([target_a, target_b], multiplex=multiplex) as client:
            assert (await client.status()).nodes[0].node_id == "a"
            await server_a.stop(None)
            with anyio.fail_after(10):
                # reads and plain invokes that never reached a node both move on
                assert (await client.status()).nodes[0].node_id == "b"
                assert client.target == target_b
                result = await client.invoke("echo", 1)
    assert result.placement.node_id == "b"
    assert [c[0] for c in a.calls] == ["status"]


async def test_all_targets_down_raises_unreachable() -> None:
    async with serve(FakeNode()) as (t1, _), serve(FakeNode()) as (t2, _):
        pass
    async with AsyncClient([t1, t2]) as client:
        with anyio.fail_after(10), pytest.raises(Unreachable, match="no node could be reached"):
            await client.functions()


@pytest.mark.parametrize("key", [None, "idem-1"])
async def test_connection_lost_mid_call_fails_over_only_when_safe(
    key: str | None, multiplex: bool
) -> None:
    a, b = FakeNode("a"), FakeNode("b")
    b.hang_functions = set()
    outcome: list[object] = []
    async with serve(b) as (target_b, _), serve(a) as (target_a, server_a):
        async with AsyncClient([target_a, target_b], multiplex=multiplex) as client:

            async def call() -> None:
                try:
                    outcome.append(await client.invoke("hang", 1, idempotency_key=key))
                except ConnectionLost as exc:
                    outcome.append(exc)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await a.entered.wait()  # the call reached node a ...
                    await server_a.stop(None)  # ... and then its connection broke
    assert len(outcome) == 1
    if key is None:
        # node a may have run it: a plain invoke is not repeated elsewhere
        assert isinstance(outcome[0], ConnectionLost) and outcome[0].retryable
        assert not b.calls
    else:
        assert outcome[0].placement.node_id == "b"  # type: ignore[attr-defined]
        assert b.calls[0][1].idempotency_key == "idem-1"  # type: ignore[union-attr]


def test_client_rejects_empty_targets() -> None:
    with pytest.raises(ValueError, match="targets"):
        AsyncClient([])
    with pytest.raises(ValueError, match="targets"):
        AsyncClient("")

