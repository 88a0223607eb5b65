"""One connected trace per invocation, exported over OTLP/gRPC to a real receiver (issue 7)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import Client, Tracing
from runtime.wire import InvocationState
from supervisor._launcher import Cluster
from tests.fixtures.cluster import ROOT, running_cluster
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan

APPS = (str(ROOT / "examples" / "hello.py"), str(ROOT / "tests" / "e2e" / "apps" / "traced.py"))


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Cluster]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_cluster(tmp_path_factory.mktemp("traces"), zones=("a", "b", "c"), apps=APPS,
                         env=env) as c:
        yield c


def _client_tracing(receiver: OtlpReceiver) -> Tracing:
    return Tracing.from_env(role="client", node_id="test-client", environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})


def _hosting_zone(client: Client, function: str) -> str:
    """The one zone hosting `function` once placement has settled: every node is in the
    status, the zone placement picks for that membership hosts it, and no other node
    still does (a node that hosted it before all peers joined drains it for a while)."""
    from supervisor._placement import Member, should_host

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nodes = client.status().nodes
        members = [Member(n.node_id, n.zone) for n in nodes if n.healthy]
        expected = {m.zone for m in members if should_host(function, 1, m, members)}
        hosting = {n.zone for n in nodes for p in n.pools if p.function == function
                   and p.instances}
        if len(members) == 3 and len(expected) == 1 and hosting == expected:
            return expected.pop()
        time.sleep(0.05)  # poll interval
    raise AssertionError(f"{function} not placed in exactly one zone")


def _trace_of(receiver: OtlpReceiver, invocation_id: str, names: set[str]) -> list[ReceivedSpan]:
    def ready(spans: list[ReceivedSpan]) -> bool:
        ids = {s.trace_id for s in spans if s.attributes.get("stoic.invocation_id") == invocation_id}
        if not ids:
            return False
        got = {s.name for s in spans if s.trace_id in ids}
        return names <= got

    receiver.wait_for(ready, timeout=20)
    ids = {s.trace_id for s in receiver.spans
           if s.attributes.get("stoic.invocation_id") == invocation_id}
    return [s for s in receiver.spans if s.trace_id in ids]


def test_sync_invocation_with_crash_and_retry_is_one_trace(cluster: Cluster, receiver: OtlpReceiver) -> None:
    tracing = _client_tracing(receiver)
    try:
        with Client(cluster.addresses[0]) as probe:
            zone = _hosting_zone(probe, "flaky_one_zone")
        entry = next(n for n in cluster.nodes if n.zone != zone)
        with Client(entry.address, tracing=tracing) as client:
            result = client.invoke("flaky_one_zone", {"x": 1})
        assert result.attempts == 2 and result.placement.zone == zone
        tracing.force_flush()
        spans = _trace_of(receiver, result.invocation_id, {
            "stoic.client.invoke", "stoic.node.receive", "stoic.forward",
            "stoic.worker.execute", "stoic.handler", "user.step"})
        trace_id = spans[0].trace_id
        # the entry node's receive span ends last (after the retry): wait for it too
        def complete(got: list[ReceivedSpan]) -> bool:
            receives = [s for s in got
                        if s.name == "stoic.node.receive" and s.trace_id == trace_id]
            return (any(s.node == entry.node_id for s in receives)
                    and sum(s.zone == zone for s in receives) == 2)

        receiver.wait_for(complete, timeout=20)
        spans = [s for s in receiver.spans if s.trace_id == trace_id]
    finally:
        tracing.shutdown()
    by_id = {s.span_id: s for s in spans}
    assert len({s.trace_id for s in spans}) == 1
    client_span = next(s for s in spans if s.name == "stoic.client.invoke")
    assert client_span.resource.get("stoic.role") == "client"
    receives = [s for s in spans if s.name == "stoic.node.receive"]
    entry_receive = next(s for s in receives if s.node == entry.node_id)
    assert entry_receive.parent_id == client_span.span_id
    assert entry_receive.zone == entry.zone
    # the hosting node's receive spans hang under the entry node's forward spans
    remote = [s for s in receives if s.zone == zone]
    assert len(remote) == 2  # attempt 1 (crashed) and attempt 2
    for r in remote:
        assert by_id[r.parent_id].name == "stoic.forward"
        assert by_id[r.parent_id].node == entry.node_id
    # (an attempt span may repeat when routing waited a heartbeat for membership)
    attempts = {int(s.attributes["stoic.attempt"]) for s in spans if s.name == "stoic.attempt"}
    assert attempts == {1, 2}
    # the worker (a third process) continues the trace under the hosting node
    execute = next(s for s in spans if s.name == "stoic.worker.execute")
    assert execute.resource.get("stoic.role") == "worker"
    assert by_id[execute.parent_id].zone == zone
    handler = next(s for s in spans if s.name == "stoic.handler")
    assert handler.parent_id == execute.span_id
    assert by_id[next(s for s in spans if s.name == "user.step").parent_id].name == "stoic.handler"
    # `stoic trace` (the nodes' local records) shows the same worker spans, same ids
    with Client(entry.address) as plain:
        local = [json.loads(r) for r in plain.trace_spans(result.invocation_id)]
    local_ids = {(r["name"], r["span_id"]) for r in local}
    assert ("stoic.worker.execute", execute.span_id) in local_ids
    assert ("stoic.handler", handler.span_id) in local_ids
    # the crash shows up inside the trace of the request that hit it
    crashed = [s for s in spans if s.name != "child_terminated"
               and any(e.name == "child_terminated" for e in s.events)]
    assert crashed, "no child_terminated event in the trace"
    event = next(e for e in crashed[0].events if e.name == "child_terminated")
    assert "exit status 3" in str(event.attributes.get("stoic.reason"))
    assert int(crashed[0].attributes.get("stoic.attempt", 1)) == 1
    linked = [s for s in receiver.spans if s.name == "child_terminated"
              and (crashed[0].trace_id, crashed[0].span_id) in s.links]
    assert linked, "no child_terminated span linked to the crashed attempt"
    # resource attributes
    for s in spans:
        if s.resource.get("stoic.role") in ("node", "worker"):
            assert s.resource.get("service.name") == "stoic"
            assert s.node and s.zone


def test_async_invocation_is_traced(cluster: Cluster, receiver: OtlpReceiver) -> None:
    tracing = _client_tracing(receiver)
    try:
        with Client(cluster.addresses, tracing=tracing) as client:
            inv = client.invoke_async("hello", {"name": "trace"})
            info = client.wait_invocation(inv, timeout=30)
        assert info.state == InvocationState.SUCCEEDED
        tracing.force_flush()
        spans = _trace_of(receiver, inv, {"stoic.client.invoke_async", "stoic.queue.enqueue",
                                          "stoic.async.run", "stoic.worker.execute"})
    finally:
        tracing.shutdown()
    assert len({s.trace_id for s in spans}) == 1
    assert {s.resource.get("stoic.role") for s in spans} >= {"client", "node", "worker"}


def test_stoic_trace_prints_the_tree(cluster: Cluster) -> None:
    from tests.fixtures.cluster import stoic_cli

    with Client(cluster.addresses) as client:
        result = client.invoke("hello", {"name": "tree"})
    out = stoic_cli("trace", result.invocation_id, "--target", ",".join(cluster.addresses))
    assert out.returncode == 0, out.stderr
    assert "stoic.node.receive" in out.stdout and "ms" in out.stdout


def test_tracing_disabled_starts_no_exporter_thread() -> None:
    import threading

    before = {t.name for t in threading.enumerate()}
    tracing = Tracing.from_env(role="node", node_id="n", zone="z", environ={})
    with tracing.start_span("x", attributes={"stoic.invocation_id": "i"}):
        pass
    after = {t.name for t in threading.enumerate()}
    assert not tracing.exporting
    assert after - before == set()
    assert [r.name for r in tracing.spans_for_invocation("i")] == ["x"]
    tracing.shutdown()


_ = Path
