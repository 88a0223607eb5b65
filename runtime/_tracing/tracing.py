"""`Tracing`: one TracerProvider per Node/worker/client, owned and passed around.

Why not the global provider: a Node (or a test running two nodes in one process) owns its
tracer the way it owns its clock and store. `Tracing` never calls
`opentelemetry.trace.set_tracer_provider`; code that needs a tracer gets this object. The
only process-wide state used is what the OTel API itself needs: the *current span* lives
in a contextvar (so it follows anyio tasks), which is how an instrumented caller's own span
becomes the parent when no explicit parent is given.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, cast

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from runtime._tracing.config import (
    batch_options,
    build_resource,
    otlp_endpoint,
    sampler_from_env,
    sdk_disabled,
)
from runtime._tracing.lean import LeanSpan, QuietSpan
from runtime._tracing.otlp_wire import (
    ATTR_ATTEMPT,
    ATTR_FUNCTION,
    ATTR_PID,
    ATTR_ROUTE_TARGET,
    EXECUTE,
    HANDLER,
    ROUTE,
    route_item,
    worker_item,
)
from runtime._tracing.propagation import ParentLike, remote_parent, to_context
from runtime._tracing.recorder import (
    ATTR_INVOCATION_ID,
    LocalRecorder,
    ResourceTable,
    SpanRecord,
)

__all__ = ["SUPERVISOR_EVENTS", "Tracing", "bounded_call"]

#: OTP's report names, reused as span event / span names.
SUPERVISOR_EVENTS = frozenset({"child_terminated", "start_error", "reached_max_restart_intensity"})

_SCOPE = "stoic"


def bounded_call(fn: Callable[[], object], timeout: float, name: str) -> bool:
    """Run blocking `fn` in a short-lived daemon thread; True if it finished within
    `timeout` seconds and did not return False (the SDK's flushes say False when they
    gave up). On timeout the thread is abandoned (it is a daemon), so the caller never
    waits longer than `timeout` on an unreachable collector."""
    done = threading.Event()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return done.wait(timeout) and bool(outcome) and outcome[0] is not False


class WorkerTimingLike(Protocol):
    """What `record_worker_spans` reads (runtime.wire.WorkerTiming has it)."""

    @property
    def execute_start(self) -> int: ...
    @property
    def handler_start(self) -> int: ...
    @property
    def handler_end(self) -> int: ...
    @property
    def execute_end(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def execute_span_id(self) -> int: ...
    @property
    def handler_span_id(self) -> int: ...


_TRACE_ID_LIMIT = (1 << 64) - 1


def _parentbased_bound(sampler: sampling.Sampler) -> int | None:
    """For `ParentBased(root)` with the default delegates and a root of always_on,
    always_off or traceidratio (what OTEL_TRACES_SAMPLER=parentbased_* builds): the bound
    the root compares a trace id's low 64 bits with (sampled if below it). A decision then
    needs no sampler call and no Context: follow a valid parent's sampled flag, else
    compare. None for any other sampler (it is called for every new span)."""
    if not isinstance(sampler, sampling.ParentBased):
        return None
    description = sampler.get_description()
    if description == sampling.ParentBased(sampling.ALWAYS_ON).get_description():
        return _TRACE_ID_LIMIT + 1
    if description == sampling.ParentBased(sampling.ALWAYS_OFF).get_description():
        return 0
    root = getattr(sampler, "_root", None)
    if (isinstance(root, sampling.TraceIdRatioBased)
            and description == sampling.ParentBased(
                sampling.TraceIdRatioBased(root.rate)).get_description()):
        return root.bound
    return None


_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
# span item values (`otlp_wire.span_item`): the API's enum values
_INTERNAL = SpanKind.INTERNAL.value
_UNSET_CODE = StatusCode.UNSET.value


#: a span id is `_bits(64) or 1` (written out where spans are made: a call less)
_bits = random.getrandbits


class _SpanScope:
    """`Tracing.start_span`'s context manager: start, attach, detach, record, end."""

    __slots__ = ("_tracing", "_name", "_parent", "_kind", "_attributes", "_links", "_span",
                 "_token", "_attach")

    def __init__(self, tracing: Tracing, name: str, parent: ParentLike, kind: SpanKind,
                 attributes: Attributes, links: Sequence[Link], attach: bool) -> None:
        self._tracing = tracing
        self._name = name
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._links = links
        self._attach = attach

    def __enter__(self) -> trace.Span:
        span = self._tracing._new_span(self._name, self._parent, self._kind,
                                       self._attributes, self._links)
        self._span = span
        self._token = (context_api.attach(trace.set_span_in_context(span)) if self._attach
                       else None)
        return span

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        span = self._span
        if self._token is not None:
            context_api.detach(self._token)
        if exc is not None and span.is_recording():
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            else:
                span.set_status(Status(StatusCode.ERROR, f"cancelled: {type(exc).__name__}"))
        span.end()


class Tracing:
    """Owns a TracerProvider, a bounded LocalRecorder and (optionally) an OTLP exporter.

    Blocking methods (`force_flush`, `shutdown`) must be called off the event loop
    (`anyio.to_thread.run_sync`) when used from async code. Everything else is cheap and
    non-blocking: a finished span becomes one span item (a flat tuple), appended to the
    recorder and, when exporting, to the span shipper's queue, which a background thread
    ships in batches (or, with an SDK exporter, an SDK span goes to a BatchSpanProcessor).
    """

    def __init__(
        self,
        resource: Resource,
        *,
        exporter: SpanExporter | None = None,
        sampler: sampling.Sampler | None = None,
        recorder_capacity: int = 10_000,
        disabled: bool = False,
        batch: Mapping[str, int] | None = None,
        export_processor: SpanProcessor | None = None,
    ) -> None:
        """Build from parts (tests, embedding). `exporter` None → no export, no thread.
        `export_processor`: a ready-made export pipeline instead: a SpanShipper (which
        takes span items; its resource table becomes this object's), or any SDK
        SpanProcessor (which then gets SDK spans).

        `batch`: BatchSpanProcessor keyword arguments (max_queue_size, schedule_delay_millis,
        max_export_batch_size, export_timeout_millis). A full queue drops spans (bounded
        memory) rather than slowing the caller.
        `disabled` → every span is a no-op (not even recorded locally), as OTEL_SDK_DISABLED.
        Raises ValueError for recorder_capacity < 1.
        """
        self._resource = resource
        self.scope = InstrumentationScope(_SCOPE)
        self._worker_resource = resource.merge(Resource({"stoic.role": "worker"}))
        self._export_processor: SpanProcessor | None = export_processor
        table = getattr(export_processor, "resources", None)
        if not isinstance(table, ResourceTable):
            table = ResourceTable()
        self._recorder = LocalRecorder(recorder_capacity, table)
        #: span items' resource numbers: this process's spans, the worker's spans
        self.resource_number = table.number(resource)
        self._worker_number = table.number(self._worker_resource)
        self._record: Callable[[tuple[Any, ...]], None] | None = self._recorder.add
        self._ship: Callable[[tuple[Any, ...]], None] | None = getattr(
            export_processor, "put", None)
        self._disabled = disabled
        # Stoic's own spans are LeanSpans, which become span items, unless an SDK
        # exporter or span processor was handed in (clients, and tests that build their
        # own pipeline): that then gets SDK spans.
        self._lean = (exporter is None and not disabled
                      and (export_processor is None or self._ship is not None))
        feed = getattr(export_processor, "feed", None)
        if self._lean and feed is not None and feed(self._recorder):
            # a shipper that encodes hands the recorder its requests: spans are queued
            # once and serialized once
            self._record = None
        only = (self._ship if self._record is None
                else self._record if self._ship is None else None)
        if only is not None and not disabled:
            # spans go to one place: `emit` is that place's own method (a Python call
            # less per span; `shutdown` restores the checking one)
            self.emit = only  # type: ignore[method-assign]
        self._sampler = sampler or sampling.ParentBased(sampling.ALWAYS_ON)
        self._bound = _parentbased_bound(self._sampler)
        self._exporting = (exporter is not None or export_processor is not None) and not disabled
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer
        self._shut = False
        if disabled:
            self._tracer = trace.NoOpTracer()
            return
        # shutdown_on_exit=False: no atexit hook keeping every provider alive; owners call
        # shutdown() (the Node's stop path, the worker before it exits).
        provider = TracerProvider(
            sampler=self._sampler,
            resource=resource,
            shutdown_on_exit=False,
        )
        # SDK spans (the `tracer`'s, and all of them when not lean) reach the recorder and
        # the exporter as span processors.
        provider.add_span_processor(self._recorder)
        if exporter is not None:
            opts = dict(batch or {})
            self._export_processor = BatchSpanProcessor(
                exporter,
                max_queue_size=opts.get("max_queue_size"),
                schedule_delay_millis=opts.get("schedule_delay_millis"),
                max_export_batch_size=opts.get("max_export_batch_size"),
                export_timeout_millis=opts.get("export_timeout_millis"),
            )
        if self._export_processor is not None:
            provider.add_span_processor(self._export_processor)
        self._provider = provider
        self._tracer = provider.get_tracer(_SCOPE)

    @classmethod
    def from_env(
        cls,
        service_name: str = "stoic",
        *,
        node_id: str = "",
        zone: str = "",
        role: str = "node",
        environ: Mapping[str, str] | None = None,
        recorder_capacity: int = 10_000,
    ) -> Tracing:
        """Configure from the standard OTEL_* variables (`environ`, default os.environ).

        OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set → OTLP/gRPC export in batches (OTEL_BSP_*
        tune them): for a node (`role="node"`), by a SpanShipper, so that encoding happens
        in a child process and not on the node's event loop; for others, by the SDK's
        BatchSpanProcessor. Unset → no exporter, no thread and no process: spans only go
        to the local recorder. OTEL_TRACES_SAMPLER(_ARG), OTEL_SDK_DISABLED, OTEL_SERVICE_NAME and
        OTEL_RESOURCE_ATTRIBUTES are honoured. Raises InvalidTelemetryConfig (a ValueError
        naming the variable) for values Stoic cannot use.
        """
        env = os.environ if environ is None else environ
        resource = build_resource(env, service_name=service_name, node_id=node_id,
                                  zone=zone, role=role)
        if sdk_disabled(env):
            return cls(resource, disabled=True, recorder_capacity=recorder_capacity)
        sampler = sampler_from_env(env)
        endpoint = otlp_endpoint(env, "traces")
        exporter: SpanExporter | None = None
        if endpoint is not None and role == "node":
            from runtime._tracing.shipper import SpanShipper

            opts = batch_options(env)
            shipper = SpanShipper(
                environ=env, max_queue_size=opts.get("max_queue_size"),
                schedule_delay_millis=opts.get("schedule_delay_millis"),
                max_export_batch_size=opts.get("max_export_batch_size"))
            return cls(resource, sampler=sampler, recorder_capacity=recorder_capacity,
                       export_processor=shipper)
        if endpoint is not None:
            # Imported only when exporting: the grpc exporter import is not free.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint.url, insecure=endpoint.insecure,
                                        timeout=endpoint.timeout)
        return cls(resource, exporter=exporter, sampler=sampler,
                   recorder_capacity=recorder_capacity, batch=batch_options(env))

    # --- accessors ---

    @property
    def tracer(self) -> trace.Tracer:
        return self._tracer

    @property
    def resource(self) -> Resource:
        return self._resource

    @property
    def recorder(self) -> LocalRecorder:
        return self._recorder

    @property
    def exporting(self) -> bool:
        """True when spans are shipped over OTLP (an endpoint was configured)."""
        return self._exporting

    @property
    def enabled(self) -> bool:
        return not self._disabled

    def spans_for_invocation(self, invocation_id: str) -> list[SpanRecord]:
        return self._recorder.spans_for_invocation(invocation_id)

    def spans_for_trace(self, trace_id: str | int) -> list[SpanRecord]:
        return self._recorder.spans_for_trace(trace_id)

    # --- spans ---

    def start_span(
        self,
        name: str,
        *,
        parent: ParentLike = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] = (),
        attach: bool = True,
    ) -> AbstractContextManager[trace.Span]:
        """Start a span, make it current for the block, end it on exit.

        `parent`: gRPC metadata / ExecuteRequest.trace_context (W3C headers), an OTel
        Context, a Span or SpanContext, or None for the task's current span. Metadata with
        no valid `traceparent` starts a new trace. An exception leaving the block is recorded
        on the span (status ERROR) and re-raised; a cancellation (BaseException such as
        anyio's cancel exception) sets status ERROR "cancelled: <type>" without a stack
        trace event and is re-raised.

        `attach=False` does not make the span current (saving the context switch on the
        hot path): the block must then pass it explicitly as the parent of its children and
        to `inject`.

        One plain context manager object rather than the SDK's three nested generator
        ones (start_as_current_span -> use_span): this is on every invocation's path.
        """
        return _SpanScope(self, name, parent, kind, attributes, links, attach)

    def _new_span(self, name: str, parent_like: ParentLike, kind: SpanKind,
                  attributes: Attributes, links: Sequence[Link]) -> trace.Span:
        if not self._lean:
            return self._tracer.start_span(
                name, context=to_context(parent_like), kind=kind, attributes=attributes,
                links=links, record_exception=False, set_status_on_exception=False)
        ctx: Context | None = None
        if type(parent_like) is LeanSpan:  # the node's own spans: the cheapest check first
            if self._bound is not None:  # parentbased_*: a LeanSpan is sampled, so is its child
                return LeanSpan(self, name, parent_like.trace_id, _bits(64) or 1,
                                parent_like.span_id, False, kind, attributes, links,
                                parent_like.trace_state)
            parent = parent_like.get_span_context()
        elif type(parent_like) is QuietSpan and self._bound is not None:
            # parentbased_*: a dropped span's children are dropped
            return QuietSpan(parent_like.trace_id, _bits(64) or 1, parent_like.trace_state)
        elif type(parent_like) is dict:  # gRPC metadata: parse the header, no Context
            parent = (remote_parent(cast("dict[str, str]", parent_like))
                      or trace.INVALID_SPAN_CONTEXT)
            if self._bound is None:
                ctx = to_context(parent_like)
        elif isinstance(parent_like, trace.Span):  # an explicit parent span: no Context needed
            parent = parent_like.get_span_context()
        else:
            ctx = to_context(parent_like)
            parent = trace.get_current_span(ctx).get_span_context()
        valid = parent.is_valid
        trace_id = parent.trace_id if valid else (random.getrandbits(128) or 1)
        bound = self._bound
        if bound is not None:  # parentbased_*: follow the parent, else the root's ratio
            sampled = (parent.trace_flags.sampled if valid
                       else (trace_id & _TRACE_ID_LIMIT) < bound)
        else:
            sampled = self._sampler.should_sample(
                ctx, trace_id, name, kind, attributes, links).decision.is_sampled()
        if not sampled:
            return QuietSpan(trace_id, _bits(64) or 1, parent.trace_state if valid else None)
        if valid:
            return LeanSpan(self, name, trace_id, _bits(64) or 1, parent.span_id,
                            parent.is_remote, kind, attributes, links, parent.trace_state)
        return LeanSpan(self, name, trace_id, _bits(64) or 1, 0, False, kind, attributes,
                        links)

    # --- SpanOwner (LeanSpan) ---

    def emit(self, item: tuple[Any, ...]) -> None:
        """Record (and, when exporting, ship) one finished span item."""
        if self._shut:
            return
        record = self._record
        if record is not None:
            record(item)
        ship = self._ship
        if ship is not None:
            ship(item)

    def record_supervisor_event(
        self,
        span: trace.Span | trace.SpanContext | None,
        kind: str,
        attributes: Attributes = None,
        *,
        parent: trace.Span | None = None,
    ) -> trace.SpanContext:
        """Put a supervisor report on the invocation's span and in a linked span of its own.

        Adds an event named `kind` (child_terminated | start_error |
        reached_max_restart_intensity) to `span` if it is still recording — call this before
        ending the attempt's span — and starts+ends a short span named `kind`, linked to
        `span`, parented on `parent`, else on the caller's current span (the supervisor's
        own trace), else a new root. The linked span copies `stoic.invocation_id` from `span` when it has one, so
        `spans_for_invocation` finds it. Put a readable reason in `stoic.reason`. Returns
        the linked span's context. Raises ValueError for an unknown `kind`.
        """
        if kind not in SUPERVISOR_EVENTS:
            raise ValueError(f"unknown supervisor event {kind!r}: expected one of "
                             f"{sorted(SUPERVISOR_EVENTS)}")
        attrs = dict(attributes or {})
        target_ctx: trace.SpanContext | None
        if isinstance(span, trace.Span):
            target_ctx = span.get_span_context()
            span_attrs = getattr(span, "attributes", None)
            if ATTR_INVOCATION_ID not in attrs and span_attrs:
                inv = span_attrs.get(ATTR_INVOCATION_ID)
                if inv is not None:
                    attrs[ATTR_INVOCATION_ID] = inv
            if span.is_recording():
                span.add_event(kind, attrs)
        else:
            target_ctx = span
        links = [Link(target_ctx)] if target_ctx is not None and target_ctx.is_valid else []
        with self.start_span(kind, parent=parent, attributes=attrs, links=links) as own:
            own.add_event(kind, attrs)
            return own.get_span_context()

    def _sampled_parent(self, parent: trace.Span) -> tuple[int, int, str] | None:
        """(trace id, span id, tracestate header) of `parent` if it is sampled and spans
        are recorded here; else None."""
        if self._disabled or self._shut:
            return None
        if type(parent) is LeanSpan:  # recording, so sampled
            state = parent.trace_state
            return parent.trace_id, parent.span_id, state.to_header() if state else ""
        if type(parent) is QuietSpan:  # dropped by the sampler
            return None
        pctx = parent.get_span_context()
        if not pctx.is_valid or not pctx.trace_flags.sampled:
            return None
        return (pctx.trace_id, pctx.span_id,
                pctx.trace_state.to_header() if pctx.trace_state else "")

    def record_span(
        self,
        name: str,
        parent: trace.Span,
        start_time: int,
        end_time: int,
        attributes: Mapping[str, str | int],
    ) -> None:
        """Record a finished span, child of `parent`, that ran from `start_time` to
        `end_time` (unix ns): for a step timed by the caller (the routing decision), at the
        cost of one tuple and no context switch. Nothing if `parent` is not sampled."""
        ids = self._sampled_parent(parent)
        if ids is None:
            return
        if not self._lean:
            sdk_span = self._tracer.start_span(name, context=to_context(parent),
                                               attributes=attributes, start_time=start_time)
            sdk_span.end(end_time=end_time)
            return
        trace_id, parent_id, state = ids
        self.emit((name, trace_id, _bits(64) or 1, state, parent_id, False, _INTERNAL,
                   start_time, end_time, dict(attributes), None, None, _UNSET_CODE, "",
                   self.resource_number, _SCOPE))

    def record_route(self, parent: trace.Span, start_time: int, end_time: int,
                     function: str, invocation_id: str, attempt: int, target: str) -> None:
        """Record the routing decision of one attempt (`stoic.route`, child of `parent`,
        from `start_time` to `end_time`, unix ns; `target` "local", a node id or "none"):
        one compact item (`otlp_wire.route_item`). Nothing if `parent` is not sampled."""
        if not self._lean:
            self.record_span(ROUTE, parent, start_time, end_time,
                             {ATTR_FUNCTION: function, ATTR_INVOCATION_ID: invocation_id,
                              ATTR_ATTEMPT: attempt, ATTR_ROUTE_TARGET: target})
            return
        ids = self._sampled_parent(parent)
        if ids is None:
            return
        trace_id, parent_id, state = ids
        self.emit(route_item(trace_id, _bits(64) or 1, state, parent_id, start_time, end_time,
                             function, invocation_id, attempt, target, self.resource_number))

    def record_worker_spans(
        self,
        parent: trace.Span,
        timing: WorkerTimingLike,
        function: str,
        invocation_id: str,
        attempt: int,
        error: str | None = None,
    ) -> None:
        """Record the worker's `stoic.worker.execute` and `stoic.handler` spans of one
        attempt from the timing the worker reported, as children of `parent` (the span
        whose context travelled to the worker): in the local recorder (so `stoic trace`
        shows the worker) and, when exporting, in the export queue, with a resource that
        says `stoic.role=worker`. The worker measured the times, and chose the handler
        span's id when its handler made spans of its own (their parent); ids it left 0 are
        chosen here. So the worker pays no span machinery per call, and the node one
        compact item (`otlp_wire.worker_item`). `error`: the handler's exception type, if
        any. Attributes: function, invocation id, attempt and the worker's `process.pid`."""
        ids = self._sampled_parent(parent)
        if ids is None:
            return
        trace_id, parent_id, state = ids
        execute_id = timing.execute_span_id or _bits(64) or 1
        handler_id = timing.handler_span_id or _bits(64) or 1
        if self._lean:
            self.emit(worker_item(trace_id, state, parent_id, execute_id, handler_id,
                                  timing.execute_start, timing.handler_start,
                                  timing.handler_end, timing.execute_end, function,
                                  invocation_id, attempt, timing.pid, error or "",
                                  self._worker_number))
            return
        attrs: dict[str, str | int] = {ATTR_FUNCTION: function,
                                       ATTR_INVOCATION_ID: invocation_id,
                                       ATTR_ATTEMPT: attempt, ATTR_PID: timing.pid}
        pctx = parent.get_span_context()
        flags = pctx.trace_flags
        execute_ctx = trace.SpanContext(trace_id, execute_id, False, flags, pctx.trace_state)
        handler_ctx = trace.SpanContext(trace_id, handler_id, False, flags, pctx.trace_state)
        execute = ReadableSpan(
            name=EXECUTE, context=execute_ctx, parent=pctx,
            resource=self._worker_resource, attributes=attrs, kind=SpanKind.SERVER,
            start_time=timing.execute_start, end_time=timing.execute_end,
            instrumentation_scope=self.scope)
        handler = ReadableSpan(
            name=HANDLER, context=handler_ctx, parent=execute_ctx,
            resource=self._worker_resource, attributes=attrs,
            status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
            start_time=timing.handler_start, end_time=timing.handler_end,
            instrumentation_scope=self.scope)
        self._recorder.on_end(execute)
        self._recorder.on_end(handler)
        if self._export_processor is not None:
            self._export_processor.on_end(execute)
            self._export_processor.on_end(handler)

    # --- lifecycle ---

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export everything finished so far; True if done within `timeout` seconds.

        Blocking (call via anyio.to_thread from async code). No-op without an exporter.
        """
        provider = self._provider
        if provider is None or not self._exporting or self._shut:
            return True
        return bounded_call(lambda: provider.force_flush(int(timeout * 1000)), timeout,
                            "stoic-tracing-flush")

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush and stop exporting, waiting at most `timeout` seconds; idempotent.

        After shutdown new spans are still created but no longer exported or recorded.
        Returns False if the exporter did not finish in time (its daemon thread is then
        abandoned). Blocking (call via anyio.to_thread from async code).
        """
        provider = self._provider
        if provider is None or self._shut:
            return True
        self._shut = True
        vars(self).pop("emit", None)  # the method that checks `_shut`
        if not self._exporting:
            provider.shutdown()
            return True
        return bounded_call(provider.shutdown, timeout, "stoic-tracing-shutdown")

    def __enter__(self) -> Tracing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
