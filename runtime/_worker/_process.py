"""Node side of function actors: `ForkServer` spawns them, `WorkerProcess` talks to one.

```python
async with ForkServer.open(socket_dir) as forks:
    worker = await forks.spawn(spec, node_id="n1", zone="a", instance_id="hello-1")
    result = await worker.execute(ExecuteRequest(...))
    worker.stop(); reason = await worker.wait_exit()
```

Workers come from a template process (`python -m runtime._worker template`) that has
imported the runtime once and `fork()`s per spawn; if the template is not available, a
fresh interpreter is started instead (`python -m runtime._worker serve`), which is slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from runtime import wire
from runtime._aio import stray_cancellation
from runtime._child import ExitReason
from runtime._errors import InstanceCrashed, InvocationTimeout
from runtime._function import FunctionConfig, FunctionSpec
from runtime._worker._limits import (
    EXIT_INTERNAL,
    EXIT_MEMORY,
    EXIT_ORPHANED,
    EXIT_START_FAILED,
)
from runtime._worker._serve import WorkerConfig

__all__ = ["ForkServer", "WorkerProcess", "WorkerStartFailed", "exit_reason"]

log = logging.getLogger("stoic.worker")

DEFAULT_START_TIMEOUT = 10.0
_EXIT_REPORT_WAIT = 2.0  # how long an execute that saw the stream break waits for the exit
_MAX_LINE = 1 << 20


class WorkerStartFailed(InstanceCrashed):
    """A function actor process did not come up (its app failed to import, it crashed or
    did not answer in time). `reason` is its exit reason. Not the caller's fault; retrying
    helps only if the cause was transient."""

    def __init__(self, message: str, reason: ExitReason) -> None:
        super().__init__(message, retryable=False)
        self.reason = reason


def exit_reason(
    code: int | None,
    sig: int | None,
    *,
    stop_requested: bool = False,
    kill_requested: bool = False,
    memory_mb: int = 0,
    start_error: str = "",
) -> ExitReason:
    """Why a worker ended, from its exit status (`code`) or terminating signal (`sig`),
    and what the node had asked of it. Pure."""
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return ExitReason.killed(
                "killed by SIGKILL" + (" (by the node)" if kill_requested else ""))
        if sig == signal.SIGTERM and stop_requested:
            return ExitReason.shutdown()
        return ExitReason.error(f"killed by {name}")
    if code == 0:
        return ExitReason.shutdown()
    if code == EXIT_MEMORY:
        return ExitReason.error(
            f"out of memory: went past its memory limit (memory_mb={memory_mb}), "
            f"exit status {code}")
    if code == EXIT_START_FAILED:
        return ExitReason.error(f"start failed: {start_error or 'app import failed'}")
    if code == EXIT_ORPHANED:
        return ExitReason.error("parent was gone at start")
    if code == EXIT_INTERNAL:
        return ExitReason.error(f"worker internal error, exit status {code}")
    return ExitReason.error(f"exit status {code}")


class WorkerProcess:
    """A running function actor process, as the node sees it (implements `Child`).

    Created ready by `ForkServer.spawn`. `execute` runs one attempt over the worker's
    long-lived Execute stream; `ping` checks it answers; `stop` asks it to finish in-flight
    work briefly and exit (reason `shutdown`); `kill` SIGKILLs it."""

    def __init__(
        self, *, pid: int, spec: FunctionSpec, instance_id: str, socket: str, error_file: str
    ) -> None:
        self.pid = pid
        self.spec = spec
        self.instance_id = instance_id
        self.socket = socket
        self._error_file = error_file
        self._exited = anyio.Event()
        self._ready = anyio.Event()
        self._reason: ExitReason | None = None
        self._stop_requested = False
        self._kill_requested = False
        self._client = wire.WorkerStreamClient(f"unix://{socket}", name=self.name)
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(pid)

    @property
    def name(self) -> str:
        return f"{self.spec.name}/{self.instance_id}[{self.pid}]"

    @property
    def in_flight(self) -> int:
        return self._client.in_flight

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why it ended, or None while it runs."""
        return self._reason

    def __repr__(self) -> str:
        return f"WorkerProcess({self.name}, exited={self._reason})"

    # --- lifecycle -----------------------------------------------------------------------
    async def _start(self, tg: anyio.abc.TaskGroup, steps: list[str] | None = None) -> None:
        """Wait for the worker's readiness line, connect the stream (its reader runs in
        `tg`) and get a first ping answered, racing the process's exit. Bound it with the
        caller's scope. Raises WorkerStartFailed (after killing the process) if the process
        exits or the connection fails first."""
        problem = ""
        async with anyio.create_task_group() as race:

            async def exit_watch() -> None:
                await self._exited.wait()
                race.cancel_scope.cancel()

            race.start_soon(exit_watch)
            began = time.monotonic()
            steps = steps if steps is not None else []
            try:
                await self._ready.wait()
                steps.append(f"readiness line after {time.monotonic() - began:.2f}s")
                await tg.start(self._run_client)
                steps.append(f"stream open after {time.monotonic() - began:.2f}s")
                await self._client.ping()
                steps.append(f"ping answered after {time.monotonic() - began:.2f}s")
            except InstanceCrashed as exc:
                problem = str(exc)
            except RuntimeError as exc:  # the stream reader ended before it started
                problem = f"the worker stream did not open: {exc}"
            race.cancel_scope.cancel()
        if self._reason is None and not problem and not self._client.closed:
            return
        raise await self._start_failed(problem or "the worker stream closed")

    async def _start_failed(self, problem: str) -> WorkerStartFailed:
        """Kill a worker that did not come up; the error to raise, naming why."""
        self.kill()
        await self._client.aclose()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_EXIT_REPORT_WAIT):
            await self._exited.wait()
        reason = self._reason
        if reason is None or (reason.kind == "killed" and self._kill_requested):
            reason = ExitReason.error(f"did not start: {problem}")
        return WorkerStartFailed(f"instance {self.name} failed to start: {reason.detail}", reason)

    async def _run_client(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """`WorkerStreamClient.run`, minus a stray CancelledError of grpc.aio's own (raised
        by a call whose internal task was cancelled under it, not by a cancellation of this
        task): it would otherwise cancel the fork server's whole task group."""
        try:
            await self._client.run(task_status=task_status)
        except Exception:
            # A bug in one worker's connection must not take the node down: this worker's
            # callers get InstanceCrashed and the supervisor replaces it.
            log.exception("worker %s: stream client failed", self.name)
            await self._client.aclose()
        except asyncio.CancelledError:
            if stray_cancellation():
                log.debug("worker %s: grpc.aio raised CancelledError; stream over", self.name)
                await self._client.aclose()
                return
            raise

    def _set_exit(
        self, code: int | None, sig: int | None, tg: anyio.abc.TaskGroup,
        reason: ExitReason | None = None,
    ) -> None:
        if self._exited.is_set():
            return
        start_error = ""
        if code == EXIT_START_FAILED:
            with contextlib.suppress(OSError):
                with open(self._error_file, encoding="utf-8") as f:
                    start_error = f.readline().strip()
        self._reason = exit_reason(
            code, sig, stop_requested=self._stop_requested,
            kill_requested=self._kill_requested, memory_mb=self.spec.config.memory_mb,
            start_error=start_error)
        if reason is not None:
            self._reason = reason
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        for path in (self.socket, self._error_file):
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._exited.set()
        # No client.aclose() here: the kernel closed the socket, so the stream has broken
        # (or breaks now) and its waiters fail with it.

    async def wait_exit(self) -> ExitReason:
        """Wait until the process has ended (and was reaped); return why. Cancellable."""
        await self._exited.wait()
        if self._reason is None:  # pragma: no cover - set before the event
            raise RuntimeError("exit without a reason")
        return self._reason

    def _signal(self, sig: int) -> None:
        if self._exited.is_set():
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGTERM: the worker lets in-flight attempts finish (a couple of seconds at
        most) and exits 0 (reason `shutdown`). Returns at once; idempotent."""
        self._stop_requested = True
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL now. Returns at once; idempotent."""
        self._kill_requested = True
        self._signal(signal.SIGKILL)

    # --- calls ---------------------------------------------------------------------------
    async def execute(self, request: wire.ExecuteRequest) -> wire.ExecuteResult:
        """Run one attempt. A handler exception comes back as a result with `error` set.

        Raises `InstanceCrashed` naming the exit reason if the process dies before
        answering (promptly: the stream breaks when the socket closes). The timeout is
        the caller's scope; cancelling stops the wait only, the attempt keeps running in
        the worker (kill the instance to stop it)."""
        try:
            return await self._client.execute(request)
        except InstanceCrashed as exc:
            if not self._exited.is_set():
                with anyio.move_on_after(_EXIT_REPORT_WAIT):
                    await self._exited.wait()
            if not self._exited.is_set():
                self.kill()  # the stream broke but the process lives: it is useless now
                reason = f"stream broke ({exc})"
            else:
                reason = str(self._reason)
            raise InstanceCrashed(
                f"instance {self.name} died during invocation {request.invocation_id}: "
                f"{reason}") from exc

    async def assign(self, spec: FunctionSpec, instance_id: str, config_json: str) -> None:
        """Make this spare an instance of `spec` (see `ForkServer.spawn`). Bound it with the
        caller's scope. Raises InstanceCrashed naming why it did not take it."""
        await self._client.assign(config_json)
        self.spec = spec
        self.instance_id = instance_id
        self._client.name = self.name

    async def ping(self) -> wire.PingResult:
        """Check the worker answers. Bound it with the caller's scope (`fail_after`):
        raises TimeoutError (InvocationTimeout) when it does not answer in time (e.g. the
        process is stopped), InstanceCrashed when it is gone."""
        if self._exited.is_set():
            raise InstanceCrashed(f"instance {self.name} has exited: {self._reason}")
        try:
            return await self._client.ping()
        except InvocationTimeout:
            raise
        except InstanceCrashed as exc:
            raise InstanceCrashed(f"instance {self.name} ping failed: {exc}") from exc


#: A spawn slower than this is logged with where its time went (it normally takes tens of
#: milliseconds; a slow one leaves callers waiting for a restarted instance).
SLOW_SPAWN = 1.0


def _log_if_slow(function: str, began: float, phases: list[str]) -> None:
    took = time.monotonic() - began
    if took >= SLOW_SPAWN:
        log.warning("starting an instance of %s took %.2fs: %s", function, took,
                    "; ".join(phases))


class ForkServer:
    """Spawns function actor processes for one node. Use `async with ForkServer.open(...)`.

    Owns the template process and a task group for the workers' stream readers. Leaving
    the context SIGKILLs every worker still running and ends the template."""

    def __init__(
        self,
        socket_dir: str,
        tg: anyio.abc.TaskGroup,
        *,
        python: str = sys.executable,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        spare: bool = True,
    ) -> None:
        self.socket_dir = socket_dir
        self.python = python
        self.start_timeout = start_timeout
        self._tg = tg
        self._template: anyio.abc.Process | None = None
        self._template_pid: int | None = None
        self._template_alive = False
        self._refs = 0
        self._spawn_waiters: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._by_pid: dict[int, WorkerProcess] = {}
        self._early_exits: dict[int, tuple[int | None, int | None]] = {}
        self._early_ready: set[int] = set()
        self._write_lock = anyio.Lock()
        self.workers: set[WorkerProcess] = set()
        self._closing = False
        self.spare_enabled = spare
        self._preloaded: set[str] = set()
        self._spare: WorkerProcess | None = None
        self._spare_taken = anyio.Event()
        self.spares_used = 0  # spawns served by a spare (for tests and figures)
        # spawns in progress: ref -> (function, began, steps so far), for _slow_spawn_loop
        self._spawning: dict[int, tuple[str, float, list[str]]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        socket_dir: str | None = None,
        *,
        use_template: bool = True,
        preload: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
        python: str = sys.executable,
        spare: bool = True,
    ) -> AsyncIterator[ForkServer]:
        """Start a fork server (its template unless `use_template=False`; if the template
        fails to start, spawns fall back to fresh interpreters). `socket_dir` holds the
        workers' Unix sockets (a private temporary directory if None, removed on exit).
        `preload` apps are imported by the template so forked workers find them cached.
        `spare`: keep one started worker without a function, forked in the background,
        which the next `spawn` takes instead of forking (a restart or a cold start then
        costs no fork and no server start). One more process per node."""
        own_dir = socket_dir is None
        directory = tempfile.mkdtemp(prefix="stoic-w-") if socket_dir is None else socket_dir
        try:
            async with anyio.create_task_group() as tg:
                server = cls(directory, tg, python=python, start_timeout=start_timeout,
                             spare=spare)
                try:
                    tg.start_soon(server._slow_spawn_loop)
                    if use_template:
                        await server._start_template(preload)
                        if spare and server._template_alive:
                            tg.start_soon(server._spare_loop)
                    yield server
                finally:
                    with anyio.CancelScope(shield=True):
                        await server._shutdown()
                    tg.cancel_scope.cancel()
        finally:
            if own_dir:
                shutil.rmtree(directory, ignore_errors=True)

    @property
    def template_pid(self) -> int | None:
        """The template's pid while it is alive, else None."""
        return self._template_pid if self._template_alive else None

    # --- template ------------------------------------------------------------------------
    async def _start_template(self, preload: Sequence[str]) -> None:
        env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false",
               "STOIC_WORKER": "1"}  # lets apps tell a function actor process apart
        try:
            process = await anyio.open_process(
                [self.python, "-m", "runtime._worker", "template", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env)
        except OSError as exc:
            log.warning("fork server template did not start (%s); using fresh interpreters", exc)
            return
        self._template = process
        if process.stdout is None:  # pragma: no cover - PIPE was requested
            raise RuntimeError("template has no stdout pipe")
        reader = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(self.start_timeout):
                hello = json.loads(await reader.receive_until(b"\n", _MAX_LINE))
                if preload:
                    await self._send({"op": "preload", "apps": list(preload)})
                    answer = json.loads(await reader.receive_until(b"\n", _MAX_LINE))
                    for app, error in answer.get("errors", {}).items():
                        log.warning("template could not preload %s: %s", app, error)
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, ValueError) as exc:
            log.warning("fork server template failed (%r); using fresh interpreters", exc)
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
            self._template = None
            return
        self._template_pid = int(hello["pid"])
        self._template_alive = True
        self._tg.start_soon(self._read_template, reader)

    def preload_soon(self, app: str) -> None:
        """Have the template import `app` (in the background), so that workers forked
        from then on (spares included) start with it imported. Once per app."""
        if not self._template_alive or app in self._preloaded:
            return
        self._preloaded.add(app)

        async def send() -> None:
            with contextlib.suppress(OSError, anyio.BrokenResourceError,
                                     anyio.ClosedResourceError):
                await self._send({"op": "preload", "apps": [app]})

        self._tg.start_soon(send)

    async def _send(self, msg: dict[str, Any]) -> None:
        if self._template is None or self._template.stdin is None:
            raise BrokenPipeError("no template")
        async with self._write_lock:
            await self._template.stdin.send((json.dumps(msg) + "\n").encode())

    async def _read_template(self, reader: BufferedByteReceiveStream) -> None:
        try:
            while True:
                try:
                    line = await reader.receive_until(b"\n", _MAX_LINE)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError,
                        anyio.BrokenResourceError):
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.error("fork server template sent a bad line: %r", line[:200])
                    continue
                op = msg.get("op")
                if op in ("spawned", "spawn_failed"):
                    waiter = self._spawn_waiters.pop(int(msg.get("ref") or 0), None)
                    if waiter is not None:
                        waiter[1].append(msg)
                        waiter[0].set()
                elif op == "worker_ready":
                    # The child may write this before the template's "spawned" line.
                    worker = self._by_pid.get(int(msg["pid"]))
                    if worker is not None:
                        worker._ready.set()
                    else:
                        self._early_ready.add(int(msg["pid"]))
                elif op == "exit":
                    self._on_exit(int(msg["pid"]), msg.get("code"), msg.get("signal"))
                elif op == "preloaded":
                    for app, error in (msg.get("errors") or {}).items():
                        log.warning("template could not preload %s: %s", app, error)
        finally:
            self._template_alive = False
            if not self._closing:
                log.warning("fork server template ended; later spawns use fresh interpreters")
            for event, box in list(self._spawn_waiters.values()):
                box.append({"op": "spawn_failed", "error": "template ended"})
                event.set()
            self._spawn_waiters.clear()
            # Its children die with it (parent-death signal); nobody is left to reap
            # them for us, so report them as killed once they are gone.
            for pid in list(self._by_pid):
                self._tg.start_soon(self._await_orphan, pid)
            if self._template is not None:
                with anyio.CancelScope(shield=True):
                    await self._template.wait()

    async def _await_orphan(self, pid: int) -> None:
        worker = self._by_pid.get(pid)
        if worker is None:
            return
        with anyio.move_on_after(5.0):
            if worker._pidfd is not None:
                await anyio.wait_readable(worker._pidfd)  # readable once it has exited
            else:
                while _pid_alive(pid):  # noqa: ASYNC110 - no pidfd: poll, bounded
                    await anyio.sleep(0.01)
        self._on_exit(pid, None, signal.SIGKILL,
                      ExitReason.killed("killed: its fork server template died"))

    def _on_exit(
        self, pid: int, code: int | None, sig: int | None, reason: ExitReason | None = None
    ) -> None:
        worker = self._by_pid.pop(pid, None)
        if worker is None:
            self._early_exits[pid] = (code, sig)
            return
        self.workers.discard(worker)
        worker._set_exit(code, sig, self._tg, reason)

    # --- spawning ------------------------------------------------------------------------
    async def spawn(
        self, spec: FunctionSpec, *, node_id: str = "", zone: str = "", instance_id: str = ""
    ) -> WorkerProcess:
        """Start one instance of `spec` and return it once it is ready to serve (its
        stream is open and it answered a ping). Forks from the template when it is alive,
        else starts a fresh interpreter.

        Raises `WorkerStartFailed` (an InstanceCrashed) naming the exit reason when the
        process dies or does not answer within `start_timeout` (it is killed then).
        Cancellation kills the half-started process."""
        self._refs += 1
        ref = self._refs
        instance_id = instance_id or f"{spec.name}-{ref}"
        socket = os.path.join(self.socket_dir, f"w{ref}.sock")
        if len(socket.encode()) > 100:
            raise ValueError(f"socket path too long for a Unix socket: {socket!r}")
        config = WorkerConfig(
            spec=spec, socket=socket, error_file=os.path.join(self.socket_dir, f"w{ref}.err"),
            parent_pid=os.getpid(), node_id=node_id, zone=zone, instance_id=instance_id)
        began = time.monotonic()
        phases: list[str] = []  # where a slow spawn spent its time, for the log
        self._spawning[ref] = (spec.name, began, phases)
        try:
            return await self._spawn(spec, instance_id, config, ref, began, phases)
        finally:
            del self._spawning[ref]

    async def _spawn(self, spec: FunctionSpec, instance_id: str, config: WorkerConfig,
                     ref: int, began: float, phases: list[str]) -> WorkerProcess:
        spare = self._take_spare()
        if spare is not None:
            phases.append(f"assigning spare {spare.name}")
            assigned = dataclasses.replace(
                config, socket=spare.socket, error_file=spare._error_file)
            try:
                with anyio.fail_after(self.start_timeout):
                    await spare.assign(spec, instance_id, assigned.to_json())
                self.spares_used += 1
                if spare.exit_reason is None:
                    self.workers.add(spare)
                _log_if_slow(spec.name, began, [*phases, "assigned"])
                return spare
            except (InstanceCrashed, TimeoutError) as exc:
                # e.g. the app fails to import: the fork path below reports that properly
                log.info("spare %s could not take %s (%s); forking", spare.name, spec.name, exc)
                spare.kill()
            finally:
                self._spare_taken.set()  # fork the next spare now
            phases.append(f"spare refused after {time.monotonic() - began:.2f}s")
        worker: WorkerProcess | None = None
        try:
            if self._template_alive:
                phases.append("asking the template to fork")
                worker = await self._spawn_forked(ref, config)
                phases.append(f"template {'forked' if worker else 'did not fork'} at "
                              f"{time.monotonic() - began:.2f}s")
            if worker is None:
                phases.append("starting a fresh interpreter")
                worker = await self._spawn_fresh(config)
            phases.append(f"waiting for pid {worker.pid} to be ready")
            try:
                with anyio.fail_after(self.start_timeout):
                    await worker._start(self._tg, phases)
            except TimeoutError:
                raise await worker._start_failed(
                    f"not ready within {self.start_timeout}s") from None
            _log_if_slow(spec.name, began, [*phases, "ready"])
            return worker
        except BaseException:
            _log_if_slow(spec.name, began, [*phases, "failed"])
            if worker is not None and not worker._exited.is_set():
                worker.kill()
            raise

    def _register(self, pid: int, config: WorkerConfig) -> WorkerProcess:
        worker = WorkerProcess(pid=pid, spec=config.spec, instance_id=config.instance_id,
                               socket=config.socket, error_file=config.error_file)
        self._by_pid[pid] = worker
        self.workers.add(worker)
        if pid in self._early_ready:
            self._early_ready.discard(pid)
            worker._ready.set()
        early = self._early_exits.pop(pid, None)
        if early is not None:
            self._on_exit(pid, *early)
        return worker

    async def _spawn_forked(self, ref: int, config: WorkerConfig) -> WorkerProcess | None:
        event = anyio.Event()
        box: list[Any] = []
        self._spawn_waiters[ref] = (event, box)
        data = json.loads(config.to_json())
        try:
            await self._send({"op": "spawn", "ref": ref, "config": data})
            with anyio.fail_after(self.start_timeout):
                await event.wait()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError):
            self._spawn_waiters.pop(ref, None)
            return None
        msg = box[0]
        if msg.get("op") != "spawned":
            log.warning("template could not fork (%s); starting a fresh interpreter",
                        msg.get("error"))
            return None
        return self._register(int(msg["pid"]), config)

    async def _spawn_fresh(self, config: WorkerConfig) -> WorkerProcess:
        process = await anyio.open_process(
            [self.python, "-m", "runtime._worker", "serve", config.to_json()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None,
            env={**os.environ, "STOIC_WORKER": "1"})
        worker = self._register(process.pid, config)

        async def reap() -> None:
            if process.stdout is not None:
                with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead,
                                         anyio.BrokenResourceError, ValueError):
                    reader = BufferedByteReceiveStream(process.stdout)
                    line = await reader.receive_until(b"\n", _MAX_LINE)
                    if json.loads(line).get("op") == "worker_ready":
                        worker._ready.set()
                await process.stdout.aclose()
            code = await process.wait()
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await process.aclose()  # its pipes too: no transport left for the GC
            if code < 0:
                self._on_exit(process.pid, None, -code)
            else:
                self._on_exit(process.pid, code, None)

        self._tg.start_soon(reap)
        return worker

    async def _slow_spawn_loop(self) -> None:
        """Log each spawn still going after SLOW_SPAWN seconds (and every 3 s after),
        with the steps it has taken: a restart that hangs leaves callers waiting for it,
        and the log then says where it is even if it never ends. One task for all spawns."""
        warned: dict[int, float] = {}
        while True:
            await anyio.sleep(SLOW_SPAWN / 2)
            now = time.monotonic()
            for ref, (function, began, steps) in list(self._spawning.items()):
                if now - began >= SLOW_SPAWN and now - warned.get(ref, 0.0) >= 3.0:
                    warned[ref] = now
                    log.warning("still starting an instance of %s after %.1fs: %s", function,
                                now - began, "; ".join(steps) or "no step yet")
            for ref in [r for r in warned if r not in self._spawning]:
                del warned[ref]

    # --- the spare -----------------------------------------------------------------------
    def _take_spare(self) -> WorkerProcess | None:
        """The started spare, if any (the caller sets `_spare_taken` when done with it,
        so that the replacement is not forked while the assignment is on its way)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare.exit_reason is not None:
            self._spare_taken.set()
            return None
        return spare

    async def _spare_loop(self) -> None:
        """Keep one spare started while the template lives. A spare that fails to start
        (or dies waiting) is replaced after a backoff that grows to 10 s."""
        backoff = 0.5
        while self._template_alive and not self._closing:
            if self._spare is None:
                try:
                    spare = await self._start_spare()
                except (InstanceCrashed, OSError) as exc:
                    log.info("spare worker did not start: %s", exc)
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if spare is None:  # the template is gone
                    return
                backoff = 0.5
                self._spare = spare
                self._spare_taken = anyio.Event()
            spare_now = self._spare
            if spare_now is None:
                continue
            # wait until it is taken or dies
            async with anyio.create_task_group() as tg:

                async def on_exit(w: WorkerProcess = spare_now) -> None:
                    await w._exited.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(on_exit)
                await self._spare_taken.wait()
                tg.cancel_scope.cancel()
            if self._spare is spare_now and spare_now.exit_reason is not None:
                self._spare = None

    async def _start_spare(self) -> WorkerProcess | None:
        self._refs += 1
        ref = self._refs
        config = WorkerConfig(
            spec=_SPARE_SPEC, socket=os.path.join(self.socket_dir, f"w{ref}.sock"),
            error_file=os.path.join(self.socket_dir, f"w{ref}.err"), parent_pid=os.getpid(),
            instance_id=f"spare-{ref}", spare=True)
        worker = await self._spawn_forked(ref, config)
        if worker is None:
            return None
        self.workers.discard(worker)  # `workers` are function instances: not a spare yet
        try:
            with anyio.fail_after(self.start_timeout):
                await worker._start(self._tg)
        except TimeoutError:
            raise await worker._start_failed(f"not ready within {self.start_timeout}s") from None
        except BaseException:
            worker.kill()
            raise
        return worker

    # --- shutdown ------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        self._closing = True
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.kill()
            self.workers.add(spare)  # so that we wait for it below
        for worker in list(self.workers):
            worker.kill()
        with anyio.move_on_after(5.0):
            for worker in list(self.workers):
                await worker.wait_exit()
        template = self._template
        if template is not None:
            if template.stdin is not None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError,
                                         OSError):
                    await template.stdin.aclose()
            with anyio.move_on_after(2.0):
                await template.wait()
            if template.returncode is None:
                template.kill()
                await template.wait()
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await template.aclose()  # its pipes too: no transport left for the GC
            self._template_alive = False


_SPARE_SPEC = FunctionSpec(FunctionConfig(name="spare"), "", "")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")

