"""The fork server's template process: pre-imported once, forks a worker per spawn command.

Protocol (JSON lines; the node writes to our stdin, we write to our stdout):
- we send `{"op": "ready", "pid": P}` once imports are done;
- node: `{"op": "spawn", "ref": N, "config": {WorkerConfig}}` -> we fork and answer
  `{"op": "spawned", "ref": N, "pid": P}` or `{"op": "spawn_failed", "ref": N, "error": E}`;
- node: `{"op": "preload", "apps": [...]}` -> we import the apps (so that forked workers
  find them cached) and answer `{"op": "preloaded", "errors": {app: error}}`;
- whenever a child ends we reap it and send `{"op": "exit", "pid": P, "code": C|null,
  "signal": S|null}`.
End of stdin (the node closed it or died) ends the template, SIGKILLing its children.

Fork safety: the template is single-threaded and creates no gRPC object and no event loop;
gRPC's own fork handlers are disabled (GRPC_ENABLE_FORK_SUPPORT=false in our environment,
set by the node before the interpreter starts, because grpc reads it on import). Every gRPC
object is created in the forked child only.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import threading
from typing import Any, NoReturn

__all__ = ["run_template"]

_MAX_LINE = 1 << 20


def _send(msg: dict[str, Any]) -> None:
    data = (json.dumps(msg) + "\n").encode()
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        if os.WIFSIGNALED(status):
            _send({"op": "exit", "pid": pid, "code": None, "signal": os.WTERMSIG(status)})
        elif os.WIFEXITED(status):
            _send({"op": "exit", "pid": pid, "code": os.WEXITSTATUS(status), "signal": None})


def _fork_worker(config_data: dict[str, Any], wake_fds: tuple[int, int]) -> int:
    from runtime._worker._serve import WorkerConfig, run_worker

    template_pid = os.getpid()
    config_data = {**config_data, "parent_pid": template_pid}
    config = WorkerConfig.from_json(json.dumps(config_data))
    pid = os.fork()
    if pid != 0:
        return pid
    # The child: undo the template's plumbing, then become the worker (never returns).
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        run_worker(config)
    finally:
        os._exit(1)


def _preload(apps: list[str]) -> dict[str, str]:
    from runtime._function import import_app

    errors: dict[str, str] = {}
    for app in apps:
        try:
            import_app(app)
        except BaseException as exc:  # user code: report, never die of it
            errors[app] = f"{type(exc).__name__}: {exc}"
    if threading.active_count() > 1:
        errors["*"] = "an app started threads on import; forking may be unsafe"
    return errors


def run_template(parent_pid: int) -> NoReturn:
    """Serve spawn commands until stdin closes. Never returns."""
    from runtime._worker._limits import die_with_parent

    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Pre-import what every worker needs (the point of the template).
    import anyio  # noqa: F401
    import anyio._backends._asyncio  # noqa: F401
    import anyio._core._signals  # noqa: F401
    import anyio.from_thread  # noqa: F401
    import anyio.to_thread  # noqa: F401
    import grpc  # noqa: F401
    import grpc.aio  # noqa: F401
    import opentelemetry.sdk.trace  # noqa: F401

    import runtime  # noqa: F401
    import runtime._state  # noqa: F401
    import runtime._tracing  # noqa: F401
    import runtime._worker._serve  # noqa: F401

    # Everything imported so far is shared with every forked worker. Move it out of the
    # garbage collector's view: a collection in a worker would otherwise touch (and so
    # copy, page by page) the whole inherited heap.
    gc.freeze()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    children: set[int] = set()
    buffer = b""
    _send({"op": "ready", "pid": os.getpid()})
    try:
        while True:
            readable, _, _ = select.select([0, wake_r], [], [])
            if wake_r in readable:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            _reap(children)
            if 0 not in readable:
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                break  # the node closed our stdin, or died
            buffer += chunk
            if len(buffer) > _MAX_LINE and b"\n" not in buffer:
                break  # protocol violation: stop rather than buffer without bound
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                op = msg.get("op")
                if op == "spawn":
                    try:
                        pid = _fork_worker(msg["config"], (wake_r, wake_w))
                    except (OSError, ValueError, KeyError) as exc:
                        _send({"op": "spawn_failed", "ref": msg.get("ref"), "error": str(exc)})
                        continue
                    children.add(pid)
                    _send({"op": "spawned", "ref": msg.get("ref"), "pid": pid})
                elif op == "preload":
                    errors = _preload(list(msg.get("apps", [])))
                    gc.freeze()
                    _send({"op": "preloaded", "errors": errors})
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sys.stdout.flush()
    os._exit(0)
