"""The check's stand-in for Jaeger: an OTLP/gRPC TraceService on $OTLP_LISTEN that prints
one line per span received: SPAN trace_id span_name service.instance.id zone role
invocation_id."""

import os
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsg


class Receiver(tsg.TraceServiceServicer):
    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        for rs in request.resource_spans:
            res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {kv.key: kv.value.string_value for kv in span.attributes}
                    print("SPAN", span.trace_id.hex(), span.name,
                          res.get("service.instance.id", "-"),
                          res.get("cloud.availability_zone", "-"),
                          res.get("stoic.role", "-"),
                          attrs.get("stoic.invocation_id") or "-", flush=True)
        return ts.ExportTraceServiceResponse()


server = grpc.server(futures.ThreadPoolExecutor(4))
tsg.add_TraceServiceServicer_to_server(Receiver(), server)
listen = os.environ.get("OTLP_LISTEN", "127.0.0.1:4317")
server.add_insecure_port(listen)
server.start()
print("listening on", listen, flush=True)
server.wait_for_termination()
