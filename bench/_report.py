"""Print and save bench figures: a table, ratio lines, a JSON file.

A *measure* is what `measure_target` returns: ``{"target", "latency": {...},
"throughput": {...}}``. Only ratios between measures taken in the same run mean anything on
a noisy machine, so ratios are printed next to the table, in one fixed format::

    throughput ratio (stoic / floor): 1.62
    p50 ratio (stoic / floor): 0.91
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Measure = Mapping[str, Any]


def summary(measure: Measure) -> dict[str, Any]:
    """The headline figures of one measure: latency at 1 in flight, calls/s, errors."""
    latency = measure.get("latency") or {}
    throughput = measure.get("throughput") or {}
    errors: dict[str, int] = {}
    for part in (latency, throughput):
        for code, n in (part.get("errors") or {}).items():
            errors[code] = errors.get(code, 0) + n
    return {
        "p50_us": latency.get("p50_us"),
        "p90_us": latency.get("p90_us"),
        "p99_us": latency.get("p99_us"),
        "mean_us": latency.get("mean_us"),
        "calls_per_s": throughput.get("calls_per_s"),
        "in_flight": throughput.get("in_flight"),
        "throughput_p99_us": throughput.get("p99_us"),
        "errors": errors,
    }


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def format_table(measures: Mapping[str, Measure], *, title: str = "stoic bench invoke") -> str:
    """A table with one row per named measure, rendered to plain text (no colour codes)."""
    table = Table(title=title)
    table.add_column("path")
    for header in ("p50 µs", "p90 µs", "p99 µs", "mean µs", "calls/s", "in flight", "p99 µs (load)"):
        table.add_column(header, justify="right")
    table.add_column("errors")
    for name, measure in measures.items():
        s = summary(measure)
        errors = ", ".join(f"{code}={n}" for code, n in sorted(s["errors"].items())) or "0"
        table.add_row(
            name,
            _num(s["p50_us"]),
            _num(s["p90_us"]),
            _num(s["p99_us"]),
            _num(s["mean_us"]),
            _num(s["calls_per_s"]),
            _num(s["in_flight"]),
            _num(s["throughput_p99_us"]),
            errors,
        )
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue().rstrip("\n")


def ratio_line(metric: str, value: float | None, *, name: str = "stoic", base: str = "floor") -> str:
    """``f"{metric} ratio ({name} / {base}): 1.62"``, or ``n/a`` when the ratio is unknown."""
    shown = "n/a" if value is None else f"{value:.2f}"
    return f"{metric} ratio ({name} / {base}): {shown}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios(measure: Measure, baseline: Measure) -> dict[str, float | None]:
    """throughput, p50 and p99 of `measure` divided by those of `baseline`."""
    m, b = summary(measure), summary(baseline)
    return {
        "throughput": _ratio(m["calls_per_s"], b["calls_per_s"]),
        "p50": _ratio(m["p50_us"], b["p50_us"]),
        "p99": _ratio(m["p99_us"], b["p99_us"]),
    }


def ratio_lines(
    measure: Measure, baseline: Measure, *, name: str = "stoic", base: str = "floor"
) -> list[str]:
    """The ratio lines for `measure` against `baseline`, throughput first, then p50, p99."""
    return [
        ratio_line(metric, value, name=name, base=base)
        for metric, value in ratios(measure, baseline).items()
    ]


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented, key-sorted JSON to `path` (parents created); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return target


def median_interval(values: Sequence[float], confidence: float = 0.95,
                    ) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of the population `values`
    were drawn from: the order statistics x(k) and x(n+1-k), with k the largest rank for
    which P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. None when there are too few
    values for that confidence (fewer than 6 at 95 %). Exact for any continuous
    distribution, which is why the tracing benchmark uses it for its per-round ratios
    rather than a bootstrap."""
    n = len(values)
    alpha = (1.0 - confidence) / 2.0
    k, below = 0, 0.0  # below: P(B < k+1) as k grows
    for j in range(n + 1):
        below += math.comb(n, j) / 2.0 ** n  # now P(B <= j) = P(B < j + 1)
        if below > alpha:
            break
        k = j + 1
    if k < 1:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]
