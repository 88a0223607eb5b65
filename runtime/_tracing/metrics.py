"""`Metrics`: Stoic's counters and latency histogram on an owned MeterProvider.

Like `Tracing`, no global provider is set. Readers: OTLP/gRPC (PeriodicExportingMetricReader,
interval from OTEL_METRIC_EXPORT_INTERVAL) only when an endpoint is configured; an
InMemoryMetricReader behind a tiny Prometheus endpoint only when a port is asked for.
With neither, no reader and no thread exist and recording is skipped (free).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from runtime._tracing.config import build_resource, otlp_endpoint, sdk_disabled
from runtime._tracing.prometheus import PrometheusServer, render_prometheus
from runtime._tracing.tracing import bounded_call

__all__ = ["Metrics"]

#: stoic.invocation.duration's bucket bounds (ms): the SDK's default explicit buckets.
DURATION_BOUNDS = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0,
                   2500.0, 5000.0, 7500.0, 10000.0)


class _Durations:
    """`stoic.invocation.duration` (ms) by (function, zone): a cumulative explicit-bucket
    histogram with the SDK's semantics (a value lands in the first bucket whose bound is
    >= it), recorded with a bisect and a few additions under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = time.time_ns()
        # (function, zone) -> [count, sum, bucket counts, min, max]
        self._series: dict[tuple[str, str], list[Any]] = {}

    def record(self, function: str, zone: str, ms: float) -> None:
        bucket = bisect.bisect_left(DURATION_BOUNDS, ms)
        with self._lock:
            series = self._series.get((function, zone))
            if series is None:
                series = self._series[(function, zone)] = [
                    0, 0.0, [0] * (len(DURATION_BOUNDS) + 1), ms, ms]
            series[0] += 1
            series[1] += ms
            series[2][bucket] += 1
            if ms < series[3]:
                series[3] = ms
            if ms > series[4]:
                series[4] = ms

    def metric(self) -> Metric | None:
        with self._lock:
            current = [(key, [v[0], v[1], list(v[2]), v[3], v[4]])
                       for key, v in self._series.items()]
        if not current:
            return None
        now = time.time_ns()
        points = [HistogramDataPoint(
            attributes={"function": function, "zone": zone},
            start_time_unix_nano=self._start, time_unix_nano=now, count=count, sum=total,
            bucket_counts=buckets, explicit_bounds=DURATION_BOUNDS, min=low, max=high)
            for (function, zone), (count, total, buckets, low, high) in current]
        return Metric(name="stoic.invocation.duration", description="Invocation latency",
                      unit="ms", data=Histogram(
                          data_points=points,
                          aggregation_temporality=AggregationTemporality.CUMULATIVE))


def _add_at_collection(reader: MetricReader, durations: _Durations, resource: Resource) -> None:
    """Make `reader` hand on each collection with the durations histogram added (in the
    "stoic" scope of `resource`). Wraps the reader's `_receive_metrics`, the SDK's one
    hook between collecting and exporting/storing, on this reader instance only."""
    receive = reader._receive_metrics

    def receive_with_durations(metrics_data: MetricsData, timeout_millis: float = 10_000,
                               **kwargs: Any) -> None:
        metric = durations.metric()
        if metric is not None:
            metrics_data = _with_metric(metrics_data, metric, resource)
        receive(metrics_data, timeout_millis, **kwargs)

    reader._receive_metrics = receive_with_durations  # type: ignore[method-assign]


def _with_metric(data: MetricsData | None, metric: Metric, resource: Resource) -> MetricsData:
    resources = list(data.resource_metrics) if data is not None else []
    for i, rm in enumerate(resources):
        scopes = list(rm.scope_metrics)
        for j, sm in enumerate(scopes):
            if sm.scope.name == "stoic":
                scopes[j] = ScopeMetrics(sm.scope, [*sm.metrics, metric], sm.schema_url)
                resources[i] = ResourceMetrics(rm.resource, scopes, rm.schema_url)
                return MetricsData(resources)
        scopes.append(ScopeMetrics(InstrumentationScope("stoic"), [metric], ""))
        resources[i] = ResourceMetrics(rm.resource, scopes, rm.schema_url)
        return MetricsData(resources)
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(
        InstrumentationScope("stoic"), [metric], "")], "")])


class Metrics:
    """stoic.invocations, stoic.errors, stoic.restarts, stoic.retries (counters) and
    stoic.invocation.duration (histogram, ms), all with attributes `function` and `zone`;
    invocations and errors also carry `outcome`."""

    def __init__(
        self,
        resource: Resource,
        *,
        readers: tuple[MetricReader, ...] = (),
        prometheus: tuple[str, int] | None = None,
    ) -> None:
        """`prometheus=(host, port)` adds an InMemoryMetricReader served as Prometheus
        text on that address (port 0 = any free port; see `prometheus_address`). Raises
        OSError if the address cannot be bound."""
        self._memory: InMemoryMetricReader | None = None
        self._server: PrometheusServer | None = None
        all_readers = list(readers)
        if prometheus is not None:
            self._memory = InMemoryMetricReader()
            all_readers.append(self._memory)
        self._provider = MeterProvider(resource=resource, metric_readers=all_readers,
                                       shutdown_on_exit=False)
        meter = self._provider.get_meter("stoic")
        # Counters are counted here (a dict increment under a lock) and read by the SDK
        # at collection through observable counters: the SDK's synchronous add() costs
        # tens of microseconds per call, on every invocation's path.
        self._lock = threading.Lock()
        self._counts: dict[str, dict[tuple[tuple[str, str], ...], int]] = {
            name: {} for name in ("invocations", "errors", "restarts", "retries")}
        for name, description in (
                ("invocations", "Invocations finished, by outcome"),
                ("errors", "Invocations that did not succeed"),
                ("restarts", "Function instance restarts"),
                ("retries", "Invocation attempts after the first")):
            meter.create_observable_counter(f"stoic.{name}", callbacks=[self._observer(name)],
                                            unit="1", description=description)
        # The latency histogram is aggregated here too (the SDK has no observable
        # histogram, and its record() costs tens of microseconds): each reader's
        # collection gets it added as one more metric of the "stoic" scope.
        self._durations = _Durations()
        for reader in all_readers:
            _add_at_collection(reader, self._durations, resource)
        if prometheus is not None and self._memory is not None:
            self._server = PrometheusServer(self._memory, prometheus[0], prometheus[1])
        self._shut = False
        # With no reader nobody can ever read a measurement: skip recording altogether
        # (the SDK's add/record cost microseconds each even then, on every invocation).
        self._recording = bool(all_readers)

    @classmethod
    def from_env(
        cls,
        service_name: str = "stoic",
        *,
        node_id: str = "",
        zone: str = "",
        role: str = "node",
        prometheus: tuple[str, int] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Metrics:
        """OTLP metrics export when OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT is set (and not
        OTEL_METRICS_EXPORTER=none / OTEL_SDK_DISABLED=true); Prometheus when asked.
        Raises InvalidTelemetryConfig for unusable OTEL_* values, OSError for a taken port."""
        env = os.environ if environ is None else environ
        resource = build_resource(env, service_name=service_name, node_id=node_id,
                                  zone=zone, role=role)
        readers: tuple[MetricReader, ...] = ()
        endpoint = None if sdk_disabled(env) else otlp_endpoint(env, "metrics")
        if endpoint is not None:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )

            interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
            readers = (PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint.url, insecure=endpoint.insecure,
                                   timeout=endpoint.timeout),
                export_interval_millis=float(interval) if interval else None,
            ),)
        return cls(resource, readers=readers, prometheus=prometheus)

    # --- recording (cheap, non-blocking, thread-safe) ---

    def _count(self, name: str, attributes: tuple[tuple[str, str], ...]) -> None:
        counts = self._counts[name]
        with self._lock:
            counts[attributes] = counts.get(attributes, 0) + 1

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        counts = self._counts[name]

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                current = list(counts.items())
            return [Observation(value, dict(attributes)) for attributes, value in current]

        return observe

    def invocation(self, function: str, zone: str, outcome: str, duration_ms: float) -> None:
        """One finished invocation. `outcome` is "ok" or a failure kind ("error",
        "timeout", "crashed", "unavailable", ...); anything but "ok" also counts an error."""
        if not self._recording:
            return
        self._durations.record(function, zone, duration_ms)
        key = (("function", function), ("zone", zone), ("outcome", outcome))
        self._count("invocations", key)
        if outcome != "ok":
            self._count("errors", key)

    def restart(self, function: str, zone: str) -> None:
        if self._recording:
            self._count("restarts", (("function", function), ("zone", zone)))

    def retry(self, function: str, zone: str) -> None:
        if self._recording:
            self._count("retries", (("function", function), ("zone", zone)))

    # --- reading ---

    @property
    def prometheus_address(self) -> tuple[str, int] | None:
        return None if self._server is None else self._server.address

    def snapshot(self) -> MetricsData | None:
        """Current cumulative data from the in-memory reader (None without Prometheus)."""
        return None if self._memory is None else self._memory.get_metrics_data()

    def prometheus_text(self) -> str:
        return render_prometheus(self.snapshot())

    # --- lifecycle ---

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export now (blocking, bounded by `timeout` seconds)."""
        if self._shut:
            return True
        return bounded_call(lambda: self._provider.force_flush(int(timeout * 1000)),
                            timeout, "stoic-metrics-flush")

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop the Prometheus endpoint, flush and stop exporters; idempotent, bounded."""
        if self._shut:
            return True
        self._shut = True
        if self._server is not None:
            self._server.shutdown()
        return bounded_call(lambda: self._provider.shutdown(int(timeout * 1000)), timeout,
                            "stoic-metrics-shutdown")
