"""Finished spans straight to OTLP protobuf bytes (an `ExportTraceServiceRequest`).

Why by hand: the node's spans must be serialized under the node's GIL, on the core that
runs every invocation's event loop. Building protobuf message objects (the SDK's encoder,
or our own through the generated classes) costs tens of microseconds of Python per span;
writing the wire format directly costs a few, because most of a span is the same from call
to call — the name and kind, the attribute keys, the function and node names, the resource
— and those parts are encoded once and cached.

The layout follows opentelemetry-proto's trace.proto (v1): field numbers below. The output
is checked against the generated classes in tests (parse it back and compare).
`encode_request` never raises for a span the SDK could hold: values of unknown types are
sent as their `str()`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

__all__ = ["Encoder", "Entry", "SpanLike", "encode_request"]

_PACK_Q = struct.Struct("<Q").pack
_PACK_d = struct.Struct("<d").pack
_PACK_I = struct.Struct("<I").pack
_MASK64 = (1 << 64) - 1

# span kind: the API's enum starts at INTERNAL=0; OTLP's at UNSPECIFIED=0, INTERNAL=1
_KIND = {kind: kind.value + 1 for kind in SpanKind}
_CODE = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
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


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 0x80 else _varint(n)


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


#: A span ready to be sent: (its resource, its scope's name, the ScopeSpans.spans field).
Entry = tuple[Any, str, bytes]


class Encoder:
    """Encodes spans into ExportTraceServiceRequest bytes, caching the repeated parts.

    In two steps, so that the per-span work can run where the span ends and the batching
    elsewhere: `entry(span)` encodes one span (the cost that counts), `assemble(entries)`
    groups encoded spans by resource and scope into a request (joins of bytes). Each step's
    caches are its own, so one thread may call `entry` while another calls `assemble`;
    two threads calling the same step share dict caches whose single operations are atomic
    in CPython (a lost entry costs a re-encoding, never a wrong byte). The caches are
    bounded: each is cleared when it reaches `cache_size` entries, so a stream of
    never-repeating values costs memory in proportion to `cache_size`, not to the spans
    seen.
    """

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache_size = cache_size
        self._attrs: dict[tuple[str, Any, type], bytes] = {}  # -> Span.attributes field
        self._heads: dict[tuple[str, SpanKind], bytes] = {}  # -> name + kind fields
        self._trace: tuple[int, bytes] = (0, b"")  # the last trace id and its field
        self._resources: dict[int, tuple[Any, bytes]] = {}  # id(resource) -> (it, field)
        self._scopes: dict[str, bytes] = {}  # scope name -> ScopeSpans.scope field

    def _attribute(self, key: str, value: Any) -> bytes:
        """A Span.attributes field (tag 9 + KeyValue), cached for plain values."""
        kind = type(value)
        if kind is not str and kind is not int and kind is not bool and kind is not float:
            return _field(b"\x4a", _key_value(key, value))
        ck = (key, value, kind)
        hit = self._attrs.get(ck)
        if hit is None:
            if len(self._attrs) >= self._cache_size:
                self._attrs.clear()
            hit = self._attrs[ck] = _field(b"\x4a", _key_value(key, value))
        return hit

    def span(self, span: SpanLike) -> bytes:
        """One Span message's body (b"" for a span without a context)."""
        ctx = span.context
        if ctx is None:
            return b""
        # SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, ..)
        trace_id, span_id, _, _, trace_state = ctx[:5]
        last_id, trace_field = self._trace
        if trace_id != last_id:  # the spans of one invocation end close together
            trace_field = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
            self._trace = (trace_id, trace_field)
        name, kind = span.name, span.kind
        head = self._heads.get((name, kind))
        if head is None:
            if len(self._heads) >= self._cache_size:
                self._heads.clear()
            head = self._heads[(name, kind)] = (
                _string(b"\x2a", name) + b"\x30" + _SMALL[_KIND.get(kind, 0)])
        parts = [trace_field, span_id.to_bytes(8, "big")]
        if trace_state:
            parts.append(_string(b"\x1a", trace_state.to_header()))
        parent = span.parent
        remote = False
        if parent is not None:
            if parent[1]:
                parts += (b"\x22\x08", parent[1].to_bytes(8, "big"))
            remote = parent[2]
        start = span.start_time or 0
        parts += (head, b"\x39", _PACK_Q(start), b"\x41", _PACK_Q(span.end_time or start))
        attributes = span.attributes
        if attributes:
            attrs = self._attrs
            for key, value in attributes.items():
                vtype = type(value)
                hit = attrs.get((key, value, vtype)) if vtype is str or vtype is int else None
                parts.append(hit if hit is not None else self._attribute(key, value))
        if span.events:
            for event in span.events:
                parts.append(_field(b"\x5a", b"".join([
                    b"\x09", _PACK_Q(event.timestamp or 0), _string(b"\x12", event.name),
                    *_attribute_fields(event.attributes, b"\x1a")])))
        if span.links:
            for link in span.links:
                lc = link.context
                parts.append(_field(b"\x6a", b"".join([
                    b"\x0a\x10", lc.trace_id.to_bytes(16, "big"),
                    b"\x12\x08", lc.span_id.to_bytes(8, "big"),
                    *_attribute_fields(link.attributes, b"\x22"),
                    b"\x35", _PACK_I(0x300 if lc.is_remote else 0x100)])))
        status = span.status
        if status.status_code is StatusCode.UNSET and not status.description:
            parts.append(b"\x7a\x00")  # present and empty, as the SDK's encoder sends it
        else:
            body = (_string(b"\x12", status.description) if status.description else b"")
            code = _CODE.get(status.status_code, 0)
            if code:
                body += b"\x18" + _SMALL[code]
            parts.append(_field(b"\x7a", body))
        parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def entry(self, span: SpanLike) -> Entry | None:
        """`span` encoded as a ScopeSpans.spans field, with what `assemble` groups it by;
        None for a span without a context."""
        body = self.span(span)
        if not body:
            return None
        scope = span.instrumentation_scope
        return (span.resource, scope.name if scope is not None else "stoic",
                b"\x12" + _len(len(body)) + body)

    def _resource(self, resource: Any) -> bytes:
        """ResourceSpans.resource field for `resource` (an SDK Resource), cached."""
        hit = self._resources.get(id(resource))
        if hit is not None and hit[0] is resource:
            return hit[1]
        attrs = getattr(resource, "attributes", None) or {}
        encoded = _field(b"\x0a", b"".join(
            _field(b"\x0a", _key_value(k, v)) for k, v in attrs.items()))
        if len(self._resources) >= 64:
            self._resources.clear()
        self._resources[id(resource)] = (resource, encoded)  # holds it: the id stays unique
        return encoded

    def _scope(self, name: str) -> bytes:
        hit = self._scopes.get(name)
        if hit is None:
            if len(self._scopes) >= 64:
                self._scopes.clear()
            hit = self._scopes[name] = _field(b"\x0a", _string(b"\x0a", name))
        return hit

    def assemble(self, entries: Iterable[Entry]) -> bytes:
        """An ExportTraceServiceRequest of encoded spans, grouped by resource and scope."""
        groups: dict[tuple[int, str], tuple[Any, list[bytes]]] = {}
        for resource, scope_name, field in entries:
            group = groups.get((id(resource), scope_name))
            if group is None:
                group = groups[(id(resource), scope_name)] = (resource, [])
            group[1].append(field)
        out = []
        for (_, scope_name), (resource, fields) in groups.items():
            scope_spans = _field(b"\x12", self._scope(scope_name) + b"".join(fields))
            out.append(_field(b"\x0a", self._resource(resource) + scope_spans))
        return b"".join(out)

    def request(self, spans: Iterable[SpanLike]) -> bytes:
        """An ExportTraceServiceRequest holding `spans`."""
        return self.assemble(e for e in map(self.entry, spans) if e is not None)


def _attribute_fields(attributes: Mapping[str, Any] | None, tag: bytes) -> list[bytes]:
    """Attributes of an event (`tag` 0x1a) or a link (0x22), uncached: they are rare."""
    if not attributes:
        return []
    return [_field(tag, _key_value(k, v)) for k, v in attributes.items()]


def encode_request(spans: Iterable[SpanLike]) -> bytes:
    """`Encoder().request(spans)`: for one-off use (tests); a shipper keeps its Encoder."""
    return Encoder().request(spans)
