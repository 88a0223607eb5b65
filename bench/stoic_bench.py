"""`stoic bench`: Stoic's figures, each next to a baseline measured in the same run.

    stoic bench invoke      warm sync invocations vs the bare 2-hop grpc.aio floor
    stoic bench restart     SIGKILL an instance -> first answer from its replacement
    stoic bench cold-start  deploy a new function -> its first answer
    stoic bench failover    SIGKILL a node under load: detection time, added p99, failures
    stoic bench async       durable submit throughput and submit -> done latency
    stoic bench tracing     warm invoke throughput: tracing off / local only / OTLP export
    stoic bench chaos       (or --chaos) mixed load while killing/pausing instances and nodes
    stoic bench all         all of the above but chaos

Every subcommand starts the cluster it needs (under a temporary state dir, on free ports),
prints a table, optionally writes JSON (`--json PATH`), and stops everything it started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench._measure import LoadSettings, measure_target, run_floor, run_load_process
from bench._report import format_table, median_interval, ratio_lines, write_json

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = (str(ROOT / "examples" / "hello.py"), str(ROOT / "examples" / "faulty.py"))


_STATUS: Any = None  # the live progress line (a rich spinner) while a benchmark runs


def _say(msg: str) -> None:
    """Progress: a line on stderr, and the live spinner's text when there is one."""
    print(f"  .. {msg}", file=sys.stderr, flush=True)
    if _STATUS is not None:
        _STATUS.update(f"[bold]stoic bench[/bold] {msg}")


def _free_base(count: int) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count < 65000 and all(_port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@contextmanager
def cluster(zones: Sequence[str] = ("a", "b", "c"), apps: Sequence[str] = EXAMPLES,
            store_url: str = "", env: dict[str, str] | None = None) -> Iterator[Any]:
    from supervisor._launcher import Cluster, ClusterConfig

    with tempfile.TemporaryDirectory(prefix="stoic-bench-") as tmp:
        config = ClusterConfig(apps=tuple(apps), zones=tuple(zones), port=_free_base(len(zones)),
                               state_dir=os.path.join(tmp, "state"), store_url=store_url,
                               extra_env=tuple((env or {}).items()))
        c = Cluster(config)
        _say(f"starting {len(zones)} node(s)")
        c.start(ready_timeout=60)
        try:
            yield c
        finally:
            _say("stopping the cluster")
            c.stop()


def _pct(samples: Sequence[float], q: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.002)
    raise RuntimeError(f"timed out waiting for {what}")


# --- invoke --------------------------------------------------------------------------------
def bench_invoke(args: argparse.Namespace) -> dict[str, Any]:
    """Stoic (one node, `echo`) against the floor, `--rounds` times with the order
    alternating; each round's ratios compare runs made moments apart, and the round with
    the median throughput ratio is the one reported (every round is printed).

    Stoic is measured twice per round on the same cluster: through `InvokeStream` (what
    the Python client sends: calls multiplexed on one stream) and through unary `Invoke`
    (one gRPC call per invocation, as grpcurl or a generated stub in another language)."""
    settings = LoadSettings(latency_count=args.count, throughput_count=args.count * 5,
                            concurrency=args.concurrency, warmup=min(200, args.count))
    streamed = dataclasses.replace(settings, api="stream")

    def measure_stoic() -> tuple[dict[str, Any], dict[str, Any]]:
        with cluster(zones=("a",)) as c:
            from runtime import Client

            with Client(c.addresses) as client:
                _wait(lambda: client.invoke("echo", "warm").value == "warm", 30, "echo warm")
            _say("measuring stoic (one node, echo) through InvokeStream, as the Python client")
            stream = measure_target(c.addresses[0], streamed, progress=_say)
            _say("measuring stoic (one node, echo) through unary Invoke")
            unary = measure_target(c.addresses[0], settings, progress=_say)
            return stream, unary

    def measure_floor() -> dict[str, Any]:
        _say("measuring the floor (client -> proxy -> echo server)")
        return run_floor(settings, one_hop=False, progress=_say)["floor"]

    rounds: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for r in range(args.rounds):
        _say(f"round {r + 1}/{args.rounds}")
        if r % 2 == 0:
            (stream, unary), floor = measure_stoic(), measure_floor()
        else:
            floor = measure_floor()
            stream, unary = measure_stoic()
        rounds.append((stream, unary, floor))

    def tput(measure: dict[str, Any]) -> float:
        return float(measure["throughput"]["calls_per_s"])

    def tput_ratio(row: tuple[dict[str, Any], ...], which: int = 0) -> float:
        return tput(row[which]) / tput(row[2])

    stream, unary, floor = sorted(rounds, key=tput_ratio)[len(rounds) // 2]
    print(format_table({"stoic (InvokeStream, the Python client)": stream,
                        "stoic (unary Invoke)": unary,
                        "floor (2-hop grpc.aio, unary)": floor},
                       title=f"stoic bench invoke (median of {args.rounds} rounds)"))
    for line in ratio_lines(stream, floor):
        print(line)
    for line in ratio_lines(unary, floor, name="stoic unary Invoke"):
        print(line)
    def p50_ratio(row: tuple[dict[str, Any], ...]) -> float:
        return float(row[0]["latency"]["p50_us"] / row[2]["latency"]["p50_us"])

    print("throughput ratio by round: " + ", ".join(f"{tput_ratio(p):.2f}" for p in rounds)
          + "  (unary Invoke: " + ", ".join(f"{tput_ratio(p, 1):.2f}" for p in rounds) + ")")
    print("p50 ratio by round: " + ", ".join(f"{p50_ratio(p):.2f}" for p in rounds))
    return {"stoic": stream, "stoic_unary": unary, "floor": floor,
            "throughput_ratios": [tput_ratio(p) for p in rounds],
            "unary_throughput_ratios": [tput_ratio(p, 1) for p in rounds],
            "p50_ratios": [p50_ratio(p) for p in rounds]}


# --- restart ----------------------------------------------------------------------------------
def _instance_pids(client: Any, function: str) -> list[int]:
    return [i.pid for n in client.status().nodes for p in n.pools if p.function == function
            for i in p.instances]


def bench_restart(args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL the instance, time until an invocation is answered by its replacement:
    by default (the node's started spare takes the function; a fork when none is ready),
    and with --warm-standby (a started spare instance per function). Kills are 100 ms
    apart so that the replacement's own spare is back, as it is unless a function
    crashes in a tight loop (which its circuit breaker then handles)."""
    out: dict[str, Any] = {}
    for label, standby in (("default: node spare", "0"), ("warm standby", "1")):
        samples = _restart_samples(args.kills, standby)
        out[label] = {"kills": len(samples), "p50_ms": _pct(samples, 0.5),
                      "p99_ms": _pct(samples, 0.99)}
        print(f"restart ({label}): SIGKILL -> answered by the replacement over "
              f"{len(samples)} kills: p50 {out[label]['p50_ms']:.1f} ms, "
              f"p99 {out[label]['p99_ms']:.1f} ms (goal p50 <= 15 ms)")
    return out


def _log_tail(c: Any, lines: int) -> str:
    """The last `lines` lines of each node's log (for a failure's message)."""
    out = []
    for n in c.nodes:
        try:
            with open(n.log_path, "rb") as f:
                tail = f.read().decode(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            tail = [f"(log unreadable: {exc})"]
        out.append(f"--- {n.log_path}\n" + "\n".join(tail))
    return "\n".join(out)


def _restart_samples(kills: int, standby: str) -> list[float]:
    from runtime import Client, StoicError

    samples: list[float] = []
    # measure replacement speed, not the circuit breaker: kills come faster than the
    # default restart intensity (5 in 10 s) allows
    env = {"STOIC_MAX_RESTARTS": "100000", "STOIC_WARM_STANDBY": standby}
    with cluster(zones=("a",), env=env) as c, Client(c.addresses) as client:
        _wait(lambda: _instance_pids(client, "whoami"), 30, "whoami instance")
        for i in range(kills):
            pids = _instance_pids(client, "whoami")
            if not pids:
                _wait(lambda: _instance_pids(client, "whoami"), 30, "instance")
                continue
            victim = pids[0]
            time.sleep(0.1)  # pacing of the benchmark's kills, not a wait for a result
            t0 = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            errors: list[str] = []
            for _ in range(10_000):
                if time.perf_counter() - t0 > 30:
                    status = [(p.function, p.state, [(x.pid, x.state) for x in p.instances])
                              for n in client.status(timeout=5).nodes for p in n.pools]
                    raise RuntimeError(
                        f"no answer from a replacement 30 s after killing {victim}; "
                        f"last errors: {errors[-3:]}; pools: {status}; "
                        f"the node's log ends:\n{_log_tail(c, 40)}")
                try:
                    who = client.invoke("whoami", timeout=5).value
                except StoicError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if who["pid"] != victim:
                    samples.append((time.perf_counter() - t0) * 1000)
                    break
            if i % 10 == 0:
                _say(f"kill {i + 1}/{kills}")
    return samples


# --- cold start -------------------------------------------------------------------------------
def bench_cold_start(args: argparse.Namespace) -> dict[str, Any]:
    from runtime import Client, StoicError

    samples: list[float] = []
    with cluster(zones=("a",)) as c, Client(c.addresses) as client, \
            tempfile.TemporaryDirectory(prefix="stoic-cold-") as tmp:
        for i in range(args.functions):
            name = f"cold_{os.getpid()}_{i}"
            path = Path(tmp) / f"{name}.py"
            path.write_text(
                "from runtime import function\n\n"
                f"@function(min_zones=1)\ndef {name}(event, ctx):\n    return event\n")
            t0 = time.perf_counter()
            client.deploy([str(path)])
            for _ in range(10_000):
                try:
                    if client.invoke(name, i, timeout=10).value == i:
                        break
                except StoicError:
                    time.sleep(0.001)
            samples.append((time.perf_counter() - t0) * 1000)
    out = {"count": len(samples), "p50_ms": _pct(samples, 0.5), "p99_ms": _pct(samples, 0.99)}
    print(f"cold start: deploy -> first answer over {len(samples)} functions: "
          f"p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms (goal <= 50 ms)")
    return out


# --- failover --------------------------------------------------------------------------------
def bench_failover(args: argparse.Namespace) -> dict[str, Any]:
    from runtime import Client, StoicError

    with cluster() as c:
        stop = threading.Event()
        lat: list[tuple[float, float, str]] = []  # (t, ms, node)
        failures: list[str] = []

        def load(k: int) -> None:
            with Client(c.addresses[k % 3:] + c.addresses[:k % 3]) as cl:
                for i in range(1_000_000):
                    if stop.is_set():
                        return
                    t0 = time.perf_counter()
                    try:
                        r = cl.invoke("echo", i, idempotency_key=f"f{k}-{i}", timeout=10)
                        lat.append((time.monotonic(), (time.perf_counter() - t0) * 1000,
                                    r.placement.node_id))
                    except StoicError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=load, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds / 2)  # steady load before the kill (a measurement window)
        victim = c.nodes[1]
        killed = time.monotonic()
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        _say(f"killed node {victim.node_id}")
        detected: float | None = None
        with Client([a for a in c.addresses if a != victim.address]) as watcher:
            for _ in range(10_000):  # poll the cluster's view, bounded in count and time
                st = watcher.status(timeout=2)
                if any(n.node_id == victim.node_id and not n.healthy for n in st.nodes):
                    detected = time.monotonic() - killed
                    break
                if time.monotonic() - killed > 10:
                    break
        time.sleep(max(0.0, args.seconds / 2 - (time.monotonic() - killed)))  # window after
        stop.set()
        for t in threads:
            t.join(timeout=30)
    before = [ms for t, ms, _ in lat if t < killed]
    after = [ms for t, ms, _ in lat if killed <= t < killed + 2.0]
    last_victim = max((t for t, _, n in lat if n == victim.node_id), default=killed)
    out = {
        "invocations": len(lat), "failures": len(failures), "failure_examples": failures[:3],
        "detection_s": detected,
        "last_answer_from_dead_node_s": max(0.0, last_victim - killed),
        "p99_before_ms": _pct(before, 0.99), "p99_after_kill_2s_ms": _pct(after, 0.99),
        "added_p99_ms": _pct(after, 0.99) - _pct(before, 0.99),
    }
    print(f"failover: dead node out of routing after "
          f"{detected if detected is not None else float('nan'):.2f} s; "
          f"{out['invocations']} idempotent invocations, {out['failures']} failed; "
          f"last answer routed via the dead node {out['last_answer_from_dead_node_s']:.2f} s after "
          f"the kill; p99 {out['p99_before_ms']:.1f} ms before, {out['p99_after_kill_2s_ms']:.1f} ms "
          f"in the 2 s after (goal: detection <= 1 s, 0 failed)")
    return out


# --- async ----------------------------------------------------------------------------------
def bench_async(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from runtime import AsyncClient
    from runtime.wire import InvocationState

    results: dict[str, Any] = {}
    stores = [("sqlite", "")]
    if args.redis:
        stores.append(("redis", args.redis))
    for label, url in stores:
        with cluster(store_url=url) as c:
            async def run(c: Any = c) -> dict[str, Any]:
                async with AsyncClient(c.addresses) as client:
                    ids: list[str] = []
                    submitted: dict[str, float] = {}
                    t0 = time.perf_counter()

                    async def submit(k: int) -> None:
                        for i in range(k, args.count, 32):
                            inv = await client.invoke_async("echo", {"i": i})
                            submitted[inv] = time.time()
                            ids.append(inv)

                    async with anyio.create_task_group() as tg:
                        for k in range(32):
                            tg.start_soon(submit, k)
                    submit_s = time.perf_counter() - t0
                    done: dict[str, float] = {}
                    deadline = time.monotonic() + 300
                    pending = set(ids)
                    while pending and time.monotonic() < deadline:
                        for inv in list(pending)[:256]:
                            info = await client.get_invocation(inv)
                            if info.state == InvocationState.SUCCEEDED:
                                end = max((a.ended_at or 0) for a in info.attempts)
                                done[inv] = end - submitted[inv]
                                pending.discard(inv)
                        await anyio.sleep(0.05)
                    lat = [v * 1000 for v in done.values()]
                    return {"submitted": len(ids), "submit_per_s": len(ids) / submit_s,
                            "completed": len(done), "lost_or_pending": len(pending),
                            "done_p50_ms": _pct(lat, 0.5), "done_p99_ms": _pct(lat, 0.99)}

            r = anyio.run(run)
            results[label] = r
            print(f"async ({label}): {r['submitted']} durable submits at {r['submit_per_s']:.0f}/s "
                  f"(32 in flight); submit->done p50 {r['done_p50_ms']:.0f} ms, "
                  f"p99 {r['done_p99_ms']:.0f} ms; not completed: {r['lost_or_pending']}")
    return results


# --- tracing ----------------------------------------------------------------------------------
_ROLES = (("runtime._tracing.shipper", "exporter"), ("bench.otlp_sink", "sink"),
          ("supervisor.cli", "node"), ("runtime._worker", "worker"))


def _process_cpu(roots: Sequence[int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by `roots` and their descendants, summed by
    role (node, worker, exporter, sink; others are left out), read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    role: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it exited meanwhile
        pid = int(entry)
        parent[pid] = int(stat[1])
        cpu[pid] = (int(stat[11]) + int(stat[12])) / ticks
        role[pid] = next((name for marker, name in _ROLES if marker in cmdline), "")
    wanted = set(roots)
    for _ in range(16):  # descendants, depth-bounded
        more = {pid for pid, ppid in parent.items() if ppid in wanted} - wanted
        if not more:
            break
        wanted |= more
    out: dict[str, float] = {}
    for pid in wanted:
        if role.get(pid):
            out[role[pid]] = out.get(role[pid], 0.0) + cpu.get(pid, 0.0)
    return out


def _settled(roots: Sequence[int], timeout: float = 15.0) -> None:
    """Wait (bounded) until the processes under `roots` are idle, so that start-up work
    (the exporter child importing the OTLP exporter, say) is not counted as per-call CPU."""
    deadline = time.monotonic() + timeout
    last = sum(_process_cpu(roots).values())
    while time.monotonic() < deadline:
        time.sleep(0.3)  # a sampling interval, not a wait for an event
        now = sum(_process_cpu(roots).values())
        if now - last < 0.02:
            return
        last = now


@contextmanager
def _otlp_sink(raw: bool = False) -> Iterator[tuple[str, Callable[[], int], int]]:
    """A `bench.otlp_sink` process: yields (endpoint, spans received so far, its pid);
    `raw`: one that parses nothing (bytes received so far, not spans)."""
    import subprocess

    from bench._floor import child_env, stop_process

    argv = [sys.executable, "-m", "bench.otlp_sink", *(["--raw"] if raw else [])]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=child_env(), text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError(f"bench.otlp_sink did not start (printed {line!r})")
        stdin, stdout = proc.stdin, proc.stdout

        def count() -> int:
            stdin.write("count\n")
            stdin.flush()
            return int(stdout.readline())

        yield f"http://127.0.0.1:{line[1]}", count, proc.pid
    finally:
        stop_process(proc)


OFF_MODE = "off (OTEL_SDK_DISABLED)"
RAW_MODE = "OTLP export, receiver parses nothing"


def bench_tracing(args: argparse.Namespace) -> dict[str, Any]:
    """Warm invoke throughput and p50 with tracing off, with the local recorder only (the
    default), exporting every span over OTLP/gRPC to a sink process (a collector's
    stand-in that parses and counts), exporting every span to a sink that takes the
    requests as bytes and parses nothing (which parts of export's cost are the exporting
    side's and which the receiver's, on two shared cores), and exporting one trace in ten
    (parentbased_traceidratio 0.1).

    Each round starts one single-node cluster per mode (an idle one takes ~60 ms of CPU a
    second, its pings and heartbeats: the same load beside every mode's measurement),
    measures the modes one after another, the order rotating each round (throughput in
    `--slices` turns, the modes taking turns, so that the machine's drift within the
    round is spread over all of them), and stops them: the modes of a round are
    measured within seconds of each other, where whole runs one after another would
    measure the machine's drift, and each round has
    new clusters, since one cluster can run 10-15 % faster or slower than an identical
    one for its whole life (placement, hash seeds), which kept for a whole run would be
    a bias. Each mode reports its median round, and its ratio to off is also taken round
    by round. CPU per call by process role is read from /proc around each measurement,
    over that mode's own processes."""
    settings = LoadSettings(latency_count=args.count, throughput_count=args.count * 3,
                            concurrency=args.concurrency, warmup=min(200, args.count),
                            api="stream")  # as the Python client calls
    slices = max(1, args.slices)
    per_slice = dataclasses.replace(settings, throughput_count=max(
        1, settings.throughput_count // slices))
    rounds: dict[str, list[dict[str, Any]]] = {}
    with _otlp_sink() as (endpoint, spans_received, sink_pid), \
            _otlp_sink(raw=True) as (raw_endpoint, bytes_received, raw_pid):
        sinks = [sink_pid, raw_pid]
        modes = [
            (OFF_MODE, {"OTEL_SDK_DISABLED": "true"}),
            ("local recorder (default)", {}),
            ("OTLP export", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}),
            (RAW_MODE, {"OTEL_EXPORTER_OTLP_ENDPOINT": raw_endpoint}),
            ("OTLP export, 10% sampled", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                          "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                          "OTEL_TRACES_SAMPLER_ARG": "0.1"}),
        ]
        from runtime import Client

        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            with ExitStack() as stack:
                clusters = {}
                for label, env in order:
                    _say(f"round {r + 1}/{args.rounds}: starting a cluster for {label}")
                    clusters[label] = c = stack.enter_context(cluster(zones=("a",), env=env))
                    with Client(c.addresses) as warm:
                        assert warm.invoke("echo", 1).value == 1
                this_round: dict[str, dict[str, Any]] = {}
                for label, _ in order:
                    _say(f"round {r + 1}/{args.rounds}: {label}")
                    c = clusters[label]
                    _settled([n.pid for n in c.nodes if n.pid] + sinks)
                    this_round[label] = {"latency": run_load_process(c.addresses[0], "latency",
                                                               settings)}
                # Throughput in slices, the modes taking turns: the machine's speed drifts
                # within seconds, so each mode's figure is spread over the whole round.
                turns: dict[str, list[float]] = {}  # label: [calls, seconds]
                used_cpu: dict[str, dict[str, float]] = {}
                for _ in range(slices):
                    for label, _ in order:
                        c = clusters[label]
                        roots = [n.pid for n in c.nodes if n.pid] + sinks
                        _settled(roots)
                        before = _process_cpu(roots)
                        measure = run_load_process(c.addresses[0], "throughput", per_slice)
                        after = _process_cpu(roots)
                        acc = turns.setdefault(label, [0.0, 0.0])
                        acc[0] += measure["calls_per_s"] * measure["elapsed_s"]
                        acc[1] += measure["elapsed_s"]
                        used = used_cpu.setdefault(label, {})
                        for k, v in after.items():
                            used[k] = used.get(k, 0.0) + v - before.get(k, 0.0)
                        # its percentiles: the last slice's
                        this_round[label]["throughput"] = measure
                for label, run in this_round.items():
                    ok_calls, secs = turns[label]
                    run["throughput"] = {**run["throughput"], "calls_per_s": ok_calls / secs,
                                         "elapsed_s": secs}
                    counted = slices * (per_slice.throughput_count + per_slice.warmup)
                    run["cpu_us_per_call"] = {  # at full load, warm-ups included
                        k: round(v / counted * 1e6) for k, v in sorted(used_cpu[label].items())}
                    rounds.setdefault(label, []).append(run)
        spans, raw_bytes = spans_received(), bytes_received()

    def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(runs, key=lambda m: m["throughput"]["calls_per_s"])
        return ordered[len(ordered) // 2]

    results: dict[str, Any] = {label: median_run(runs) for label, runs in rounds.items()}
    print(format_table(results, title="stoic bench tracing (median of "
                                      f"{args.rounds} interleaved rounds)"))
    base = results[OFF_MODE]["throughput"]["calls_per_s"]
    offs = [m["throughput"]["calls_per_s"] for m in rounds[OFF_MODE]]
    per_round: dict[str, float] = {}
    intervals: dict[str, list[float] | None] = {}
    for label, r in results.items():
        tput = r["throughput"]["calls_per_s"]
        each = ", ".join(f"{m['throughput']['calls_per_s']:.0f}" for m in rounds[label])
        print(f"throughput ratio ({label} / off): {tput / base:.2f}  (calls/s by round: {each})")
        # Each round measures every mode within a minute or so, so a round's own ratio
        # is less exposed to the machine's slow drift than a ratio of medians.
        ratios = [m["throughput"]["calls_per_s"] / off
                  for m, off in zip(rounds[label], offs, strict=True)]
        per_round[label] = sorted(ratios)[len(ratios) // 2]
        interval = median_interval(ratios)
        intervals[label] = list(interval) if interval is not None else None
        shown = (f"95 % confidence interval {interval[0]:.2f}-{interval[1]:.2f}; "
                 if interval is not None else "")
        print(f"  median of the rounds' own ratios: {per_round[label]:.2f}  ({shown}by round: "
              + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    results["median_round_ratio"] = per_round
    results["throughput_slices"] = slices
    # the machine's noise, stated: where the median of all such rounds lies (distribution-
    # free, from the order statistics; needs 6 rounds or more)
    results["median_round_ratio_ci95"] = intervals
    for label, runs in rounds.items():
        cpu: dict[str, list[int]] = {}
        for m in runs:
            for k, v in m["cpu_us_per_call"].items():
                cpu.setdefault(k, []).append(v)
        shown = ", ".join(f"{k} {sorted(v)[len(v) // 2]}" for k, v in sorted(cpu.items()))
        print(f"CPU µs per call at {args.concurrency} in flight, median of rounds ({label}): "
              f"{shown}")
    # Stoic's own processes (the sink stands for a collector on another machine): less
    # noisy than throughput on a shared machine, since it does not depend on scheduling.
    def stoic(m: dict[str, Any]) -> float:  # node + worker + exporter, per call
        return float(sum(v for k, v in m["cpu_us_per_call"].items() if k != "sink"))

    stoic_cpu: dict[str, float] = {}
    for label, runs in rounds.items():
        totals = sorted(stoic(m) for m in runs)
        stoic_cpu[label] = totals[len(totals) // 2]
    base_cpu = stoic_cpu[OFF_MODE] or 1.0
    for label, total in stoic_cpu.items():
        print(f"Stoic CPU per call, node + worker + exporter ({label}): {total:.0f} µs, "
              f"{total / base_cpu:.2f}× off")
    results["stoic_cpu_us_per_call"] = stoic_cpu
    # ... and round by round, as for throughput: each round's own CPU ratio to off
    cpu_ratio: dict[str, list[float]] = {}
    off_runs = rounds[OFF_MODE]
    for label, runs in rounds.items():
        ratios = [stoic(m) / (stoic(o) or 1.0) for m, o in zip(runs, off_runs, strict=True)]
        interval = median_interval(ratios)
        median = sorted(ratios)[len(ratios) // 2]
        cpu_ratio[label] = [median, *interval] if interval is not None else [median]
        print(f"  Stoic CPU, median of the rounds' own ratios ({label}): {median:.2f}"
              + (f" (95 % confidence interval {interval[0]:.2f}-{interval[1]:.2f})"
                 if interval is not None else ""))
    results["stoic_cpu_round_ratio"] = cpu_ratio
    print(f"spans received over OTLP: {spans}; bytes received by the sink that parses "
          f"nothing: {raw_bytes}")
    results["spans_received"] = spans
    results["raw_bytes_received"] = raw_bytes
    results["rounds"] = {label: [m["throughput"]["calls_per_s"] for m in runs]
                         for label, runs in rounds.items()}
    return results


# --- chaos -----------------------------------------------------------------------------------
def bench_chaos(args: argparse.Namespace) -> dict[str, Any]:
    """Mixed sync and async load for `--seconds` while killing and pausing random instances
    and nodes; then every invocation is accounted for."""
    import random

    from runtime import Client, StoicError
    from runtime.wire import InvocationState

    rng = random.Random(args.seed)
    sync_ok = 0
    sync_failed: list[str] = []
    async_ids: list[str] = []
    lock = threading.Lock()
    events: list[str] = []
    with cluster() as c:
        stop = threading.Event()

        def sync_load(k: int) -> None:
            nonlocal sync_ok
            with Client(c.addresses[k % 3:] + c.addresses[:k % 3]) as cl:
                for i in range(1_000_000):
                    if stop.is_set():
                        return
                    try:
                        cl.invoke("echo", i, idempotency_key=f"s{k}-{i}", timeout=15)
                        with lock:
                            sync_ok += 1
                    except StoicError as exc:
                        with lock:
                            sync_failed.append(f"{type(exc).__name__}: {str(exc)[:80]}")

        def async_load(k: int) -> None:
            with Client(c.addresses[k % 3:] + c.addresses[:k % 3]) as cl:
                for i in range(1_000_000):
                    if stop.is_set():
                        return
                    try:
                        inv = cl.invoke_async("echo", i, idempotency_key=f"a{k}-{i}", timeout=15)
                        with lock:
                            async_ids.append(inv)
                    except StoicError as exc:  # not acknowledged: not counted as submitted
                        with lock:
                            events.append(f"submit refused: {type(exc).__name__}")

        def chaos() -> None:
            with Client(c.addresses) as cl:
                while not stop.wait(args.chaos_interval):
                    action = rng.choice(["kill-instance", "pause-node", "kill-node"])
                    try:
                        if action == "kill-instance":
                            pids = [i.pid for n in cl.status(timeout=3).nodes for p in n.pools
                                    for i in p.instances]
                            if pids:
                                os.kill(rng.choice(pids), signal.SIGKILL)
                        elif action == "pause-node":
                            n = rng.choice(c.nodes)
                            if n.alive() and n.pid:
                                os.kill(n.pid, signal.SIGSTOP)
                                time.sleep(rng.uniform(0.5, 2.0))  # the pause itself
                                os.kill(n.pid, signal.SIGCONT)
                        else:
                            n = rng.choice(c.nodes)
                            if n.alive() and n.proc is not None:
                                n.proc.kill()
                                n.proc.wait(timeout=10)
                                c.restart_node(n.node_id)
                        events.append(action)
                        _say(f"chaos: {action}")
                    except (StoicError, OSError, RuntimeError) as exc:
                        events.append(f"{action} failed: {exc}")

        threads = ([threading.Thread(target=sync_load, args=(k,)) for k in range(3)]
                   + [threading.Thread(target=async_load, args=(k,)) for k in range(3)]
                   + [threading.Thread(target=chaos)])
        for t in threads:
            t.start()
        time.sleep(args.seconds)  # the bounded load window
        stop.set()
        for t in threads:
            t.join(timeout=60)
        _say(f"waiting for {len(async_ids)} async invocations to finish")
        states: dict[str, str] = {}
        multi = 0
        with Client(c.addresses) as cl:
            pending = set(async_ids)
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline:
                for inv in list(pending)[:200]:
                    try:
                        info = cl.get_invocation(inv, timeout=5)
                    except StoicError:
                        continue
                    if info.state in (InvocationState.SUCCEEDED, InvocationState.FAILED,
                                      InvocationState.DEAD_LETTERED):
                        states[inv] = info.state.name
                        multi += len(info.attempts) > 1
                        pending.discard(inv)
                time.sleep(0.1)
    reasons: dict[str, int] = {}
    for r in sync_failed:
        reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
    out = {
        "seconds": args.seconds, "chaos_actions": [e for e in events if "failed" not in e],
        "sync": {"succeeded": sync_ok, "failed": len(sync_failed), "failure_reasons": reasons},
        "async": {"acknowledged": len(async_ids),
                  "succeeded": sum(1 for v in states.values() if v == "SUCCEEDED"),
                  "failed": sum(1 for v in states.values() if v != "SUCCEEDED"),
                  "lost": len(pending), "executed_more_than_once": multi},
    }
    print(f"chaos ({args.seconds:g} s, {len(out['chaos_actions'])} actions: "
          f"{', '.join(sorted(set(out['chaos_actions'])))}):")
    print(f"  sync : succeeded {sync_ok}, failed {len(sync_failed)} {reasons or ''}")
    a = out["async"]
    print(f"  async: acknowledged {a['acknowledged']}, succeeded {a['succeeded']}, failed "
          f"{a['failed']}, lost {a['lost']}, executed more than once {a['executed_more_than_once']}")
    return out


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "invoke": bench_invoke, "restart": bench_restart, "cold-start": bench_cold_start,
    "failover": bench_failover, "async": bench_async, "tracing": bench_tracing,
    "chaos": bench_chaos,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stoic bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all", choices=[*COMMANDS, "all"])
    p.add_argument("--count", type=int, default=2000, help="calls per latency run / items")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--functions", type=int, default=20,
                   help="functions deployed by `cold-start` (each keeps an instance)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds for `invoke` and `tracing` (median reported)")
    p.add_argument("--slices", type=int, default=3,
                   help="`tracing`: each round's throughput runs in this many turns per mode")
    p.add_argument("--redis", default="", help="also run async against this Redis URL")
    p.add_argument("--json", default="", help="write the figures to this file")
    p.add_argument("--chaos", action="store_true", help="same as `stoic bench chaos`")
    p.add_argument("--chaos-interval", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.chaos:
        args.what = "chaos"
    chosen = [c for c in COMMANDS if c != "chaos"] if args.what == "all" else [args.what]
    figures: dict[str, Any] = {}
    from rich.console import Console

    global _STATUS
    console = Console(stderr=True)
    for name in chosen:
        print(f"== stoic bench {name}", flush=True)
        with console.status(f"[bold]stoic bench[/bold] {name}") as status:
            _STATUS = status
            try:
                figures[name] = COMMANDS[name](args)
            finally:
                _STATUS = None
    if args.json:
        write_json(args.json, figures)
        print(f"wrote {args.json}")
    else:
        json.dumps(figures, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
