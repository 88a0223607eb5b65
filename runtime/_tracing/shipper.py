"""Span export out of the node's process: `SpanShipper` hands finished spans to a child
process (`python -m runtime._tracing.shipper`) that encodes them and sends them over
OTLP/gRPC.

Why: turning a span into OTLP protobuf costs tens of microseconds of Python per span, and
in the node it runs under the node's GIL, that is, on the core that runs every
invocation's event loop. Here the node only appends the span to a bounded queue; a thread
turns a batch into one JSON line (mostly C code) and writes it to the child's stdin, and
the child encodes OTLP protobuf and sends it with the SDK's own OTLP exporter (its channel,
TLS, headers, timeout and retries).

The pipe carries only our own JSON (never pickle). Memory stays bounded: when the queue is
full (the child or the collector is slow), new spans are dropped and counted, as the
SDK's BatchSpanProcessor does. The child dies with the node (parent-death signal) and ends
when its stdin closes.

Lines from the node to the child (one JSON value each):
- `{"resource": N, "attributes": {...}}` declares resource number N (sent once each);
- `[[span], ...]` a batch of spans (see `_encode`);
- `{"flush": K}`: the child answers `flushed K` on its stdout once everything before
  it was exported.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

__all__ = ["SpanShipper"]

log = logging.getLogger("stoic.tracing")

_KINDS = list(SpanKind)
_CODES = list(StatusCode)


def _encode(span: ReadableSpan, resource: int) -> list[Any]:
    ctx = span.context
    parent = span.parent
    status = span.status
    return [
        span.name, ctx.trace_id if ctx else 0, ctx.span_id if ctx else 0,
        int(ctx.trace_flags) if ctx else 0,
        parent.span_id if parent else 0, bool(parent.is_remote) if parent else False,
        span.start_time or 0, span.end_time or 0, _KINDS.index(span.kind),
        _CODES.index(status.status_code), status.description or "",
        dict(span.attributes or {}),
        [[e.name, e.timestamp, dict(e.attributes or {})] for e in span.events],
        [[ln.context.trace_id, ln.context.span_id, int(ln.context.trace_flags),
          dict(ln.attributes or {})] for ln in span.links],
        resource,
        span.instrumentation_scope.name if span.instrumentation_scope else "stoic",
    ]


class SpanShipper(SpanProcessor):
    """A SpanProcessor that ships finished spans to an exporter child process.

    `environ` is the child's environment (the OTEL_EXPORTER_OTLP_* variables tell it
    where to send). `max_queue_size`, `schedule_delay_millis` and `max_export_batch_size`
    mean what they mean for the SDK's BatchSpanProcessor (and follow OTEL_BSP_*)."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        max_queue_size: int | None = None,
        schedule_delay_millis: int | None = None,
        max_export_batch_size: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self._max_queue = max_queue_size or 8192
        self._delay = (schedule_delay_millis or 200) / 1000.0
        self._max_batch = max_export_batch_size or 512
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._resources: dict[int, int] = {}  # id(Resource) -> number sent to the child
        self._resource_refs: list[Resource] = []  # keeps ids stable
        self.dropped = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the pipe: the thread and force_flush write to it
        self._closed = False
        self._flushes = 0
        env = dict(os.environ if environ is None else environ)
        env["STOIC_EXPORTER_PARENT"] = str(os.getpid())
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [python, "-m", "runtime._tracing.shipper"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=None, env=env, close_fds=True)
        self._thread = threading.Thread(target=self._run, name="stoic-span-shipper",
                                        daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- SpanProcessor ---

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._closed:
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) >= self._max_batch:
            self._wake.set()

    # --- the shipping thread ---

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._ship_all()

    def _ship_all(self) -> None:
        while self._queue:
            batch: list[ReadableSpan] = []
            queue = self._queue
            while queue and len(batch) < self._max_batch:
                batch.append(queue.popleft())
            self._write(batch)

    def _write(self, batch: list[ReadableSpan]) -> None:
        lines: list[bytes] = []
        items = []
        for span in batch:
            resource = span.resource
            number = self._resources.get(id(resource))
            if number is None:
                number = self._resources[id(resource)] = len(self._resource_refs)
                self._resource_refs.append(resource)
                lines.append(json.dumps({"resource": number,
                                         "attributes": dict(resource.attributes)}).encode())
            items.append(_encode(span, number))
        lines.append(json.dumps(items).encode())
        self._send(b"\n".join(lines) + b"\n")

    def _send(self, data: bytes) -> bool:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                return False
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
                return True
            except (BrokenPipeError, OSError, ValueError):
                log.warning("span exporter process is gone; spans are no longer exported")
                self._proc = None
                return False

    # --- lifecycle ---

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Ship what is queued and wait until the child has exported it."""
        deadline = time.monotonic() + timeout_millis / 1000.0
        self._ship_all()
        with self._lock:
            self._flushes += 1
            token = self._flushes
        proc = self._proc
        if proc is None or proc.stdout is None:
            return False
        if not self._send(json.dumps({"flush": token}).encode() + b"\n"):
            return False
        return _await_line(proc.stdout, f"flushed {token}".encode(), deadline)

    def shutdown(self) -> None:
        if self._closed:
            return
        self.force_flush(5000)
        self._closed = True
        self._wake.set()
        self._thread.join(5.0)
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
        if proc.stdout is not None:
            proc.stdout.close()


def _await_line(stream: IO[bytes], expected: bytes, deadline: float) -> bool:
    fd = stream.fileno()
    buffer = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        buffer += chunk
        for line in buffer.split(b"\n"):
            if line.strip() == expected:
                return True


# --- the child ----------------------------------------------------------------------------

class _Encoder:
    """JSON span items -> one OTLP ExportTraceServiceRequest, directly (no ReadableSpan,
    no per-span resource hashing): the SDK's encoder cost this process ~60 µs a span."""

    def __init__(self) -> None:
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        self._c = common_pb2
        self._r = resource_pb2
        self._t = trace_pb2
        self.resources: dict[int, Any] = {}  # number -> resource_pb2.Resource

    def resource(self, number: int, attributes: Mapping[str, Any]) -> None:
        self.resources[number] = self._r.Resource(attributes=self._attrs(attributes))

    def _value(self, v: Any) -> Any:
        c = self._c
        if isinstance(v, bool):
            return c.AnyValue(bool_value=v)
        if isinstance(v, int):
            return c.AnyValue(int_value=v)
        if isinstance(v, float):
            return c.AnyValue(double_value=v)
        if isinstance(v, list | tuple):
            return c.AnyValue(array_value=c.ArrayValue(values=[self._value(x) for x in v]))
        return c.AnyValue(string_value=str(v))

    def _attrs(self, attributes: Mapping[str, Any]) -> list[Any]:
        kv = self._c.KeyValue
        return [kv(key=k, value=self._value(v)) for k, v in attributes.items()]

    def request(self, items: Sequence[Sequence[Any]]) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        t = self._t
        by_resource: dict[tuple[int, str], list[Any]] = {}
        for (name, trace_id, span_id, _flags, parent_id, parent_remote, start, end, kind,
             code, description, attributes, events, links, resource, scope) in items:
            tid = trace_id.to_bytes(16, "big")
            span = t.Span(
                trace_id=tid, span_id=span_id.to_bytes(8, "big"),
                parent_span_id=parent_id.to_bytes(8, "big") if parent_id else b"",
                name=name, kind=kind + 1, start_time_unix_nano=start, end_time_unix_nano=end,
                attributes=self._attrs(attributes),
                events=[t.Span.Event(name=n, time_unix_nano=ts, attributes=self._attrs(a))
                        for n, ts, a in events],
                links=[t.Span.Link(trace_id=lt.to_bytes(16, "big"),
                                   span_id=ls.to_bytes(8, "big"),
                                   attributes=self._attrs(la)) for lt, ls, _f, la in links],
                status=t.Status(code=code, message=description),
                flags=0x100 | (0x200 if parent_id and parent_remote else 0),
            )
            by_resource.setdefault((resource, scope), []).append(span)
        return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
            t.ResourceSpans(
                resource=self.resources.get(number),
                scope_spans=[t.ScopeSpans(scope=self._c.InstrumentationScope(name=scope),
                                          spans=spans)])
            for (number, scope), spans in by_resource.items()])


class _Encoded(list):  # type: ignore[type-arg]
    """A batch already encoded; len() is its span count (the exporter counts spans)."""

    request: Any = None


def _child_main() -> int:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    from runtime._tracing.config import otlp_endpoint
    from runtime._worker._limits import die_with_parent

    class _Exporter(OTLPSpanExporter):
        # The SDK exporter's channel, headers, TLS, timeout and retries, with our encoding.
        def _translate_data(self, data: Any) -> Any:  # type: ignore[override]
            return data.request

    parent = int(os.environ.get("STOIC_EXPORTER_PARENT", "0") or 0)
    if parent:
        die_with_parent(parent)
    endpoint = otlp_endpoint(os.environ, "traces")
    if endpoint is None:
        return 0
    exporter = _Exporter(endpoint=endpoint.url, insecure=endpoint.insecure,
                         timeout=endpoint.timeout)
    encoder = _Encoder()
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        msg = json.loads(raw)
        if isinstance(msg, dict):
            if "resource" in msg:
                encoder.resource(int(msg["resource"]), msg.get("attributes") or {})
            elif "flush" in msg:
                out.write(f"flushed {msg['flush']}\n".encode())
                out.flush()
            continue
        if msg:
            batch = _Encoded([None] * len(msg))
            batch.request = encoder.request(msg)
            exporter.export(batch)
    exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
