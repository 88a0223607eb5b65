"""The floor: a bare grpc.aio forwarding proxy in front of an echo server.

`stoic bench invoke` measures Stoic side by side with this baseline in the same run: a
client calls the proxy process, which makes one unary `Invoke` call to the echo server
process over a reused channel and returns its response. No runtime logic, no retries, no
tracing: the cost of two unary grpc.aio hops and nothing else.

Run as separate OS processes::

    python -m bench._floor echo --port 0
    python -m bench._floor proxy --port 0 --upstream 127.0.0.1:PORT

Each prints one line ``READY 127.0.0.1:PORT`` on stdout once it is listening (``--port 0``
picks a free port, and the line tells which), and stops on SIGTERM or SIGINT.

The parent side (`start_server`, `floor_servers`) starts them, waits for the ready line with
a deadline and always stops them: SIGTERM, then SIGKILL if they do not exit in time.

The floor deliberately bypasses the runtime and imports the generated protobuf code
directly: it must not include any of Stoic's own conversion or error-mapping cost. Everything
else in the project goes through `runtime/wire.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

# Deliberate exception to "only runtime/wire.py imports runtime._proto": see module docstring.
from runtime._proto.stoic.v1 import invoker_pb2, invoker_pb2_grpc

READY_PREFIX = "READY "
HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


class FloorStartError(RuntimeError):
    """A floor process did not become ready: it exited or missed its deadline (our fault)."""


# --- the servers (child side) ----------------------------------------------------------


class EchoServicer(invoker_pb2_grpc.InvokerServicer):
    """Answers every Invoke with the request's payload; the function name is ignored."""

    async def Invoke(  # noqa: N802 (gRPC method name)
        self, request: invoker_pb2.InvokeRequest, context: Any
    ) -> invoker_pb2.InvokeResponse:
        return invoker_pb2.InvokeResponse(
            payload=request.payload,
            content_type=request.content_type or "application/json",
            attempts=1,
        )


class ProxyServicer(invoker_pb2_grpc.InvokerServicer):
    """Forwards every Invoke as one unary call to the upstream over one reused channel."""

    def __init__(self, stub: invoker_pb2_grpc.InvokerStub) -> None:
        self._stub = stub

    async def Invoke(  # noqa: N802 (gRPC method name)
        self, request: invoker_pb2.InvokeRequest, context: Any
    ) -> invoker_pb2.InvokeResponse:
        response: invoker_pb2.InvokeResponse = await self._stub.Invoke(request)
        return response


async def _serve(role: str, port: int, upstream: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server = grpc.aio.server()
    channel: grpc.aio.Channel | None = None
    if role == "echo":
        invoker_pb2_grpc.add_InvokerServicer_to_server(EchoServicer(), server)
    else:
        if not upstream:
            raise SystemExit("proxy needs --upstream HOST:PORT")
        channel = grpc.aio.insecure_channel(upstream)
        invoker_pb2_grpc.add_InvokerServicer_to_server(
            ProxyServicer(invoker_pb2_grpc.InvokerStub(channel)), server
        )
    bound = server.add_insecure_port(f"{HOST}:{port}")
    if bound == 0:
        raise SystemExit(f"{role}: could not bind {HOST}:{port}")
    await server.start()
    try:
        if channel is not None:
            # Connect before announcing readiness, so the first measured call pays no handshake.
            async with asyncio.timeout(10.0):
                await channel.channel_ready()
        print(f"{READY_PREFIX}{HOST}:{bound}", flush=True)
        await stop.wait()
    finally:
        await server.stop(grace=1.0)
        if channel is not None:
            await channel.close(None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._floor", description=__doc__)
    parser.add_argument("role", choices=("echo", "proxy"))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--upstream", help="HOST:PORT of the echo server (proxy only)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    coro = _serve(args.role, args.port, args.upstream)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


# --- the parent side -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerProcess:
    """A started floor process: its OS process and the address it listens on."""

    role: str
    target: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True)
class FloorEndpoints:
    """The floor's two processes: `proxy.target` is the 2-hop floor, `echo.target` the 1-hop."""

    echo: ServerProcess
    proxy: ServerProcess

    @property
    def pids(self) -> tuple[int, int]:
        return (self.echo.pid, self.proxy.pid)


def child_env() -> dict[str, str]:
    """The environment for bench subprocesses: the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    parts = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _read_ready_line(process: subprocess.Popen[bytes], deadline: float) -> str:
    """Read stdout up to the first newline, or raise FloorStartError at the deadline/EOF."""
    stdout = process.stdout
    if stdout is None:
        raise FloorStartError("internal: child stdout is not a pipe")
    fd = stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FloorStartError("timed out waiting for the ready line")
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise FloorStartError(f"exited before ready (exit code {process.poll()})")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def stop_process(process: subprocess.Popen[Any], *, grace: float = 3.0) -> None:
    """SIGTERM the process, SIGKILL it if it has not exited after `grace` seconds, reap it.

    Never raises for a process that is already gone; blocks at most about 2 * grace seconds.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=grace)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _tail(stream: IO[bytes], limit: int = 2000) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-limit:]


@contextlib.contextmanager
def start_server(
    role: str,
    *,
    upstream: str | None = None,
    uvloop: bool = False,
    ready_timeout: float = 15.0,
) -> Iterator[ServerProcess]:
    """Start one floor process on a free 127.0.0.1 port and yield it once it listens.

    Raises FloorStartError if it exits or is not ready within `ready_timeout` seconds
    (its stderr is included). The process is stopped on exit from the block, even on error.
    """
    argv = [sys.executable, "-m", "bench._floor", role, "--port", "0"]
    if upstream is not None:
        argv += ["--upstream", upstream]
    if uvloop:
        argv.append("--uvloop")
    with tempfile.TemporaryFile() as errfile:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=errfile,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=child_env(),
        )
        try:
            try:
                line = _read_ready_line(process, time.monotonic() + ready_timeout)
            except FloorStartError as exc:
                raise FloorStartError(f"floor {role}: {exc}; stderr:\n{_tail(errfile)}") from exc
            if not line.startswith(READY_PREFIX):
                raise FloorStartError(f"floor {role}: unexpected first line {line!r}")
            yield ServerProcess(role=role, target=line[len(READY_PREFIX) :], process=process)
        finally:
            stop_process(process)


@contextlib.contextmanager
def floor_servers(*, uvloop: bool = False, ready_timeout: float = 15.0) -> Iterator[FloorEndpoints]:
    """Start the echo server and the proxy in front of it; stop both on exit, even on error."""
    with start_server("echo", uvloop=uvloop, ready_timeout=ready_timeout) as echo:
        with start_server(
            "proxy", upstream=echo.target, uvloop=uvloop, ready_timeout=ready_timeout
        ) as proxy:
            yield FloorEndpoints(echo=echo, proxy=proxy)


if __name__ == "__main__":
    sys.exit(main())
