"""Tracing: export to a real OTLP/gRPC receiver, propagation across processes, supervisor
events, the bounded local recorder, the tree view, metrics (issue 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import runtime
from runtime import (
    ATTR_ATTEMPT,
    ATTR_INVOCATION_ID,
    ATTR_REASON,
    EventRecord,
    InvalidTelemetryConfig,
    LocalRecorder,
    Metrics,
    SpanRecord,
    Tracing,
    _tracing,
    extract,
    inject,
    render_tree,
)
from runtime._tracing.otlp_wire import FAST_ENCODER
from runtime._tracing.shipper import SpanShipper
from runtime.wire import WorkerTiming
from tests.fixtures import otlp
from tests.fixtures.otlp import OtlpReceiver

otlp_receiver = otlp.otlp_receiver  # the fixture, shared from tests/fixtures

REPO = Path(__file__).resolve().parents[2]


def _env(rx: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50", **extra}


def _otel_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("Otel")}


# --- export and propagation ---------------------------------------------------------------


def test_spans_cross_a_propagation_boundary_into_one_trace(otlp_receiver: OtlpReceiver) -> None:
    """Two Tracings (as two nodes in two zones) export to the receiver; the second one's
    span is the child of the first's through W3C headers in gRPC-style metadata."""
    node_a = Tracing.from_env(node_id="node-a", zone="zone-a", environ=_env(otlp_receiver))
    node_b = Tracing.from_env(node_id="node-b", zone="zone-b", environ=_env(otlp_receiver))
    try:
        assert node_a.exporting and node_b.exporting
        with node_a.start_span("invoke", kind=SpanKind.SERVER,
                               attributes={ATTR_INVOCATION_ID: "inv-1"}) as root:
            metadata = list(inject().items())  # grpc metadata: a sequence of pairs
        with node_b.start_span("worker.execute", parent=metadata,
                               attributes={ATTR_ATTEMPT: 1}) as child:
            pass
        assert node_a.force_flush() and node_b.force_flush()
        spans = otlp_receiver.wait_for(lambda ss: {"invoke", "worker.execute"} <= {s.name for s in ss})
    finally:
        node_a.shutdown()
        node_b.shutdown()

    by_name = {s.name: s for s in spans}
    invoke, execute = by_name["invoke"], by_name["worker.execute"]
    root_ctx, child_ctx = root.get_span_context(), child.get_span_context()
    assert invoke.trace_id == execute.trace_id == format(root_ctx.trace_id, "032x")
    assert invoke.parent_id is None
    assert execute.parent_id == invoke.span_id == format(root_ctx.span_id, "016x")
    assert execute.span_id == format(child_ctx.span_id, "016x")
    assert invoke.resource["service.name"] == "stoic"
    assert (invoke.node, invoke.zone) == ("node-a", "zone-a")
    assert (execute.node, execute.zone) == ("node-b", "zone-b")
    assert execute.resource["stoic.role"] == "node"
    assert invoke.attributes[ATTR_INVOCATION_ID] == "inv-1"
    assert execute.attributes[ATTR_ATTEMPT] == 1


_CHILD_SCRIPT = """
import os, sys
from runtime import Tracing, ATTR_ATTEMPT
tracing = Tracing.from_env(node_id=sys.argv[1], zone="zone-b", role="worker")
with tracing.start_span("handler", parent={"traceparent": os.environ["STOIC_TEST_TRACEPARENT"]},
                        attributes={ATTR_ATTEMPT: 2}):
    pass
sys.exit(0 if tracing.shutdown(timeout=10.0) else 3)
"""


def test_real_subprocess_continues_the_trace(otlp_receiver: OtlpReceiver) -> None:
    parent = Tracing.from_env(node_id="node-a", zone="zone-a", environ=_env(otlp_receiver))
    try:
        with parent.start_span("node.receive") as span:
            headers = inject(span)
        env = {**os.environ, **_env(otlp_receiver),
               "STOIC_TEST_TRACEPARENT": headers["traceparent"]}
        env.pop("OTEL_SDK_DISABLED", None)
        proc = subprocess.run([sys.executable, "-c", _CHILD_SCRIPT, "worker-7"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        parent.force_flush()
        spans = otlp_receiver.wait_for(lambda ss: {"handler", "node.receive"} <= {s.name for s in ss})
    finally:
        parent.shutdown()
    by_name = {s.name: s for s in spans}
    handler, receive = by_name["handler"], by_name["node.receive"]
    assert handler.trace_id == receive.trace_id
    assert handler.parent_id == receive.span_id
    assert (handler.node, handler.zone, handler.resource["stoic.role"]) == (
        "worker-7", "zone-b", "worker")
    assert handler.attributes[ATTR_ATTEMPT] == 2


def test_supervisor_event_on_the_invocation_span_and_a_linked_span(
        otlp_receiver: OtlpReceiver) -> None:
    tracing = Tracing.from_env(node_id="node-a", zone="zone-a", environ=_env(otlp_receiver))
    try:
        with tracing.start_span("invoke", attributes={ATTR_INVOCATION_ID: "inv-9"}):
            with tracing.start_span("attempt", attributes={ATTR_ATTEMPT: 1}) as attempt:
                pass_through = attempt
        # The supervisor notices the crash in its own task, with no span current.
        with tracing.start_span("attempt", attributes={ATTR_ATTEMPT: 2}) as attempt2:
            pass
        del pass_through, attempt2
        with tracing.start_span("invoke2", attributes={ATTR_INVOCATION_ID: "inv-10"}) as inv:
            span_ctx = inv.get_span_context()
            linked_ctx = tracing.record_supervisor_event(
                inv, "child_terminated", {ATTR_REASON: "killed by SIGKILL"})
        tracing.force_flush()
        spans = otlp_receiver.wait_for(
            lambda ss: sum(s.name in ("invoke2", "child_terminated") for s in ss) == 2)
    finally:
        tracing.shutdown()
    with pytest.raises(ValueError, match="unknown supervisor event"):
        tracing.record_supervisor_event(None, "child_crashed")

    by_name = {s.name: s for s in spans}
    invoke, own = by_name["invoke2"], by_name["child_terminated"]
    assert [(e.name, e.attributes[ATTR_REASON]) for e in invoke.events] == [
        ("child_terminated", "killed by SIGKILL")]
    assert own.links == ((format(span_ctx.trace_id, "032x"), format(span_ctx.span_id, "016x")),)
    assert own.span_id == format(linked_ctx.span_id, "016x")
    assert own.attributes[ATTR_INVOCATION_ID] == "inv-10"
    # Local view: the invocation's trees include the linked span (tagged with the id).
    names = {r.name for r in tracing.spans_for_invocation("inv-10")}
    assert names == {"invoke2", "child_terminated"}


def test_start_span_records_errors_and_cancellation() -> None:
    tracing = Tracing.from_env(environ={})
    with pytest.raises(KeyError), tracing.start_span("boom", attributes={ATTR_INVOCATION_ID: "e"}):
        raise KeyError("missing")
    with pytest.raises(KeyboardInterrupt), tracing.start_span(
            "cut", attributes={ATTR_INVOCATION_ID: "e"}):
        raise KeyboardInterrupt
    by_name = {r.name: r for r in tracing.spans_for_invocation("e")}
    assert by_name["boom"].status == "ERROR"
    assert [e.name for e in by_name["boom"].events] == ["exception"]
    assert by_name["cut"].status_description == "cancelled: KeyboardInterrupt"
    assert by_name["cut"].events == ()


@pytest.mark.parametrize("header", [
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\t",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future-part",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # v00: exactly four
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # uppercase
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # short trace id
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",  # not hex
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    "", "garbage", "---",
])
def test_traceparent_parsing_agrees_with_the_sdk_propagator(header: str) -> None:
    """Stoic parses `traceparent` itself (on every call); it must accept and reject what
    the SDK's W3C propagator does, with the same ids, flags and trace state."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from runtime._tracing.propagation import parse_traceparent

    carrier = {"traceparent": header, "tracestate": "vendor=x1,other=y"}
    sdk = otel_trace.get_current_span(
        TraceContextTextMapPropagator().extract(carrier)).get_span_context()
    ours = parse_traceparent(header, carrier["tracestate"])
    if not sdk.is_valid:
        assert ours is None
        return
    assert ours is not None
    assert (ours.trace_id, ours.span_id, ours.is_remote, ours.trace_flags) == \
        (sdk.trace_id, sdk.span_id, sdk.is_remote, sdk.trace_flags)
    assert ours.trace_state.to_header() == sdk.trace_state.to_header()


def test_propagation_accepts_metadata_shapes_and_never_raises() -> None:
    tracing = Tracing.from_env(environ={})
    assert inject() == {}  # no current span
    with tracing.start_span("root") as span:
        headers = inject()
    tp = headers["traceparent"]
    ctx = span.get_span_context()

    class Metadatum:  # grpc's invocation_metadata() items
        def __init__(self, key: str, value: str | bytes) -> None:
            self.key, self.value = key, value

    carriers: list[Any] = [{"traceparent": tp}, {"TraceParent": tp}, [("traceparent", tp)],
                           [Metadatum("x-bin", b"\x00"), Metadatum("traceparent", tp)]]
    for carrier in carriers:
        with tracing.start_span("child", parent=carrier) as child:
            pass
        assert child.get_span_context().trace_id == ctx.trace_id
        assert child.parent is not None and child.parent.span_id == ctx.span_id  # type: ignore[attr-defined]
    for bad in ({}, {"traceparent": "garbage"}, {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"}):
        assert extract(bad) == {}
        with tracing.start_span("fresh", parent=bad) as fresh:
            pass
        assert fresh.get_span_context().trace_id != ctx.trace_id
        assert fresh.parent is None  # type: ignore[attr-defined]
    # A SpanContext (e.g. kept by a supervisor) works as a parent too.
    with tracing.start_span("from-ctx", parent=ctx) as kid:
        pass
    assert kid.parent.span_id == ctx.span_id  # type: ignore[attr-defined]


# --- disabled / local only ------------------------------------------------------------------


def test_no_endpoint_means_no_exporter_thread_and_a_bounded_recorder() -> None:
    before = _otel_threads()
    threads_before = {t.ident for t in threading.enumerate()}
    tracing = Tracing.from_env(node_id="n", zone="z", environ={}, recorder_capacity=100)
    for i in range(350):
        with tracing.start_span("invoke", attributes={ATTR_INVOCATION_ID: f"inv-{i}"}):
            pass
    assert not tracing.exporting
    assert _otel_threads() == before == set()
    # no thread started (threads of earlier tests may end meanwhile)
    assert {t.ident for t in threading.enumerate()} - threads_before == set()
    recorder = tracing.recorder
    assert len(recorder) == 100
    assert tracing.spans_for_invocation("inv-0") == []
    assert [r.name for r in tracing.spans_for_invocation("inv-349")] == ["invoke"]
    assert tracing.shutdown() and tracing.force_flush()


def test_exporter_thread_exists_only_while_exporting(otlp_receiver: OtlpReceiver) -> None:
    tracing = Tracing.from_env(environ=_env(otlp_receiver), role="client")
    assert "OtelBatchSpanRecordProcessor" in _otel_threads()
    assert tracing.shutdown(timeout=5.0)
    assert "OtelBatchSpanRecordProcessor" not in _otel_threads()


def test_a_node_ships_spans_to_an_exporter_process(otlp_receiver: OtlpReceiver) -> None:
    """A node encodes nothing itself: its spans go to a child process that exports them;
    the thread and the process exist only while exporting."""
    tracing = Tracing.from_env(environ=_env(otlp_receiver), node_id="n1", zone="z",
                               role="node")
    shipper = tracing._export_processor
    assert isinstance(shipper, SpanShipper) and shipper.pid is not None
    child = shipper.pid
    assert "stoic-span-shipper" in {t.name for t in threading.enumerate()}
    with tracing.start_span("outer", attributes={ATTR_INVOCATION_ID: "ship-1"}) as outer:
        outer.add_event("hello", {"k": 1})
        with tracing.start_span("inner"):
            pass
    assert tracing.force_flush(10.0)
    got = otlp_receiver.wait_for(
        lambda spans: {"outer", "inner"} <= {s.name for s in spans}, timeout=10)
    outer_rx = next(s for s in got if s.name == "outer")
    inner_rx = next(s for s in got if s.name == "inner")
    assert inner_rx.parent_id == outer_rx.span_id and inner_rx.trace_id == outer_rx.trace_id
    assert outer_rx.resource.get("service.instance.id") == "n1"
    assert [e.name for e in outer_rx.events] == ["hello"]
    assert tracing.shutdown(timeout=5.0)
    assert "stoic-span-shipper" not in {t.name for t in threading.enumerate()}
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_sdk_disabled_records_nothing() -> None:
    tracing = Tracing.from_env(environ={"OTEL_SDK_DISABLED": "true",
                                        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    with tracing.start_span("x", attributes={ATTR_INVOCATION_ID: "i"}) as span:
        assert inject(span) == {}
    assert not tracing.enabled and not tracing.exporting
    assert len(tracing.recorder) == 0 and _otel_threads() == set()


def test_recorder_evicts_oldest_across_shared_traces() -> None:
    tracing = Tracing.from_env(environ={}, recorder_capacity=3)
    recorder = tracing.recorder
    with tracing.start_span("a", attributes={ATTR_INVOCATION_ID: "one"}):
        with tracing.start_span("a1"):
            pass
    with tracing.start_span("b", attributes={ATTR_INVOCATION_ID: "two"}):
        pass
    assert [r.name for r in recorder.spans_for_invocation("one")] == ["a", "a1"]
    with tracing.start_span("c"):
        pass
    # a1 (ended first) was evicted; the trace of "one" still has its root.
    assert [r.name for r in recorder.spans_for_invocation("one")] == ["a"]
    with tracing.start_span("d"):
        pass
    assert recorder.spans_for_invocation("one") == []
    assert len(recorder) == 3 and recorder.spans_for_invocation("one") == []
    assert [r.name for r in recorder.spans_for_invocation("two")] == ["b"]
    with pytest.raises(ValueError, match="capacity"):
        LocalRecorder(capacity=0)


# --- configuration ------------------------------------------------------------------------


def test_resource_and_sampler_follow_otel_env() -> None:
    tracing = Tracing.from_env(node_id="n1", zone="eu-1a", role="client", environ={
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.instance.id=wrong",
    })
    attrs = tracing.resource.attributes
    assert attrs["service.name"] == "shop"
    assert attrs["deployment.environment"] == "test"
    assert attrs["service.instance.id"] == "n1"  # what the node knows wins
    assert (attrs["cloud.availability_zone"], attrs["stoic.role"]) == ("eu-1a", "client")

    off = Tracing.from_env(environ={"OTEL_TRACES_SAMPLER": "always_off"})
    with off.start_span("x"):
        pass
    assert len(off.recorder) == 0
    with pytest.raises(InvalidTelemetryConfig, match="OTEL_TRACES_SAMPLER"):
        Tracing.from_env(environ={"OTEL_TRACES_SAMPLER": "sometimes"})
    with pytest.raises(InvalidTelemetryConfig, match="OTEL_TRACES_SAMPLER_ARG"):
        Tracing.from_env(environ={"OTEL_TRACES_SAMPLER": "traceidratio",
                                  "OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(InvalidTelemetryConfig, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        Tracing.from_env(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    with pytest.raises(InvalidTelemetryConfig, match="OTEL_BSP_MAX_QUEUE_SIZE='lots'"):
        Tracing.from_env(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                  "OTEL_BSP_MAX_QUEUE_SIZE": "lots"})
    none = Tracing.from_env(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                     "OTEL_TRACES_EXPORTER": "none"})
    assert not none.exporting


@pytest.mark.parametrize("sampler", [
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"])
def test_parentbased_decisions_match_the_sdk_sampler(sampler: str) -> None:
    """Stoic decides parentbased_* without calling the sampler (follow the parent, else
    compare the trace id with the root's bound): same answers as the SDK's sampler, for
    root spans and for remote parents sampled or not."""
    from opentelemetry.sdk.trace import sampling

    from runtime._tracing.config import sampler_from_env
    from runtime._tracing.propagation import to_context

    env = {"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": "0.3"}
    tracing = Tracing.from_env(environ=env)
    reference = sampler_from_env(env)
    rng = __import__("random").Random(7)
    seen = set()
    for i in range(400):
        parent: dict[str, str] | None = None
        if i % 3:
            parent = {"traceparent": f"00-{rng.getrandbits(128) or 1:032x}-"
                                     f"{rng.getrandbits(64) or 1:016x}-0{i % 3 - 1}"}
        with tracing.start_span("s", parent=parent, attach=False) as span:
            ctx = span.get_span_context()
        want = reference.should_sample(to_context(parent) if parent else None, ctx.trace_id,
                                       "s").decision.is_sampled()
        assert ctx.trace_flags.sampled == want, (i, parent)
        seen.add(want)
    if sampler == "parentbased_traceidratio":
        assert seen == {True, False}
    # a sampler of another shape is asked every time
    custom = Tracing(tracing.resource, sampler=sampling.ParentBased(
        sampling.ALWAYS_ON, remote_parent_sampled=sampling.ALWAYS_OFF))
    with custom.start_span("s", parent={"traceparent": f"00-{1:032x}-{2:016x}-01"}) as span:
        assert not span.get_span_context().trace_flags.sampled


def test_a_dropped_trace_stays_dropped_and_records_nothing() -> None:
    """A span the sampler drops carries its trace on as not sampled (in `inject`), its
    children are dropped with the same trace id, and nothing of it is recorded."""

    tracing = Tracing.from_env(environ={"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    with tracing.start_span("root", attach=False) as root:
        assert not root.is_recording()
        ctx = root.get_span_context()
        assert ctx.is_valid and not ctx.trace_flags.sampled
        assert inject(root) == {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-00"}
        with tracing.start_span("child", parent=root, attach=False) as child:
            kid = child.get_span_context()
            assert kid.trace_id == ctx.trace_id and kid.span_id != ctx.span_id
            assert not kid.trace_flags.sampled and not child.is_recording()
            tracing.record_span("route", child, 1, 2, {"k": "v"})
            tracing.record_route(child, 1, 2, "f", "inv", 1, "local")
            tracing.record_worker_spans(child, WorkerTiming(1, 2, 3, 4, 5, 0, 0), "f", "inv", 1)
    # a parent's not-sampled flag is followed the same way
    with tracing.start_span("remote", parent=inject(root), attach=False) as remote:
        assert remote.get_span_context().trace_id == ctx.trace_id
        assert not remote.get_span_context().trace_flags.sampled
    assert len(tracing.recorder) == 0


# --- records and the tree view ------------------------------------------------------------


def test_render_tree_shape() -> None:
    t = "ab" * 16

    def rec(name: str, sid: str, parent: str | None, start: float, end: float, **kw: object) -> SpanRecord:
        return SpanRecord(name=name, trace_id=t, span_id=sid * 16, parent_id=parent and parent * 16,
                          start=start, end=end, **kw)  # type: ignore[arg-type]

    records = [
        rec("worker.execute", "3", "2", 100.002, 100.0045, node="b", zone="zone-b",
            attributes={ATTR_ATTEMPT: 1}, status="ERROR", status_description="InstanceCrashed",
            events=(EventRecord("child_terminated", 100.0045, {ATTR_REASON: "killed by SIGKILL"}),)),
        rec("invoke", "1", None, 100.0, 100.0123, node="a", zone="zone-a"),
        rec("node.receive", "2", "1", 100.001, 100.012, node="a", zone="zone-a"),
        rec("worker.execute", "4", "2", 100.005, 100.011, node="c", zone="zone-c",
            attributes={ATTR_ATTEMPT: 2}),
        rec("store.get", "5", "9", 100.006, 100.007),  # parent recorded elsewhere
    ]
    assert render_tree(records + records[:1]) == "\n".join([
        f"trace {t}",
        "invoke  12.3 ms  [a/zone-a]",
        "└── node.receive  11.0 ms  [a/zone-a]",
        "    ├── worker.execute  attempt=1  2.5 ms  [b/zone-b]  ERROR: InstanceCrashed",
        "    │       ! child_terminated (killed by SIGKILL)",
        "    └── worker.execute  attempt=2  6.0 ms  [c/zone-c]",
        "store.get  1.0 ms  (parent 9999999999999999 not recorded here)",
    ])
    assert render_tree([]) == ""


def test_span_record_round_trips_through_plain_dicts() -> None:
    tracing = Tracing.from_env(node_id="n", zone="z", environ={})
    with tracing.start_span("invoke", attributes={ATTR_INVOCATION_ID: "r", "tags": ["x", "y"]}) as s:
        tracing.record_supervisor_event(s, "start_error", {ATTR_REASON: "bad import"})
    records = tracing.spans_for_invocation("r")
    assert {r.name for r in records} == {"invoke", "start_error"}
    for record in records:
        assert SpanRecord.from_dict(record.to_dict()) == record
    invoke = next(r for r in records if r.name == "invoke")
    assert (invoke.node, invoke.zone, invoke.attributes["tags"]) == ("n", "z", ("x", "y"))
    assert invoke.events[0].attributes == {ATTR_REASON: "bad import", ATTR_INVOCATION_ID: "r"}


# --- metrics ------------------------------------------------------------------------------


def test_metrics_prometheus_endpoint() -> None:
    before = {t.name for t in threading.enumerate()}
    metrics = Metrics.from_env(node_id="n", zone="zone-a", environ={}, prometheus=("127.0.0.1", 0))
    try:
        metrics.invocation("hello", "zone-a", "ok", 3.0)
        metrics.invocation("hello", "zone-a", "crashed", 30.0)
        metrics.restart("hello", "zone-a")
        metrics.retry("hello", "zone-a")
        address = metrics.prometheus_address
        assert address is not None
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        metrics.shutdown()
    lines = set(body.splitlines())
    assert 'stoic_invocations_total{function="hello",outcome="ok",zone="zone-a"} 1' in lines
    assert 'stoic_errors_total{function="hello",outcome="crashed",zone="zone-a"} 1' in lines
    assert 'stoic_restarts_total{function="hello",zone="zone-a"} 1' in lines
    assert 'stoic_retries_total{function="hello",zone="zone-a"} 1' in lines
    assert 'stoic_invocation_duration_ms_count{function="hello",zone="zone-a"} 2' in lines
    assert 'stoic_invocation_duration_ms_sum{function="hello",zone="zone-a"} 33.0' in lines
    assert 'stoic_invocation_duration_ms_bucket{function="hello",zone="zone-a",le="5.0"} 1' in lines
    assert 'stoic_invocation_duration_ms_bucket{function="hello",zone="zone-a",le="+Inf"} 2' in lines
    assert "# TYPE stoic_invocation_duration_ms histogram" in lines
    assert {t.name for t in threading.enumerate()} <= before | {"stoic-metrics-shutdown"}


def test_metrics_without_endpoint_have_no_threads_and_export_over_otlp_with_one(
        otlp_receiver: OtlpReceiver) -> None:
    before = {t.name for t in threading.enumerate()}
    quiet = Metrics.from_env(environ={})
    quiet.invocation("f", "z", "ok", 1.0)
    assert {t.name for t in threading.enumerate()} == before
    assert quiet.prometheus_address is None and quiet.prometheus_text() == ""
    quiet.shutdown()

    metrics = Metrics.from_env(node_id="n", zone="z", environ={
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "600000"})
    try:
        assert "OtelPeriodicExportingMetricReader" in _otel_threads()
        metrics.invocation("f", "z", "error", 2.0)
        metrics.retry("f", "z")
        assert metrics.force_flush()
        otlp_receiver.wait_for_metrics({"stoic.invocations", "stoic.errors", "stoic.retries",
                                        "stoic.invocation.duration"})
    finally:
        assert metrics.shutdown()


def test_public_api_is_exported() -> None:
    for name in _tracing.__all__:
        assert name in runtime.__all__ and getattr(runtime, name) is getattr(_tracing, name)


def test_the_exporter_child_reconnects_to_a_collector_that_came_back() -> None:
    """The child sends encoded bytes through the SDK exporter's channel: after the
    collector restarts (UNAVAILABLE, so the exporter rebuilds its channel and stub), spans
    still arrive, sent the same way."""
    first = OtlpReceiver().start()
    port = first.port
    tracing = Tracing.from_env(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": first.endpoint,
                                        "OTEL_BSP_SCHEDULE_DELAY": "50"},
                               node_id="n1", zone="z", role="node")
    try:
        with tracing.start_span("before"):
            pass
        assert tracing.force_flush(10.0)
        first.wait_for(lambda spans: any(s.name == "before" for s in spans))
        first.stop()
        with tracing.start_span("after"):
            pass
        # nobody answers: the child's export fails (UNAVAILABLE) and waits to retry
        assert not tracing.force_flush(0.5)
        with OtlpReceiver(port) as second:
            got = second.wait_for(lambda spans: any(s.name == "after" for s in spans),
                                  timeout=20)
            assert next(s for s in got if s.name == "after").resource.get(
                "service.instance.id") == "n1"
            # The receiver holds the spans before it answers: stopped now, it could cancel
            # the call in flight, which the child would retry (backoff) against nobody
            # and then not answer shutdown's flush in time. A flush answered means the
            # child's export returned.
            assert tracing.force_flush(10.0)
    finally:
        first.stop()
        assert tracing.shutdown(timeout=5.0)


def test_the_exporter_child_sends_many_frames_in_one_request(
        otlp_receiver: OtlpReceiver) -> None:
    """A node writes a frame every 64 spans; its exporter child sends what arrives within
    the schedule delay as one request, up to the batch size, as the SDK's batch
    processor would."""
    tracing = Tracing.from_env(environ={**_env(otlp_receiver),
                                        "OTEL_BSP_SCHEDULE_DELAY": "2000"},
                               node_id="n1", zone="z", role="node")
    try:
        before = otlp_receiver.exports
        for i in range(640):  # ten frames, well within one batch (8,192 spans by default)
            with tracing.start_span("many", attributes={ATTR_INVOCATION_ID: f"many-{i}"}):
                pass
        assert tracing.force_flush(10.0)
        got = otlp_receiver.wait_for(lambda spans: sum(s.name == "many" for s in spans) == 640)
        assert len({s.attributes[ATTR_INVOCATION_ID] for s in got if s.name == "many"}) == 640
        assert otlp_receiver.exports - before <= 3  # not one request per frame
    finally:
        assert tracing.shutdown(timeout=5.0)


def test_a_dead_exporter_process_costs_spans_not_the_node(otlp_receiver: OtlpReceiver) -> None:
    """SIGKILL the shipper's child: spans are still recorded locally, nothing raises, and
    the shipper stops writing to the dead pipe; shutdown is clean."""
    import signal as _signal

    tracing = Tracing.from_env(environ=_env(otlp_receiver), node_id="n1", zone="z",
                               role="node")
    shipper = tracing._export_processor
    assert isinstance(shipper, SpanShipper) and shipper.pid is not None
    os.kill(shipper.pid, _signal.SIGKILL)
    for i in range(2000):  # enough to fill a batch and make the thread write
        with tracing.start_span("after", attributes={ATTR_INVOCATION_ID: f"dead-{i}"}):
            pass
    tracing.force_flush(2.0)  # nobody acknowledges it: returns within the timeout
    assert [r.name for r in tracing.spans_for_invocation("dead-1999")] == ["after"]
    assert shipper._proc is None  # it noticed the broken pipe
    assert tracing.shutdown(timeout=5.0)


@pytest.mark.parametrize("encode", [
    pytest.param(True, marks=pytest.mark.skipif(not FAST_ENCODER, reason="no C encoder")),
    False], ids=["encoding-feeds-the-recorder", "marshalling"])
def test_the_shipper_never_blocks_and_holds_a_bounded_number_of_spans(encode: bool) -> None:
    """A child that reads nothing (SIGSTOP): the pipe fills, then the backlog, then spans
    are dropped and counted; `put` never blocks, and every span is accounted for
    (written, waiting or dropped). A shipper that encodes feeds the local recorder and
    drops whole frames after handing them over, so the recorder still has the newest
    spans; one that marshals drops new spans, and the recorder keeps its own. A
    SIGKILLed child then costs spans, not the caller."""
    import signal as _signal

    shipper = SpanShipper(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                          max_queue_size=50, schedule_delay_millis=60_000,
                          max_export_batch_size=10, encode=encode)
    assert shipper.pid is not None
    os.kill(shipper.pid, _signal.SIGSTOP)
    try:
        tracing = Tracing(runtime.Tracing.from_env(environ={}).resource,
                          export_processor=shipper, recorder_capacity=1000)
        assert (tracing.recorder._feeder is shipper) is encode
        total = 20_000  # far more than a 1 MiB pipe holds
        for i in range(total):
            with tracing.start_span("x", attributes={"stoic.invocation_id": f"{i:032d}"}):
                pass
        waiting = len(shipper._queue) + shipper._backlog_spans
        assert 0 < waiting <= (50 + 10 if encode else 50)
        assert shipper.dropped > 0 and shipper.sent > 0
        assert shipper.sent + waiting + shipper.dropped == total
        # the recorder has the newest spans, dropped or not (fed: up to a request more)
        assert 1000 <= len(tracing.recorder) <= (1000 + 10 if encode else 1000)
        for i in (total - 1000, total - 1):
            assert [r.name for r in tracing.spans_for_invocation(f"{i:032d}")] == ["x"]
        assert tracing.spans_for_invocation(f"{total - 1011:032d}") == []
    finally:
        os.kill(shipper.pid, _signal.SIGKILL)
        os.kill(shipper.pid, _signal.SIGCONT)
    with tracing.start_span("after the kill"):  # noticed on the next write, or at flush
        pass
    assert not tracing.force_flush(2.0)
    assert shipper._proc is None
    tracing.shutdown(timeout=5.0)


def test_duration_histogram_aggregates_as_the_sdk_does() -> None:
    """Stoic aggregates stoic.invocation.duration itself (the SDK's record() is too slow
    for every call); bucket counts, sum, count, min and max equal the SDK histogram's for
    the same values, bounds included."""
    import random as _random

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    values = [0.0, 5.0, 5.000001, 10.0, 9999.9, 10000.0, 12345.0, 0.3]
    rng = _random.Random(7)
    values += [rng.uniform(0, 12000) for _ in range(500)]
    ours_reader, sdk_reader = InMemoryMetricReader(), InMemoryMetricReader()
    metrics = Metrics(Tracing.from_env(environ={}).resource, readers=(ours_reader,))
    sdk = MeterProvider(metric_readers=[sdk_reader], shutdown_on_exit=False)
    histogram = sdk.get_meter("x").create_histogram("h")
    for v in values:
        metrics.invocation("f", "z", "ok", v)
        histogram.record(v, {"function": "f", "zone": "z"})

    def point(reader: InMemoryMetricReader, name: str) -> Any:
        data = reader.get_metrics_data()
        assert data is not None
        return next(m.data.data_points[0] for rm in data.resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics if m.name == name)

    ours, theirs = point(ours_reader, "stoic.invocation.duration"), point(sdk_reader, "h")
    assert list(ours.bucket_counts) == list(theirs.bucket_counts)
    assert tuple(ours.explicit_bounds) == tuple(theirs.explicit_bounds)
    assert (ours.count, ours.min, ours.max) == (theirs.count, theirs.min, theirs.max)
    assert ours.sum == pytest.approx(theirs.sum)
    assert dict(ours.attributes) == {"function": "f", "zone": "z"}
    metrics.shutdown()
    sdk.shutdown()


def test_a_handler_s_spans_hang_under_its_handler_span_made_only_on_first_use() -> None:
    """`ctx.tracer` in an exporting worker: nothing is made current around the handler, a
    span started with no parent and none current is a child of the attempt's handler span
    (whose id is then chosen and reported), nested spans follow the current one, and an
    explicit parent wins."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from runtime._worker._serve import _CallTracer

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))

    class Spans:
        def real_tracer(self) -> Any:
            return provider.get_tracer("user")

    header = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    unused = _CallTracer(Spans(), header)  # type: ignore[arg-type]
    assert unused.handler_span_id == 0
    tracer = _CallTracer(Spans(), header)  # type: ignore[arg-type]
    assert trace.get_current_span() is trace.INVALID_SPAN
    with tracer.start_as_current_span("step") as step:
        with tracer.start_as_current_span("inner"):
            pass
    other = tracer.start_span("explicit", trace.set_span_in_context(step))
    other.end()
    late = tracer.start_span("second")
    late.end()
    spans = {s.name: s for s in exported.get_finished_spans()}
    handler_id = tracer.handler_span_id
    assert handler_id != 0
    assert spans["step"].parent.span_id == handler_id  # type: ignore[union-attr]
    assert spans["step"].context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert spans["second"].parent.span_id == handler_id  # type: ignore[union-attr]
    assert spans["inner"].parent.span_id == step.get_span_context().span_id  # type: ignore[union-attr]
    assert spans["explicit"].parent.span_id == step.get_span_context().span_id  # type: ignore[union-attr]
    # no trace context: the handler's spans start their own trace
    orphan = _CallTracer(Spans(), {})  # type: ignore[arg-type]
    orphan.start_span("alone").end()
    assert orphan.handler_span_id == 0
    assert next(s for s in exported.get_finished_spans() if s.name == "alone").parent is None


def test_the_exporter_child_s_reader_polls_and_reassembles_frames() -> None:
    """The child reads its pipe without blocking (so the node's writes never have to wake
    it), looking less often while it is empty: frames split across writes come out whole,
    `ready` times out on an empty pipe and sees the end of input, and a malformed header
    ends the stream."""
    import struct
    import time

    from runtime._tracing.shipper import _FrameReader

    read_fd, write_fd = os.pipe()
    try:
        reader = _FrameReader(read_fd, poll=0.005, idle=0.02)
        started = time.monotonic()
        assert reader.ready(0.06) is False  # nothing there: waited, then said no
        assert time.monotonic() - started >= 0.06
        assert reader._wait == 0.02  # empty looks backed off to the idle interval
        frame = struct.pack(">cI", b"M", 5) + b"hello"
        os.write(write_fd, frame[:3])
        assert reader.ready(0.0) is False  # half a header is not a frame
        assert reader._wait == 0.005  # something came: looking often again
        os.write(write_fd, frame[3:] + struct.pack(">cI", b"F", 1) + b"7")
        assert reader.ready(0.0) is True
        frames = iter(reader)
        assert next(frames) == (b"M", b"hello")
        assert next(frames) == (b"F", b"7")
        late = threading.Timer(0.02, lambda: os.write(write_fd, frame))
        late.start()
        assert next(frames) == (b"M", b"hello")  # polled until it came
        late.join()
        os.write(write_fd, b"X\x00\x00\x00\x01z")
        assert list(frames) == []  # a malformed header ends it
    finally:
        os.close(write_fd)
        os.close(read_fd)
    read_fd, write_fd = os.pipe()
    try:
        reader = _FrameReader(read_fd, poll=0.005)
        os.write(write_fd, struct.pack(">cI", b"M", 9) + b"part")
        os.close(write_fd)
        write_fd = -1
        assert reader.ready(5.0) is True  # the end counts as ready, at once
        assert list(reader) == []  # a partial frame at the end is the end
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


@pytest.mark.parametrize("encode", [True, False], ids=["node-encodes", "child-encodes"])
def test_spans_arrive_whether_the_node_or_the_child_encodes(
        otlp_receiver: OtlpReceiver, encode: bool) -> None:
    """Where the C encoder was built, a node writes OTLP requests (`R` frames) and the
    child joins them; otherwise it writes marshalled items (`M` frames) and the child
    encodes them: either way span items and compact items (route, worker) arrive whole."""
    resource = Tracing.from_env(environ={}, node_id="n1", zone="z", role="node").resource
    shipper = SpanShipper(environ=_env(otlp_receiver), encode=encode)
    assert (shipper._encoder is not None) is encode
    tracing = Tracing(resource, export_processor=shipper)
    try:
        with tracing.start_span("invoke", attributes={ATTR_INVOCATION_ID: "enc-1"}) as span:
            span.add_event("odd", {"k": 1})  # an event: the Python part of the encoder
            tracing.record_route(span, 10, 20, "echo", "enc-1", 1, "local")
            tracing.record_worker_spans(span, WorkerTiming(30, 40, 50, 60, 4242), "echo",
                                        "enc-1", 1, "ValueError")
        assert tracing.force_flush(10.0)
        names = {"invoke", "stoic.route", "stoic.worker.execute", "stoic.handler"}
        got = otlp_receiver.wait_for(lambda spans: names <= {s.name for s in spans},
                                     timeout=10)
        by_name = {s.name: s for s in got}
        invoke = by_name["invoke"]
        for name in ("stoic.route", "stoic.worker.execute"):
            assert by_name[name].parent_id == invoke.span_id
            assert by_name[name].trace_id == invoke.trace_id
            assert by_name[name].attributes[ATTR_INVOCATION_ID] == "enc-1"
        handler = by_name["stoic.handler"]
        assert handler.parent_id == by_name["stoic.worker.execute"].span_id
        assert handler.attributes["process.pid"] == 4242
        assert [e.name for e in invoke.events] == ["odd"]
        assert {s.resource.get("service.instance.id") for s in got} == {"n1"}
        assert shipper.dropped == 0
    finally:
        assert tracing.shutdown(timeout=5.0)


def test_the_exporter_child_joins_requests_and_bounds_their_size(
        otlp_receiver: OtlpReceiver) -> None:
    """Driven frame by frame: an `R` frame (a request the node encoded) and an `M` frame
    (marshalled items) go out as one request; a truncated `R` frame is dropped and
    nothing else with it; and a request is sent once it holds MAX_REQUEST bytes, whatever
    its span count, so that no request grows past what a collector accepts."""
    import marshal
    import select
    import struct

    from runtime._tracing import shipper as shipper_module
    from runtime._tracing.otlp_wire import Encoder

    def span(name: str, attributes: dict[str, Any]) -> tuple[Any, ...]:  # a span item
        return (name, 7 << 64 | len(name), len(name), "", 0, False, 0, 1, 2, attributes,
                None, None, 0, "", 0, "test")

    declare = (0, {"service.name": "joined"})

    def r_frame(*items: tuple[Any, ...]) -> bytes:
        request, count = Encoder().items([declare, *items])
        body = struct.pack(">I", count) + request
        return struct.pack(">cI", b"R", len(body)) + body

    def m_frame(*items: tuple[Any, ...]) -> bytes:
        body = marshal.dumps([declare, *items])
        return struct.pack(">cI", b"M", len(body)) + body

    env = {**os.environ, **_env(otlp_receiver, OTEL_BSP_SCHEDULE_DELAY="60000"),
           "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "runtime._tracing.shipper"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    lines = child.stdout

    def flush(token: int) -> None:
        child.stdin.write(b"F" + struct.pack(">I", len(str(token))) + str(token).encode())
        child.stdin.flush()
        ready, _, _ = select.select([lines], [], [], 20.0)
        assert ready and lines.readline() == f"flushed {token}\n".encode()

    try:
        before = otlp_receiver.exports
        child.stdin.write(r_frame(span("from-r", {"a": 1})))
        child.stdin.write(struct.pack(">cI", b"R", 2) + b"\x00\x01")  # too short: dropped
        child.stdin.write(m_frame(span("from-m", {"b": "x"})))
        flush(1)
        got = otlp_receiver.wait_for(
            lambda spans: {"from-r", "from-m"} <= {s.name for s in spans}, timeout=10)
        assert otlp_receiver.exports - before == 1
        assert {s.resource.get("service.name") for s in got} == {"joined"}

        big = "x" * (shipper_module.MAX_REQUEST // 2 + 1024)
        before = otlp_receiver.exports
        for i in range(3):  # the second brings it past MAX_REQUEST: sent then
            child.stdin.write(r_frame(span(f"big-{i}", {"blob": big})))
        flush(2)
        otlp_receiver.wait_for(
            lambda spans: sum(s.name.startswith("big-") for s in spans) == 3, timeout=20)
        assert otlp_receiver.exports - before == 2
    finally:
        child.stdin.close()
        assert child.wait(10.0) == 0
        lines.close()


def test_the_recorder_packs_items_and_keeps_exactly_the_newest() -> None:
    """Items are packed (marshalled) every few dozen, so only the newest few stay objects;
    look-ups unpack and see exactly the newest `capacity` items, compact ones and span
    items with attribute values marshal refuses (recorded as their str) alike."""
    from runtime._tracing.otlp_wire import route_item
    from runtime._tracing.recorder import PACK

    class Odd:
        def __str__(self) -> str:
            return "odd-value"

    from opentelemetry.sdk.resources import Resource

    recorder = LocalRecorder(capacity=1000)
    assert recorder.resources.number(Resource({"service.name": "packed"})) == 0
    for i in range(5000):
        tid = 1 << 80 | i
        if i % 2:
            recorder.add(route_item(tid, 10 + i, "", 7, i, i + 1, "echo", f"inv-{i}", 1,
                                    "local", 0))
        else:
            recorder.add(("span", tid, 10 + i, "", 0, False, 0, i, i + 1,
                          {ATTR_INVOCATION_ID: f"inv-{i}", "odd": Odd()}, None, None, 0,
                          "", 0, "test"))
    assert len(recorder) == 1000
    assert len(recorder._recent) < PACK  # the rest is packed
    assert recorder.spans_for_invocation("inv-3999") == []  # the 1,001st newest
    [oldest] = recorder.spans_for_invocation("inv-4000")  # packed, so marshalled
    assert oldest.name == "span" and oldest.attributes["odd"] == "odd-value"
    [route] = recorder.spans_for_invocation("inv-4999")
    assert route.name == "stoic.route" and route.attributes["stoic.route.target"] == "local"
    recorder.clear()
    assert len(recorder) == 0 and recorder.spans_for_invocation("inv-4000") == []


def test_the_recorder_loses_and_repeats_nothing_under_concurrent_adds() -> None:
    """Four threads add at once (packing happens on whichever thread gets the lock):
    every item is there exactly once."""
    recorder = LocalRecorder(capacity=100_000)
    per_thread = 5000
    start = threading.Barrier(4)

    def add(t: int) -> None:
        start.wait(5.0)
        for i in range(per_thread):
            recorder.add(("s", t << 32 | i, i, "", 0, False, 0, 0, 1, {}, None, None, 0,
                          "", 0, "test"))

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    ids = [item[1] for item in recorder._snapshot()]
    assert len(ids) == 4 * per_thread == len(set(ids)) == len(recorder)


@pytest.mark.skipif(not FAST_ENCODER, reason="no C encoder")
def test_a_recorder_fed_by_the_shipper_shows_what_one_packing_its_own_would() -> None:
    """Exporting with the C encoder, the recorder keeps the shipper's encoded requests
    instead of encoding the spans again, and reads what the shipper still queues:
    look-ups give the same records as a recorder that packs its own items (as OTLP
    requests, or with marshal where the C encoder is not built), for span items
    (events, links, a trace state, an error status, a remote parent), routes and worker
    pairs, whether shipped already or still queued, and the newest `capacity` only."""
    from opentelemetry.sdk.resources import Resource

    from runtime._tracing.otlp_wire import route_item, worker_item

    def items(n: int) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for i in range(n):
            tid, inv = 1 << 100 | i, f"inv-{i}"
            out.append(("stoic.attempt", tid, 1000 + i, "k=v" if i % 3 else "", 77,
                        bool(i % 2), 1 + i % 3, 10 * i, 10 * i + 9,
                        {ATTR_INVOCATION_ID: inv, ATTR_ATTEMPT: 1 + i % 2, "f": 0.5,
                         "ok": True, "many": ("a", "b")},
                        [("child_terminated", 10 * i + 5, {ATTR_REASON: "killed"})],
                        [(tid, 5, True, {"x": "y"})], 2 if i % 4 == 0 else 0,
                        "boom" if i % 4 == 0 else "", 1, "stoic"))
            out.append(route_item(tid, 2000 + i, "", 1000 + i, 10 * i + 1, 10 * i + 2,
                                  "echo", inv, 1, "local", 1))
            out.append(worker_item(tid, "", 1000 + i, 3000 + i, 4000 + i, 10 * i + 3,
                                   10 * i + 4, 10 * i + 6, 10 * i + 7, "echo", inv, 1, 4242,
                                   "ValueError" if i % 5 == 0 else "", 2))
        return out

    def tracing_for(shipper: SpanShipper | None) -> Tracing:
        tracing = Tracing(Resource({"service.name": "stoic", "service.instance.id": "n1"}),
                          export_processor=shipper, recorder_capacity=4000)
        table = tracing.recorder.resources
        assert table.number(Resource({"service.name": "stoic", "stoic.role": "worker",
                                      "service.instance.id": "n1"})) == 2
        return tracing

    shipper = SpanShipper(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                          schedule_delay_millis=60_000)
    fed, own, marshalled = tracing_for(shipper), tracing_for(None), tracing_for(None)
    marshalled.recorder._encoder = None  # packs with marshal, as without the C encoder
    try:
        assert fed.recorder._feeder is shipper and own.recorder._feeder is None

        def emit(item: tuple[Any, ...]) -> None:
            fed.emit(item)
            own.emit(item)
            marshalled.emit(item)

        def same(invocation: str) -> list[Any]:
            got = fed.spans_for_invocation(invocation)
            assert got == own.spans_for_invocation(invocation), invocation
            assert got == marshalled.spans_for_invocation(invocation), invocation
            return got

        for item in items(1):  # fewer than a chunk: only in the shipper's queue
            emit(item)
        assert len(shipper._queue) == 3 and not fed.recorder._chunks
        assert len(same("inv-0")) == 4
        for item in items(1500):  # 1500 x 4 spans: more than the capacity
            emit(item)
        assert shipper._queue  # some spans are still queued, not yet encoded
        # the shipper's frames (the request after the frame's head), the recorder's own
        # requests, marshalled items
        assert fed.recorder._chunks and {at for _, at, _ in fed.recorder._chunks} == {9}
        assert {at for _, at, _ in own.recorder._chunks} == {0}
        assert {at for _, at, _ in marshalled.recorder._chunks} == {None}
        # 4,000 spans: the newest 1,000 calls. A look-up decodes only the requests that
        # name the invocation, then those holding its trace: 30 calls in a row include
        # some whose spans two requests share
        for i in (0, 400, 500, 1000, *range(1470, 1500)):
            got = same(f"inv-{i}")
            assert len(got) == (4 if i >= 500 else 0), i
            if got:
                assert fed.spans_for_trace(got[0].trace_id) == got, i
                assert own.spans_for_trace(got[0].trace_id) == got, i
        # at the boundary, the newest spans of the oldest request kept
        assert len(same("inv-499")) == 0
        [attempt] = [r for r in same("inv-1000") if r.name == "stoic.attempt"]
        assert attempt.status == "ERROR" and attempt.events[0].attributes[ATTR_REASON] == "killed"
        assert attempt.attributes["many"] == ("a", "b") and attempt.node == "n1"
        assert len(own.recorder) == len(fed.recorder) == len(marshalled.recorder) == 4000
        # bounded: chunks beyond the capacity are let go
        assert fed.recorder._chunked < 4000 + 8192
    finally:
        fed.shutdown(timeout=5.0)
        own.shutdown(timeout=5.0)
        marshalled.shutdown(timeout=5.0)


@pytest.mark.skipif(not FAST_ENCODER, reason="no C encoder")
def test_a_fed_recorder_finds_a_trace_s_spans_in_requests_that_do_not_name_the_invocation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A look-up decodes only the requests that name the invocation, then those that hold
    its trace: a span of the trace without the invocation id (a store call, a handler's
    own span), shipped in a later request, is still found, as by a recorder packing its
    own items (which packs them as requests too, and looks them up the same way)."""
    from opentelemetry.sdk.resources import Resource

    from runtime._tracing import recorder as recorder_module

    decoded: list[int] = []
    real_decode = recorder_module.decode_request

    def counting_decode(data: bytes, number: Any) -> list[tuple[Any, ...]]:
        decoded.append(len(data))
        return real_decode(data, number)

    monkeypatch.setattr(recorder_module, "decode_request", counting_decode)

    shipper = SpanShipper(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                          schedule_delay_millis=60_000)
    resource = Resource({"service.name": "stoic"})
    fed = Tracing(resource, export_processor=shipper)
    own = Tracing(resource)

    def emit(item: tuple[Any, ...]) -> None:
        fed.emit(item)
        own.emit(item)

    def span(name: str, trace_id: int, span_id: int, parent: int,
             attrs: dict[str, Any]) -> tuple[Any, ...]:
        return (name, trace_id, span_id, "", parent, False, 0, span_id, span_id + 1, attrs,
                None, None, 0, "", 0, "stoic")

    try:
        emit(span("stoic.node.receive", 7 << 64, 1, 0, {ATTR_INVOCATION_ID: "the-one"}))
        for i in range(200):  # other invocations: the receive span's request is shipped
            emit(span("other", 9 << 64 | i, 100 + i, 0, {ATTR_INVOCATION_ID: f"other-{i}"}))
        emit(span("stoic.store.get", 7 << 64, 2, 1, {}))  # no invocation id
        for i in range(200):  # ... and so is the store span's, another request
            emit(span("other", 9 << 64 | i, 400 + i, 0, {ATTR_INVOCATION_ID: f"later-{i}"}))
        assert len(fed.recorder._chunks) >= 6
        got = fed.spans_for_invocation("the-one")
        # one request names it, two hold its trace: three decoded, not all of them
        assert len(decoded) == 3
        assert [r.name for r in got] == ["stoic.node.receive", "stoic.store.get"]
        # a recorder that packs its own requests (not exporting) looks up the same way
        assert len(own.recorder._chunks) >= 6
        assert got == own.spans_for_invocation("the-one") and len(decoded) == 6
        assert fed.spans_for_trace(7 << 64) == got
        assert fed.spans_for_trace(1 << 130) == [] and fed.spans_for_invocation("none") == []
    finally:
        fed.shutdown(timeout=5.0)
        own.shutdown(timeout=5.0)


@pytest.mark.skipif(not FAST_ENCODER, reason="no C encoder")
def test_a_recorder_marshals_a_chunk_that_does_not_encode() -> None:
    """The recorder packs its items as OTLP requests where the C encoder is built; a
    chunk holding an item no encoder takes (a float start time here) is marshalled
    instead, and look-ups find its spans either way."""
    from runtime._tracing.recorder import LocalRecorder

    recorder = LocalRecorder(capacity=16)  # packs every 2 items

    def span(invocation: str, start: Any) -> tuple[Any, ...]:
        return ("s", 5 << 64, 1, "", 0, False, 0, start, 20, {ATTR_INVOCATION_ID: invocation},
                None, None, 0, "", 0, "stoic")

    for item in (span("a", 10), span("b", 11), span("c", 12.5), span("d", 13)):
        recorder.add(item)
    assert [at for _, at, _ in recorder._chunks] == [0, None]
    found = recorder.spans_for_invocation("c")  # one trace: all four
    assert [r.attributes[ATTR_INVOCATION_ID] for r in found] == ["a", "b", "c", "d"]
    assert len(recorder) == 4


def test_spans_that_end_after_shutdown_are_not_recorded() -> None:
    """`emit` is the recorder's own `add` while tracing runs (a call less per span);
    `shutdown` puts the checking method back: later spans are made, not recorded."""
    tracing = Tracing.from_env(environ={}, recorder_capacity=100)
    assert tracing.emit == tracing.recorder.add
    with tracing.start_span("before", attributes={ATTR_INVOCATION_ID: "one"}):
        pass
    tracing.shutdown()
    with tracing.start_span("after", attributes={ATTR_INVOCATION_ID: "one"}) as span:
        assert span.is_recording()
    assert [r.name for r in tracing.spans_for_invocation("one")] == ["before"]
