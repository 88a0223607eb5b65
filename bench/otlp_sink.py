"""An OTLP/gRPC trace sink for `stoic bench tracing`, in a process of its own.

It stands for a collector (Jaeger, the OpenTelemetry Collector) that in a deployment runs
on another machine: it accepts `TraceService/Export` (and `MetricsService/Export`, whose
requests it drops), parses each trace request (the generated
message, C code) and counts the spans, but builds no Python objects per span, so the
benchmark measures what tracing costs Stoic rather than what a Python test receiver costs.
Being a separate process, its CPU time is measured apart from Stoic's.

    python -m bench.otlp_sink      # prints "PORT <n>", then "<spans>" for each line read;
                                   # exits when stdin closes
    python -m bench.otlp_sink --raw  # takes each request as bytes and parses nothing;
                                     # prints the bytes received instead of spans

`--raw` separates what exporting costs the exporting side from what parsing costs the
receiver, on a machine where both share the same cores.
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def count(self) -> int:
        return self.spans

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsSink(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Accepts metrics too (a node given an OTLP endpoint exports both), and drops them."""

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _RawSink:
    """Takes TraceService/Export and MetricsService/Export requests as bytes (no
    message is parsed) and answers with the empty response (zero bytes)."""

    def __init__(self) -> None:
        self.received = 0  # bytes of trace requests
        self._lock = threading.Lock()

    def count(self) -> int:
        return self.received

    def export(self, request: bytes, context: Any) -> bytes:
        with self._lock:
            self.received += len(request)
        return b""

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def method(fn: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn)  # bytes in, bytes out

        return [grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    {"Export": method(self.export)}),
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.metrics.v1.MetricsService",
                    {"Export": method(lambda request, context: b"")})]


def main() -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    sink: _Sink | _RawSink
    if "--raw" in sys.argv[1:]:
        sink = _RawSink()
        server.add_generic_rpc_handlers(sink.handlers())
    else:
        sink = _Sink()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsSink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    try:
        for _ in sys.stdin:
            print(sink.count(), flush=True)
    finally:
        server.stop(grace=None).wait(5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
