"""Benchmarks that print figures: the floor, the load generator, the report.

`stoic bench` uses these: `run_floor` measures the bare grpc.aio 2-hop floor and
`measure_target` measures any Invoker endpoint (a Stoic cluster) the same way, each load
run in its own client process; `format_table`, `ratio_lines` and `write_json` report them.
Never part of the test pass/fail.
"""

from bench._floor import FloorEndpoints, FloorStartError, ServerProcess, floor_servers, start_server
from bench._load import LoadConfig, json_payload, percentiles_us
from bench._measure import LoadRunError, LoadSettings, measure_target, run_floor, run_load_process
from bench._report import format_table, ratio_line, ratio_lines, ratios, summary, write_json

__all__ = [
    "FloorEndpoints",
    "FloorStartError",
    "LoadConfig",
    "LoadRunError",
    "LoadSettings",
    "ServerProcess",
    "floor_servers",
    "format_table",
    "json_payload",
    "measure_target",
    "percentiles_us",
    "ratio_line",
    "ratio_lines",
    "ratios",
    "run_floor",
    "run_load_process",
    "start_server",
    "summary",
    "write_json",
]
