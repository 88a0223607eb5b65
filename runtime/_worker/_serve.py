"""Inside a function actor process: import the handler, serve stoic.v1.Worker on a Unix socket.

The process is started either by the fork server's template (`os.fork()`, see
`_template.py`) or as a fresh interpreter (`python -m runtime._worker serve CONFIG_JSON`).
Both end up in `run_worker`, which never returns: it exits the process with a status the
node turns into an exit reason (see `_limits`).

Payloads are bytes with a content type; nothing read from the socket is unpickled.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import anyio.to_thread

from runtime import wire
from runtime._context import Context
from runtime._function import FunctionSpec, resolve_handler
from runtime._worker._limits import (
    EXIT_INTERNAL,
    EXIT_MEMORY,
    EXIT_START_FAILED,
    die_with_parent,
    limit_malloc_arenas,
    set_memory_limit,
)

__all__ = ["WorkerConfig", "run_worker", "STOP_GRACE"]

log = logging.getLogger("stoic.worker")

OCTET_STREAM = "application/octet-stream"
STOP_GRACE = 2.0
"""Seconds a worker asked to stop (SIGTERM) waits for in-flight invocations to finish."""
FLUSH_GRACE = 0.1
"""Seconds gRPC gets to deliver the last results before the server stops."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs, sent as JSON (never pickled)."""

    spec: FunctionSpec
    socket: str
    error_file: str
    parent_pid: int
    node_id: str = ""
    zone: str = ""
    instance_id: str = ""
    spare: bool = False  # a spare runs no function until the node assigns one

    def to_json(self) -> str:
        return json.dumps({
            "spec": self.spec.to_json(), "socket": self.socket, "error_file": self.error_file,
            "parent_pid": self.parent_pid, "node_id": self.node_id, "zone": self.zone,
            "instance_id": self.instance_id, "spare": self.spare,
        })

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerConfig:
        data = json.loads(text)
        return cls(
            spec=FunctionSpec.from_json(data["spec"]), socket=str(data["socket"]),
            error_file=str(data["error_file"]), parent_pid=int(data["parent_pid"]),
            node_id=str(data.get("node_id", "")), zone=str(data.get("zone", "")),
            instance_id=str(data.get("instance_id", "")),
            spare=bool(data.get("spare", False)),
        )


def _exit_now(status: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _error_info(exc: BaseException) -> wire.FunctionErrorInfo:
    tb = exc.__traceback__
    # Drop our own calling frame: the traceback starts in the user's handler.
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return wire.FunctionErrorInfo(type(exc).__name__, str(exc), text)


def _call_sync(handler: Callable[..., Any], event: Any, ctx: Context) -> tuple[bool, Any]:
    try:
        return True, handler(event, ctx)
    except MemoryError:
        _exit_now(EXIT_MEMORY)
    except SystemExit as exc:  # sys.exit() in a handler ends the process, as in Lambda
        _exit_now(exc.code if isinstance(exc.code, int) else 1)
    except Exception as exc:
        return False, exc


async def _call_async(handler: Callable[..., Any], event: Any, ctx: Context) -> tuple[bool, Any]:
    try:
        return True, await handler(event, ctx)
    except MemoryError:
        _exit_now(EXIT_MEMORY)
    except SystemExit as exc:
        _exit_now(exc.code if isinstance(exc.code, int) else 1)
    except Exception as exc:
        return False, exc


def encode_result(value: Any) -> wire.ExecuteResult:
    """bytes-like -> application/octet-stream as is; anything else -> JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return wire.ExecuteResult(payload=bytes(value), content_type=OCTET_STREAM)
    try:
        payload = json.dumps(value).encode()
    except (TypeError, ValueError) as exc:
        return wire.ExecuteResult(error=wire.FunctionErrorInfo(
            type(exc).__name__, f"the handler's result is not JSON serializable: {exc}", ""))
    return wire.ExecuteResult(payload=payload, content_type=wire.JSON)


def _new_span_id() -> int:
    return random.getrandbits(64) or 1


class _CallTracer:
    """`ctx.tracer` for one attempt in an exporting worker. A span it starts with no
    explicit parent while no span is current is a child of the attempt's handler span
    (`stoic.handler`, which the node records), whose id is chosen on that first use and
    reported back in the result's timing. Nothing is made current around the handler, so
    an attempt whose handler makes no span of its own costs this object and nothing more.
    The tracer provider itself is built on first use (`UserSpans.real_tracer`)."""

    __slots__ = ("_spans", "_trace_context", "_parent", "handler_span_id")

    def __init__(self, spans: UserSpans, trace_context: Mapping[str, str]) -> None:
        self._spans = spans
        self._trace_context = trace_context
        self._parent: Any = None  # the handler span's Context, once made
        self.handler_span_id = 0

    def _context(self, context: Any) -> Any:
        if context is not None:
            return context
        from opentelemetry import trace

        if trace.get_current_span().get_span_context().is_valid:
            return None  # inside a span of the handler's: that one is the parent
        if self._parent is None:
            from runtime._tracing.propagation import remote_parent

            parent = remote_parent(self._trace_context)
            if parent is None:
                return None
            span_id = _new_span_id()
            self._parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)))
            self.handler_span_id = span_id
        return self._parent

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self._spans.real_tracer().start_span(name, self._context(context), *args,
                                                    **kwargs)

    def start_as_current_span(self, name: str, context: Any = None, *args: Any,
                              **kwargs: Any) -> Any:
        return self._spans.real_tracer().start_as_current_span(
            name, self._context(context), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spans.real_tracer(), name)


class UserSpans:
    """Tracing inside a worker whose spans are exported: a `_CallTracer` per attempt, and a
    tracer provider only once a handler uses one."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._lock = threading.Lock()  # sync handlers run in threads
        self._tracing: Any = None

    def real_tracer(self) -> Any:
        with self._lock:
            if self._tracing is None:
                from runtime._tracing import Tracing

                self._tracing = Tracing.from_env(node_id=self._config.node_id,
                                                 zone=self._config.zone, role="worker")
            return self._tracing.tracer

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            tracing = self._tracing
        if tracing is not None:
            tracing.shutdown(timeout)


def _log_format(config: WorkerConfig) -> str:
    name = "(spare)" if config.spare else config.spec.name
    return f"%(asctime)s worker {name}[{os.getpid()}] %(name)s %(levelname)s %(message)s"


class SpareHandler:
    """The Worker service's handler in a spare: a started worker (event loop, gRPC server,
    the node's stream connected) that runs no function until `assign` gives it one. Taking
    a spare instead of forking is what makes a restart or a cold start fast: what is left
    is loading the handler (already imported by the template) and an Executor."""

    def __init__(self, exporting: bool) -> None:
        self._exporting = exporting
        self._executor: Executor | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self.user_spans: UserSpans | None = None

    @property
    def idle(self) -> anyio.Event:
        return self._executor.idle if self._executor is not None else self._idle

    async def execute(self, request: wire.ExecuteRequest) -> wire.ExecuteResult:
        if self._executor is None:
            return wire.ExecuteResult(error=wire.FunctionErrorInfo(
                "NotAssigned", "this spare worker has not been given a function", ""))
        return await self._executor.execute(request)

    async def assign(self, config_json: str) -> int:
        """Become an instance of the function in `config_json` (a WorkerConfig); our pid.
        Raises AssignRefused if already assigned or if the function cannot be loaded."""
        if self._executor is not None:
            raise wire.AssignRefused("this worker already runs a function", precondition=True)
        try:
            config = WorkerConfig.from_json(config_json)
        except (ValueError, KeyError, TypeError) as exc:
            raise wire.AssignRefused(f"bad worker config: {exc}") from exc
        try:
            handler = resolve_handler(config.spec)
        except MemoryError:
            _exit_now(EXIT_MEMORY)
        except BaseException as exc:  # the user's module may raise anything on import
            raise wire.AssignRefused(_import_failed(config, exc)) from None
        set_memory_limit(config.spec.config.memory_mb, config.spec.config.concurrency)
        self.user_spans = UserSpans(config) if self._exporting else None
        self._executor = Executor(config, handler, self.user_spans)
        for h in logging.getLogger().handlers:
            h.setFormatter(logging.Formatter(_log_format(config)))
        return os.getpid()


class Executor:
    """Runs attempts of one handler: async handlers on the event loop, sync handlers in
    worker threads; at most `concurrency` at a time either way."""

    def __init__(self, config: WorkerConfig, handler: Callable[..., Any],
                 user_spans: UserSpans | None = None) -> None:
        from runtime._state import FunctionState

        self._spans = user_spans
        self.user_spans = user_spans
        self._state = FunctionState(os.environ.get("STOIC_STORE_URL", ""), config.spec.name)
        self._config = config
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        self._limiter = anyio.CapacityLimiter(config.spec.config.concurrency)
        self._pid = os.getpid()
        self.in_flight = 0
        self.idle = anyio.Event()
        self.idle.set()

    async def execute(self, request: wire.ExecuteRequest) -> wire.ExecuteResult:
        """Run one attempt. The worker's own spans (`stoic.worker.execute` and
        `stoic.handler`) are not built here: the result carries their timing and the node
        records and exports them, so tracing costs this process a few clock reads per
        call. When spans are exported, spans the handler makes through `ctx.tracer` are
        children of its handler span, whose id the timing then carries."""
        started = time.time_ns()
        handler_times = [started, started]
        tracer = (_CallTracer(self._spans, request.trace_context) if self._spans is not None
                  else None)
        result = await self._execute(request, handler_times, tracer)
        timing = wire.WorkerTiming(started, handler_times[0], handler_times[1], time.time_ns(),
                                   self._pid, 0,
                                   tracer.handler_span_id if tracer is not None else 0)
        return dataclasses.replace(result, timing=timing)

    async def _execute(self, request: wire.ExecuteRequest, times: list[int],
                       tracer: _CallTracer | None) -> wire.ExecuteResult:
        """Decode the event, build the context and run the handler; `times` gets the
        handler's start and end (unix ns)."""
        if wire.is_json(request.content_type):
            try:
                event = json.loads(request.payload) if request.payload else None
            except ValueError as exc:
                return wire.ExecuteResult(error=wire.FunctionErrorInfo(
                    "InvalidInput", f"payload is not valid JSON: {exc}", ""))
        else:
            event = request.payload
        cfg = self._config
        ctx = Context(
            invocation_id=request.invocation_id, attempt=request.attempt,
            function=cfg.spec.name, node_id=cfg.node_id, zone=cfg.zone,
            instance_id=cfg.instance_id, deadline=request.deadline,
            trace_context=request.trace_context, tracer=tracer, state=self._state,
        )
        times[0] = time.time_ns()
        try:
            return await self._run(event, ctx)
        finally:
            times[1] = time.time_ns()

    async def _run(self, event: Any, ctx: Context) -> wire.ExecuteResult:
        self.in_flight += 1
        self.idle = anyio.Event() if self.in_flight == 1 else self.idle
        try:
            if self._is_async:
                async with self._limiter:
                    ok, value = await _call_async(self._handler, event, ctx)
            else:
                ok, value = await anyio.to_thread.run_sync(
                    _call_sync, self._handler, event, ctx, limiter=self._limiter
                )
            if not ok:
                return wire.ExecuteResult(error=_error_info(value))
            return encode_result(value)
        except MemoryError:
            _exit_now(EXIT_MEMORY)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


async def _serve(config: WorkerConfig, handler: Callable[..., Any] | None, ready_fd: int) -> None:
    """Serve stoic.v1.Worker; `handler` None: as a spare, until a function is assigned."""
    import grpc.aio  # only here: no gRPC object exists before the fork

    from runtime._tracing.config import otlp_endpoint, sdk_disabled

    # Spans recorded only locally in a worker are never read (`stoic trace` asks the
    # nodes), and the node records and exports the worker's own spans from the timing each
    # result carries. So a worker has a tracer provider only when spans are exported and a
    # handler makes spans of its own (`ctx.tracer`), created on that first use, after the
    # fork (the exporter's thread is then ours).
    exporting = otlp_endpoint(os.environ, "traces") is not None and not sdk_disabled(os.environ)
    target: Executor | SpareHandler
    if handler is None:
        target = SpareHandler(exporting)
    else:
        target = Executor(config, handler, UserSpans(config) if exporting else None)
    server = grpc.aio.server(options=wire.channel_options())
    wire.add_worker_service(server, target)
    try:
        os.unlink(config.socket)
    except FileNotFoundError:
        pass
    server.add_insecure_port(f"unix:{config.socket}")
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        await server.start()
        # Tell the node we listen (on our original stdout: the template's pipe to the
        # node, or our own stdout pipe), so it connects once, without gRPC's reconnect
        # backoff after a refused first attempt.
        os.write(ready_fd, (json.dumps({"op": "worker_ready", "pid": os.getpid()}) + "\n").encode())
        os.close(ready_fd)
        async for _ in signals:
            break
    # Graceful stop: let in-flight attempts finish briefly, then stop the server with a
    # short grace so that their results, already handed to gRPC, reach the node; it then
    # cancels the (never-ending) Execute stream, which gRPC would log as an error.
    with anyio.move_on_after(STOP_GRACE):
        await target.idle.wait()
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
    with anyio.move_on_after(FLUSH_GRACE + 0.5):
        await server.stop(FLUSH_GRACE)
    if target.user_spans is not None:
        await anyio.to_thread.run_sync(target.user_spans.shutdown, 1.0)
    _exit_now(0)


def _import_failed(config: WorkerConfig, exc: BaseException) -> str:
    """One line naming the app and the exception its import raised (as the node shows it)."""
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return f"importing {config.spec.app} failed: {last}"


def _write_start_error(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text[-4000:])
    except OSError:
        pass


def run_worker(config: WorkerConfig) -> NoReturn:
    """Become a function actor: die with the parent, limit memory, import the handler,
    serve until SIGTERM. Never returns; exit statuses are documented in `_limits`."""
    try:
        ready_fd = os.dup(1)  # the readiness line goes there (see _serve)
        os.dup2(2, 1)  # stdout belongs to the fork server's protocol: prints go to stderr
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the node's to handle
        die_with_parent(config.parent_pid)
        logging.basicConfig(level=os.environ.get("STOIC_LOG_LEVEL", "INFO"),
                            format=_log_format(config))
        limit_malloc_arenas()
        if config.spare:
            anyio.run(_serve, config, None, ready_fd, backend="asyncio")
            _exit_now(0)
        set_memory_limit(config.spec.config.memory_mb, config.spec.config.concurrency)
        try:
            handler = resolve_handler(config.spec)
        except MemoryError:
            _write_start_error(config.error_file, "MemoryError while importing the app")
            _exit_now(EXIT_MEMORY)
        except BaseException as exc:  # the user's module may raise anything on import
            _write_start_error(
                config.error_file, _import_failed(config, exc) + "\n" + traceback.format_exc())
            _exit_now(EXIT_START_FAILED)
        anyio.run(_serve, config, handler, ready_fd, backend="asyncio")
    except MemoryError:
        _exit_now(EXIT_MEMORY)
    except BaseException:
        log.exception("worker %s failed", config.instance_id)
        _exit_now(EXIT_INTERNAL)
    _exit_now(0)
