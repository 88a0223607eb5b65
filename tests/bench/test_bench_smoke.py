"""Smoke tests for bench/: the floor end to end with tiny counts, and the report helpers.

No timed assertions: figures are only checked for shape, never for value.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

import bench
from bench import (
    FloorStartError,
    LoadSettings,
    floor_servers,
    format_table,
    json_payload,
    percentiles_us,
    ratio_line,
    ratio_lines,
    run_floor,
    start_server,
    write_json,
)

TINY = LoadSettings(latency_count=50, throughput_count=50, warmup=5, concurrency=8, timeout=60.0)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _check_part(part: dict[str, Any], mode: str) -> None:
    assert part["mode"] == mode
    assert part["calls"] == 50
    assert part["ok"] == 50
    assert part["errors"] == {}
    for key in ("p50_us", "p90_us", "p99_us", "mean_us"):
        assert isinstance(part[key], float) and part[key] > 0
    assert part["client_pid"] != os.getpid()


def test_run_floor_end_to_end_leaves_no_process_behind() -> None:
    result = run_floor(TINY)

    for name in ("floor", "one_hop"):
        measure = result[name]
        _check_part(measure["latency"], "latency")
        _check_part(measure["throughput"], "throughput")
        assert measure["latency"]["in_flight"] == 1
        assert measure["throughput"]["in_flight"] == 8
        assert measure["throughput"]["calls_per_s"] > 0
    assert result["floor"]["target"] != result["one_hop"]["target"]
    assert result["settings"]["latency_count"] == 50

    pids = result["pids"]
    all_pids = [pids["echo"], pids["proxy"], *pids["clients"]]
    assert len(set(all_pids)) == 6
    assert all(_gone(pid) for pid in all_pids)

    table = format_table({"floor": result["floor"], "1-hop": result["one_hop"]})
    assert "floor" in table and "1-hop" in table and "p50" in table
    lines = ratio_lines(result["floor"], result["one_hop"], name="2-hop", base="1-hop")
    assert [line.split(" ratio")[0] for line in lines] == ["throughput", "p50", "p99"]


def test_servers_are_stopped_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with floor_servers() as servers:
            pids = servers.pids
            raise RuntimeError("boom")
    assert all(_gone(pid) for pid in pids)


def test_proxy_that_cannot_reach_upstream_fails_to_start_and_is_stopped() -> None:
    # Port 1 on 127.0.0.1: nothing listens, so the proxy never connects and never gets ready.
    with pytest.raises(FloorStartError, match="proxy"):
        with start_server("proxy", upstream="127.0.0.1:1", ready_timeout=1.0):
            pytest.fail("the proxy should not have become ready")


def test_json_payload_is_a_json_string_of_the_requested_size() -> None:
    for size in (2, 3, 100, 1000):
        payload = json_payload(size)
        assert len(payload) == size
        assert isinstance(json.loads(payload), str)


def test_percentiles_nearest_rank() -> None:
    figures = percentiles_us([i * 1000 for i in range(1, 101)])  # 1..100 µs
    assert figures["p50_us"] == 50.0
    assert figures["p90_us"] == 90.0
    assert figures["p99_us"] == 99.0
    assert figures["mean_us"] == 50.5
    assert percentiles_us([])["p50_us"] is None


def test_ratio_line_format() -> None:
    assert ratio_line("throughput", 1.6249) == "throughput ratio (stoic / floor): 1.62"
    assert ratio_line("p50", 0.9051) == "p50 ratio (stoic / floor): 0.91"
    assert ratio_line("p50", None) == "p50 ratio (stoic / floor): n/a"


def test_ratio_lines_divide_stoic_by_floor() -> None:
    stoic = {"latency": {"p50_us": 900.0, "p99_us": 2000.0}, "throughput": {"calls_per_s": 3000.0}}
    floor = {"latency": {"p50_us": 1000.0, "p99_us": 1000.0}, "throughput": {"calls_per_s": 2000.0}}
    assert ratio_lines(stoic, floor) == [
        "throughput ratio (stoic / floor): 1.50",
        "p50 ratio (stoic / floor): 0.90",
        "p99 ratio (stoic / floor): 2.00",
    ]


def test_format_table_shows_errors_by_code() -> None:
    measure = {
        "latency": {"p50_us": 1.0, "errors": {"UNAVAILABLE": 2}},
        "throughput": {"calls_per_s": 10.0, "errors": {"UNAVAILABLE": 1, "FUNCTION_ERROR": 3}},
    }
    assert "FUNCTION_ERROR=3, UNAVAILABLE=3" in format_table({"x": measure})


def test_write_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sub" / "out.json", {"b": 1, "a": [1.5]})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LoadSettings(concurrency=0)


def test_all_is_true() -> None:
    for name in bench.__all__:
        assert hasattr(bench, name), name


def test_median_interval_is_the_order_statistic_interval_and_covers_95_percent() -> None:
    """For 30 values the 95 % interval of the median is the 10th to the 21st smallest; too
    few values give none; and drawn again and again from a known distribution, it holds
    the true median about 95.7 % of the time (the exact coverage for n = 30)."""
    import random

    from bench._report import median_interval

    assert median_interval(list(range(30, 0, -1))) == (10, 21)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    rng = random.Random(7)
    trials, covered = 4000, 0
    for _ in range(trials):
        low, high = median_interval([rng.expovariate(1.0) for _ in range(30)])  # type: ignore[misc]
        covered += low <= math.log(2) <= high  # the exponential's median
    assert 0.945 <= covered / trials <= 0.97
