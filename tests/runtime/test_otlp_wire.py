"""The hand-written OTLP encoder says exactly what the SDK's encoder says."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from runtime._tracing.lean import LeanSpan
from runtime._tracing.otlp_wire import Encoder, encode_request, plain_item, span_item

NODE = Resource({"service.name": "stoic", "service.instance.id": "a1",
                 "cloud.availability_zone": "a"})
WORKER = NODE.merge(Resource({"stoic.role": "worker"}))
SCOPE = InstrumentationScope("stoic")
TRACE = 0x0AF7651916CD43DD8448EB211C80319C


class _Owner:
    """A LeanSpan's owner that keeps the items it is handed."""

    resource = NODE
    resource_number = 0
    scope = SCOPE

    def __init__(self) -> None:
        self.items: list[tuple[object, ...]] = []

    def emit(self, item: tuple[object, ...]) -> None:
        self.items.append(item)


def _lean(owner: _Owner, name: str, span_id: int, parent_id: int, attributes: dict[str, object],
          ) -> LeanSpan:
    return LeanSpan(owner, name, TRACE, span_id, parent_id, False, SpanKind.INTERNAL,
                    attributes)


def _ctx(span_id: int, *, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(TRACE, span_id, remote, TraceFlags(TraceFlags.SAMPLED), state)


def _spans() -> list[ReadableSpan]:
    root = ReadableSpan(
        name="stoic.node.receive", context=_ctx(1), parent=_ctx(0xB7AD6B7169203331, remote=True),
        resource=NODE, kind=SpanKind.SERVER, start_time=10, end_time=20,
        attributes={"stoic.function": "echo", "stoic.invocation_id": "ab" * 16},
        instrumentation_scope=SCOPE)
    odd = ReadableSpan(
        name="välue ✓", context=_ctx(2, state=TraceState([("vendor", "x1")])), parent=_ctx(1),
        resource=NODE, kind=SpanKind.CLIENT, start_time=2**63, end_time=2**64 - 1,
        attributes={"f": 1.5, "neg": -3, "big": 2**62, "b": True, "no": False, "empty": "",
                    "strs": ("x", "y"), "ints": (1, -2), "long": "z" * 300,
                    "huge": "h" * 20000},  # lengths of one, two and three varint bytes
        events=[Event("child_terminated", {"stoic.reason": "killed by SIGKILL", "n": 2},
                      timestamp=123)],
        links=[Link(_ctx(7, remote=True), {"l": 1}), Link(_ctx(8))],
        status=Status(StatusCode.ERROR, "ValueError: bad"), instrumentation_scope=SCOPE)
    ok = ReadableSpan(
        name="stoic.handler", context=_ctx(3), parent=_ctx(2), resource=WORKER,
        kind=SpanKind.INTERNAL, start_time=11, end_time=19, status=Status(StatusCode.OK),
        attributes={"process.pid": 4242}, instrumentation_scope=InstrumentationScope("user"))
    return [root, odd, ok]


def _flat(request: ExportTraceServiceRequest) -> list[tuple[object, str, object]]:
    return sorted(((rs.resource.SerializeToString(deterministic=True), ss.scope.name,
                    span.SerializeToString(deterministic=True))
                   for rs in request.resource_spans for ss in rs.scope_spans
                   for span in ss.spans), key=repr)


def test_same_message_as_the_sdk_encoder() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert _flat(ours) == _flat(encode_spans(spans))
    # grouped: one ResourceSpans per resource, the scopes inside it
    assert len(ours.resource_spans) == 2


def test_lean_spans_and_the_caches_give_the_same_bytes_again() -> None:
    """A LeanSpan encodes as the equivalent ReadableSpan, and the item it hands its owner
    when it ends is what `span_item` reads off it; a warm encoder (cached names,
    attributes, resources) gives the same bytes as a cold one."""
    owner = _Owner()
    lean = _lean(owner, "stoic.attempt", 5, 1, {"stoic.attempt": 2, "stoic.function": "echo"})
    lean.add_event("waiting for membership")
    lean.add_link(_ctx(7, remote=True), {"l": 1})
    lean.end(lean.start_time + 1000)
    lean.end()  # once
    readable = ReadableSpan(
        name=lean.name, context=lean.context, parent=lean.parent, resource=NODE,
        attributes=lean.attributes, events=lean.events, links=lean.links, kind=lean.kind,
        start_time=lean.start_time, end_time=lean.end_time, instrumentation_scope=SCOPE)
    assert owner.items == [span_item(readable, 0)]
    assert _flat(ExportTraceServiceRequest.FromString(encode_request([lean]))) == \
        _flat(encode_spans([readable]))
    warm = Encoder(cache_size=2)  # tiny: the caches clear and refill along the way
    for _ in range(3):
        assert warm.request([*_spans(), lean]) == Encoder().request([*_spans(), lean])


def test_the_exporter_child_stops_at_a_malformed_frame() -> None:
    """The child reads typed, length-prefixed frames: a batch that does not decode is
    dropped, a malformed header ends it cleanly (exit 0), and a flush token before them
    is answered."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-m", "runtime._tracing.shipper"], env=env, timeout=60,
        input=b"F\x00\x00\x00\x017" + b"M\x00\x00\x00\x03\xff\xfe\xfd"  # not marshal
              + b"X\xff\xff\xff\xffgarbage", capture_output=True)
    assert proc.returncode == 0
    assert proc.stdout == b"flushed 7\n"
    assert b"did not decode" in proc.stderr and b"malformed frame" in proc.stderr


def test_span_items_through_marshal_encode_as_the_sdk_does() -> None:
    """The node's side of the exporter pipe (span -> plain tuple -> marshal) and the child's
    (tuple -> OTLP), across two batches (resources declared once, in the first), give
    the SDK encoder's message, for every field shape."""
    import marshal

    spans = _spans()
    numbers = {id(NODE): 0, id(WORKER): 1}
    items: list[object] = [(0, dict(NODE.attributes)), (1, dict(WORKER.attributes))]
    items += [span_item(s, numbers[id(s.resource)]) for s in spans]
    child = Encoder()
    first, count = child.items(marshal.loads(marshal.dumps(items)))
    assert count == len(spans)
    assert _flat(ExportTraceServiceRequest.FromString(first)) == _flat(encode_spans(spans))
    again, _ = child.items(marshal.loads(marshal.dumps(items[2:])))
    assert again == first


def test_an_attribute_marshal_refuses_is_sent_as_its_str() -> None:
    """A LeanSpan takes any attribute value; the shipper falls back to plain values for a
    batch marshal refuses, and the value arrives as its str()."""
    import marshal

    class Odd:
        def __str__(self) -> str:
            return "odd-value"

    owner = _Owner()
    _lean(owner, "x", 9, 0, {"k": Odd(), "n": [1, Odd()]}).end()
    [item] = owner.items
    with pytest.raises(ValueError):
        marshal.dumps([item])
    body, count = Encoder().items(marshal.loads(marshal.dumps(
        [(0, dict(NODE.attributes)), plain_item(item)])))
    span = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans[0]
    assert count == 1
    assert {kv.key: kv.value.string_value for kv in span.attributes}["k"] == "odd-value"
    assert [v.string_value or v.int_value for v in
            next(kv for kv in span.attributes if kv.key == "n").value.array_value.values] == \
        [1, "odd-value"]


def _sdk_span(item: Any) -> ReadableSpan:
    """The SDK's ReadableSpan for a span item (to encode with the SDK's encoder)."""
    (name, trace_id, span_id, state, parent_id, remote, kind, start, end, attributes, _, _,
     code, description, resource, scope) = item
    trace_state = TraceState.from_header([state]) if state else None
    sampled = TraceFlags(TraceFlags.SAMPLED)
    return ReadableSpan(
        name=name, context=SpanContext(trace_id, span_id, False, sampled, trace_state),
        parent=SpanContext(trace_id, parent_id, remote, sampled, trace_state),
        resource=(NODE, WORKER)[resource], kind=SpanKind(kind), start_time=start,
        end_time=end, attributes=attributes,
        status=Status(StatusCode(code), description or None),
        instrumentation_scope=InstrumentationScope(scope))


@pytest.mark.parametrize("state", ["", "vendor=x1"])
@pytest.mark.parametrize("error", ["", "ValueError"])
def test_compact_route_and_worker_items_encode_as_their_spans(state: str, error: str) -> None:
    """A route item and a worker item (one tuple for a worker's two spans) stand for the
    spans `expand_item` gives: names, kinds, parents, times, attributes (in the order a
    dict of them would have), the handler's error status and the tracestate, encoded
    through marshal as the SDK encodes those spans; the recorder finds them by invocation
    id and trace id and shows the spans."""
    import marshal

    from runtime._tracing.otlp_wire import expand_item, route_item, worker_item
    from runtime._tracing.recorder import LocalRecorder, ResourceTable

    invocation = "cd" * 16
    route = route_item(TRACE, 0x11, state, 0x10, 100, 105, "echo", invocation, 2, "local", 0)
    worker = worker_item(TRACE, state, 0x10, 0x12, 0x13, 110, 112, 118, 120, "echo",
                         invocation, 2, 4242, error, 1)
    spans = expand_item(route) + expand_item(worker)
    assert [s[0] for s in spans] == ["stoic.route", "stoic.worker.execute", "stoic.handler"]
    assert [(s[2], s[4]) for s in spans] == [(0x11, 0x10), (0x12, 0x10), (0x13, 0x12)]
    assert spans[2][9] == {"stoic.function": "echo", "stoic.invocation_id": invocation,
                           "stoic.attempt": 2, "process.pid": 4242}
    assert spans[2][12] == (2 if error else 0) and spans[2][13] == error
    assert plain_item(route) is route and plain_item(worker) is worker
    items = [(0, dict(NODE.attributes)), (1, dict(WORKER.attributes)), route, worker]
    body, count = Encoder().items(marshal.loads(marshal.dumps(items)))
    assert count == 3
    assert _flat(ExportTraceServiceRequest.FromString(body)) == \
        _flat(encode_spans([_sdk_span(s) for s in spans]))
    # the same spans as span items, through the general path: the same request
    general, _ = Encoder().items([*items[:2], *spans])
    assert _flat(ExportTraceServiceRequest.FromString(general)) == \
        _flat(ExportTraceServiceRequest.FromString(body))

    table = ResourceTable()
    table.number(NODE)
    table.number(WORKER)
    recorder = LocalRecorder(10, table)
    recorder.add(route)
    recorder.add(worker)
    recorder.add(route_item(TRACE + 1, 0x21, "", 0x20, 1, 2, "echo", "other", 1, "b1", 0))
    found = recorder.spans_for_invocation(invocation)
    assert [r.name for r in found] == ["stoic.route", "stoic.worker.execute", "stoic.handler"]
    assert found[1].node == "a1" and found[2].attributes["process.pid"] == 4242
    assert found[2].status == ("ERROR" if error else "UNSET")
    assert len(recorder.spans_for_trace(TRACE)) == 3
    assert len(recorder.spans_for_trace(TRACE + 1)) == 1


# --- the C part (runtime/_tracing/_otlp_fast.c) ---------------------------------------------

def _compiled_or_skip() -> None:
    from runtime._tracing import otlp_wire

    if otlp_wire._FAST is None:
        if os.environ.get("CI"):  # CI machines have a compiler: it must have been built
            pytest.fail("runtime._tracing._otlp_fast was not built")
        pytest.skip("the C encoder was not built here (no compiler)")


_u64 = st.integers(min_value=0, max_value=2**64 - 1)
_text = st.text(max_size=12)
_value = st.one_of(_text, st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=False), st.tuples(_text, _text), st.binary(max_size=4))
_span_items = st.tuples(
    _text, st.integers(min_value=0, max_value=2**128 - 1), _u64,
    st.sampled_from(["", "", "", "vendor=x1"]), st.one_of(st.just(0), _u64), st.booleans(),
    st.integers(min_value=-1, max_value=6), _u64, st.one_of(st.just(0), _u64),
    st.dictionaries(_text, _value, max_size=4),
    st.sampled_from([None, None, [], [("ev", 5, {"k": 1})]]),
    st.sampled_from([None, None, [], [(7, 8, True, {})]]),
    st.integers(min_value=0, max_value=2), _text, st.integers(min_value=0, max_value=1),
    st.sampled_from(["stoic", "user"]))
_route_items = st.builds(
    lambda *a: ("r", *a), st.integers(min_value=1, max_value=2**128 - 1), _u64,
    st.sampled_from(["", "", "vendor=x1"]), st.one_of(st.just(0), _u64), _u64, _u64,
    _text, st.one_of(_text, st.integers(0, 2**40)), st.integers(0, 300), _text,
    st.integers(min_value=0, max_value=1))
_worker_items = st.builds(
    lambda *a: ("w", *a, "stoic"), st.integers(min_value=1, max_value=2**128 - 1),
    st.one_of(st.just(0), _u64), st.sampled_from(["", "", "vendor=x1"]),
    st.one_of(st.just(0), _u64), st.one_of(st.just(0), _u64), _u64, _u64, _u64, _u64,
    _text, st.one_of(_text, st.integers(0, 2**40)), st.integers(0, 300),
    st.integers(0, 2**22), st.sampled_from(["", "ValueError", "é"]),
    st.integers(min_value=0, max_value=1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_span_items, _route_items, _worker_items), max_size=8))
def test_the_c_encoder_writes_what_the_python_encoder_writes(items: list[Any]) -> None:
    """For any mix of span, route and worker items (odd strings, ints past 64 bits,
    tracestate, events, links, bytes and tuple values: the C part hands those back), the
    request and the span count equal the Python encoder's; items the C part takes all
    alone give the very same bytes."""
    _compiled_or_skip()
    declared = [(0, dict(NODE.attributes)), (1, dict(WORKER.attributes))]
    fast, python = Encoder(), Encoder(compiled=False)
    try:
        expected, expected_count = python.items([*declared, *items])
    except Exception as exc:  # an item Python cannot encode: nor can the pair
        with pytest.raises(type(exc)):
            fast.items([*declared, *items])
        return
    body, count = fast.items([*declared, *items])
    assert count == expected_count
    assert _flat(ExportTraceServiceRequest.FromString(body)) == \
        _flat(ExportTraceServiceRequest.FromString(expected))
    from runtime._tracing import otlp_wire

    if not otlp_wire._FAST.add(items, {})[1]:  # the C part took every item
        assert body == expected


def test_the_c_encoder_hands_back_what_it_does_not_take() -> None:
    """Resource declarations, malformed items and shapes it does not know come back for
    the Python encoder (which raises for a malformed item, as before)."""
    _compiled_or_skip()
    from runtime._tracing import otlp_wire

    good = ("r", TRACE, 2, "", 1, 10, 20, "echo", "ab" * 16, 1, "local", 0)
    bad_time = ("r", TRACE, 2, "", 1, 10.5, 20, "echo", "ab" * 16, 1, "local", 0)
    odd = ("x", 1, 2)
    declaration = (0, {"service.name": "stoic"})
    groups: dict[Any, list[bytes]] = {}
    count, rest = otlp_wire._FAST.add([declaration, good, bad_time, odd], groups)
    assert count == 1 and rest == [declaration, bad_time, odd]
    assert list(groups) == [(0, "stoic")] and len(groups[(0, "stoic")]) == 1
    with pytest.raises(struct.error):
        Encoder().add([bad_time])


def test_the_c_encoder_with_more_groups_than_it_keeps_slots_for() -> None:
    """A call whose spans belong to more (resource, scope) groups than the C part keeps
    buffers for (8) hands the first groups over mid-call: the same bytes as Python's,
    each group's spans in order, the groups in the order first seen."""
    _compiled_or_skip()
    resources = 11
    declared = [(n, {"service.name": f"svc-{n}"}) for n in range(resources)]
    items = [("r", TRACE + k, 0x100 + k, "", 0x10, 100 + k, 105 + k, "echo", f"inv-{k}", 1,
              "local", (k * 7) % resources) for k in range(40)]
    expected, expected_count = Encoder(compiled=False).items([*declared, *items])
    body, count = Encoder().items([*declared, *items])
    assert count == expected_count == 40
    assert body == expected
    assert len(ExportTraceServiceRequest.FromString(body).resource_spans) == resources


def test_the_c_encoder_called_again_from_inside_a_call_keeps_both_right() -> None:
    """An item whose resource number compares by calling the encoder again (a nested
    call, which must not write into the outer call's buffers): both calls give what the
    Python encoder gives."""
    _compiled_or_skip()
    from runtime._tracing import otlp_wire

    inner_item = ("r", TRACE, 0x21, "", 0x20, 1, 2, "inner", "inv-in", 1, "local", 0)
    inner_results: list[bytes] = []

    class Nosy(int):
        def __eq__(self, other: object) -> bool:
            groups: dict[Any, list[bytes]] = {}
            otlp_wire._FAST.add([inner_item] * 3, groups)
            inner_results.append(b"".join(groups[(0, "stoic")]))
            return int(self) == other

        __hash__ = int.__hash__

    one, also_one = Nosy(1), Nosy(1)  # equal, not the same object: compared
    outer = [("r", TRACE, 0x30 + k, "", 0x10, 10, 20, "echo", "inv-out", 1, "local", res)
             for k, res in enumerate([one, also_one, one, also_one])]
    groups: dict[Any, list[bytes]] = {}
    count, rest = otlp_wire._FAST.add(outer, groups)
    assert count == 4 and rest == [] and inner_results
    python = Encoder(compiled=False)
    python.add(outer)
    assert b"".join(groups[(1, "stoic")]) == b"".join(python._groups[(1, "stoic")])
    python.add([inner_item] * 3)
    assert set(inner_results) == {b"".join(python._groups[(0, "stoic")])}
