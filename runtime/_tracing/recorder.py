"""A bounded, local record of finished spans, and a tree view of them for `stoic trace ID`.

Every node keeps its own last N spans so that a trace can be looked at without Jaeger.
It keeps them as span items (`otlp_wire.span_item`'s flat tuples, or a compact item that
stands for a route or a worker's two spans: the same tuples the exporter pipe carries), so a
span that ends costs one tuple whether it is recorded, exported or both, packed a few
dozen at a time into an OTLP request (or with `marshal` where the C encoder was not
built; see `LocalRecorder`). Look-ups turn items
into `SpanRecord`s: small frozen dataclasses of plain values (`to_dict`/`from_dict` give
JSON-safe dicts) that a Control API call can ship between nodes; `render_tree` accepts the
union of records gathered from several nodes.
"""

from __future__ import annotations

import collections
import contextlib
import marshal
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from runtime._tracing.otlp_wire import (
    ATTR_ATTEMPT,
    ATTR_FUNCTION,
    ATTR_INVOCATION_ID,
    ENCODE_ERRORS,
    FAST_ENCODER,
    Encoder,
    decode_request,
    expand_item,
    item_invocation,
    marshal_items,
    span_item,
)

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_FUNCTION",
    "ATTR_INVOCATION_ID",
    "ATTR_REASON",
    "ATTR_ROLE",
    "EventRecord",
    "LocalRecorder",
    "ResourceTable",
    "SpanRecord",
    "render_tree",
]

ATTR_ROLE = "stoic.role"
#: Human-readable reason on supervisor events ("killed by SIGKILL"), shown by render_tree.
ATTR_REASON = "stoic.reason"

AttributeValue = str | bool | int | float | tuple[str | bool | int | float, ...]

_KIND_NAMES = {kind.value: kind.name for kind in SpanKind}
_STATUS_NAMES = {code.value: code.name for code in StatusCode}


class ResourceTable:
    """Resources by number: a span item names its resource by a small int (so that the
    item stays plain values for `marshal`). Numbers are never reused; safe from any
    thread. One per `Tracing`, shared by its recorder and its span shipper."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers: dict[int, int] = {}  # id(resource) -> number (the list holds it)
        self.resources: list[Resource] = []

    def number(self, resource: Resource) -> int:
        known = self._numbers.get(id(resource))
        if known is not None:
            return known
        with self._lock:
            known = self._numbers.get(id(resource))
            if known is None:
                known = len(self.resources)
                self.resources.append(resource)  # before the number is published
                self._numbers[id(resource)] = known
            return known

    def __len__(self) -> int:
        return len(self.resources)


def _plain(attrs: Mapping[str, Any] | None) -> dict[str, AttributeValue]:
    if not attrs:
        return {}
    return {k: (tuple(v) if isinstance(v, list | tuple) else v) for k, v in attrs.items()}


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A span event: name, time (unix seconds) and attributes."""

    name: str
    time: float
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One finished span as plain values. Ids are lowercase hex; times are unix seconds.

    `node` and `zone` come from the recording process's resource (`service.instance.id`,
    `cloud.availability_zone`); `links` are (trace_id, span_id) pairs.
    """

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: float
    end: float
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    events: tuple[EventRecord, ...] = ()
    status: str = "UNSET"
    status_description: str = ""
    kind: str = "INTERNAL"
    node: str = ""
    zone: str = ""
    service: str = ""
    links: tuple[tuple[str, str], ...] = ()

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) * 1000.0

    @classmethod
    def from_item(cls, item: Sequence[Any], resources: ResourceTable) -> SpanRecord:
        """A record from a span item (`otlp_wire.span_item`'s tuple); its resource number
        is looked up in `resources`."""
        (name, trace_id, span_id, _state, parent_id, _remote, kind, start, end, attributes,
         events, links, status, description, resource, _scope) = item
        res = resources.resources[resource].attributes
        return cls(
            name=name,
            trace_id=format(trace_id, "032x"),
            span_id=format(span_id, "016x"),
            parent_id=format(parent_id, "016x") if parent_id else None,
            start=start / 1e9,
            end=(end or start) / 1e9,
            attributes=_plain(attributes),
            events=tuple(EventRecord(n, t / 1e9, _plain(a)) for n, t, a in events or ()),
            status=_STATUS_NAMES.get(status, "UNSET"),
            status_description=description,
            kind=_KIND_NAMES.get(kind, "INTERNAL"),
            node=str(res.get("service.instance.id", "")),
            zone=str(res.get("cloud.availability_zone", "")),
            service=str(res.get("service.name", "")),
            links=tuple((format(t, "032x"), format(sid, "016x")) for t, sid, _r, _a in links or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tuples become lists)."""
        return {
            "name": self.name,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "start": self.start,
            "end": self.end,
            "attributes": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in self.attributes.items()},
            "events": [
                {"name": e.name, "time": e.time, "attributes": dict(e.attributes)}
                for e in self.events
            ],
            "status": self.status,
            "status_description": self.status_description,
            "kind": self.kind,
            "node": self.node,
            "zone": self.zone,
            "service": self.service,
            "links": [list(link) for link in self.links],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpanRecord:
        """Inverse of `to_dict`. Raises KeyError/TypeError/ValueError on a malformed dict."""
        return cls(
            name=str(data["name"]),
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            parent_id=None if data.get("parent_id") is None else str(data["parent_id"]),
            start=float(data["start"]),
            end=float(data["end"]),
            attributes=_plain(data.get("attributes")),
            events=tuple(
                EventRecord(str(e["name"]), float(e["time"]), _plain(e.get("attributes")))
                for e in data.get("events", ())
            ),
            status=str(data.get("status", "UNSET")),
            status_description=str(data.get("status_description", "")),
            kind=str(data.get("kind", "INTERNAL")),
            node=str(data.get("node", "")),
            zone=str(data.get("zone", "")),
            service=str(data.get("service", "")),
            links=tuple((str(t), str(s)) for t, s in data.get("links", ())),
        )


#: Items per packed chunk of a LocalRecorder (fewer for a small capacity).
PACK = 64


class SpanFeeder(Protocol):
    """A source of span items that hands a LocalRecorder encoded requests (a shipper)."""

    def holding(self) -> AbstractContextManager[object]:
        """Held, no request is on its way to the recorder."""
        ...

    @property
    def queue(self) -> collections.deque[tuple[Any, ...]]:
        """The items not yet handed over, oldest first (read while `holding`)."""
        ...


def _end_time(span: tuple[Any, ...]) -> int:
    return span[8]  # type: ignore[no-any-return]


def _copy(items: collections.deque[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A list of a deque that other threads may append to meanwhile."""
    for _ in range(100):  # a writer appending meanwhile makes list() raise; retry
        try:
            return list(items)
        except RuntimeError:
            continue
    return []


class LocalRecorder(SpanProcessor):
    """The last `capacity` finished spans.

    `add` appends an item to a deque of recent ones; every `PACK` items, they are packed
    into one bytes object in a bounded deque of chunks, and the items themselves are
    freed at once: an ExportTraceServiceRequest written by the C encoder where it was
    built (`otlp_wire.FAST_ENCODER`; ~6k instructions an invocation, where `marshal`
    took ~13k, and a look-up can skip a request that does not name what it looks for),
    else `marshal`led items (also for a chunk with an item no encoder takes). Why not
    keep the items: a node records every
    invocation's spans, and thousands of small objects kept alive for thousands of
    invocations and then freed oldest first hand every later allocation of their sizes
    cold memory (pymalloc reuses the most recently freed block). Packed, the same spans
    take a third of the memory, in blocks of a few kB, and the node's small objects
    stay in cache: ~49 fewer last-level cache misses per invocation with a 10,000-item
    recorder (cachegrind, 2 MiB simulated), for ~0.6 µs of `marshal` per invocation (in
    a loop; ~2 % of the node's py-spy samples under load), less when encoding.

    When the node exports spans and encodes them itself (a `SpanShipper` with the C
    encoder), the recorder does not pack them again: the shipper hands it each frame it
    made (`add_request`, ~64 spans), which is kept as it is and decoded only by a
    look-up, and the spans still queued in the shipper are read from its queue. One
    serialization instead of two. Spans are kept locally even when the collector is down
    (the shipper drops frames after handing them over, not spans before).

    Memory is bounded (chunks and recent items hold at most `capacity` items plus two
    chunks; an item is a span or a compact item standing for one or two); look-ups see
    exactly the newest `capacity` spans. `add` is safe from any thread: a deque append,
    and packing under a lock that nobody waits for (a thread that finds it taken leaves
    the packing to the holder or to the next `add`). `on_end` (an SDK span) reads the
    span into an item first. The look-ups (`stoic trace`, rare) unpack every marshalled
    chunk, decode only the requests that name the invocation or hold its traces (a
    bytes search first), and make `SpanRecord`s then.
    """

    def __init__(self, capacity: int = 10_000, resources: ResourceTable | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"LocalRecorder capacity must be >= 1, got {capacity!r}")
        self._capacity = capacity
        self._pack_size = max(1, min(PACK, capacity // 8))
        self.resources = resources if resources is not None else ResourceTable()
        self._recent: collections.deque[tuple[Any, ...]] = collections.deque()
        # chunks, oldest first: (items in it, where its OTLP request starts in body or None
        # for marshalled items, body)
        self._chunks: collections.deque[tuple[int, int | None, bytes]] = collections.deque()
        self._chunked = 0  # items in _chunks
        self._lock = threading.Lock()  # packing, and reading a consistent view
        self._feeder: SpanFeeder | None = None
        self._numbers: dict[tuple[tuple[str, str], ...], int] = {}  # decoded resources
        # packing: OTLP by the C encoder where it was built (cheaper than marshal, and
        # look-ups can skip what does not name the invocation), else marshal
        self._encoder = Encoder() if FAST_ENCODER else None
        self._declared = 0  # resources[:_declared] were declared to _encoder

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        """Spans held (unpacking and decoding them all: for tests and diagnostics)."""
        return len(self._snapshot())

    def add(self, item: tuple[Any, ...]) -> None:
        """Record one span item (its resource numbered in `resources`)."""
        recent = self._recent
        recent.append(item)
        if len(recent) >= self._pack_size and self._lock.acquire(blocking=False):
            try:
                self._pack()
            finally:
                self._lock.release()

    def _pack(self) -> None:
        recent = self._recent
        size = self._pack_size
        while len(recent) >= size:
            batch = [recent.popleft() for _ in range(size)]
            encoded = self._encode(batch) if self._encoder is not None else None
            if encoded is not None:
                self._keep(encoded[1], 0, encoded[0])
            else:
                self._keep(size, None, marshal_items(batch))

    def _encode(self, batch: list[tuple[Any, ...]]) -> tuple[bytes, int] | None:
        """(an ExportTraceServiceRequest, its span count) of `batch`, resources declared
        first; None if an item does not encode (the batch is then marshalled)."""
        encoder = self._encoder
        assert encoder is not None
        table = self.resources.resources
        known = len(table)
        try:
            if known > self._declared:
                encoder.add([(n, dict(table[n].attributes))
                             for n in range(self._declared, known)])
                self._declared = known
            count = encoder.add(batch)
            return encoder.take(), count
        except ENCODE_ERRORS:
            encoder.take()  # what was added before the item that did not encode
            return None

    def _keep(self, count: int, start: int | None, body: bytes) -> None:
        """Append a chunk (`start`: where its request starts in `body`; None for marshalled
        items), then drop the oldest ones the newer chunks make unnecessary (under
        `_lock`)."""
        chunks = self._chunks
        chunks.append((count, start, body))
        self._chunked += count
        while self._chunked - chunks[0][0] >= self._capacity:
            self._chunked -= chunks.popleft()[0]

    def fed_by(self, feeder: SpanFeeder) -> None:
        """Take the spans of `feeder` (a shipper that encodes): it hands over each request
        it made with `add_request`, and look-ups read what it still queues."""
        self._feeder = feeder

    def add_request(self, request: bytes, spans: int, start: int = 0) -> None:
        """Record the `spans` spans of an encoded ExportTraceServiceRequest,
        `request[start:]` (a shipper hands over its frame, which is kept as it is)."""
        if spans > 0:
            with self._lock:
                self._keep(spans, start, request)

    def _resource_number(self, attributes: dict[str, Any]) -> int:
        """The number of the resource with `attributes` (a decoded request's), added to
        `resources` if none has them."""
        key = tuple(sorted((k, repr(v)) for k, v in attributes.items()))
        number = self._numbers.get(key)
        if number is None:
            table = self.resources
            number = next((i for i, r in enumerate(table.resources)
                           if dict(r.attributes) == attributes), None)
            if number is None:
                number = table.number(Resource(attributes))
            self._numbers[key] = number
        return number

    # --- SpanProcessor ---

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        # fed by a shipper, which gets the same SDK span and hands it over encoded
        if span.context is not None and self._feeder is None:
            self.add(span_item(span, self.resources.number(span.resource)))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # --- queries ---

    def _snapshot(self, needles: tuple[bytes, ...] = ()) -> list[tuple[Any, ...]]:
        """The newest `capacity` spans as span items (compact items expanded), oldest
        first. With `needles`, an encoded request in which none of them occurs is left
        out undecoded (its span count is known): a look-up decodes the few requests that
        can matter, not all of them (~100 ms for 10,000 spans, on the node's event
        loop)."""
        feeder = self._feeder
        with feeder.holding() if feeder is not None else contextlib.nullcontext():
            # a feeder hands over requests under its lock: none is between its queue
            # and this recorder now
            with self._lock:
                chunks = list(self._chunks)
                recent = _copy(self._recent)
            queued = _copy(feeder.queue) if feeder is not None else []
        # newest first, until `capacity` spans
        taken: list[list[tuple[Any, ...]]] = []
        need = self._capacity
        for part in (queued, recent):
            if need > 0 and part:
                spans = [span for item in part for span in expand_item(item)][-need:]
                taken.append(spans)
                need -= len(spans)
        for count, start, body in reversed(chunks):
            if need <= 0:
                break
            if start is not None:
                # (a needle found across the frame's head and its request costs a decode)
                if needles and not any(needle in body for needle in needles):
                    need -= count
                    continue
                spans = decode_request(memoryview(body)[start:], self._resource_number)
                if len(spans) > need:
                    # a request groups its spans by resource: its newest are the
                    # last to end, not its last
                    spans = sorted(spans, key=_end_time)[-need:]
            else:
                spans = [span for item in marshal.loads(body)
                         for span in expand_item(item)][-need:]
            taken.append(spans)
            need -= len(spans)
        return [span for spans in reversed(taken) for span in spans]

    def _records(self, spans: Iterable[tuple[Any, ...]]) -> list[SpanRecord]:
        return sorted((SpanRecord.from_item(span, self.resources) for span in spans),
                      key=lambda r: r.start)

    def spans_for_trace(self, trace_id: str | int) -> list[SpanRecord]:
        """All recorded spans of one trace (hex string or int id), ordered by start time."""
        tid = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
        if not 0 < tid < 1 << 128:
            return []
        spans = self._snapshot((tid.to_bytes(16, "big"),))  # a request holds it as is
        return self._records(span for span in spans if span[1] == tid)

    def spans_for_invocation(self, invocation_id: str) -> list[SpanRecord]:
        """Every recorded span of every trace in which some span carries
        `stoic.invocation_id == invocation_id` (so child spans without the attribute —
        handler, store calls — and linked supervisor spans tagged with it are included).
        Ordered by start time; `[]` if nothing is known here."""
        # a request holds the id as UTF-8, and the trace ids as 16 bytes each
        spans = self._snapshot((invocation_id.encode(),))
        traces = {span[1] for span in spans if item_invocation(span) == invocation_id}
        if traces and (self._feeder is not None or self._encoder is not None):
            # the traces' other spans, in requests the first look skipped
            spans = self._snapshot(tuple(t.to_bytes(16, "big") for t in traces))
        return self._records(span for span in spans if span[1] in traces)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._chunked = 0
            self._recent.clear()


def _label(record: SpanRecord) -> str:
    parts = [record.name]
    attempt = record.attributes.get(ATTR_ATTEMPT)
    if attempt is not None:
        parts.append(f"attempt={attempt}")
    parts.append(f"{record.duration_ms:.1f} ms")
    where = "/".join(p for p in (record.node, record.zone) if p)
    pid = record.attributes.get("process.pid")
    if pid is not None:  # a span of a function actor process
        where = f"{where} pid {pid}" if where else f"pid {pid}"
    if where:
        parts.append(f"[{where}]")
    if record.status == "ERROR":
        parts.append("ERROR" + (f": {record.status_description}"
                                if record.status_description else ""))
    return "  ".join(parts)


def _event_line(event: EventRecord) -> str:
    reason = event.attributes.get(ATTR_REASON)
    if reason is not None:
        detail = str(reason)
    elif event.name == "exception":  # the type and message; the stack trace is noise here
        kind = str(event.attributes.get("exception.type", "")).rsplit(".", 1)[-1]
        detail = f"{kind}: {event.attributes.get('exception.message', '')}"
    else:
        detail = ", ".join(f"{k}={v}" for k, v in event.attributes.items()
                           if k != ATTR_INVOCATION_ID)
    return f"! {event.name}" + (f" ({detail})" if detail else "")


def _walk(
    node: SpanRecord,
    children: Mapping[str, Sequence[SpanRecord]],
    lines: list[str],
    prefix: str,
    last: bool,
    top: bool,
    depth: int,
) -> None:
    branch = "" if top else ("└── " if last else "├── ")
    label = _label(node)
    if top and node.parent_id is not None:
        label += f"  (parent {node.parent_id} not recorded here)"
    lines.append(prefix + branch + label)
    inner = prefix if top else prefix + ("    " if last else "│   ")
    kids = sorted(children.get(node.span_id, ()), key=_start)
    for ev in node.events:
        lines.append(inner + ("│   " if kids else "    ") + _event_line(ev))
    if depth >= 256:  # bounded: a cycle in hand-made records cannot recurse forever
        return
    for i, kid in enumerate(kids):
        _walk(kid, children, lines, inner, i == len(kids) - 1, False, depth + 1)


def _start(record: SpanRecord) -> float:
    return record.start


def render_tree(records: Iterable[SpanRecord]) -> str:
    """Render spans as one tree per trace, children ordered by start time, durations in ms.

    Events appear under their span as `! name (reason)`. A span whose parent is not among
    `records` (recorded on a node that was not asked, or a remote caller) is shown as a root
    marked `(parent ...)`. Duplicate records (same span id from two sources) are shown once.
    Never raises on odd input; returns "" for no records.
    """
    unique: dict[str, SpanRecord] = {}
    for r in records:
        unique.setdefault(r.span_id, r)
    by_trace: dict[str, list[SpanRecord]] = {}
    for r in unique.values():
        by_trace.setdefault(r.trace_id, []).append(r)

    lines: list[str] = []
    for trace_id, spans in sorted(by_trace.items(), key=lambda kv: min(map(_start, kv[1]))):
        ids = {r.span_id for r in spans}
        children: dict[str, list[SpanRecord]] = {}
        roots: list[SpanRecord] = []
        for r in spans:
            if r.parent_id is None or r.parent_id not in ids:
                roots.append(r)
            else:
                children.setdefault(r.parent_id, []).append(r)
        lines.append(f"trace {trace_id}")
        for root in sorted(roots, key=_start):
            _walk(root, children, lines, "", True, True, 0)
    return "\n".join(lines)
