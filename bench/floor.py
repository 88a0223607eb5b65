"""Measure the floor alone and print the table: ``python -m bench.floor [--json out.json]``.

The floor is client -> grpc.aio forwarding proxy -> grpc.aio echo server (2 unary hops, no
runtime logic); the 1-hop row (client -> echo server) is shown for reference.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench._measure import LoadSettings, run_floor
from bench._report import format_table, ratio_lines, write_json


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--latency-count", type=int, default=2000)
    parser.add_argument("--throughput-count", type=int, default=20000)
    parser.add_argument("--throughput-seconds", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true", help="servers and client on uvloop")
    parser.add_argument("--no-one-hop", action="store_true", help="skip the 1-hop reference")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        settings = LoadSettings(
            payload_bytes=args.payload_bytes,
            latency_count=args.latency_count,
            throughput_count=args.throughput_count,
            throughput_seconds=args.throughput_seconds,
            concurrency=args.concurrency,
            warmup=args.warmup,
            channels=args.channels,
            uvloop=args.uvloop,
        )
    except ValueError as exc:
        parser.error(str(exc))

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    result = run_floor(settings, one_hop=not args.no_one_hop, progress=progress)
    rows = {"floor (2-hop)": result["floor"]}
    if result["one_hop"] is not None:
        rows["1-hop (direct)"] = result["one_hop"]
    suffix = " [uvloop]" if args.uvloop else ""
    print(format_table(rows, title=f"floor: grpc.aio unary, {args.payload_bytes}-byte payload{suffix}"))
    if result["one_hop"] is not None:
        for line in ratio_lines(result["floor"], result["one_hop"], name="2-hop", base="1-hop"):
            print(line)
    if args.json:
        print(f"wrote {write_json(args.json, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
