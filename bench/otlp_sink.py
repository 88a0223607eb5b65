"""An OTLP/gRPC trace sink for `stoic bench tracing`, in a process of its own.

It stands for a collector (Jaeger, the OpenTelemetry Collector) that in a deployment runs
on another machine: it accepts `TraceService/Export` (and `MetricsService/Export`, whose
requests it drops), parses each trace request (the generated
message, C code) and counts the spans, but builds no Python objects per span, so the
benchmark measures what tracing costs Stoic rather than what a Python test receiver costs.
Being a separate process, its CPU time is measured apart from Stoic's.

    python -m bench.otlp_sink      # prints "PORT <n>", then "<spans>" for each line read;
                                   # exits when stdin closes
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

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsSink(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Accepts metrics too (a node given an OTLP endpoint exports both), and drops them."""

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main() -> int:
    sink = _Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsSink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    try:
        for _ in sys.stdin:
            print(sink.spans, flush=True)
    finally:
        server.stop(grace=None).wait(5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
