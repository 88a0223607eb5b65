"""Tracing and metrics for Stoic (issue 7): owned OTel providers, W3C propagation, a bounded
local span recorder with a tree view, supervisor events as span events plus linked spans,
and metrics with an optional Prometheus endpoint. Re-exported from `runtime`."""

from runtime._tracing.config import InvalidTelemetryConfig, build_resource
from runtime._tracing.metrics import Metrics
from runtime._tracing.propagation import extract, inject
from runtime._tracing.recorder import (
    ATTR_ATTEMPT,
    ATTR_FUNCTION,
    ATTR_INVOCATION_ID,
    ATTR_REASON,
    ATTR_ROLE,
    EventRecord,
    LocalRecorder,
    SpanRecord,
    render_tree,
)
from runtime._tracing.tracing import SUPERVISOR_EVENTS, Tracing

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_FUNCTION",
    "ATTR_INVOCATION_ID",
    "ATTR_REASON",
    "ATTR_ROLE",
    "SUPERVISOR_EVENTS",
    "EventRecord",
    "InvalidTelemetryConfig",
    "LocalRecorder",
    "Metrics",
    "SpanRecord",
    "Tracing",
    "build_resource",
    "extract",
    "inject",
    "render_tree",
]
