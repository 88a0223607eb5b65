"""The `stoic` command line: run nodes and clusters, invoke, inspect, break things on purpose."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_TARGETS = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053"
EXAMPLES = ("examples/hello.py", "examples/faulty.py")


def _targets(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _fail(message: str, code: int = 1) -> int:
    print(f"stoic: {message}", file=sys.stderr)
    return code


# --- node and cluster --------------------------------------------------------------
def cmd_node(args: argparse.Namespace) -> int:
    from supervisor._node import NodeConfig, run_node
    from supervisor._pool import PoolConfig

    config = NodeConfig(
        node_id=args.node_id or f"{args.zone}-{os.getpid()}",
        zone=args.zone,
        listen=args.listen,
        store_url=args.store or _default_store(args.state_dir),
        apps=tuple(args.apps),
        state_dir=args.state_dir,
        die_with_parent=args.die_with_parent,
        advertise=args.advertise,
        prometheus=args.prometheus,
        pool=PoolConfig(max_restarts=args.max_restarts, restart_period=args.restart_period,
                        warm_standby=args.warm_standby),
    )
    return run_node(config)


def _default_store(state_dir: str) -> str:
    os.makedirs(state_dir, exist_ok=True)
    return f"sqlite:///{os.path.abspath(os.path.join(state_dir, 'store.db'))}"


def cmd_up(args: argparse.Namespace) -> int:
    from supervisor._launcher import Cluster, ClusterConfig
    from supervisor._status_view import live_status

    apps = tuple(args.apps) or EXAMPLES
    apps = tuple(os.path.abspath(a) if os.path.exists(a) else a for a in apps)
    extra_env: list[tuple[str, str]] = []
    if args.jaeger:
        extra_env.append(("OTEL_EXPORTER_OTLP_ENDPOINT", args.jaeger))
    try:
        config = ClusterConfig(
            apps=apps, zones=tuple(_targets(args.zones)), nodes_per_zone=args.nodes_per_zone,
            store_url=args.store or "", port=args.port, state_dir=args.state_dir,
            extra_env=tuple(extra_env))
    except ValueError as exc:
        return _fail(str(exc), 2)
    cluster = Cluster(config)
    stopping = False

    def _on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    print(f"stoic: starting {len(cluster.nodes)} nodes in zones {', '.join(config.zones)}; "
          f"store {config.effective_store_url()}", flush=True)
    try:
        cluster.start()
        for n in cluster.nodes:
            print(f"  node {n.node_id}  zone {n.zone}  listening on {n.address}  pid {n.pid}",
                  flush=True)
        from runtime import Client

        with Client(cluster.addresses) as client:
            deployed = client.deploy(list(apps))
            names = ", ".join(f.name for f in deployed)
            print(f"stoic: deployed {names}", flush=True)
            print(f"stoic: cluster ready at {','.join(cluster.addresses)}", flush=True)
            if args.demo:
                result = client.invoke("hello", {"name": "stoic"}, idempotency_key=None)
                print(f"stoic: invoke hello -> {json.dumps(result.value)} "
                      f"(zone {result.placement.zone}, node {result.placement.node_id})",
                      flush=True)
            if args.no_status:
                while True:
                    time.sleep(3600)
            live_status(client, cluster)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        cluster.stop()
        return _fail(str(exc))
    print("\nstoic: stopping the cluster", flush=True)
    cluster.stop()
    print("stoic: stopped", flush=True)
    return 0


# --- client commands -----------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from runtime import Client

    return Client(_targets(args.target))


def cmd_invoke(args: argparse.Namespace) -> int:
    from runtime import FunctionError, StoicError

    if args.data is not None:
        try:
            event = json.loads(args.data)
        except json.JSONDecodeError as exc:
            return _fail(f"--data is not valid JSON: {exc}", 2)
    else:
        event = None
    try:
        with _client(args) as client:
            if args.async_:
                inv_id = client.invoke_async(args.name, event, idempotency_key=args.idempotency_key)
                if not args.wait:
                    print(inv_id)
                    return 0
                info = client.wait_invocation(inv_id, timeout=args.timeout or 60.0)
                _print_json(info.to_json())
                return 0 if info.state.name == "SUCCEEDED" else 1
            result = client.invoke(args.name, event, timeout=args.timeout,
                                   idempotency_key=args.idempotency_key)
    except FunctionError as exc:
        _print_json({"error": {"type": exc.type, "message": exc.message}})
        print(exc.traceback, file=sys.stderr)
        return 1
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    if args.verbose:
        _print_json({"invocation_id": result.invocation_id, "attempts": result.attempts,
                     "node": result.placement.node_id, "zone": result.placement.zone,
                     "pid": result.placement.pid, "result": result.value})
    else:
        _print_json(result.value)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from runtime import StoicError
    from supervisor._status_view import render_status

    try:
        with _client(args) as client:
            status = client.status()
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    if args.json:
        _print_json(status.to_json())
    else:
        render_status(status)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from runtime import StoicError

    apps = [os.path.abspath(a) if os.path.exists(a) else a for a in args.apps]
    try:
        with _client(args) as client:
            for spec in client.deploy(apps):
                print(f"deployed {spec.name} ({spec.app}:{spec.handler})")
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    return 0


def cmd_functions(args: argparse.Namespace) -> int:
    from runtime import StoicError

    try:
        with _client(args) as client:
            specs = client.functions()
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    for s in specs:
        print(f"{s.name:16} timeout={s.timeout}s retries={s.retries} memory={s.memory_mb}MB "
              f"concurrency={s.concurrency} min_zones={s.min_zones}  {s.app}")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from runtime import StoicError

    try:
        with _client(args) as client:
            if args.dlq_cmd == "list":
                for inv in client.dead_letters(limit=args.limit):
                    err = inv.error
                    print(f"{inv.invocation_id}  {inv.function}  attempts={len(inv.attempts)}  "
                          f"{err.type + ': ' + err.message if err else ''}")
                return 0
            if not args.all and not args.ids:
                return _fail("dlq redrive: give invocation ids or --all", 2)
            ids = client.redrive(None if args.all else args.ids)
            print(f"redriven: {len(ids)}")
            for i in ids:
                print(i)
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from runtime import StoicError

    try:
        with _client(args) as client:
            status = client.status()
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    if args.chaos_cmd in ("kill-node", "pause-node"):
        nodes = [n for n in status.nodes if n.node_id == args.node_id]
        if not nodes:
            return _fail(f"no node {args.node_id!r}; nodes: {[n.node_id for n in status.nodes]}")
        pid = nodes[0].pid
        if args.chaos_cmd == "kill-node":
            os.kill(pid, signal.SIGKILL)
            print(f"killed node {args.node_id} (pid {pid})")
            return 0
        os.kill(pid, signal.SIGSTOP)
        print(f"paused node {args.node_id} (pid {pid}) for {args.for_}s")
        try:
            time.sleep(args.for_)  # the pause itself is the point of this command
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"resumed node {args.node_id}")
        return 0
    # kill-instance
    for n in status.nodes:
        for p in n.pools:
            if p.function == args.function and p.instances:
                pid = p.instances[0].pid
                os.kill(pid, signal.SIGKILL)
                print(f"killed instance of {args.function} pid {pid} on node {n.node_id}")
                return 0
    return _fail(f"no running instance of {args.function!r}")


def cmd_trace(args: argparse.Namespace) -> int:
    from runtime import StoicError

    try:
        with _client(args) as client:
            text = client.trace(args.invocation_id)
    except StoicError as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    print(text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.stoic_bench import main as bench_main

    return bench_main(args.bench_args)


# --- argument parsing ----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stoic", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    node = sub.add_parser("node", help="run one node")
    node.add_argument("apps", nargs="*", help="app files or modules to deploy")
    node.add_argument("--zone", required=True)
    node.add_argument("--listen", default="127.0.0.1:50051")
    node.add_argument("--node-id", default="")
    node.add_argument("--advertise", default="",
                      help="HOST:PORT peers use to reach this node (default: --listen)")
    node.add_argument("--store", default="", help="store URL (default: SQLite under --state-dir)")
    node.add_argument("--state-dir", default=".stoic")
    node.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    node.add_argument("--prometheus", default="", metavar="HOST:PORT",
                      help="serve metrics for Prometheus to scrape at http://HOST:PORT/metrics")
    node.add_argument("--max-restarts", type=int,
                      default=int(os.environ.get("STOIC_MAX_RESTARTS", "5")),
                      help="restart intensity of each function's instances: more than this "
                           "many restarts within --restart-period opens its circuit")
    node.add_argument("--warm-standby", action="store_true",
                      default=os.environ.get("STOIC_WARM_STANDBY", "") == "1",
                      help="keep one started spare instance per function for instant restarts")
    node.add_argument("--restart-period", type=float,
                      default=float(os.environ.get("STOIC_RESTART_PERIOD", "10")))
    node.set_defaults(func=cmd_node)

    up = sub.add_parser("up", help="start a local multi-zone cluster")
    up.add_argument("apps", nargs="*", help=f"apps to deploy (default: {' '.join(EXAMPLES)})")
    up.add_argument("--zones", default="a,b,c")
    up.add_argument("--nodes-per-zone", type=int, default=1)
    up.add_argument("--store", default="")
    up.add_argument("--port", type=int, default=50051)
    up.add_argument("--state-dir", default=".stoic")
    up.add_argument("--jaeger", nargs="?", const="http://127.0.0.1:4317", default=None,
                    help="export traces to a local Jaeger (OTLP/gRPC endpoint)")
    up.add_argument("--demo", action="store_true", help="invoke hello once when ready")
    up.add_argument("--no-status", action="store_true", help="no live status display")
    up.set_defaults(func=cmd_up)

    def with_target(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--target", default=os.environ.get("STOIC_TARGET", DEFAULT_TARGETS),
                        help="node address(es), comma-separated")
        return sp

    inv = with_target(sub.add_parser("invoke", help="invoke a function"))
    inv.add_argument("name")
    inv.add_argument("--data", default=None, help="JSON event")
    inv.add_argument("--timeout", type=float, default=None)
    inv.add_argument("--idempotency-key", default="")
    inv.add_argument("--async", dest="async_", action="store_true")
    inv.add_argument("--wait", action="store_true")
    inv.add_argument("-v", "--verbose", action="store_true", help="show where it ran")
    inv.set_defaults(func=cmd_invoke)

    st = with_target(sub.add_parser("status", help="show the supervision tree"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    dep = with_target(sub.add_parser("deploy", help="deploy app files or modules"))
    dep.add_argument("apps", nargs="+")
    dep.set_defaults(func=cmd_deploy)

    fn = with_target(sub.add_parser("functions", help="list deployed functions"))
    fn.set_defaults(func=cmd_functions)

    dlq = with_target(sub.add_parser("dlq", help="dead letters"))
    dlq_sub = dlq.add_subparsers(dest="dlq_cmd", required=True)
    def sub_target(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # --target also accepted after the sub-subcommand (`stoic dlq list --target ...`)
        sp.add_argument("--target", default=argparse.SUPPRESS, help="node address(es)")
        return sp

    dl = sub_target(dlq_sub.add_parser("list"))
    dl.add_argument("--limit", type=int, default=100)
    dr = sub_target(dlq_sub.add_parser("redrive"))
    dr.add_argument("ids", nargs="*")
    dr.add_argument("--all", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    chaos = with_target(sub.add_parser("chaos", help="break things on purpose"))
    chaos_sub = chaos.add_subparsers(dest="chaos_cmd", required=True)
    kn = sub_target(chaos_sub.add_parser("kill-node"))
    kn.add_argument("node_id")
    pn = sub_target(chaos_sub.add_parser("pause-node"))
    pn.add_argument("node_id")
    pn.add_argument("--for", dest="for_", type=float, default=3.0)
    ki = sub_target(chaos_sub.add_parser("kill-instance"))
    ki.add_argument("function")
    chaos.set_defaults(func=cmd_chaos)

    tr = with_target(sub.add_parser("trace", help="print an invocation's trace"))
    tr.add_argument("invocation_id")
    tr.set_defaults(func=cmd_trace)

    bench = sub.add_parser("bench", help="run benchmarks", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # all of the rest is the benchmark's (argparse's REMAINDER would refuse a first
        # argument that looks like an option: `stoic bench -h`, `stoic bench --rounds 5 x`)
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe raises now, where it is caught
    except BrokenPipeError:
        # `stoic functions | head`: the reader left. Exit quietly, as Unix tools do (and
        # keep the interpreter's own flush at exit from raising again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    return code


if __name__ == "__main__":
    sys.exit(main())
