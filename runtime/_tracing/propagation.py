"""W3C trace context in and out of gRPC metadata and ExecuteRequest.trace_context.

Only the W3C `traceparent`/`tracestate` headers are carried. The propagator is a module
constant rather than the OpenTelemetry global one, so that no process-wide setting
(`OTEL_PROPAGATORS`, `set_global_textmap`) can change what goes on Stoic's wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime._tracing.lean import LeanSpan, QuietSpan

__all__ = ["Carrier", "ParentLike", "extract", "inject", "parse_traceparent", "remote_parent",
           "to_context"]

_W3C = TraceContextTextMapPropagator()

#: What `extract` accepts: a mapping (CallInfo.metadata, ExecuteRequest.trace_context) or
#: gRPC's `invocation_metadata()` — an iterable of (key, value) pairs or objects with
#: `.key`/`.value`.
Carrier = Mapping[str, str] | Iterable[tuple[str, str | bytes]]

#: Anything that can name a parent span: metadata, an OTel Context, a Span, a SpanContext,
#: or None for "whatever span is current in this task".
ParentLike = Carrier | otel_context.Context | trace.Span | trace.SpanContext | None


def _as_dict(carrier: Carrier) -> dict[str, str]:
    if isinstance(carrier, Mapping):
        items: Iterable[object] = carrier.items()
    else:
        items = carrier
    out: dict[str, str] = {}
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            key, value = item
        else:  # grpc's _Metadatum namedtuple-likes expose .key/.value
            key, value = getattr(item, "key", None), getattr(item, "value", None)
        # Binary metadata (bytes values, "-bin" keys) never carries W3C context.
        if isinstance(key, str) and isinstance(value, str):
            out[key.lower()] = value
    return out


def inject(
    source: otel_context.Context | trace.Span | trace.SpanContext | None = None,
) -> dict[str, str]:
    """Return the W3C headers (`traceparent`, maybe `tracestate`) naming `source` as parent.

    `source` is a Context, a Span, a SpanContext, or None for the current span of the calling
    task. Keys are lowercase, so the dict can be sent as gRPC metadata as-is or stored in
    `ExecuteRequest.trace_context`. Returns `{}` when there is no valid span (tracing
    disabled, or no span active), never raises.
    """
    if type(source) is LeanSpan or type(source) is QuietSpan:  # a node's own span
        flags = "01" if type(source) is LeanSpan else "00"  # recording, or dropped
        out = {"traceparent": f"00-{source.trace_id:032x}-{source.span_id:016x}-{flags}"}
        if source.trace_state:
            out["tracestate"] = source.trace_state.to_header()
        return out
    if source is None or isinstance(source, trace.Span | trace.SpanContext):
        # the common case, on every invocation's path: format the header directly
        if source is None:
            span_ctx = trace.get_current_span().get_span_context()
        elif isinstance(source, trace.Span):
            span_ctx = source.get_span_context()
        else:
            span_ctx = source
        if not span_ctx.is_valid:
            return {}
        out = {"traceparent": f"00-{span_ctx.trace_id:032x}-{span_ctx.span_id:016x}-"
                              f"{int(span_ctx.trace_flags):02x}"}
        if span_ctx.trace_state:
            out["tracestate"] = span_ctx.trace_state.to_header()
        return out
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=to_context(source))
    return carrier


_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str, tracestate: str | None = None) -> trace.SpanContext | None:
    """The remote SpanContext a W3C `traceparent` header names, or None if it is not a
    valid one: `version-traceid-spanid-flags`, lowercase hex of 2, 32, 16 and 2 digits,
    ids not all zero, version not `ff` (a version `00` header has exactly four parts; a
    later version may append more, which are ignored, as the W3C spec asks).
    `tracestate` (the header's value) is attached when given and well-formed.

    The same answers as the SDK's propagator, without its regular expression and Context:
    this runs for every invocation that arrives with a trace (node and worker)."""
    parts = value.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, span_hex, flags_hex = parts[0], parts[1], parts[2], parts[3]
    if (len(version) != 2 or len(trace_hex) != 32 or len(span_hex) != 16
            or len(flags_hex) != 2 or version == "ff" or (version == "00" and len(parts) != 4)
            or not _HEX.issuperset(version + trace_hex + span_hex + flags_hex)):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = None
    if tracestate:
        try:
            state = trace.TraceState.from_header([tracestate])
        except ValueError:  # a malformed tracestate is dropped, the parent kept
            state = None
    return trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(int(flags_hex, 16)),
                             state)


def remote_parent(metadata: Carrier) -> trace.SpanContext | None:
    """The remote parent named by `metadata`'s `traceparent` (and `tracestate`), or None.
    Keys match case-insensitively; gRPC's lowercase dict is read as it is."""
    headers = (metadata if type(metadata) is dict and "traceparent" in metadata
               else _as_dict(metadata))
    value, state = headers.get("traceparent"), headers.get("tracestate")
    if not isinstance(value, str):
        return None
    return parse_traceparent(value, state if isinstance(state, str) else None)


def extract(metadata: Carrier) -> otel_context.Context:
    """Return an OTel Context whose parent is the remote span named in `metadata`.

    Keys are matched case-insensitively. A missing or malformed `traceparent` gives an empty
    Context, so spans started from it become roots of a new trace; never raises.
    """
    parent = remote_parent(metadata)
    if parent is None:
        return otel_context.Context()
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), otel_context.Context())


def to_context(parent: ParentLike) -> otel_context.Context:
    """Turn anything `ParentLike` into an OTel Context (None → the current context)."""
    if parent is None:
        return otel_context.get_current()
    if isinstance(parent, otel_context.Context):
        return parent
    if isinstance(parent, trace.Span):
        return trace.set_span_in_context(parent, otel_context.Context())
    if isinstance(parent, trace.SpanContext):
        return trace.set_span_in_context(trace.NonRecordingSpan(parent), otel_context.Context())
    return extract(parent)
