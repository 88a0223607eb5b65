"""Measure an Invoker endpoint (the floor or a Stoic cluster) with the load generator process.

`measure_target` runs `python -m bench._load` twice in separate client processes (latency
with one call in flight, then throughput with `concurrency` in flight) and returns both
results. `run_floor` starts the floor's echo server and proxy, measures the 2-hop floor
(and, by default, the 1-hop echo server alone for reference), and stops everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench._floor import REPO_ROOT, child_env, floor_servers, stop_process

Progress = Callable[[str], None]


class LoadRunError(RuntimeError):
    """The load generator process failed or produced no result (a bench fault, not the target's)."""


@dataclass(frozen=True)
class LoadSettings:
    """How hard and how long to measure. Durations are seconds.

    `throughput_seconds`, when set, also ends the throughput run after that long (whichever
    of it and `throughput_count` comes first). `timeout` bounds each client process.
    """

    function: str = "echo"
    payload_bytes: int = 100
    latency_count: int = 2000
    throughput_count: int = 20000
    throughput_seconds: float | None = None
    concurrency: int = 64
    warmup: int = 200
    channels: int = 1
    uvloop: bool = False
    timeout: float = 300.0
    api: str = "unary"  # "stream": calls over Invoker.InvokeStream, as the Python client

    def __post_init__(self) -> None:
        for name in ("latency_count", "throughput_count", "concurrency", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoadSettings.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"LoadSettings.warmup must be >= 0, got {self.warmup!r}")
        if self.timeout <= 0:
            raise ValueError(f"LoadSettings.timeout must be > 0, got {self.timeout!r}")


def run_load_process(target: str, mode: str, settings: LoadSettings) -> dict[str, Any]:
    """Run one load generator process against `target` and return its JSON result.

    The result carries `client_pid`, the pid of the (already reaped) client process.
    Raises LoadRunError if the process exits non-zero, prints no JSON line, or runs longer
    than `settings.timeout` (it is then killed and reaped before raising).
    """
    count = settings.latency_count if mode == "latency" else settings.throughput_count
    argv = [
        sys.executable, "-m", "bench._load",
        "--target", target,
        "--function", settings.function,
        "--payload-bytes", str(settings.payload_bytes),
        "--mode", mode,
        "--count", str(count),
        "--concurrency", str(settings.concurrency),
        "--warmup", str(settings.warmup),
        "--channels", str(settings.channels),
        "--api", settings.api,
        "--json",
    ]  # fmt: skip
    if mode == "throughput" and settings.throughput_seconds is not None:
        argv += ["--seconds", str(settings.throughput_seconds)]
    if settings.uvloop:
        argv.append("--uvloop")
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=child_env(),
    )
    try:
        out, err = process.communicate(timeout=settings.timeout)
    except subprocess.TimeoutExpired as exc:
        raise LoadRunError(
            f"load generator ({mode} against {target}) ran over {settings.timeout} s"
        ) from exc
    finally:
        stop_process(process)
    if process.returncode != 0:
        raise LoadRunError(
            f"load generator ({mode} against {target}) exited {process.returncode}:\n"
            f"{err.decode(errors='replace')[-2000:]}"
        )
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise LoadRunError(f"load generator ({mode} against {target}) printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    result["client_pid"] = process.pid
    return result


def measure_target(
    target: str, settings: LoadSettings | None = None, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Measure any Invoker endpoint: latency at 1 in flight, then throughput.

    Returns ``{"target", "latency": {...}, "throughput": {...}}`` where each part is the load
    generator's JSON result (p50_us/p90_us/p99_us/mean_us, calls_per_s, ok, errors by status
    code, client_pid). Blocks until both client processes are done; raises LoadRunError.
    """
    settings = settings or LoadSettings()
    if progress:
        progress(f"latency: {settings.latency_count} calls, 1 in flight -> {target}")
    latency = run_load_process(target, "latency", settings)
    if progress:
        progress(
            f"throughput: {settings.throughput_count} calls, "
            f"{settings.concurrency} in flight -> {target}"
        )
    throughput = run_load_process(target, "throughput", settings)
    return {"target": target, "latency": latency, "throughput": throughput}


def run_floor(
    settings: LoadSettings | None = None,
    *,
    one_hop: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Start the floor, measure it, stop it; return the figures.

    Returns ``{"floor": measure, "one_hop": measure | None, "settings": {...},
    "pids": {"echo", "proxy", "clients": [...]}}`` where "floor" is client -> proxy -> echo
    (2 hops) and "one_hop" is client -> echo directly. Every process it started has exited
    and been reaped when it returns or raises (FloorStartError, LoadRunError).
    """
    settings = settings or LoadSettings()
    if progress:
        progress("starting the floor (echo server + proxy)")
    with floor_servers(uvloop=settings.uvloop) as servers:
        floor = measure_target(servers.proxy.target, settings, progress=progress)
        direct = measure_target(servers.echo.target, settings, progress=progress) if one_hop else None
    measures = [m for m in (floor, direct) if m is not None]
    return {
        "floor": floor,
        "one_hop": direct,
        "settings": asdict(settings),
        "pids": {
            "echo": servers.echo.pid,
            "proxy": servers.proxy.pid,
            "clients": [m[mode]["client_pid"] for m in measures for mode in ("latency", "throughput")],
        },
    }
