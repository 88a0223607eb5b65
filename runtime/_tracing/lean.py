"""`LeanSpan`: the spans a node makes on every invocation's path, at a fraction of the
SDK's cost.

A node makes three spans per invocation (receive, attempt, route) and records two more for
the worker. With the SDK's `Span` (locks, bounded attribute containers, processor
fan-out) that was about a tenth of the node's CPU time per call even when nothing is
exported. A `LeanSpan` implements the OpenTelemetry API's `Span` (so context propagation,
`get_current_span`, `inject` and every caller treat it as any span) and carries the same
fields as the SDK's `ReadableSpan`, so the local recorder and the span shipper (which
exports through the SDK's own OTLP exporter, in a child process) take it as they are.

Not thread-safe for concurrent writers to one span (the node's spans are written by the
task that owns them), and not bounded the way the SDK bounds attributes: Stoic's own
spans carry a handful of attributes and events.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types

__all__ = ["LeanSpan"]

_UNSET = Status(StatusCode.UNSET)


class LeanSpan(trace.Span):
    """A recording span that hands itself to `sink` when it ends (once)."""

    __slots__ = ("name", "context", "parent", "kind", "attributes", "events", "links",
                 "status", "start_time", "end_time", "resource", "instrumentation_scope",
                 "_sink")

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link],
        resource: Resource,
        scope: InstrumentationScope,
        sink: Callable[[LeanSpan], None],
        start_time: int = 0,
    ) -> None:
        """`start_time` (unix ns): 0 for now."""
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.events: list[Event] = []
        self.links: list[Link] = list(links) if links else []
        self.status = _UNSET
        self.start_time = start_time or time.time_ns()
        self.end_time: int | None = None
        self.resource = resource
        self.instrumentation_scope = scope
        self._sink = sink

    # --- the API ---

    def get_span_context(self) -> SpanContext:
        return self.context

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
            self.events.append(Event(name, dict(attributes) if attributes else {},
                                     timestamp=timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            self.links.append(Link(context, attributes))

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
        self.end_time = end_time or time.time_ns()
        self._sink(self)

    def __repr__(self) -> str:
        return f"LeanSpan({self.name!r}, span_id={self.context.span_id:016x})"
