"""`bench.pool_rounds`: the rounds of several tracing runs pooled into one median."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.pool_rounds import main, pooled
from bench.stoic_bench import OFF_MODE as OFF


def _run(off: list[float], export: list[float], **more: list[float]) -> dict[str, object]:
    return {"rounds": {OFF: off, "OTLP export": export, **more}}


def test_rounds_of_all_runs_are_pooled_as_own_ratios_to_off() -> None:
    # each round's ratio to that same round's off figure, not a ratio of medians
    first = _run([100.0] * 4, [90.0, 80.0, 95.0, 85.0])
    second = _run([200.0] * 4, [150.0, 190.0, 170.0, 180.0], local=[200.0] * 4)
    out = pooled([first, second])
    assert out["OTLP export"]["rounds"] == 8
    # 0.75 0.8 0.85 0.85 0.9 0.9 0.95 0.95: the upper median of 8
    assert out["OTLP export"]["median"] == pytest.approx(0.9)
    assert out["OTLP export"]["ci95"] is not None
    assert out[OFF]["median"] == 1.0
    # a mode only some runs have is pooled over those (too few rounds for an interval)
    assert out["local"] == {"rounds": 4, "median": 1.0, "ci95": None}


def test_a_run_whose_modes_have_different_round_counts_is_refused() -> None:
    with pytest.raises(ValueError, match="'OTLP export': 3 rounds, but 4 with tracing off"):
        pooled([_run([1.0] * 4, [1.0] * 3)])


def test_main_reads_bench_json_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"tracing": _run([10.0] * 6, [9.0] * 6)}))
    assert main([str(path)]) == 0
    assert "OTLP export: throughput, median of 6 rounds' own ratios to off 0.900" \
        in capsys.readouterr().out
    assert main([]) == 2
    assert "usage: python -m bench.pool_rounds" in capsys.readouterr().err
