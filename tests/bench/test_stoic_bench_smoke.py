"""`stoic bench` runs end to end with tiny counts (figures are not checked: no timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [
    ["invoke", "--count", "30", "--concurrency", "4", "--rounds", "1"],
    ["restart", "--kills", "3"],
    ["cold-start", "--functions", "2"],
    ["tracing", "--count", "30", "--concurrency", "4", "--rounds", "1"],
    ["chaos", "--seconds", "4", "--chaos-interval", "1.5"],
])
def test_stoic_bench_smoke(args: list[str], tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "bench", *args, "--json", str(out_json)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out_json.read_text())
    assert args[0] in figures
    if args[0] == "chaos":
        assert figures["chaos"]["async"]["lost"] == 0
    if args[0] == "tracing":  # the export mode's spans reached the sink process
        assert figures["tracing"]["spans_received"] > 0
        # ... and the mode that exports to a sink parsing nothing reached that one
        assert figures["tracing"]["raw_bytes_received"] > 0
        assert figures["tracing"]["stoic_cpu_us_per_call"][
            "OTLP export, receiver parses nothing"] > 0
        assert figures["tracing"]["stoic_cpu_us_per_call"]["OTLP export"] > 0
        assert figures["tracing"]["median_round_ratio"]["off (OTEL_SDK_DISABLED)"] == 1.0
        assert figures["tracing"]["throughput_slices"] == 3
        # too few rounds in a smoke run for a 95 % interval of the median: none is made up
        assert set(figures["tracing"]["median_round_ratio_ci95"].values()) == {None}


def test_stoic_bench_help_and_options_first() -> None:
    """All after `bench` is the benchmark's, even when it starts with an option."""
    from supervisor.cli import main

    for argv in (["bench", "-h"], ["bench", "--rounds", "2", "-h"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    bad = subprocess.run([sys.executable, "-m", "supervisor.cli", "bench", "--rounds", "2",
                          "nosuch"], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'nosuch'" in bad.stderr, bad.stderr
