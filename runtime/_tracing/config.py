"""Reading the standard OTEL_* environment variables into plain values.

Stoic reads the variables itself (from an injectable mapping, default `os.environ`) rather
than letting each SDK component read `os.environ` on its own, so that one node's
configuration is visible in one place and tests need not mutate the process environment.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.version import __version__ as _sdk_version

__all__ = ["InvalidTelemetryConfig", "OtlpEndpoint", "batch_options", "build_resource",
           "otlp_endpoint", "sampler_from_env", "sdk_disabled"]


class InvalidTelemetryConfig(ValueError):
    """An OTEL_* variable has a value Stoic cannot use (your configuration): names the
    variable and the value."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        super().__init__(f"{variable}={value!r}: expected {expected}")
        self.variable = variable
        self.value = value


@dataclass(frozen=True, slots=True)
class OtlpEndpoint:
    """Where to send OTLP/gRPC, and whether without TLS."""

    url: str
    insecure: bool
    timeout: float  # seconds per export call, retries included


def sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def otlp_endpoint(env: Mapping[str, str], signal: str) -> OtlpEndpoint | None:
    """The OTLP/gRPC endpoint for `signal` ("traces" or "metrics"), or None for no export.

    Honours OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT over OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_{SIGNAL}_EXPORTER=none, *_INSECURE (for endpoints without a scheme) and *_TIMEOUT
    (milliseconds per the spec; default 10 s). Raises InvalidTelemetryConfig for an exporter
    or protocol other than otlp over grpc, or a timeout that is not a number.
    """
    upper = signal.upper()
    exporter = env.get(f"OTEL_{upper}_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise InvalidTelemetryConfig(f"OTEL_{upper}_EXPORTER", exporter, "'otlp' or 'none'")
    for var in (f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(var, "").strip().lower()
        if protocol:
            if protocol != "grpc":
                raise InvalidTelemetryConfig(var, protocol, "'grpc' (the only one installed)")
            break
    url = (env.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT", "").strip()
           or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
    if not url:
        return None
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "http":
        insecure = True
    elif scheme == "https":
        insecure = False
    else:
        flag = (env.get(f"OTEL_EXPORTER_OTLP_{upper}_INSECURE")
                or env.get("OTEL_EXPORTER_OTLP_INSECURE") or "false")
        insecure = flag.strip().lower() == "true"
    timeout = 10.0
    for var in (f"OTEL_EXPORTER_OTLP_{upper}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        raw = env.get(var, "").strip()
        if raw:
            try:
                timeout = float(raw) / 1000.0
            except ValueError:
                raise InvalidTelemetryConfig(var, raw, "milliseconds") from None
            break
    return OtlpEndpoint(url=url, insecure=insecure, timeout=timeout)


_BSP = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
    "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
}


def batch_options(env: Mapping[str, str]) -> dict[str, int]:
    """BatchSpanProcessor keyword arguments from the OTEL_BSP_* variables that are set
    (unset ones are left to the SDK's defaults). Raises InvalidTelemetryConfig for a value
    that is not a positive integer."""
    out: dict[str, int] = {}
    for var, kwarg in _BSP.items():
        raw = env.get(var, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) <= 0:
                raise InvalidTelemetryConfig(var, raw, "a positive integer")
            out[kwarg] = int(raw)
    return out


_SAMPLERS = ("always_on", "always_off", "traceidratio",
             "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio")


def sampler_from_env(env: Mapping[str, str]) -> sampling.Sampler:
    """OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, default parentbased_always_on.

    Raises InvalidTelemetryConfig for an unknown sampler or a ratio outside [0, 1].
    """
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in _SAMPLERS:
        raise InvalidTelemetryConfig("OTEL_TRACES_SAMPLER", name, " | ".join(_SAMPLERS))
    ratio = 1.0
    if name.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise InvalidTelemetryConfig("OTEL_TRACES_SAMPLER_ARG", raw, "a ratio in [0, 1]")
    root: sampling.Sampler
    if name.endswith("always_on"):
        root = sampling.ALWAYS_ON
    elif name.endswith("always_off"):
        root = sampling.ALWAYS_OFF
    else:
        root = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def _resource_attributes_from_env(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return out


def build_resource(
    env: Mapping[str, str] | None = None,
    *,
    service_name: str = "stoic",
    node_id: str = "",
    zone: str = "",
    role: str = "node",
) -> Resource:
    """The Resource every span and metric of this process carries.

    Precedence (later wins): SDK defaults (telemetry.sdk.*), `service_name`,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, then what Stoic knows for certain —
    service.instance.id (node id), cloud.availability_zone (zone), stoic.role — when given.
    """
    env = os.environ if env is None else env
    attrs: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version,
        "service.name": service_name,
    }
    attrs.update(_resource_attributes_from_env(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    env_service = env.get("OTEL_SERVICE_NAME", "").strip()
    if env_service:
        attrs["service.name"] = env_service
    if node_id:
        attrs["service.instance.id"] = node_id
    if zone:
        attrs["cloud.availability_zone"] = zone
    if role:
        attrs["stoic.role"] = role
    return Resource(attrs)
