"""Function actor processes, for real: the fork server's template, fresh interpreters,
crashes, signals, memory limits, and parent death. Every test ends every process it made
(leaving `ForkServer.open` kills what is still running)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from runtime import (
    ExitReason,
    ForkServer,
    FunctionSpec,
    InstanceCrashed,
    WorkerStartFailed,
    load_apps,
)
from runtime._worker import address_space_limit, exit_reason
from runtime.wire import ExecuteRequest, ExecuteResult

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_event_loop")]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-scoped: one event loop for the module (see conftest)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

TEST_APP = """
import os
import anyio
from anyio.streams.buffered import BufferedByteReceiveStream
from runtime import function

@function(timeout=5.0, concurrency=2)
async def napper(event, ctx):
    await anyio.sleep(event["s"])
    return {"pid": os.getpid(), "remaining": ctx.remaining_time()}

@function(timeout=5.0)
def describe(event, ctx):
    return {"invocation_id": ctx.invocation_id, "attempt": ctx.attempt,
            "function": ctx.function, "remaining": ctx.remaining_time(),
            "trace": ctx.trace_context, "event": event}

@function
def unserializable(event, ctx):
    return {1, 2}

@function
def status(event, ctx):
    with open(f"/proc/{os.getpid()}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FunctionSpec]:
    app = tmp_path_factory.mktemp("apps") / "worker_test_app.py"
    app.write_text(textwrap.dedent(TEST_APP))
    return load_apps([str(EXAMPLES / "hello.py"), str(EXAMPLES / "faulty.py"), str(app)])


def req(function: str, payload: bytes = b"", *, attempt: int = 1, content_type: str = "",
        deadline: float | None = None, invocation_id: str = "inv-1") -> ExecuteRequest:
    return ExecuteRequest(invocation_id=invocation_id, attempt=attempt, function=function,
                          payload=payload, content_type=content_type or "application/json",
                          deadline=deadline, trace_context={"traceparent": "00-ab-cd-01"})


def value(result: ExecuteResult) -> object:
    assert result.error is None, result.error
    return json.loads(result.payload)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def proc_file(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}", encoding="ascii") as f:
        return f.read()


async def poll_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `condition` (no event to wait on: another process's state) until it holds;
    TimeoutError after `within` seconds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def wait_gone(pids: Iterable[int], within: float = 5.0) -> None:
    pids = list(pids)
    await poll_until(lambda: not any(alive(p) for p in pids), within)


@pytest.mark.parametrize("use_template", [True, False], ids=["template", "fresh"])
async def test_spawn_execute_and_stop(specs: dict[str, FunctionSpec], use_template: bool) -> None:
    async with ForkServer.open(use_template=use_template) as forks:
        assert (forks.template_pid is not None) is use_template
        started = time.perf_counter()
        hello = await forks.spawn(specs["hello"], node_id="n1", zone="a", instance_id="h-1")
        elapsed = time.perf_counter() - started
        print(f"spawn via {'template' if use_template else 'fresh interpreter'}: "
              f"{elapsed * 1000:.1f} ms")
        assert value(await hello.execute(req("hello", b'{"name": "Ada"}'))) == {
            "greeting": "hello Ada"}
        assert hello.instance_id == "h-1" and str(hello.pid) in hello.name
        assert (await hello.ping()).pid == hello.pid

        echo = await forks.spawn(specs["echo"])
        assert value(await echo.execute(req("echo", b'{"a": [1, 2]}'))) == {"a": [1, 2]}
        raw = await echo.execute(req("echo", b"\x00\xffbytes", content_type="image/png"))
        assert (raw.payload, raw.content_type) == (b"\x00\xffbytes", "application/octet-stream")
        assert value(await echo.execute(req("echo", b""))) is None

        who = await forks.spawn(specs["whoami"], node_id="n1", zone="a", instance_id="w-1")
        me = value(await who.execute(req("whoami", attempt=2, invocation_id="abc")))
        assert me == {"node": "n1", "zone": "a", "instance": "w-1", "pid": who.pid,
                      "invocation_id": "abc", "attempt": 2}
        if use_template:  # forked from the template, not from us
            assert proc_file(who.pid, "stat").split()[3] == str(forks.template_pid)

        for worker in (hello, echo, who):
            worker.stop()
        for worker in (hello, echo, who):
            with anyio.fail_after(5):
                assert await worker.wait_exit() == ExitReason.shutdown()
        assert not any(alive(w.pid) for w in (hello, echo, who))


async def test_context_deadline_encoding_and_in_flight(specs: dict[str, FunctionSpec]) -> None:
    async with ForkServer.open() as forks:
        worker = await forks.spawn(specs["describe"])
        got = value(await worker.execute(req("describe", b'[1, "x"]', deadline=time.time() + 3)))
        assert got["event"] == [1, "x"] and got["function"] == "describe"
        assert 2.0 < got["remaining"] <= 3.0
        assert got["trace"] == {"traceparent": "00-ab-cd-01"}
        bad = await worker.execute(req("describe", b"{not json"))
        assert bad.error is not None and bad.error.type == "InvalidInput"

        odd = await forks.spawn(specs["unserializable"])
        result = await odd.execute(req("unserializable"))
        assert result.error is not None and "not JSON serializable" in result.error.message

        napper = await forks.spawn(specs["napper"])  # async handler, concurrency 2
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(napper.execute, req("napper", b'{"s": 0.3}'))
            await poll_until(lambda: napper.in_flight == 2, 2)
        assert napper.in_flight == 0

        # stop lets an in-flight invocation finish, then the worker exits 0
        async with anyio.create_task_group() as tg:
            results: list[ExecuteResult] = []

            async def run() -> None:
                results.append(await napper.execute(req("napper", b'{"s": 0.3}')))

            tg.start_soon(run)
            await poll_until(lambda: napper.in_flight == 1, 2)
            napper.stop()
        assert value(results[0])["pid"] == napper.pid  # type: ignore[index]
        with anyio.fail_after(5):
            assert await napper.wait_exit() == ExitReason.shutdown()


async def test_handler_error_keeps_the_instance(specs: dict[str, FunctionSpec]) -> None:
    async with ForkServer.open() as forks:
        worker = await forks.spawn(specs["boom"])
        result = await worker.execute(req("boom", b'"x"'))
        assert result.error is not None
        assert (result.error.type, result.error.message) == ("ValueError", "boom: 'x'")
        assert "faulty.py" in result.error.traceback and "raise ValueError" in result.error.traceback
        assert "_serve.py" not in result.error.traceback
        assert (await worker.ping()).pid == worker.pid
        again = await worker.execute(req("boom", b"1"))
        assert again.error is not None and worker.exit_reason is None


@pytest.mark.parametrize(
    ("name", "detail"),
    [("crash", "exit status 3"), ("segfault", "killed by SIGSEGV"), ("flaky", "exit status 3")],
)
async def test_process_death_mid_invocation(
    specs: dict[str, FunctionSpec], name: str, detail: str
) -> None:
    async with ForkServer.open() as forks:
        worker = await forks.spawn(specs[name])
        with anyio.fail_after(5), pytest.raises(InstanceCrashed) as info:
            await worker.execute(req(name))
        assert detail in str(info.value) and str(worker.pid) in str(info.value)
        reason = await worker.wait_exit()
        assert reason.kind == "error" and reason.detail == detail and reason.abnormal
        assert not alive(worker.pid)
        with pytest.raises(InstanceCrashed):
            await worker.execute(req(name))
        if name == "flaky":  # the replacement succeeds on attempt 2
            replacement = await forks.spawn(specs[name])
            assert value(await replacement.execute(req(name, attempt=2))) == {"attempt": 2}


async def test_hog_hits_its_memory_limit(specs: dict[str, FunctionSpec]) -> None:
    async with ForkServer.open() as forks:
        probe = await forks.spawn(specs["status"])
        vm = value(await probe.execute(req("status")))
        limit_kb = address_space_limit(specs["status"].config.memory_mb) // 1024
        size_kb = int(vm["VmSize"].split()[0])  # type: ignore[index]
        print(f"worker baseline VmSize {size_kb} kB, RSS {vm['VmRSS']}, "  # type: ignore[index]
              f"threads {vm['Threads']}; limit {limit_kb} kB")  # type: ignore[index]
        assert size_kb < limit_kb - 256 * 1024 + 96 * 1024  # the baseline fits the allowance

        hog = await forks.spawn(specs["hog"])
        started = time.perf_counter()
        with anyio.fail_after(10), pytest.raises(InstanceCrashed) as info:
            await hog.execute(req("hog"))
        print(f"hog died after {(time.perf_counter() - started) * 1000:.0f} ms")
        assert "out of memory" in str(info.value) and "memory_mb=64" in str(info.value)
        assert (await hog.wait_exit()).kind == "error"
        # the node (this process) and its fork server are unaffected
        again = await forks.spawn(specs["hello"])
        assert value(await again.execute(req("hello", b'{"name": "x"}')))


async def test_sigkill_during_execute_surfaces_promptly(specs: dict[str, FunctionSpec]) -> None:
    async with ForkServer.open() as forks:
        worker = await forks.spawn(specs["hang"])
        async with anyio.create_task_group() as tg:
            errors: list[BaseException] = []
            failed = anyio.Event()

            async def run() -> None:
                try:
                    await worker.execute(req("hang"))
                except InstanceCrashed as exc:
                    errors.append(exc)
                    failed.set()

            tg.start_soon(run)
            await poll_until(lambda: worker.in_flight == 1, 2)
            os.kill(worker.pid, signal.SIGKILL)  # from outside, not via worker.kill()
            started = time.perf_counter()
            with anyio.fail_after(1.0):  # far below any gRPC timeout
                await failed.wait()
            print(f"InstanceCrashed {((time.perf_counter() - started) * 1000):.1f} ms after SIGKILL")
        assert "killed by SIGKILL" in str(errors[0])
        assert (await worker.wait_exit()).kind == "killed"


async def test_stopped_worker_fails_ping_within_callers_scope(
    specs: dict[str, FunctionSpec],
) -> None:
    async with ForkServer.open() as forks:
        worker = await forks.spawn(specs["hello"])
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await worker.ping()
            assert time.perf_counter() - started < 1.0
        finally:
            worker.kill()  # SIGKILL ends a stopped process too
        with anyio.fail_after(5):
            assert await worker.wait_exit() == ExitReason.killed("killed by SIGKILL (by the node)")


async def test_a_ping_whose_stream_closes_under_it_fails_as_a_crash_not_a_cancellation(
    specs: dict[str, FunctionSpec],
) -> None:
    """The stream closing (the worker died) cancels the ping's RPC inside grpc. That came
    out of `ping` as grpc's CancelledError, which, in a pool's health-check task, silently
    cancelled the pool's whole task group: its supervisor and instances were gone and
    callers waited for a restart that never came."""
    async with ForkServer.open() as forks:
        worker = await forks.spawn(specs["hello"])
        os.kill(worker.pid, signal.SIGSTOP)  # the ping waits: it is in flight below
        outcome: list[BaseException | None] = []
        try:
            async with anyio.create_task_group() as tg:

                async def ping() -> None:
                    try:
                        with anyio.fail_after(5):
                            await worker.ping()
                        outcome.append(None)
                    except BaseException as exc:  # noqa: BLE001 - the test looks at it
                        outcome.append(exc)

                tg.start_soon(ping)
                await anyio.wait_all_tasks_blocked()
                await worker._client.aclose()  # what a broken stream's reader does
        finally:
            worker.kill()
        assert len(outcome) == 1 and isinstance(outcome[0], InstanceCrashed), outcome
        assert "cancelled locally" in str(outcome[0])
        with anyio.fail_after(5):
            await worker.wait_exit()


async def test_broken_import_fails_the_start_with_the_reason() -> None:
    spec = FunctionSpec.from_json({
        "config": {"name": "broken_import", "timeout": 1.0},
        "app": str(EXAMPLES / "broken.py"), "handler_name": "broken_import"})
    for use_template in (True, False):
        async with ForkServer.open(use_template=use_template) as forks:
            with anyio.fail_after(10), pytest.raises(WorkerStartFailed) as info:
                await forks.spawn(spec)
            assert info.value.reason.kind == "error"
            assert "start failed" in info.value.reason.detail
            assert "RuntimeError: examples/broken.py fails on import" in str(info.value)
            assert not forks.workers


async def test_template_death_kills_its_workers_then_falls_back(
    specs: dict[str, FunctionSpec],
) -> None:
    async with ForkServer.open() as forks:
        template = forks.template_pid
        assert template is not None
        assert "Threads:\t1\n" in proc_file(template, "status")  # single-threaded forks
        workers = [await forks.spawn(specs["hello"]) for _ in range(2)]
        os.kill(template, signal.SIGKILL)
        await wait_gone([template, *(w.pid for w in workers)])
        for w in workers:
            with anyio.fail_after(5):
                reason = await w.wait_exit()
            assert reason.kind == "killed" and "template" in reason.detail
        assert forks.template_pid is None
        fresh = await forks.spawn(specs["hello"])  # fallback: a fresh interpreter
        assert value(await fresh.execute(req("hello", b'{"name": "again"}')))


NODE_SCRIPT = """
import json, sys, anyio
from runtime import ForkServer, load_apps

async def main():
    specs = load_apps([sys.argv[1]])
    async with ForkServer.open() as forks:
        workers = [await forks.spawn(specs["hello"]) for _ in range(2)]
        print(json.dumps([forks.template_pid] + [w.pid for w in workers]), flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_killing_the_node_leaves_no_worker_behind(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    pids: list[int] = []
    async with await anyio.open_process(
        [sys.executable, str(script), str(EXAMPLES / "hello.py")], stdin=subprocess.DEVNULL,
        stderr=None, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as node:
        try:
            assert node.stdout is not None
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(node.stdout).receive_until(b"\n", 4096)
            pids = json.loads(line)
            assert len(pids) == 3 and all(alive(p) for p in pids)
            node.kill()  # SIGKILL: no cleanup code of the node runs
            await wait_gone(pids)
        finally:
            with contextlib.suppress(ProcessLookupError):
                node.kill()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_exit_reasons() -> None:
    assert exit_reason(0, None) == ExitReason.shutdown()
    assert exit_reason(3, None) == ExitReason.error("exit status 3")
    assert exit_reason(None, signal.SIGSEGV) == ExitReason.error("killed by SIGSEGV")
    assert exit_reason(None, signal.SIGKILL) == ExitReason.killed("killed by SIGKILL")
    assert exit_reason(None, signal.SIGTERM, stop_requested=True) == ExitReason.shutdown()
    assert exit_reason(None, signal.SIGTERM) == ExitReason.error("killed by SIGTERM")
    assert "out of memory" in exit_reason(87, None, memory_mb=64).detail
    assert exit_reason(86, None, start_error="boom").detail == "start failed: boom"


@pytest.mark.parametrize("use_template", [True, False], ids=["template", "fresh"])
async def test_measure_spawn_and_warm_latency(
    specs: dict[str, FunctionSpec], use_template: bool
) -> None:
    """Figures for the report: spawn time and warm execute latency (p50/p99)."""
    async with ForkServer.open(use_template=use_template) as forks:
        spawns = []
        for _ in range(5):
            started = time.perf_counter()
            worker = await forks.spawn(specs["echo"])
            spawns.append(time.perf_counter() - started)
            worker.kill()
            await worker.wait_exit()
        worker = await forks.spawn(specs["echo"])
        calls = 2000 if use_template else 200
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            await worker.execute(req("echo", b'{"i": %d}' % i))
            latencies.append(time.perf_counter() - started)
        q = statistics.quantiles(latencies, n=100)
        print(f"{'template' if use_template else 'fresh'}: spawn p50 "
              f"{statistics.median(spawns) * 1000:.1f} ms (n={len(spawns)}); warm execute "
              f"p50 {q[49] * 1e6:.0f} us p99 {q[98] * 1e6:.0f} us (n={calls})")
        assert statistics.median(latencies) < 0.05


async def test_a_spawn_takes_the_started_spare_and_a_new_one_is_forked(
    specs: dict[str, FunctionSpec],
) -> None:
    """The fork server keeps one started worker without a function; `spawn` assigns it
    (no fork, no server start on that path) and forks the next spare in the background.
    A spare that cannot load the function is killed and the fork path reports why."""
    async with ForkServer.open(preload=[str(EXAMPLES / "hello.py")]) as forks:
        await poll_until(lambda: forks._spare is not None, within=10)
        spare = forks._spare
        assert spare is not None and not forks.workers  # a spare is no instance yet
        who = await forks.spawn(specs["whoami"], node_id="n1", zone="a", instance_id="w-9")
        assert who is spare and forks.spares_used == 1 and forks.workers == {who}
        assert who.name == f"whoami/w-9[{who.pid}]"
        me = value(await who.execute(req("whoami", invocation_id="x")))
        assert me == {"node": "n1", "zone": "a", "instance": "w-9", "pid": who.pid,
                      "invocation_id": "x", "attempt": 1}
        # its memory limit is the function's (RLIMIT_AS, set on assignment)
        line = next(x for x in proc_file(who.pid, "limits").splitlines()
                    if x.startswith("Max address space"))
        cfg = specs["whoami"].config
        assert int(line.split()[3]) == address_space_limit(cfg.memory_mb, cfg.concurrency)
        await poll_until(lambda: forks._spare is not None and forks._spare is not who,
                         within=10)
        second = forks._spare
        assert second is not None
        broken = FunctionSpec.from_json({
            "config": {"name": "broken_import", "timeout": 1.0},
            "app": str(EXAMPLES / "broken.py"), "handler_name": "broken_import"})
        with anyio.fail_after(10), pytest.raises(WorkerStartFailed) as info:
            await forks.spawn(broken)
        assert "RuntimeError: examples/broken.py fails on import" in str(info.value)
        await wait_gone([second.pid])
        assert forks.spares_used == 1
        # a spare killed while it waits is replaced
        await poll_until(lambda: forks._spare is not None and forks._spare is not second,
                         within=10)
        third = forks._spare
        assert third is not None
        os.kill(third.pid, signal.SIGKILL)
        await poll_until(lambda: forks._spare is not None and forks._spare is not third,
                         within=10)
        assert forks.spares_used == 1 and forks.workers == {who}


async def test_a_slow_spawn_is_logged_while_it_is_going_and_when_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart that takes long leaves callers waiting; the node log says where it is."""
    app = tmp_path / "slow_start.py"
    app.write_text(textwrap.dedent("""
        import os, time
        from runtime import function

        if os.environ.get("STOIC_WORKER") == "1":
            time.sleep(1.6)  # a slow import, in the function actor process only

        @function
        def slow_start(event, ctx):
            return "up"
    """))
    spec = load_apps([str(app)])["slow_start"]
    caplog.set_level(logging.WARNING, logger="stoic.worker")
    async with ForkServer.open(spare=False) as forks:
        with anyio.fail_after(15):
            worker = await forks.spawn(spec)
        assert value(await worker.execute(req("slow_start"))) == "up"
    going = [r.getMessage() for r in caplog.records if "still starting" in r.getMessage()]
    ended = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert going and "slow_start" in going[0] and "waiting for pid" in going[0], going
    assert len(ended) == 1 and "readiness line after" in ended[0], ended
    assert "ready" in ended[0].rsplit(";", 1)[-1], ended
