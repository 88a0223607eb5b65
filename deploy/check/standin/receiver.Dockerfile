# The check's collector in place of Jaeger: an OTLP/gRPC receiver that logs every span.
FROM stoic:dev
COPY otlp_receiver.py /opt/otlp_receiver.py
USER root
STOPSIGNAL SIGINT
ENTRYPOINT ["python", "/opt/otlp_receiver.py"]
