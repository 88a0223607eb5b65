"""`LeanSpan`: the spans a node makes on every invocation's path, at a fraction of the
SDK's cost.

A node makes three spans per invocation (receive, attempt, route) and records two more for
the worker. With the SDK's `Span` (locks, bounded attribute containers, processor
fan-out) that was about a tenth of the node's CPU time per call even when nothing is
exported. A `LeanSpan` implements the OpenTelemetry API's `Span` (so context propagation,
`get_current_span`, `inject` and every caller treat it as any span) and reads like the
SDK's `ReadableSpan` (`context`, `parent`, `attributes`, `events`, ...). It keeps its ids
as plain ints (the `SpanContext` is built only if someone asks for it), and when it ends
it hands its owner one span item (`otlp_wire.span_item`'s flat tuple), which the local
recorder keeps and the span shipper sends as they are.

Not thread-safe for concurrent writers to one span (the node's spans are written by the
task that owns them), and not bounded the way the SDK bounds attributes: Stoic's own
spans carry a handful of attributes and events.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util import types

__all__ = ["LeanSpan", "QuietSpan", "SpanOwner"]

_UNSET = Status(StatusCode.UNSET)
_UNSET_CODE = StatusCode.UNSET._value_
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class SpanOwner(Protocol):
    """Where a LeanSpan's item goes when it ends (a `Tracing`)."""

    @property
    def resource(self) -> Resource: ...
    @property
    def resource_number(self) -> int: ...
    @property
    def scope(self) -> InstrumentationScope: ...
    def emit(self, item: tuple[Any, ...]) -> None: ...


class LeanSpan(trace.Span):
    """A recording (so sampled) span that hands its owner one span item when it ends
    (once)."""

    __slots__ = ("name", "trace_id", "span_id", "trace_state", "parent_id", "parent_remote",
                 "kind", "attributes", "events", "links", "status", "start_time", "end_time",
                 "_owner", "_context")

    def __init__(
        self,
        owner: SpanOwner,
        name: str,
        trace_id: int,
        span_id: int,
        parent_id: int,
        parent_remote: bool,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link] = (),
        trace_state: TraceState | None = None,
        start_time: int = 0,
    ) -> None:
        """`parent_id` 0: a root span. `start_time` (unix ns): 0 for now."""
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.trace_state = trace_state
        self.kind = kind
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.events: list[Event] | tuple[()] = ()  # a list once there is one
        self.links: list[Link] | tuple[()] = list(links) if links else ()
        self.status = _UNSET
        self.start_time = start_time or time.time_ns()
        self.end_time: int | None = None
        self._owner = owner
        self._context: SpanContext | None = None

    # --- what ReadableSpan has ---

    @property
    def context(self) -> SpanContext:
        return self.get_span_context()

    @property
    def parent(self) -> SpanContext | None:
        if not self.parent_id:
            return None
        return SpanContext(self.trace_id, self.parent_id, self.parent_remote, _SAMPLED,
                           self.trace_state)

    @property
    def resource(self) -> Resource:
        return self._owner.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._owner.scope

    # --- the API ---

    def get_span_context(self) -> SpanContext:
        ctx = self._context
        if ctx is None:
            ctx = self._context = SpanContext(self.trace_id, self.span_id, False, _SAMPLED,
                                              self.trace_state)
        return ctx

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: dict[str, types.AttributeValue]) -> None:  # type: ignore[override]
        if self.end_time is None:
            self.attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.end_time is None:
            self.attributes[key] = value

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        if self.end_time is None:
            event = Event(name, dict(attributes) if attributes else {},
                          timestamp=timestamp or time.time_ns())
            if self.events:
                self.events.append(event)  # type: ignore[union-attr]
            else:
                self.events = [event]

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            if self.links:
                self.links.append(Link(context, attributes))  # type: ignore[union-attr]
            else:
                self.links = [Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None:
            return
        if isinstance(status, Status):
            self.status = status
        else:
            self.status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        attrs: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(
                type(exception), exception, exception.__traceback__)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end = end_time or time.time_ns()
        owner = self._owner
        status = self.status
        if status is _UNSET:  # most spans: no calls to Status's properties
            code, description = _UNSET_CODE, ""
        else:
            code, description = status.status_code._value_, status.description or ""
        state = self.trace_state
        events = self.events
        links = self.links
        owner.emit((
            self.name, self.trace_id, self.span_id, state.to_header() if state else "",
            self.parent_id, self.parent_remote, self.kind._value_, self.start_time, end,
            self.attributes,
            [(e.name, e.timestamp, dict(e.attributes or {})) for e in events] if events
            else None,
            [(ln.context.trace_id, ln.context.span_id, ln.context.is_remote,
              dict(ln.attributes or {})) for ln in links] if links else None,
            code, description, owner.resource_number, owner.scope.name))

    def __repr__(self) -> str:
        return f"LeanSpan({self.name!r}, span_id={self.span_id:016x})"


class QuietSpan(trace.NonRecordingSpan):
    """A span the sampler dropped: it carries its trace on (`inject` sends it as not
    sampled, and its children are dropped too) and records nothing. Like LeanSpan it keeps
    its ids as ints and builds a SpanContext only if asked: a dropped trace should cost
    less than a recorded one, not more."""

    __slots__ = ("trace_id", "span_id", "trace_state")

    def __init__(self, trace_id: int, span_id: int, trace_state: TraceState | None = None,
                 ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_state = trace_state
        self._context: SpanContext | None = None  # type: ignore[assignment]

    def get_span_context(self) -> SpanContext:
        ctx = self._context
        if ctx is None:
            ctx = self._context = SpanContext(self.trace_id, self.span_id, False,
                                              _NOT_SAMPLED, self.trace_state)
        return ctx

    def __repr__(self) -> str:
        return f"QuietSpan(span_id={self.span_id:016x})"
