"""Span export out of the node's process: `SpanShipper` hands finished spans to a child
process (`python -m runtime._tracing.shipper`) that sends them over OTLP/gRPC.

Why: the node's event loop runs every invocation, under the node's GIL, and is the
busiest process of a cluster; what can run elsewhere should. A span that ends in the node
becomes a tuple of plain values in a bounded queue (reading a span's fields costs a
fraction of encoding it); every few dozen spans, the queued ones become one frame on the
child's stdin:
- where the C encoder was built (`otlp_wire.FAST_ENCODER`), the node encodes them as an
  ExportTraceServiceRequest itself (~6k instructions an invocation, half what `marshal`
  takes and far less than unmarshalling and encoding cost the child), hands that frame
  to the local recorder too, and the child joins such requests into one as they are;
- otherwise the node marshals them (one C call) and the child encodes them in Python
  (`otlp_wire.Encoder`, ~10 µs a span, too much for the node).
The child sends the bytes as they are (no message object is built) through the SDK's own
OTLP exporter (its channel, TLS, headers, compression, timeout and retries).

The pipe runs between a node and the child it started; nothing else writes to it, and the
child reads nothing else (no socket). It carries OTLP bytes or `marshal` data of plain
values (tuples, ints, strings, dicts) — never pickle. Memory stays bounded: when the queue
is full (the child or the collector is slow), new spans are dropped and counted, as the
SDK's BatchSpanProcessor does. The child dies with the node (parent-death signal) and
ends when its stdin closes.

Frames from the node to the child: one type byte, a 4-byte big-endian length, the body.
- `R`: a span count (4 bytes, big-endian), then an ExportTraceServiceRequest;
- `M`: a marshalled list of items: `(number, {resource attributes})` declares a resource
  (before its first span), a 16-tuple is a span (`otlp_wire.span_item`), a 12- or
  17-tuple a route or worker item (`otlp_wire.route_item`, `worker_item`);
- `F`: a flush token (ASCII digits); the child answers `flushed K` on its stdout once
  everything before it was exported.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from runtime._tracing.otlp_wire import (
    ENCODE_ERRORS,
    FAST_ENCODER,
    Encoder,
    marshal_items,
    span_item,
)
from runtime._tracing.recorder import LocalRecorder, ResourceTable

__all__ = ["SpanShipper"]

log = logging.getLogger("stoic.tracing")

_HEADER = struct.Struct(">cI")
_COUNT = struct.Struct(">I")  # an `R` frame's span count
_KINDS = (b"M", b"R", b"F")
_R_HEAD = _HEADER.size + _COUNT.size  # where an `R` frame's request starts

#: Spans per export request when OTEL_BSP_MAX_EXPORT_BATCH_SIZE is not set: the
#: OpenTelemetry Collector's batch processor default, not the SDK's 512. A request costs
#: both ends a fixed few hundred microseconds of CPU (the Python gRPC client, a Python
#: receiver more), which at 512 spans a request was most of the child's CPU and the
#: receiver's under load (docs/performance.md); a quiet node still exports every
#: schedule delay.
EXPORT_BATCH = 8192
#: A request goes out once it holds about this many bytes, whatever its span count
#: (collectors refuse messages over 4 MiB by default).
MAX_REQUEST = 2 << 20
#: The largest frame the child accepts (a batch of max_export_batch_size spans is far less).
MAX_FRAME = 64 << 20


#: Spans per frame that `put` marshals and writes where the spans end (about a dozen
#: invocations: tens of microseconds, so no event-loop stall worth the name).
CHUNK = 64
#: The pipe's size asked for (Linux F_SETPIPE_SZ; the default is 64 KiB).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


class SpanShipper(SpanProcessor):
    """A SpanProcessor that ships finished spans to an exporter child process.

    `environ` is the child's environment (the OTEL_EXPORTER_OTLP_* variables tell it
    where to send). `max_queue_size`, `schedule_delay_millis` and `max_export_batch_size`
    mean what they mean for the SDK's BatchSpanProcessor (and follow OTEL_BSP_*).

    Every `CHUNK` spans, `put` marshals the queued spans into one frame and writes it to
    the pipe without blocking: a few microseconds per span, on the thread where the spans
    end, with no hand-over to another thread (which, under load, cost the node more than
    the marshalling itself). What the pipe does not take now (the child is busy or gone
    slow) waits in a backlog that a thread writes as the pipe drains; the thread also ships
    what is queued every `schedule_delay_millis`. Queue and backlog together hold at most
    `max_queue_size` spans: past that, new spans are dropped and counted. A shipper that
    feeds a local recorder (`feed`) drops whole frames instead, once the recorder has
    them; queue and backlog then hold at most `max_queue_size` spans each."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        max_queue_size: int | None = None,
        schedule_delay_millis: int | None = None,
        max_export_batch_size: int | None = None,
        python: str = sys.executable,
        resources: ResourceTable | None = None,
        encode: bool | None = None,
    ) -> None:
        """`resources`: the table that numbers the resources of the items given to `put`
        (a `Tracing` shares its own); resources are declared to the child before the
        first batch that can name them. `encode`: write OTLP bytes here (`R` frames)
        rather than marshalled items (`M` frames); by default, where the C encoder was
        built (in Python, encoding costs more here than marshalling)."""
        self._max_queue = max_queue_size or 8192
        self._delay = (schedule_delay_millis or 200) / 1000.0
        self._max_batch = max_export_batch_size or 512
        self._chunk = max(1, min(CHUNK, self._max_batch))
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.resources = resources if resources is not None else ResourceTable()
        self._declared = 0  # resources[:_declared] were sent to the child
        self.dropped = 0  # spans dropped: queue and backlog full, or the child gone
        self.sent = 0  # spans written to the pipe
        # frames not yet (fully) written, oldest first: [bytes left, spans in the frame]
        self._backlog: collections.deque[list[Any]] = collections.deque()
        self._backlog_spans = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the pipe and the backlog; held only to write
        self._ship_lock = threading.Lock()  # making frames, see _ship
        self._closed = False
        self._flushes = 0
        self._recorder: LocalRecorder | None = None  # see `feed`
        if encode is None:
            encode = FAST_ENCODER
        self._encoder: Encoder | None = Encoder() if encode else None
        env = dict(os.environ if environ is None else environ)
        env["STOIC_EXPORTER_PARENT"] = str(os.getpid())
        child = subprocess.Popen(
            [python, "-m", "runtime._tracing.shipper"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=None, env=env, close_fds=True)
        self._child = child  # kept to reap it
        self._proc: subprocess.Popen[bytes] | None = child  # None once it is gone
        assert child.stdin is not None
        self._fd: int | None = child.stdin.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(OSError):  # not Linux, or above pipe-max-size
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, PIPE_SIZE)
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
        `resources`); every `CHUNK` spans, ship them. Never blocks."""
        queue = self._queue
        if len(queue) + (0 if self._recorder is not None else self._backlog_spans) \
                >= self._max_queue:
            self.dropped += 1
            return
        queue.append(item)
        if len(queue) >= self._chunk and not self._closed:
            self._ship(block=False)

    # --- a local recorder fed with what is encoded here ---

    def feed(self, recorder: LocalRecorder) -> bool:
        """Hand `recorder` every request encoded here from now on (`add_request`), so
        that it need not serialize the same spans again, and let its look-ups read this
        queue. Spans are then dropped after the recorder has them (a frame the backlog
        has no room for), not before: the local record stays whole while the collector
        or the child is slow. False (and nothing done) where this shipper does not
        encode (`M` frames): the recorder then keeps packing its own items."""
        if self._encoder is None:
            return False
        self._recorder = recorder
        recorder.fed_by(self)
        return True

    def holding(self) -> AbstractContextManager[object]:
        """Held, no batch is between the queue and the recorder (the frame lock)."""
        return self._ship_lock

    @property
    def queue(self) -> collections.deque[tuple[Any, ...]]:
        """The items queued and not yet shipped, oldest first (`put` appends to it)."""
        return self._queue

    # --- frames and the pipe ---

    def _ship(self, block: bool) -> None:
        """Encode (or marshal) what is queued into frames and write them (what the pipe
        does not take now goes to the backlog). One frame at a time under `_ship_lock`,
        so that a resource is declared before the first frame that names it, and released
        between frames, so that a busy caller is never kept waiting behind the thread;
        `block=False` returns at once if another thread holds it (that thread or the next
        `put` takes these spans)."""
        queue = self._queue
        while queue:
            if not self._ship_lock.acquire(blocking=block):
                return
            try:
                batch: list[tuple[Any, ...]] = []
                while queue and len(batch) < self._max_batch:
                    batch.append(queue.popleft())
                spans = len(batch)
                if not spans:  # another thread took them meanwhile
                    return
                # after the spans: a span's resource was numbered before it was queued
                resources = self.resources.resources
                known = len(resources)
                if known > self._declared:
                    batch[:0] = [(number, dict(resources[number].attributes))
                                 for number in range(self._declared, known)]
                    self._declared = known
                if self._encoder is not None:
                    encoded = self._encode(batch)
                    if encoded is None:
                        self.dropped += spans
                        continue
                    parts, count = encoded
                    size = _COUNT.size + sum(map(len, parts))
                    # the frame in one copy; the recorder keeps it as it is
                    frame = b"".join([_HEADER.pack(b"R", size), _COUNT.pack(count), *parts])
                    if self._recorder is not None:
                        self._recorder.add_request(frame, count, _R_HEAD)
                        if self._backlog_spans + spans > self._max_queue:
                            self.dropped += spans  # the recorder has them
                            continue
                else:
                    body = marshal_items(batch)
                    frame = _HEADER.pack(b"M", len(body)) + body
                self._write_frame(frame, spans)
            finally:
                self._ship_lock.release()

    def _encode(self, batch: list[tuple[Any, ...]]) -> tuple[list[bytes], int] | None:
        """The batch as an ExportTraceServiceRequest (in parts, `Encoder.take_parts`)
        and its span count; None if an item is malformed (the batch is dropped, as the
        child would drop it)."""
        encoder = self._encoder
        assert encoder is not None
        try:
            count = encoder.add(batch)
            return encoder.take_parts(), count
        except ENCODE_ERRORS as exc:
            encoder.take()  # what was added before the bad item
            log.error("span shipper: a batch did not encode (%s); dropped", exc)
            return None

    def _write_frame(self, frame: bytes, spans: int) -> None:
        """Append a frame to the backlog and write as much of the backlog as the pipe
        takes now; wake the thread if some is left. Never blocks on the pipe."""
        with self._lock:
            if self._fd is None:
                self.dropped += spans
                return
            self._backlog.append([frame, spans])
            self._backlog_spans += spans
            self._write_backlog()
            left = bool(self._backlog)
        if left:
            self._wake.set()

    def _write_backlog(self) -> None:
        """Write backlog frames, oldest first, until the pipe is full (under `_lock`)."""
        backlog = self._backlog
        while backlog and self._fd is not None:
            entry = backlog[0]
            try:
                written = os.write(self._fd, entry[0])
            except BlockingIOError:
                return
            except OSError:  # BrokenPipeError: the child is gone
                self._gone()
                return
            if written < len(entry[0]):
                entry[0] = memoryview(entry[0])[written:]
                return
            backlog.popleft()
            self._backlog_spans -= entry[1]
            self.sent += entry[1]

    def _gone(self) -> None:
        """The child is gone (under `_lock`): spans are no longer exported."""
        log.warning("span exporter process is gone; spans are no longer exported")
        self._fd = None
        self._proc = None
        self.dropped += self._backlog_spans
        self._backlog.clear()
        self._backlog_spans = 0

    def _drain(self, deadline: float | None) -> bool:
        """Write the whole backlog, waiting for the pipe (outside the lock) up to
        `deadline` (monotonic; None: one wait of at most the schedule delay). True if the
        backlog is empty."""
        while True:
            with self._lock:
                self._write_backlog()
                fd = self._fd
                if not self._backlog or fd is None:
                    return not self._backlog
            wait = self._delay if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return False
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile
                select.select([], [fd], [], wait)
            if deadline is None:
                with self._lock:
                    self._write_backlog()
                    return not self._backlog

    # --- the thread: the backlog, and spans that did not fill a chunk ---

    def _run(self) -> None:
        while not self._closed:
            if self._backlog:
                self._drain(None)
            else:
                self._wake.wait(self._delay)
                self._wake.clear()
            self._ship(block=True)

    # --- lifecycle ---

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Ship what is queued and wait until the child has exported it."""
        deadline = time.monotonic() + timeout_millis / 1000.0
        self._ship(block=True)
        with self._lock:
            self._flushes += 1
            token = self._flushes
        proc = self._proc
        if proc is None or proc.stdout is None:
            return False
        body = str(token).encode()
        self._write_frame(_HEADER.pack(b"F", len(body)) + body, 0)
        if not self._drain(deadline):
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
            self._fd = None
            self._proc = None
        child = self._child
        if child.stdin is not None:
            with contextlib.suppress(OSError):
                child.stdin.close()
        try:
            child.wait(5.0)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5.0)
        if child.stdout is not None:
            child.stdout.close()


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

#: How often the child looks at the pipe while frames come (seconds). It polls rather than
#: waiting in select() or read(): while a reader waits on the pipe, each of the node's
#: writes has to wake it, a cross-CPU wake-up that the node's write pays for (under load,
#: ~5 % of the node's CPU went to those writes); a polling reader costs the node nothing.
#: Each look costs the child a wake-up (50-100 µs of CPU on a VM): fed frames for 6,000
#: invocations a second, the child took 3.3-4.2 µs an invocation at 20 looks a second
#: and 4.2-4.6 µs at 50 (docs/performance.md). A 1 MiB pipe holds 50 ms of spans up to ~20k
#: invocations a second; past that, the node's backlog holds the rest until the next look.
POLL = 0.05
#: An empty look doubles the wait before the next, up to this: an idle exporter wakes
#: ten times a second, and spans after a quiet spell wait at most this long more.
POLL_IDLE = 0.1


class _FrameReader:
    """(type, body) frames from a pipe, read without blocking (the fd is made
    non-blocking; the pipe is looked at every `poll` seconds while frames come, backing
    off to `idle` while none do): iterate until end of input (a partial frame counts as
    the end) or a malformed header; `ready()` says whether the next frame can be had,
    waiting up to a timeout for it."""

    def __init__(self, fd: int, poll: float = POLL, idle: float = POLL_IDLE) -> None:
        self._fd = fd
        self._poll = poll
        self._idle = max(idle, poll)
        self._wait = poll  # before the next look
        self._buffer = bytearray()
        self._at = 0  # where the next frame starts in _buffer
        self._ended = False
        os.set_blocking(fd, False)

    def _sleep(self, most: float) -> None:
        """Wait before the next look (at most `most` seconds); the next wait is longer."""
        time.sleep(min(self._wait, most))
        self._wait = min(self._wait * 2, self._idle)

    def _complete(self) -> bool:
        """A whole frame (or a header too bad to wait for the rest of) is buffered."""
        left = len(self._buffer) - self._at
        if left < _HEADER.size:
            return False
        kind, size = _HEADER.unpack_from(self._buffer, self._at)
        return kind not in _KINDS or size > MAX_FRAME or left >= _HEADER.size + size

    def _fill(self) -> bool:
        """Read what the pipe holds now; False if it held nothing (`_ended` at its end)."""
        try:
            chunk = os.read(self._fd, 1 << 20)
        except BlockingIOError:
            return False
        if not chunk:
            self._ended = True
            return False
        if self._at:  # drop what was read, before growing the buffer
            del self._buffer[:self._at]
            self._at = 0
        self._buffer += chunk
        self._wait = self._poll
        return True

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the next frame (or the end of input) is here, waiting up to `timeout`
        seconds for it."""
        deadline = time.monotonic() + timeout
        while not self._complete() and not self._ended:
            if self._fill():
                continue
            if self._ended:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._sleep(left)
        return True

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        while True:
            while not self._complete():
                if self._fill():
                    continue
                if self._ended:
                    return
                self._sleep(self._idle)
            kind, size = _HEADER.unpack_from(self._buffer, self._at)
            if kind not in _KINDS or size > MAX_FRAME:
                log.error("span exporter: malformed frame (type %r, %d bytes); stopping",
                          kind, size)
                return
            start = self._at + _HEADER.size
            self._at = start + size
            with memoryview(self._buffer) as view:  # one copy (a bytearray slice is one)
                body = bytes(view[start:self._at])
            yield kind, body


class _Batch(list):  # type: ignore[type-arg]
    """An encoded request; len() is its span count (the exporter counts spans)."""

    request: Any = None


def _child_main() -> int:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    from runtime._tracing.config import batch_options, otlp_endpoint
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
    options = batch_options(os.environ)
    max_batch = options.get("max_export_batch_size") or EXPORT_BATCH
    delay = (options.get("schedule_delay_millis") or 200) / 1000.0
    encoder = Encoder()
    out = sys.stdout.buffer
    reader = _FrameReader(sys.stdin.fileno())
    pending = 0  # spans not yet exported: added to the encoder, or in `raw`
    raw: list[memoryview] = []  # requests encoded by the node (`R` frames)
    pending_bytes = 0  # about what the request will hold (an `M` frame counts its size)
    first = 0.0  # when the oldest pending span came (monotonic)

    def export() -> None:
        nonlocal pending, pending_bytes
        if pending:
            batch = _Batch([None] * pending)
            # Serialized messages concatenated are one message with their repeated
            # fields concatenated: the node's requests join the child's as they are.
            batch.request = b"".join([encoder.take(), *raw])  # one copy
            raw.clear()
            pending = pending_bytes = 0
            exporter.export(batch)

    # Frames are small (a node writes one every few dozen spans): as the SDK's batch
    # processor does, a request goes out when it holds the batch size, or when its oldest
    # span has waited the schedule delay (OTEL_BSP_*), or at a flush.
    for kind, body in reader:
        if kind == b"F":
            export()
            out.write(b"flushed " + body + b"\n")
            out.flush()
            continue
        had = pending
        if kind == b"R":
            if len(body) < _COUNT.size:
                log.error("span exporter: a request frame of %d bytes; dropped", len(body))
                continue
            raw.append(memoryview(body)[_COUNT.size:])
            pending += _COUNT.unpack_from(body)[0]
        else:
            try:
                pending += encoder.add(marshal.loads(body))
            except (EOFError, *ENCODE_ERRORS) as exc:
                log.error("span exporter: a batch did not decode (%s); dropped", exc)
                continue
        pending_bytes += len(body)
        if pending and not had:
            first = time.monotonic()
        if (pending >= max_batch or pending_bytes >= MAX_REQUEST
                or (pending and not reader.ready(first + delay - time.monotonic()))):
            export()
    export()
    exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
