"""The node's own decisions, in process: which store calls become spans, where a request
goes when the local pool turns it away."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from runtime import ExitReason, MemoryStore, PoolStopping, Tracing, wire
from supervisor._async import QUEUE
from supervisor._node import Node, NodeConfig, TracedStore

ECHO = wire.FunctionSpec(name="echo", app="examples/hello.py", handler="echo")


def _node_with_echo() -> Node:
    """A node (not serving) that knows `echo`; tests put stand-in pools and peers in."""
    node = Node(NodeConfig(node_id="a1", zone="a"), MemoryStore(), spawner_factory=None)
    node.functions["echo"] = ECHO
    return node


@pytest.mark.anyio
async def test_store_operations_are_spans_only_inside_a_trace() -> None:
    """A store call inside an invocation's trace is its child span; one outside any trace
    (the consumer's idle lease poll, ten a second) makes no trace of its own."""
    tracing = Tracing.from_env(environ={})
    store = TracedStore(MemoryStore(), tracing)
    for _ in range(5):
        assert await store.lease(QUEUE, max_items=1, visibility_timeout=30) == []
    assert len(tracing.recorder) == 0
    with tracing.start_span("stoic.async.run") as parent:
        await store.put("k", b"v", expected_version=0)
    (put,) = [s for s in tracing.spans_for_trace(parent.get_span_context().trace_id)
              if s.name == "stoic.store.put"]
    assert put.parent_id == f"{parent.get_span_context().span_id:016x}"


@pytest.mark.anyio
async def test_a_request_turned_away_by_a_stopping_local_pool_goes_to_a_peer() -> None:
    """Placement moved the function off this node while a request waited for a local
    instance: the request did not run, so the same attempt goes to a peer instead of
    failing with Unavailable (the pool and the peer are stand-ins here; the routing
    decision is the node's own code)."""
    node = _node_with_echo()
    spec = ECHO

    class StoppingPool:
        usable, state = True, "healthy"

        async def invoke(self, request: object, deadline: object) -> object:
            raise PoolStopping("a1/echo: pool is stopping")

    forwarded: list[tuple[str, int]] = []
    peer = SimpleNamespace(node_id="b1", zone="b", load=0, functions=("echo",))

    async def forward(peer: Any, request: Any, invocation_id: str, attempt: int,
                      deadline: Any, span: Any) -> str:
        forwarded.append((peer.node_id, attempt))
        return "answered by b1"

    node.pools["echo"] = StoppingPool()  # type: ignore[assignment]
    node._candidates = lambda function, exclude: [peer]  # type: ignore[method-assign]
    node._forward = forward  # type: ignore[method-assign]
    request = wire.InvokeRequest(function="echo", payload=b"1")
    assert await node.dispatch(spec, request, "inv-1", None) == "answered by b1"
    assert forwarded == [("b1", 1)]  # the same attempt, not a retry


@pytest.mark.anyio
async def test_a_request_turned_away_by_a_redeployed_pool_runs_on_its_replacement() -> None:
    """A redeploy replaced the local pool while a request waited on the old one: the same
    attempt runs on the new pool, not on a peer."""
    node = _node_with_echo()
    spec = ECHO
    ran: list[int] = []

    class NewPool:
        usable, state = True, "healthy"

        async def invoke(self, request: Any, deadline: object) -> tuple[Any, int]:
            ran.append(request.attempt)
            return SimpleNamespace(timing=None, error=None, payload=b"2",
                                   content_type=wire.JSON), 4242

    class OldPool:
        usable, state = True, "healthy"

        async def invoke(self, request: object, deadline: object) -> object:
            node.pools["echo"] = NewPool()  # type: ignore[assignment]
            raise PoolStopping("a1/echo: pool is stopping")

    async def no_forward(*args: Any) -> Any:
        raise AssertionError("sent to a peer")

    node.pools["echo"] = OldPool()  # type: ignore[assignment]
    node._forward = no_forward  # type: ignore[method-assign]
    result = await node.dispatch(spec, wire.InvokeRequest(function="echo", payload=b"1"),
                                 "inv-2", None)
    assert (result.payload, result.placement.pid, result.attempts, ran) == (b"2", 4242, 1, [1])


@pytest.mark.anyio
async def test_a_peer_whose_pool_is_stopping_hands_the_request_to_the_next_peer() -> None:
    """A forwarded request that a peer's stopping pool turned away (PoolStopping crosses
    the wire by name) goes to the next peer, same attempt, instead of failing."""
    from runtime._errors import error_from_status, status_for

    code, details, name = status_for(PoolStopping("b1/echo: pool is stopping"))
    assert type(error_from_status(code, details, name)) is PoolStopping

    node = _node_with_echo()
    spec = ECHO
    peers = [SimpleNamespace(node_id=n, zone=n[0], load=0, functions=("echo",))
             for n in ("b1", "c1")]
    tried: list[tuple[str, int]] = []

    async def forward(peer: Any, request: Any, invocation_id: str, attempt: int,
                      deadline: Any, span: Any) -> str:
        tried.append((peer.node_id, attempt))
        if peer.node_id == "b1":
            exc = error_from_status(code, details, name)
            exc.node_id = "b1"  # type: ignore[attr-defined]  # as _forward_call sets it
            raise exc
        return "answered by c1"

    node._candidates = lambda function, exclude: [  # type: ignore[method-assign]
        p for p in peers if p.node_id not in exclude]
    node._forward = forward  # type: ignore[method-assign]
    request = wire.InvokeRequest(function="echo", payload=b"1")
    assert await node.dispatch(spec, request, "inv-3", None) == "answered by c1"
    assert tried == [("b1", 1), ("c1", 1)]


class _StandInInstance:
    """An instance as a pool sees it (the Child interface plus ping), in process."""

    def __init__(self, pid: int, stray_cancel: bool) -> None:
        self.pid = pid
        self.exit_reason: Any = None
        self._exited = anyio.Event()
        self._stray_cancel = stray_cancel
        self.name = f"echo[{pid}]"

    async def ping(self) -> None:
        if self._stray_cancel:
            raise asyncio.CancelledError()  # as grpc.aio's own, raised by nobody's cancel
        return None

    async def wait_exit(self) -> Any:
        await self._exited.wait()
        return self.exit_reason

    def kill(self) -> None:
        if self.exit_reason is None:
            self.exit_reason = ExitReason.killed()
            self._exited.set()

    stop = kill


@pytest.mark.anyio
async def test_a_pool_whose_task_group_died_is_turned_away_and_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stray CancelledError in a pool's health check once cancelled the pool's whole task
    group without a word: its instances were gone, yet the node kept the pool and callers
    waited for an instance until their timeout. Now the dead pool turns callers away
    (PoolStopping: re-routed) and the node logs it and starts a new pool."""
    from supervisor._pool import PoolConfig

    caplog.set_level(logging.ERROR, logger="stoic.node")
    spawned: list[_StandInInstance] = []

    def spawner_factory(spec: Any) -> Any:
        async def spawn(instance_id: str) -> _StandInInstance:
            # the first pool's first instance makes its health check blow up
            spawned.append(_StandInInstance(1000 + len(spawned), stray_cancel=not spawned))
            return spawned[-1]
        return spawn

    config = NodeConfig(node_id="a1", zone="a", pool=PoolConfig(ping_interval=0.01))
    node = Node(config, MemoryStore(), spawner_factory=spawner_factory)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            node._tg = tg
            await node._start_pool(ECHO)
            first = node.pools["echo"]
            while node.pools["echo"] is first:  # noqa: ASYNC110 - polled, bounded above
                await anyio.sleep(0.01)
            assert first.state == "stopped"
            with pytest.raises(PoolStopping):
                await first.invoke(wire.ExecuteRequest("inv", 1, "echo"), None)
            second = node.pools["echo"]
            await second.wait_started()
            assert second.state == "healthy" and len(spawned) == 2
            assert spawned[0].exit_reason is not None  # the dead pool's instance is gone
            second.stop()
            tg.cancel_scope.cancel()
    assert any("ended without being stopped" in r.getMessage() for r in caplog.records)
