"""Pool the rounds of several `stoic bench tracing --json` files.

    python -m bench.pool_rounds run1.json run2.json ...

Each run's rounds give each mode's own ratio to tracing off, round by round (the modes of a
round are measured within seconds of each other, on clusters started together). Runs of
the same code on the same machine are samples of one population, so their rounds can be
pooled: the median of all of them, with its distribution-free 95 % interval, narrows as
rounds are added, where one run's interval on this noisy machine spans ±5 %. Modes that
some runs lack are pooled over the runs that have them. Throughput only: a run's CPU
figures per round are not in its JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from bench._report import median_interval
from bench.stoic_bench import OFF_MODE

USAGE = "python -m bench.pool_rounds run1.json run2.json ..."


def pooled(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{mode: {"rounds", "median", "ci95"}} over the rounds of `runs` (tracing figures)."""
    ratios: dict[str, list[float]] = {}
    for run in runs:
        rounds = run["rounds"]
        off = rounds[OFF_MODE]
        for mode, calls in rounds.items():
            if len(calls) != len(off):
                raise ValueError(f"{mode!r}: {len(calls)} rounds, but {len(off)} with tracing off")
            ratios.setdefault(mode, []).extend(c / o for c, o in zip(calls, off, strict=True))
    out: dict[str, dict[str, Any]] = {}
    for mode, values in ratios.items():
        ordered = sorted(values)
        interval = median_interval(ordered)
        out[mode] = {"rounds": len(ordered), "median": ordered[len(ordered) // 2],
                     "ci95": list(interval) if interval is not None else None}
    return out


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    runs = []
    for path in argv:
        with open(path) as f:
            figures = json.load(f)
        runs.append(figures.get("tracing", figures))
    for mode, p in pooled(runs).items():
        shown = (f" (95 % confidence interval {p['ci95'][0]:.3f}-{p['ci95'][1]:.3f})"
                 if p["ci95"] is not None else "")
        print(f"{mode}: throughput, median of {p['rounds']} rounds' own ratios to off "
              f"{p['median']:.3f}{shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
