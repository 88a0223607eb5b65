"""Finished spans to OTLP protobuf bytes (an `ExportTraceServiceRequest`), by hand.

Two steps: `span_item` reads a span into a flat tuple of plain values (cheap; a node does
this where a span ends and hands the tuples to its exporter child), and `Encoder` writes
the protobuf wire format from such tuples (in the exporter child). Why by hand: building
protobuf message objects (the SDK's encoder, or the generated classes) costs tens of
microseconds of Python per span; writing the wire format directly costs about ten here,
because most of a span is the same from call to call — the name and kind, the attribute
keys, the function and node names, the resource — and those parts are encoded once and
cached.

The common case (span items without tracestate, events or links and with plain attribute
values; route and worker items) is also written in C (`_otlp_fast.c`, built where a C
compiler is; `Encoder` uses it when it is there): ~6k instructions for an invocation's
five spans (well under 1 µs) instead of ~6 µs here. It writes the same bytes (a test
compares them) and hands every other item back to the Python code below.

The layout follows opentelemetry-proto's trace.proto (v1). Tests parse the output back
with the generated classes and compare it with the SDK encoder's message. Attribute values
of types OTLP has no field for are sent as their `str()`.
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.trace import SpanContext, SpanKind, Status

_FAST: Any
try:  # the common case of Encoder.add in C, when it could be built (optional)
    from runtime._tracing import _otlp_fast as _FAST
except ImportError:  # no C compiler where Stoic was installed: Python does it all
    _FAST = None

#: Whether the C encoder was built (a node then encodes its spans itself; see shipper).
FAST_ENCODER = _FAST is not None

__all__ = ["ENCODE_ERRORS", "FAST_ENCODER", "Encoder", "SpanLike", "decode_request",
           "encode_request", "expand_item", "item_invocation", "marshal_items", "plain_item",
           "route_item", "span_item", "worker_item"]

#: What `Encoder.add` raises for a malformed item (the spans before it stay added).
ENCODE_ERRORS = (ValueError, TypeError, AttributeError, OverflowError, struct.error)

_PACK_Q = struct.Struct("<Q").pack
_PACK_d = struct.Struct("<d").pack
_PACK_I = struct.Struct("<I").pack
_MASK64 = (1 << 64) - 1
# Span fields 1 and 2 (and 4): tag and length, then the id's big-endian bytes; the
# tags are passed in (_T1, _T2, _T4). Fields 7 and 8: tag, fixed64 little-endian.
_PACK_TRACE_SPAN = struct.Struct(">2sQQ2sQ").pack
_PACK_IDS = struct.Struct(">2sQQ2sQ2sQ").pack
_PACK_TIMES = struct.Struct("<cQcQ").pack
_T1, _T2, _T4, _T7, _T8 = b"\x0a\x10", b"\x12\x08", b"\x22\x08", b"\x39", b"\x41"

# (span kinds: the API's enum starts at INTERNAL=0, OTLP's at UNSPECIFIED=0, INTERNAL=1)
# Span.flags: bit 8 "parent remote-ness known", bit 9 "parent is remote"
_FLAGS_LOCAL = b"\x85\x01" + _PACK_I(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _PACK_I(0x300)


class SpanLike(Protocol):
    """What is read off a span (the SDK's ReadableSpan and Stoic's LeanSpan have it)."""

    @property
    def name(self) -> str: ...
    @property
    def context(self) -> SpanContext | None: ...
    @property
    def parent(self) -> SpanContext | None: ...
    @property
    def kind(self) -> SpanKind: ...
    @property
    def status(self) -> Status: ...
    @property
    def start_time(self) -> int | None: ...
    @property
    def end_time(self) -> int | None: ...
    @property
    def attributes(self) -> Mapping[str, Any] | None: ...
    @property
    def events(self) -> Sequence[Any]: ...
    @property
    def links(self) -> Sequence[Any]: ...
    @property
    def resource(self) -> Any: ...
    @property
    def instrumentation_scope(self) -> Any: ...


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    n &= _MASK64  # negative int64: ten bytes, two's complement
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: varints of 0..16383 (a span's length, a key-value's): a look-up, not a loop
_LENGTHS = _SMALL + [bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(0x80, 0x4000)]


def _len(n: int) -> bytes:
    return _LENGTHS[n] if n < 0x4000 else _varint(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _len(len(payload)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode("utf-8", "replace"))


def _any_value(v: Any) -> bytes:
    """An AnyValue message's body."""
    if isinstance(v, str):
        return _string(b"\x0a", v)
    if isinstance(v, bool):  # before int: bool is an int
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + _varint(v)
    if isinstance(v, float):
        return b"\x21" + _PACK_d(v)
    if isinstance(v, bytes):
        return _field(b"\x3a", v)
    if isinstance(v, list | tuple):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(x)) for x in v))
    return _string(b"\x0a", str(v))


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message's body."""
    return _string(b"\x0a", key) + _field(b"\x12", _any_value(value))


def span_item(span: SpanLike, resource: int) -> tuple[Any, ...]:
    """`span` as a flat 16-tuple of plain values (what a node queues and marshals to its
    exporter child; `Encoder.items` encodes it). `resource`: the number its resource is
    declared under (a `(number, {attributes})` item ahead of it)."""
    ctx = span.context
    parent = span.parent
    attributes = span.attributes
    status = span.status
    scope = span.instrumentation_scope
    return (
        span.name, ctx[0], ctx[1], ctx[4].to_header() if ctx[4] else "",  # type: ignore[index]
        parent[1] if parent is not None else 0,
        bool(parent[2]) if parent is not None else False,
        span.kind._value_, span.start_time or 0, span.end_time or 0,
        (attributes if type(attributes) is dict else dict(attributes or {})),
        [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events]
        if span.events else None,
        [(ln.context.trace_id, ln.context.span_id, ln.context.is_remote,
          dict(ln.attributes or {})) for ln in span.links] if span.links else None,
        status.status_code._value_, status.description or "",
        resource, scope.name if scope is not None else "stoic")


def _plain(value: Any) -> Any:
    if isinstance(value, str | bool | int | float | bytes):
        return value
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return str(value)


def plain_item(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """A `span_item` (or resource declaration) with only plain attribute values (any
    other becomes its str()): for a batch `marshal` refuses."""
    if len(item) == 2:
        return (item[0], {k: _plain(v) for k, v in item[1].items()})
    if len(item) != _SPAN_LEN:  # a compact item: plain values already
        return item
    items = list(item)
    items[9] = {k: _plain(v) for k, v in item[9].items()}
    if item[10]:
        items[10] = [(n, t, {k: _plain(v) for k, v in a.items()}) for n, t, a in item[10]]
    if item[11]:
        items[11] = [(t, s, r, {k: _plain(v) for k, v in a.items()}) for t, s, r, a in item[11]]
    return tuple(items)


def marshal_items(items: list[tuple[Any, ...]]) -> bytes:
    """`items` (span items, compact items, resource declarations) marshalled; attribute
    values of a type `marshal` refuses are sent as their str() (`plain_item`)."""
    try:
        return marshal.dumps(items)
    except ValueError:
        return marshal.dumps([plain_item(item) for item in items])


# --- compact items ------------------------------------------------------------------------
# Spans whose shape Stoic knows, made on every invocation, travel as one flat tuple with no
# attribute dict: fewer objects to build in the node, to marshal and to unmarshal, and an
# encoding from cached parts. `expand_item` gives the span items they stand for (what the
# local recorder shows and the tests compare). Items are told apart by length: 2 a
# resource declaration, 16 a span item, 12 a route, 17 a worker pair.

ATTR_INVOCATION_ID = "stoic.invocation_id"
ATTR_FUNCTION = "stoic.function"
ATTR_ATTEMPT = "stoic.attempt"
ATTR_ROUTE_TARGET = "stoic.route.target"
ATTR_PID = "process.pid"
ROUTE = "stoic.route"
EXECUTE = "stoic.worker.execute"
HANDLER = "stoic.handler"
_SPAN_LEN, _ROUTE_LEN, _WORKER_LEN = 16, 12, 17
_K_INTERNAL, _K_SERVER = 0, 1  # the API's SpanKind values
_CODE_UNSET, _CODE_ERROR = 0, 2  # the API's StatusCode values
_INV_KEY = _string(b"\x0a", ATTR_INVOCATION_ID)  # KeyValue.key


def route_item(trace_id: int, span_id: int, state: str, parent_id: int, start: int, end: int,
               function: str, invocation_id: str, attempt: int, target: str,
               resource: int) -> tuple[Any, ...]:
    """The routing decision's span (`stoic.route`, internal, a local parent) as one item."""
    return ("r", trace_id, span_id, state, parent_id, start, end, function, invocation_id,
            attempt, target, resource)


def worker_item(trace_id: int, state: str, parent_id: int, execute_id: int, handler_id: int,
                execute_start: int, handler_start: int, handler_end: int, execute_end: int,
                function: str, invocation_id: str, attempt: int, pid: int, error: str,
                resource: int) -> tuple[Any, ...]:
    """A worker's `stoic.worker.execute` (server, child of `parent_id`) and
    `stoic.handler` (its child; status ERROR with `error` when not empty) as one item."""
    return ("w", trace_id, execute_id, state, parent_id, handler_id, execute_start,
            handler_start, handler_end, execute_end, function, invocation_id, attempt, pid,
            error, resource, "stoic")


def expand_item(item: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The span items an item stands for: a span item itself, a compact item's spans;
    a resource declaration none."""
    n = len(item)
    if n == _SPAN_LEN:
        return [tuple(item)]
    if n == _ROUTE_LEN:
        (_, trace_id, span_id, state, parent_id, start, end, function, invocation, attempt,
         target, resource) = item
        return [(ROUTE, trace_id, span_id, state, parent_id, False, _K_INTERNAL, start, end,
                 {ATTR_INVOCATION_ID: invocation, ATTR_FUNCTION: function,
                  ATTR_ATTEMPT: attempt, ATTR_ROUTE_TARGET: target},
                 None, None, _CODE_UNSET, "", resource, "stoic")]
    if n == _WORKER_LEN:
        (_, trace_id, execute_id, state, parent_id, handler_id, execute_start, handler_start,
         handler_end, execute_end, function, invocation, attempt, pid, error, resource,
         scope) = item
        attrs = {ATTR_INVOCATION_ID: invocation, ATTR_FUNCTION: function,
                 ATTR_ATTEMPT: attempt, ATTR_PID: pid}
        return [(EXECUTE, trace_id, execute_id, state, parent_id, False, _K_SERVER,
                 execute_start, execute_end, attrs, None, None, _CODE_UNSET, "", resource,
                 scope),
                (HANDLER, trace_id, handler_id, state, execute_id, False, _K_INTERNAL,
                 handler_start, handler_end, dict(attrs), None, None,
                 _CODE_ERROR if error else _CODE_UNSET, error, resource, scope)]
    return []


def item_invocation(item: Sequence[Any]) -> Any:
    """The `stoic.invocation_id` an item's span(s) carry, or None."""
    n = len(item)
    if n == _SPAN_LEN:
        return item[9].get(ATTR_INVOCATION_ID) if item[9] else None
    if n == _ROUTE_LEN:
        return item[8]
    if n == _WORKER_LEN:
        return item[11]
    return None


class Encoder:
    """Encodes span items (`span_item`) into ExportTraceServiceRequest bytes, caching the
    repeated parts (names and kinds, attribute key-value pairs, resources, scopes).

    Not thread-safe; one per exporting process. Resources are declared by number once
    (`(number, {attributes})` items) and remembered. The caches are bounded: each is
    cleared when it reaches `cache_size` entries, so a stream of never-repeating values
    costs memory in proportion to `cache_size`, not to the spans seen.
    """

    def __init__(self, cache_size: int = 4096, *, compiled: bool = True) -> None:
        """`compiled=False`: encode in Python even where the C part (`_otlp_fast`) was
        built (the tests compare the two)."""
        self._cache_size = cache_size
        self._fast = _FAST if compiled else None
        self._attrs: dict[tuple[str, Any, type], bytes] = {}  # -> Span.attributes field
        # (name, kind, status code, description, parent remote) -> those fields
        self._heads: dict[tuple[str, int, int, str, bool], bytes] = {}
        self._resources: dict[int, bytes] = {}  # number -> ResourceSpans.resource field
        self._scopes: dict[str, bytes] = {}  # scope name -> ScopeSpans.scope field
        self._id_prefixes: dict[int, bytes] = {}  # invocation id length -> field prefix
        self._blocks: dict[tuple[str, Any, Any, Any], bytes] = {}  # see _block
        # the request being built: (resource number, scope name) -> Span fields
        self._groups: dict[tuple[int, str], list[bytes]] = {}

    def _attribute(self, key: str, value: Any) -> bytes:
        """A Span.attributes field (tag 9 + KeyValue), cached for plain values."""
        vtype = type(value)
        if vtype is not str and vtype is not int and vtype is not bool and vtype is not float:
            return _field(b"\x4a", _key_value(key, value))
        ck = (key, value, vtype)  # what `span` looks up
        hit = self._attrs.get(ck)
        if hit is None:
            if len(self._attrs) >= self._cache_size:
                self._attrs.clear()
            hit = self._attrs[ck] = _field(b"\x4a", _key_value(key, value))
        return hit

    def _fixed(self, name: str, kind: int, code: int, description: str,
               remote: bool) -> bytes:
        """The fields of a span that repeat from call to call: name (5), kind (6), status
        (15) and flags (16), cached. (Protobuf fields may come in any order.)"""
        key = (name, kind, code, description, remote)
        hit = self._heads.get(key)
        if hit is None:
            if len(self._heads) >= self._cache_size:
                self._heads.clear()
            if not code and not description:
                status = b"\x7a\x00"  # present and empty, as the SDK's encoder sends it
            else:
                body = _string(b"\x12", description) if description else b""
                if 0 < code < 3:
                    body += b"\x18" + _SMALL[code]
                status = _field(b"\x7a", body)
            hit = self._heads[key] = (
                _string(b"\x2a", name) + b"\x30" + _SMALL[kind + 1 if 0 <= kind < 5 else 0]
                + status + (_FLAGS_REMOTE if remote else _FLAGS_LOCAL))
        return hit

    def span(self, item: Sequence[Any]) -> bytes:
        """One Span message's body, from a `span_item` tuple."""
        (name, trace_id, span_id, state, parent_id, parent_remote, kind, start, end,
         attributes, events, links, code, description, _, _) = item
        remote = bool(parent_id and parent_remote)
        fixed = self._heads.get((name, kind, code, description, remote))
        if fixed is None:
            fixed = self._fixed(name, kind, code, description, remote)
        # trace_id (1), span_id (2) and parent_span_id (4) in one pack: ids are their
        # big-endian bytes; the fixed64 times (7, 8) in another
        if parent_id and not state:
            ids = _PACK_IDS(_T1, trace_id >> 64, trace_id & _MASK64, _T2, span_id, _T4,
                            parent_id)
        else:
            ids = _PACK_TRACE_SPAN(_T1, trace_id >> 64, trace_id & _MASK64, _T2, span_id)
            if state:
                ids += _string(b"\x1a", state)
                if parent_id:
                    ids += b"\x22\x08" + parent_id.to_bytes(8, "big")
        times = _PACK_TIMES(_T7, start, _T8, end or start)
        parts = [ids, fixed, times]
        if attributes:
            # the attribute fields (9), cached by key, value and type (a plain loop: in
            # Python 3.11, cheaper here than map/zip or a comprehension)
            attrs = self._attrs
            for key, value in attributes.items():
                vtype = type(value)
                hit = attrs.get((key, value, vtype)) if vtype is str or vtype is int else None
                parts.append(hit if hit is not None else self._attribute(key, value))
        if events:
            for event_name, timestamp, event_attributes in events:
                parts.append(_field(b"\x5a", b"".join([
                    b"\x09", _PACK_Q(timestamp or 0), _string(b"\x12", event_name),
                    *_attribute_fields(event_attributes, b"\x1a")])))
        if links:
            for link_trace, link_span, link_remote, link_attributes in links:
                parts.append(_field(b"\x6a", b"".join([
                    b"\x0a\x10", link_trace.to_bytes(16, "big"),
                    b"\x12\x08", link_span.to_bytes(8, "big"),
                    *_attribute_fields(link_attributes, b"\x22"),
                    b"\x35", _PACK_I(0x300 if link_remote else 0x100)])))
        return b"".join(parts)

    def _scope(self, name: str) -> bytes:
        hit = self._scopes.get(name)
        if hit is None:
            if len(self._scopes) >= 64:
                self._scopes.clear()
            hit = self._scopes[name] = _field(b"\x0a", _string(b"\x0a", name))
        return hit

    def items(self, items: Iterable[Sequence[Any]]) -> tuple[bytes, int]:
        """(an ExportTraceServiceRequest, its span count) from span items and resource
        declarations, spans grouped by resource and scope. A span whose resource number
        was never declared is sent with an empty resource."""
        count = self.add(items)
        return self.take(), count

    def add(self, items: Iterable[Sequence[Any]]) -> int:
        """Encode span items (and take resource declarations) into the request being
        built; the number of spans added. Raises (ValueError, TypeError, ...) on a
        malformed item; the spans before it stay added."""
        groups = self._groups
        count = 0
        if self._fast is not None:
            # the common items in C (the same bytes); the rest below
            count, items = self._fast.add(items, groups)
        for item in items:
            size = len(item)
            if size == _SPAN_LEN:
                body = self.span(item)
                key = (item[14], item[15])
            elif size == 2:
                number, attributes = item
                self._resources[number] = _field(b"\x0a", b"".join(
                    _field(b"\x0a", _key_value(k, v)) for k, v in attributes.items()))
                continue
            elif size == _WORKER_LEN:
                execute, handler = self._worker(item)
                key = (item[15], item[16])
                group = groups.get(key)
                if group is None:
                    group = groups[key] = []
                n = len(execute)
                group += (b"\x12", _LENGTHS[n] if n < 0x4000 else _varint(n), execute)
                body = handler
                count += 1
            elif size == _ROUTE_LEN:
                body = self._route(item)
                key = (item[11], "stoic")
            else:
                raise ValueError(f"not a span item: {size} fields")
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            n = len(body)
            group += (b"\x12", _LENGTHS[n] if n < 0x4000 else _varint(n), body)
            count += 1
        return count

    def _invocation(self, invocation_id: Any) -> bytes:
        """The `stoic.invocation_id` attribute field (not cached: ids do not repeat)."""
        if type(invocation_id) is not str:
            return self._attribute(ATTR_INVOCATION_ID, invocation_id)
        value = invocation_id.encode("utf-8", "replace")
        prefix = self._id_prefixes.get(len(value))
        if prefix is None:
            n = len(value)
            any_value = b"\x0a" + _len(n)
            kv_tail = b"\x12" + _len(len(any_value) + n)
            kv_len = len(_INV_KEY) + len(kv_tail) + len(any_value) + n
            prefix = b"\x4a" + _len(kv_len) + _INV_KEY + kv_tail + any_value
            self._id_prefixes[len(value)] = prefix
        return prefix + value

    def _route(self, item: Sequence[Any]) -> bytes:
        (_, trace_id, span_id, state, parent_id, start, end, function, invocation, attempt,
         target, _) = item
        if state or not parent_id:
            return self.span(expand_item(item)[0])
        fixed = self._heads.get((ROUTE, _K_INTERNAL, _CODE_UNSET, "", False))
        if fixed is None:
            fixed = self._fixed(ROUTE, _K_INTERNAL, _CODE_UNSET, "", False)
        return b"".join((
            _PACK_IDS(_T1, trace_id >> 64, trace_id & _MASK64, _T2, span_id, _T4, parent_id),
            fixed, _PACK_TIMES(_T7, start, _T8, end or start), self._invocation(invocation),
            self._block(ATTR_ROUTE_TARGET, function, attempt, target)))

    def _block(self, last_key: str, function: Any, attempt: Any, last: Any) -> bytes:
        """The attribute fields after the invocation id of a compact item's spans:
        function, attempt and `last_key` (the route's target, the worker's pid), cached."""
        key = (last_key, function, attempt, last)
        hit = self._blocks.get(key)
        if hit is None:
            if len(self._blocks) >= self._cache_size:
                self._blocks.clear()
            hit = self._blocks[key] = b"".join((
                _field(b"\x4a", _key_value(ATTR_FUNCTION, function)),
                _field(b"\x4a", _key_value(ATTR_ATTEMPT, attempt)),
                _field(b"\x4a", _key_value(last_key, last))))
        return hit

    def _worker(self, item: Sequence[Any]) -> tuple[bytes, bytes]:
        (_, trace_id, execute_id, state, parent_id, handler_id, execute_start, handler_start,
         handler_end, execute_end, function, invocation, attempt, pid, error, _, _) = item
        if state or not parent_id:
            execute, handler = expand_item(item)
            return self.span(execute), self.span(handler)
        heads = self._heads
        fixed_execute = heads.get((EXECUTE, _K_SERVER, _CODE_UNSET, "", False))
        if fixed_execute is None:
            fixed_execute = self._fixed(EXECUTE, _K_SERVER, _CODE_UNSET, "", False)
        code = _CODE_ERROR if error else _CODE_UNSET
        fixed_handler = heads.get((HANDLER, _K_INTERNAL, code, error, False))
        if fixed_handler is None:
            fixed_handler = self._fixed(HANDLER, _K_INTERNAL, code, error, False)
        attrs = self._invocation(invocation) + self._block(ATTR_PID, function, attempt, pid)
        high, low = trace_id >> 64, trace_id & _MASK64
        return (
            b"".join((_PACK_IDS(_T1, high, low, _T2, execute_id, _T4, parent_id),
                      fixed_execute, _PACK_TIMES(_T7, execute_start, _T8,
                                                 execute_end or execute_start), attrs)),
            b"".join((_PACK_IDS(_T1, high, low, _T2, handler_id, _T4, execute_id),
                      fixed_handler, _PACK_TIMES(_T7, handler_start, _T8,
                                                 handler_end or handler_start), attrs)))

    def take(self) -> bytes:
        """The ExportTraceServiceRequest of the spans added since the last `take`."""
        return b"".join(self.take_parts())

    def take_parts(self) -> list[bytes]:
        """`take()`'s bytes in parts, to be joined (with a frame header, say) in one copy:
        each ResourceSpans' lengths are summed, not its nested messages concatenated."""
        parts: list[bytes] = []
        for (number, scope_name), fields in self._groups.items():
            scope = self._scope(scope_name)
            scope_spans = len(scope) + sum(map(len, fields))
            resource = self._resources.get(number, b"\x0a\x00")
            head = _len(scope_spans)
            parts += (b"\x0a", _len(len(resource) + 1 + len(head) + scope_spans), resource,
                      b"\x12", head, scope)
            parts += fields
        self._groups = {}
        return parts

    def request(self, spans: Iterable[SpanLike]) -> bytes:
        """An ExportTraceServiceRequest holding `spans` (SDK or Lean spans): for tests and
        one-off use; a node hands `span_item`s to its exporter child instead."""
        numbers: dict[int, int] = {}
        items: list[tuple[Any, ...]] = []
        for span in spans:
            if span.context is None:
                continue
            number = numbers.get(id(span.resource))
            if number is None:
                number = numbers[id(span.resource)] = len(numbers)
                items.append((number, dict(span.resource.attributes)))
            items.append(span_item(span, number))
        return self.items(items)[0]


def _attribute_fields(attributes: Mapping[str, Any] | None, tag: bytes) -> list[bytes]:
    """Attributes of an event (`tag` 0x1a) or a link (0x22), uncached: they are rare."""
    if not attributes:
        return []
    return [_field(tag, _key_value(k, v)) for k, v in attributes.items()]


def encode_request(spans: Iterable[SpanLike]) -> bytes:
    """`Encoder().request(spans)`: for one-off use (tests); a shipper keeps its Encoder."""
    return Encoder().request(spans)


# --- decoding (the local recorder's look-ups) ----------------------------------------------

def _decoded_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "array_value":
        return tuple(_decoded_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return str({kv.key: _decoded_value(kv.value) for kv in value.kvlist_value.values})
    return getattr(value, kind)


def _decoded_attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _decoded_value(kv.value) for kv in key_values}


#: OTLP's Span.flags bit that says the parent is remote.
_FLAG_REMOTE = 0x200


def decode_request(data: bytes | memoryview,
                   resource_number: Callable[[dict[str, Any]], int],
                   ) -> list[tuple[Any, ...]]:
    """The span items (16-tuples, `span_item`'s layout) of an ExportTraceServiceRequest,
    in order; `resource_number` gives the number to put in the items of each resource's
    spans (from its attributes). For look-ups, not for the hot path: it builds the
    protobuf objects. Raises google.protobuf's DecodeError for bytes that are not such a
    request."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    # (any buffer: the stubs say bytes, protobuf takes a memoryview of a frame as well)
    request = ExportTraceServiceRequest.FromString(data)  # type: ignore[arg-type]
    items: list[tuple[Any, ...]] = []
    for resource_spans in request.resource_spans:
        number = resource_number(_decoded_attributes(resource_spans.resource.attributes))
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                events = [(e.name, e.time_unix_nano, _decoded_attributes(e.attributes))
                          for e in span.events]
                links = [(int.from_bytes(ln.trace_id, "big"), int.from_bytes(ln.span_id, "big"),
                          bool(ln.flags & _FLAG_REMOTE), _decoded_attributes(ln.attributes))
                         for ln in span.links]
                items.append((
                    span.name, int.from_bytes(span.trace_id, "big"),
                    int.from_bytes(span.span_id, "big"), span.trace_state,
                    int.from_bytes(span.parent_span_id, "big"),
                    bool(span.flags & _FLAG_REMOTE),
                    max(span.kind - 1, 0),  # OTLP's SPAN_KIND_INTERNAL is 1, the API's 0
                    span.start_time_unix_nano, span.end_time_unix_nano,
                    _decoded_attributes(span.attributes), events or None, links or None,
                    span.status.code, span.status.message, number, scope))
    return items
