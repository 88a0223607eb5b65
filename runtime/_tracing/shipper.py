"""Span export out of the node's process: `SpanShipper` hands finished spans to a child
process (`python -m runtime._tracing.shipper`) that encodes them and sends them over
OTLP/gRPC.

Why: the node's event loop runs every invocation, under the node's GIL, and is the
busiest process of a cluster. Encoding a span as OTLP protobuf costs about ten
microseconds of Python even by hand (`otlp_wire.Encoder`); reading a span's fields into
one flat tuple costs a fraction of that. So a span that ends in the node becomes a tuple
of plain values in a bounded queue; a thread serializes each batch with `marshal` (one C
call; the thread holds the GIL only for it) and writes it to the child's stdin, and the
child encodes OTLP with `otlp_wire.Encoder` and sends the bytes as they are (no message
object is built) through the SDK's own OTLP exporter (its channel, TLS, headers,
compression, timeout and retries).

The pipe runs between a node and the child it started; nothing else writes to it, and the
child reads nothing else (no socket). It carries `marshal` data of plain values (tuples,
ints, strings, dicts) — never pickle. Memory stays bounded: when the queue is full (the
child or the collector is slow), new spans are dropped and counted, as the SDK's
BatchSpanProcessor does. The child dies with the node (parent-death signal) and ends when
its stdin closes.

Frames from the node to the child: one type byte, a 4-byte big-endian length, the body.
- `M`: a marshalled list of items: `(number, {resource attributes})` declares a resource
  (before its first span), a 16-tuple is a span (`otlp_wire.span_item`);
- `F`: a flush token (ASCII digits); the child answers `flushed K` on its stdout once
  everything before it was exported.
"""

from __future__ import annotations

import collections
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from runtime._tracing.otlp_wire import plain_item, span_item
from runtime._tracing.recorder import ResourceTable

__all__ = ["SpanShipper"]

log = logging.getLogger("stoic.tracing")

_HEADER = struct.Struct(">cI")

#: The largest frame the child accepts (a batch of max_export_batch_size spans is far less).
MAX_FRAME = 64 << 20


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
        resources: ResourceTable | None = None,
    ) -> None:
        """`resources`: the table that numbers the resources of the items given to `put`
        (a `Tracing` shares its own); resources are declared to the child before the
        first batch that can name them."""
        self._max_queue = max_queue_size or 8192
        self._delay = (schedule_delay_millis or 200) / 1000.0
        self._max_batch = max_export_batch_size or 512
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.resources = resources if resources is not None else ResourceTable()
        self._declared = 0  # resources[:_declared] were sent to the child
        self.dropped = 0
        self._wake = threading.Event()
        self._waking = False  # _wake was set and the thread has not woken yet
        self._lock = threading.Lock()  # the pipe: the thread and force_flush write to it
        self._ship_lock = threading.Lock()  # the queue's consumers, see _ship_all
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
        if span.context is not None and not self._closed:
            self.put(span_item(span, self.resources.number(span.resource)))

    def put(self, item: tuple[Any, ...]) -> None:
        """Queue one span item (`otlp_wire.span_item`'s tuple, its resource numbered in
        `resources`). Runs where the span ends (the node's event loop): an append; the
        encoding happens in the child."""
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append(item)
        if len(queue) >= self._max_batch and not self._waking and not self._closed:
            self._waking = True  # once per batch: Event.set takes a lock and notifies
            self._wake.set()

    # --- the shipping thread ---

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._waking = False
            self._ship_all()

    def _ship_all(self) -> None:
        # One shipper at a time (the thread, or force_flush's caller): otherwise one could
        # send a span while the other still holds its resource's declaration.
        with self._ship_lock:
            self._ship_queued()

    def _ship_queued(self) -> None:
        while self._queue:
            batch: list[tuple[Any, ...]] = []
            queue = self._queue
            while queue and len(batch) < self._max_batch:
                batch.append(queue.popleft())
            # after the spans: a span's resource was numbered before it was queued
            resources = self.resources.resources
            known = len(resources)
            if known > self._declared:
                batch[:0] = [(number, dict(resources[number].attributes))
                             for number in range(self._declared, known)]
                self._declared = known
            try:
                body = marshal.dumps(batch)
            except ValueError:  # an attribute value of a type marshal refuses
                body = marshal.dumps([plain_item(item) for item in batch])
            self._send(_HEADER.pack(b"M", len(body)) + body)

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
        body = str(token).encode()
        if not self._send(_HEADER.pack(b"F", len(body)) + body):
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

def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    """`n` bytes from `stream`, or None at end of input (a partial frame counts as end)."""
    data = stream.read(n)
    if data is None or len(data) < n:
        return None
    return data


def _frames(stream: IO[bytes]) -> Any:
    """(type, body) frames until end of input or a malformed header."""
    while True:
        header = _read_exactly(stream, _HEADER.size)
        if header is None:
            return
        kind, size = _HEADER.unpack(header)
        if kind not in (b"M", b"F") or size > MAX_FRAME:
            log.error("span exporter: malformed frame (type %r, %d bytes); stopping", kind, size)
            return
        body = _read_exactly(stream, size)
        if body is None:
            return
        yield kind, body


class _Batch(list):  # type: ignore[type-arg]
    """An encoded request; len() is its span count (the exporter counts spans)."""

    request: Any = None


def _child_main() -> int:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from runtime._tracing.config import otlp_endpoint
    from runtime._tracing.otlp_wire import Encoder
    from runtime._worker._limits import die_with_parent

    service = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]

    class _BytesStub:
        # TraceService/Export taking the request as encoded bytes: nothing is parsed
        # into a message only to be serialized again.
        def __init__(self, channel: Any) -> None:
            self.Export = channel.unary_unary(
                f"/{service.full_name}/Export", request_serializer=None,
                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)

    class _Exporter(OTLPSpanExporter):
        # The SDK exporter's channel, headers, TLS, compression, timeout, retries and
        # reconnects; our encoding, sent as it is.
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._stub = _BytesStub  # type: ignore[assignment]  # what reconnects use
            self._client = _BytesStub(self._channel)  # type: ignore[assignment]

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
    encoder = Encoder()
    out = sys.stdout.buffer
    for kind, body in _frames(sys.stdin.buffer):
        if kind == b"F":
            out.write(b"flushed " + body + b"\n")
            out.flush()
            continue
        try:
            request, count = encoder.items(marshal.loads(body))
        except (ValueError, EOFError, TypeError, AttributeError, OverflowError) as exc:
            log.error("span exporter: a batch did not decode (%s); dropped", exc)
            continue
        if count:
            batch = _Batch([None] * count)
            batch.request = request
            exporter.export(batch)
    exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
