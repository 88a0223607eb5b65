"""The load generator: bounded unary Invoke load against any Invoker endpoint.

Runs in its own OS process (never in the one printing results), so that the measuring
side does not share an event loop or a GIL with the reporting side::

    python -m bench._load --target 127.0.0.1:PORT --function echo --payload-bytes 100 \\
        --mode latency --count 2000 --warmup 200 --json

- ``latency``: one call in flight; per-call latency; p50/p90/p99/mean in microseconds.
- ``throughput``: ``--concurrency`` calls in flight (64 by default) until ``--count`` calls
  have been issued or ``--seconds`` have passed, whichever comes first; calls/s.

Both modes use grpc.aio with a single channel (``--channels K`` spreads the calls over K
channels, each with its own connection), send a JSON string payload of ``--payload-bytes``
bytes with content type application/json, and print exactly one JSON line on stdout.
Failed calls are counted by gRPC status code (``FUNCTION_ERROR`` for a successful RPC whose
response carries a handler error); they are reported, never hidden, and never enter the
latency figures.

Like the floor, this speaks the generated protobuf code directly so that the measuring
client costs the same whichever endpoint it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

# Deliberate exception to "only runtime/wire.py imports runtime._proto": the load generator
# must cost the same against the floor and against Stoic, so it uses no runtime code.
from runtime._proto.stoic.v1 import invoker_pb2, invoker_pb2_grpc

MODES = ("latency", "throughput")
APIS = ("unary", "stream")
CALL_TIMEOUT = 10.0  # seconds, per call: a stuck call counts as DEADLINE_EXCEEDED


@dataclass(frozen=True)
class LoadConfig:
    """One bounded load run. Durations are seconds."""

    target: str
    function: str = "echo"
    payload_bytes: int = 100
    mode: str = "latency"
    count: int = 1000
    concurrency: int = 64
    warmup: int = 100
    seconds: float | None = None
    channels: int = 1
    api: str = "unary"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {self.api!r}")
        for name in ("count", "concurrency", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")
        if self.payload_bytes < 2:
            raise ValueError(f"payload_bytes must be >= 2 (a JSON string), got {self.payload_bytes!r}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds!r}")


def json_payload(size: int) -> bytes:
    """A JSON document (a string) of exactly `size` bytes, `size` >= 2."""
    return json.dumps("x" * (size - 2)).encode()


def percentiles_us(samples_ns: Sequence[int]) -> dict[str, float | None]:
    """p50/p90/p99/mean/min/max in microseconds (nearest-rank); None values if no samples."""
    keys = ("p50_us", "p90_us", "p99_us", "mean_us", "min_us", "max_us")
    if not samples_ns:
        return dict.fromkeys(keys)
    ordered = sorted(samples_ns)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * n) - 1)] / 1000

    return {
        "p50_us": rank(50),
        "p90_us": rank(90),
        "p99_us": rank(99),
        "mean_us": sum(ordered) / n / 1000,
        "min_us": ordered[0] / 1000,
        "max_us": ordered[-1] / 1000,
    }


class _Caller:
    """Issues Invoke calls round-robin over the channels and tallies outcomes."""

    def __init__(self, config: LoadConfig, stubs: Sequence[invoker_pb2_grpc.InvokerStub]):
        self._stubs = stubs
        self._request = invoker_pb2.InvokeRequest(
            function=config.function,
            payload=json_payload(config.payload_bytes),
            content_type="application/json",
        )
        self.errors: Counter[str] = Counter()
        self.ok = 0

    async def call(self, index: int) -> bool:
        """One call on stub `index`; True if it succeeded. Counts the outcome."""
        stub = self._stubs[index % len(self._stubs)]
        try:
            response = await stub.Invoke(self._request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] += 1
            return False
        if response.HasField("error"):
            self.errors["FUNCTION_ERROR"] += 1
            return False
        self.ok += 1
        return True

    def reset(self) -> None:
        self.errors.clear()
        self.ok = 0


class _StreamCaller(_Caller):
    """Issues calls over one Invoker.InvokeStream per channel (``--api stream``): one
    writer task per stream sends every call queued at that moment as one message, one
    reader task resolves each call's future by its call id. A call's status code other
    than OK counts as that code, as a unary call's would."""

    def __init__(self, config: LoadConfig, channels: Sequence[grpc.aio.Channel]):
        super().__init__(config, [])
        self._streams = [_Stream(channel) for channel in channels]
        self._next_id = 0

    async def start(self) -> None:
        for stream in self._streams:
            stream.start()

    async def close(self) -> None:
        for stream in self._streams:
            await stream.close()

    async def call(self, index: int) -> bool:
        self._next_id += 1
        stream = self._streams[index % len(self._streams)]
        call = invoker_pb2.StreamedInvoke(call_id=self._next_id, request=self._request,
                                          timeout=CALL_TIMEOUT)
        try:
            result = await asyncio.wait_for(stream.call(call), CALL_TIMEOUT + 1.0)
        except TimeoutError:
            self.errors["DEADLINE_EXCEEDED"] += 1
            return False
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] += 1
            return False
        if result.code != 0:
            self.errors[_CODE_NAMES.get(result.code, f"CODE_{result.code}")] += 1
            return False
        if result.response.HasField("error"):
            self.errors["FUNCTION_ERROR"] += 1
            return False
        self.ok += 1
        return True


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


_BATCH = 16  # calls per message at most, as the Python client (runtime.wire.MAX_BATCH)


class _Stream:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call: Any = invoker_pb2_grpc.InvokerStub(channel).InvokeStream()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._queue: list[Any] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._write()), asyncio.ensure_future(self._read())]

    async def call(self, call: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending[call.call_id] = future
        self._queue.append(call)
        self._wake.set()
        try:
            return await future
        finally:
            self._pending.pop(call.call_id, None)

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[:_BATCH]
                del self._queue[:_BATCH]
                await self._call.write(invoker_pb2.InvokeStreamRequest(calls=batch))

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._call.read()
                if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise ConnectionError("the node ended the stream")
                for result in msg.results:
                    future = self._pending.get(result.call_id)
                    if future is not None and not future.done():
                        future.set_result(result)
        except BaseException as exc:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError())
            raise

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._call.cancel()


async def _latency(config: LoadConfig, caller: _Caller) -> dict[str, Any]:
    for i in range(config.warmup):
        await caller.call(i)
    caller.reset()
    samples: list[int] = []
    end = None if config.seconds is None else time.monotonic() + config.seconds
    started = time.perf_counter_ns()
    for i in range(config.count):
        if end is not None and time.monotonic() >= end:
            break
        t0 = time.perf_counter_ns()
        if await caller.call(i):
            samples.append(time.perf_counter_ns() - t0)
    elapsed = (time.perf_counter_ns() - started) / 1e9
    return {"in_flight": 1, "elapsed_s": elapsed, **percentiles_us(samples)}


async def _throughput(config: LoadConfig, caller: _Caller) -> dict[str, Any]:
    samples: list[int] = []
    issued = 0
    limit = 0
    end: float | None = None
    record = False

    async def worker(index: int) -> None:
        nonlocal issued
        # Bounded by `limit` calls in total and by `end`; the counter is shared by the
        # workers of one event loop, so no lock is needed.
        while issued < limit and (end is None or time.monotonic() < end):
            issued += 1
            t0 = time.perf_counter_ns()
            if await caller.call(index) and record:
                samples.append(time.perf_counter_ns() - t0)

    async def phase(calls: int) -> None:
        nonlocal issued, limit
        issued, limit = 0, calls
        async with asyncio.TaskGroup() as tg:
            for w in range(min(config.concurrency, calls)):
                tg.create_task(worker(w))

    if config.warmup:
        await phase(config.warmup)
    caller.reset()
    record = True
    end = None if config.seconds is None else time.monotonic() + config.seconds
    started = time.perf_counter_ns()
    await phase(config.count)
    elapsed = (time.perf_counter_ns() - started) / 1e9
    return {
        "in_flight": config.concurrency,
        "elapsed_s": elapsed,
        "calls_per_s": caller.ok / elapsed if elapsed > 0 else None,
        **percentiles_us(samples),
    }


async def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run one bounded load against `config.target` and return its figures.

    Raises TimeoutError if the channels do not connect within 10 s. Every call has its own
    10 s deadline, so the run ends after at most `count` calls (or `seconds`) plus that.
    """
    options = [("grpc.use_local_subchannel_pool", 1)] if config.channels > 1 else []
    channels = [grpc.aio.insecure_channel(config.target, options=options) for _ in range(config.channels)]
    try:
        async with asyncio.timeout(10.0):
            for channel in channels:
                await channel.channel_ready()
        caller: _Caller
        if config.api == "stream":
            stream_caller = caller = _StreamCaller(config, channels)
            await stream_caller.start()
        else:
            caller = _Caller(config, [invoker_pb2_grpc.InvokerStub(c) for c in channels])
        try:
            if config.mode == "latency":
                figures = await _latency(config, caller)
            else:
                figures = await _throughput(config, caller)
        finally:
            if config.api == "stream":
                await stream_caller.close()
    finally:
        for channel in channels:
            await channel.close(None)
    return {
        "target": config.target,
        "mode": config.mode,
        "function": config.function,
        "payload_bytes": config.payload_bytes,
        "channels": config.channels,
        "api": config.api,
        "warmup": config.warmup,
        "calls": caller.ok + sum(caller.errors.values()),
        "ok": caller.ok,
        "errors": dict(caller.errors),
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT of an Invoker endpoint")
    parser.add_argument("--function", default="echo")
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--mode", choices=MODES, default="latency")
    parser.add_argument("--count", type=int, default=1000, help="measured calls")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (throughput)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured calls first")
    parser.add_argument("--seconds", type=float, default=None, help="also stop after this long")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--api", choices=APIS, default="unary",
                        help="unary Invoke calls, or calls over one InvokeStream per channel")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--json", action="store_true", help="print one JSON line (the default)")
    args = parser.parse_args(argv)
    try:
        config = LoadConfig(
            target=args.target,
            function=args.function,
            payload_bytes=args.payload_bytes,
            mode=args.mode,
            count=args.count,
            concurrency=args.concurrency,
            warmup=args.warmup,
            seconds=args.seconds,
            channels=args.channels,
            api=args.api,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.uvloop:
        import uvloop

        result = uvloop.run(run_load(config))
    else:
        result = asyncio.run(run_load(config))
    result["uvloop"] = bool(args.uvloop)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
