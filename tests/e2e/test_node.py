"""One node, real function actor processes, real gRPC: issue 3's behaviours end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import (
    Client,
    FunctionError,
    FunctionNotFound,
    InstanceCrashed,
    InvalidInput,
    InvocationTimeout,
    LimitExceeded,
    Unavailable,
)
from supervisor._launcher import Cluster
from tests.fixtures.cluster import ROOT, pid_alive, running_cluster, stoic_cli, wait_gone
from tests.fixtures.ports import poll


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("node"), zones=("a",)) as cluster:
        yield cluster


@pytest.fixture
def client(node: Cluster) -> Iterator[Client]:
    with Client(node.addresses) as c:
        yield c


def pids_of(client: Client, function: str) -> list[int]:
    status = client.status()
    return [i.pid for n in status.nodes for p in n.pools if p.function == function
            for i in p.instances]


def pool_of(client: Client, function: str):  # type: ignore[no-untyped-def]
    for n in client.status().nodes:
        for p in n.pools:
            if p.function == function:
                return p
    raise AssertionError(f"no pool for {function}")



def test_hello_and_echo_through_the_client(client: Client) -> None:
    assert client.invoke("hello", {"name": "ada"}).value == {"greeting": "hello ada"}
    assert client.invoke("echo", {"x": [1, 2, 3]}).value == {"x": [1, 2, 3]}
    who = client.invoke("whoami").value
    assert who["zone"] == "a" and who["pid"] in pids_of(client, "whoami")


def test_cli_invoke_and_status(node: Cluster) -> None:
    out = stoic_cli("invoke", "hello", "--data", '{"name": "cli"}', "--target", node.addresses[0])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"greeting": "hello cli"}
    st = stoic_cli("status", "--target", node.addresses[0])
    assert st.returncode == 0, st.stderr
    assert "zone a" in st.stdout and "hello" in st.stdout
    bad = stoic_cli("invoke", "nope", "--target", node.addresses[0])
    assert bad.returncode != 0 and "FunctionNotFound" in bad.stderr


def test_cli_output_into_a_closed_pipe_exits_quietly(node: Cluster) -> None:
    """`stoic functions | head -1`: the reader goes away; the CLI exits with the shell's
    SIGPIPE status and no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "functions", "--target", node.addresses[0]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it prints: it has to reach the node first
    try:
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141, err
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def _grpcurl() -> str:
    found = list((Path(ROOT) / ".venv").rglob("grpcurl")) if (ROOT / ".venv").exists() else []
    binaries = [str(p) for p in found if p.is_file() and os.access(p, os.X_OK)]
    if not binaries:
        import shutil

        path = shutil.which("grpcurl")
        if path:
            return path
        pytest.skip("grpcurl binary not available")
    return binaries[0]


def test_grpcurl_list_health_and_invoke(node: Cluster) -> None:
    grpcurl = _grpcurl()
    addr = node.addresses[0]
    listed = subprocess.run([grpcurl, "-plaintext", addr, "list"], capture_output=True,
                            text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    for service in ("stoic.v1.Invoker", "stoic.v1.Control", "grpc.health.v1.Health"):
        assert service in listed.stdout
    health = subprocess.run([grpcurl, "-plaintext", addr, "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=30)
    assert "SERVING" in health.stdout
    import base64

    payload = base64.b64encode(b'{"name": "grpcurl"}').decode()
    inv = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps({"function": "hello", "payload": payload}),
         addr, "stoic.v1.Invoker/Invoke"], capture_output=True, text=True, timeout=30)
    assert inv.returncode == 0, inv.stderr
    body = json.loads(inv.stdout)
    assert json.loads(base64.b64decode(body["payload"])) == {"greeting": "hello grpcurl"}
    # the stream: two calls in one message, each answered by id (one with a status)
    calls = {"calls": [{"call_id": 1, "request": {"function": "hello", "payload": payload}},
                       {"call_id": 2, "request": {"function": "nope"}}]}
    streamed = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps(calls), addr, "stoic.v1.Invoker/InvokeStream"],
        capture_output=True, text=True, timeout=30)
    assert streamed.returncode == 0, streamed.stderr
    decoder, text, results = json.JSONDecoder(), streamed.stdout.strip(), {}
    while text:  # grpcurl prints one JSON document per stream message
        msg, end = decoder.raw_decode(text)
        results.update({r["call_id"]: r for r in msg["results"]})
        text = text[end:].strip()
    assert json.loads(base64.b64decode(results["1"]["response"]["payload"])) == {
        "greeting": "hello grpcurl"}
    assert (results["2"]["code"], results["2"]["error"]) == (5, "FunctionNotFound")


def test_boom_is_an_error_result_and_the_instance_stays(client: Client) -> None:
    before = poll(lambda: pids_of(client, "boom"), what="a boom instance")
    with pytest.raises(FunctionError) as info:
        client.invoke("boom")
    assert info.value.type == "ValueError"
    assert "Traceback" in info.value.traceback and "boom" in info.value.traceback
    assert pids_of(client, "boom") == before


def test_crash_is_retried_on_new_instances_and_counted(client: Client) -> None:
    before = pool_of(client, "crash").restarts
    with pytest.raises(InstanceCrashed) as info:
        client.invoke("crash")
    assert "exit status 3" in str(info.value) or "status 3" in str(info.value)
    pool = poll(lambda: (p := pool_of(client, "crash")).restarts > before and p.instances and p,
                what="crash restarted")
    assert pool.restarts >= before + 1


def test_segfault_names_the_signal(client: Client) -> None:
    with pytest.raises(InstanceCrashed) as info:
        client.invoke("segfault")
    assert "SIGSEGV" in str(info.value)


def test_flaky_succeeds_on_attempt_two(client: Client) -> None:
    result = client.invoke("flaky", {"n": 1})
    assert result.attempts == 2
    assert result.value["attempt"] == 2


def test_hang_times_out_and_the_instance_is_replaced(client: Client) -> None:
    old = poll(lambda: pids_of(client, "hang"), what="a hang instance")
    with pytest.raises(InvocationTimeout):
        client.invoke("hang")
    new = poll(lambda: (p := pids_of(client, "hang")) and p != old and p, what="replacement")
    assert not set(new) & set(old)
    assert wait_gone(old) == []


def test_hog_is_killed_by_its_memory_limit(client: Client) -> None:
    with pytest.raises((InstanceCrashed, FunctionError)) as info:
        client.invoke("hog")
    assert "memory" in str(info.value).lower() or "MemoryError" in str(info.value)
    assert client.invoke("hello", {"name": "still here"}).value == {"greeting": "hello still here"}


def test_sigstopped_idle_instance_is_replaced(client: Client) -> None:
    old = poll(lambda: pids_of(client, "echo"), what="an echo instance")
    os.kill(old[0], signal.SIGSTOP)
    try:
        new = poll(lambda: (p := pids_of(client, "echo")) and old[0] not in p and p,
                   timeout=20, what="the stopped instance replaced")
        assert new
    finally:
        try:
            os.kill(old[0], signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert wait_gone([old[0]]) == []
    assert client.invoke("echo", 5).value == 5


def test_broken_import_opens_the_circuit_and_others_keep_serving(client: Client) -> None:
    # deploying a module that fails on import is refused at once, naming the error ...
    with pytest.raises(InvalidInput, match="fails on import"):
        client.deploy([str(ROOT / "examples" / "broken.py")])
    # ... and one that imports in the node but fails in its function actor processes trips
    # the restart intensity: the circuit opens and callers get UNAVAILABLE with the reason
    client.deploy([str(ROOT / "tests" / "e2e" / "apps" / "broken_in_worker.py")])

    def unavailable() -> str:
        try:
            client.invoke("broken_in_worker", timeout=10)
        except Unavailable as exc:
            return str(exc)
        except InstanceCrashed:
            return ""
        return ""

    message = poll(unavailable, timeout=30, what="UNAVAILABLE for broken")
    assert "RuntimeError" in message or "import" in message.lower()
    assert client.invoke("hello", {"name": "ok"}).value == {"greeting": "hello ok"}


def test_bad_input_gets_precise_statuses(client: Client) -> None:
    with pytest.raises(FunctionNotFound, match="nope"):
        client.invoke("nope", {})
    with pytest.raises(InvalidInput, match="JSON|json"):
        client.invoke("echo", raw=b"{not json", content_type="application/json")
    with pytest.raises(LimitExceeded, match="limit"):
        # just past the node's 6 MiB payload limit (gRPC itself refuses far larger messages)
        client.invoke("echo", raw=b"x" * (6 * 1024 * 1024 + 100),
                      content_type="application/octet-stream")
    with pytest.raises(InvalidInput, match="empty"):
        client.invoke("", {})
    assert client.invoke("echo", {"fine": True}).value == {"fine": True}


def test_killing_the_node_leaves_no_function_actor(tmp_path: Path) -> None:
    from tests.fixtures.cluster import descendants

    with running_cluster(tmp_path, zones=("a",)) as cluster:
        with Client(cluster.addresses) as c:
            poll(lambda: pids_of(c, "echo"), what="instances")
        node_pid = cluster.nodes[0].pid
        assert node_pid is not None
        below = descendants(node_pid)
        assert below, "the node should have a fork server and instances"
        os.kill(node_pid, signal.SIGKILL)
        assert wait_gone(below) == []
        assert not pid_alive(node_pid) or True


def test_prometheus_endpoint_counts_invocations_and_restarts(tmp_path: Path) -> None:
    import urllib.request

    from tests.fixtures.cluster import free_port_block

    port = free_port_block(2)
    proc = subprocess.Popen(
        [__import__("sys").executable, "-m", "supervisor.cli", "node", "--zone", "a",
         "--node-id", "p1", "--listen", f"127.0.0.1:{port}",
         "--prometheus", f"127.0.0.1:{port + 1}", "--state-dir", str(tmp_path / "s"),
         str(ROOT / "examples" / "hello.py"), str(ROOT / "examples" / "faulty.py")],
        cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            poll(lambda: _ready(c), timeout=30, what="node ready")
            c.invoke("hello", {"name": "metrics"})
            with pytest.raises(FunctionError):
                c.invoke("boom")
            with pytest.raises(InstanceCrashed):
                c.invoke("crash")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/metrics", timeout=5).read().decode()
        for name in ("stoic_invocations", "stoic_errors", "stoic_restarts", "stoic_retries",
                     "stoic_invocation_duration"):
            assert name in text, f"{name} missing from the scrape"
        assert 'function="hello"' in text and 'zone="a"' in text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _ready(c: Client) -> bool:
    try:
        return c.invoke("echo", 1).value == 1
    except Exception:
        return False


def test_cli_chaos_kill_instance_is_absorbed(node: Cluster, client: Client) -> None:
    old = poll(lambda: pids_of(client, "whoami"), what="a whoami instance")
    out = stoic_cli("chaos", "kill-instance", "whoami", "--target", node.addresses[0])
    assert out.returncode == 0, out.stderr
    assert f"pid {old[0]}" in out.stdout
    assert wait_gone([old[0]]) == []
    assert client.invoke("whoami").value["pid"] != old[0]


def test_sync_idempotency_key_returns_the_same_invocation_and_result(client: Client) -> None:
    import threading

    key = f"sync-{time.time_ns()}"
    results = []

    def call() -> None:
        results.append(client.invoke("whoami", idempotency_key=key))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 4
    assert len({r.invocation_id for r in results}) == 1
    assert len({r.value["invocation_id"] for r in results}) == 1  # it ran once
    other = client.invoke("whoami", idempotency_key=key + "-other")
    assert other.invocation_id != results[0].invocation_id


def test_warm_standby_replaces_a_killed_instance_with_the_spare(tmp_path: Path) -> None:
    from tests.fixtures.cluster import descendants

    with running_cluster(tmp_path, zones=("a",), env={"STOIC_WARM_STANDBY": "1"}) as cluster:
        node_pid = cluster.nodes[0].pid
        assert node_pid is not None
        with Client(cluster.addresses) as c:
            old = poll(lambda: pids_of(c, "whoami"), what="a whoami instance")
            # the spare exists before the kill: one more process than the instances
            spares = poll(lambda: descendants(node_pid) - set(_all_instance_pids(c)) - {
                p for p in descendants(node_pid) if _parent(p) == node_pid},
                what="spares started")
            os.kill(old[0], signal.SIGKILL)
            new = poll(lambda: (p := pids_of(c, "whoami")) and old[0] not in p and p,
                       what="the replacement")
            assert new[0] in spares, "the replacement should be the spare, not a new fork"
            assert c.invoke("whoami").value["pid"] == new[0]


def _all_instance_pids(c: Client) -> list[int]:
    return [i.pid for n in c.status().nodes for p in n.pools for i in p.instances]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def test_start_errors_show_in_the_trace_of_the_waiting_call(client: Client) -> None:

    client.deploy([str(ROOT / "tests" / "e2e" / "apps" / "broken_for_trace.py")])
    inv = f"trace-{time.time_ns()}"
    with pytest.raises(Unavailable):
        client.invoke("broken_for_trace", timeout=20, metadata={"x-stoic-invocation-id": inv})
    text = client.trace(inv)
    # A call that waited while the instances failed to start carries the start errors;
    # under load the pool may already have given up when the call arrives, and then the
    # call's trace carries that (with the same reason).
    assert "start_error" in text or "reached_max_restart_intensity" in text, text
    assert "cannot start in a function actor process" in text, text


def test_stoic_trace_shows_the_worker_and_handler_spans(client: Client) -> None:
    """Without a collector, the node records the worker's spans from the timing the worker
    reports: each attempt that reached a process has execute -> handler below it, in that
    process, and a crashed attempt has none."""
    import json

    from runtime._tracing import SpanRecord

    inv = f"worker-spans-{time.time_ns()}"
    result = client.invoke("flaky", {}, metadata={"x-stoic-invocation-id": inv})
    assert result.value == {"attempt": 2}
    records = [SpanRecord.from_dict(json.loads(s)) for s in client.trace_spans(inv)]
    by_id = {r.span_id: r for r in records}
    executes = [r for r in records if r.name == "stoic.worker.execute"]
    handlers = [r for r in records if r.name == "stoic.handler"]
    assert len(executes) == len(handlers) == 1, [r.name for r in records]
    execute, handler = executes[0], handlers[0]
    attempt = by_id[execute.parent_id or ""]
    assert (attempt.name, attempt.attributes["stoic.attempt"]) == ("stoic.attempt", 2)
    assert handler.parent_id == execute.span_id
    assert execute.attributes["process.pid"] == result.placement.pid
    assert attempt.start <= execute.start <= handler.start <= handler.end <= execute.end
    assert execute.end <= attempt.end
    text = client.trace(inv)
    assert f"pid {result.placement.pid}" in text, text
