"""A tiny Prometheus text-format endpoint over `http.server`, reading an InMemoryMetricReader.

opentelemetry-exporter-prometheus is not a dependency, so this renders the SDK's cumulative
metrics data as Prometheus text exposition (counters as `<name>_total`, histograms as
`_bucket`/`_sum`/`_count`) on GET of any path. Deliberately simple: one thread, no auth,
no OpenMetrics negotiation; bind it to 127.0.0.1 unless a scraper elsewhere needs it.
"""

from __future__ import annotations

import http.server
import math
import re
import threading
from collections.abc import Mapping

from opentelemetry.sdk.metrics.export import (
    Histogram,
    InMemoryMetricReader,
    MetricsData,
    Sum,
)

__all__ = ["PrometheusServer", "render_prometheus"]

_BAD = re.compile(r"[^a-zA-Z0-9_:]")


def _name(name: str, unit: str) -> str:
    base = _BAD.sub("_", name)
    if unit and unit != "1":
        suffix = "_" + _BAD.sub("_", unit)
        if not base.endswith(suffix):
            base += suffix
    return base


def _labels(attrs: Mapping[str, object] | None, extra: str = "") -> str:
    parts = []
    for key, value in sorted((attrs or {}).items()):
        text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{_BAD.sub("_", key)}="{text}"')
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_prometheus(data: MetricsData | None) -> str:
    """Render cumulative SDK metrics data as Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    if data is None:
        return ""
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = metric.data
                if isinstance(points, Sum):
                    name = _name(metric.name, metric.unit or "")
                    if points.is_monotonic:
                        name += "_total"
                    lines.append(f"# HELP {name} {metric.description}")
                    lines.append(f"# TYPE {name} {'counter' if points.is_monotonic else 'gauge'}")
                    for p in points.data_points:
                        lines.append(f"{name}{_labels(p.attributes)} {_num(p.value)}")
                elif isinstance(points, Histogram):
                    name = _name(metric.name, metric.unit or "")
                    lines.append(f"# HELP {name} {metric.description}")
                    lines.append(f"# TYPE {name} histogram")
                    for hp in points.data_points:
                        cumulative = 0
                        bounds = [*hp.explicit_bounds, math.inf]
                        for bound, count in zip(bounds, hp.bucket_counts, strict=False):
                            cumulative += count
                            le = f'le="{_num(bound)}"'
                            lines.append(f"{name}_bucket{_labels(hp.attributes, le)} {cumulative}")
                        lines.append(f"{name}_sum{_labels(hp.attributes)} {_num(hp.sum)}")
                        lines.append(f"{name}_count{_labels(hp.attributes)} {hp.count}")
    return "\n".join(lines) + ("\n" if lines else "")


class PrometheusServer:
    """Serves `render_prometheus(reader.get_metrics_data())` on host:port (0 = any free).

    Starts serving in the constructor (a daemon thread named "stoic-prometheus");
    `shutdown()` stops it and closes the socket. Raises OSError if the port is taken.
    """

    def __init__(self, reader: InMemoryMetricReader, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = render_prometheus(reader.get_metrics_data()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood stderr

        self._server = http.server.HTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="stoic-prometheus", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    def shutdown(self) -> None:
        """Stop serving and close the socket; idempotent, returns within ~0.5 s."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()
