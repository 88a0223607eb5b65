"""Async invocations on a real cluster: durable, retried with backoff, dead-lettered (issue 6)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import Client, FunctionNotFound
from runtime.wire import InvocationState
from supervisor._launcher import Cluster
from tests.fixtures.cluster import ROOT, running_cluster
from tests.fixtures.servers import redis_url  # noqa: F401 - fixture

APPS = (str(ROOT / "examples" / "hello.py"), str(ROOT / "examples" / "faulty.py"),
        str(ROOT / "tests" / "e2e" / "apps" / "async_app.py"))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    with running_cluster(tmp_path_factory.mktemp("async"), zones=("a", "b"), apps=APPS,
                         store_url=url) as c:
        yield c


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with Client(cluster.addresses) as c:
        yield c


def test_flaky_async_succeeds_on_attempt_two_with_history(client: Client) -> None:
    inv = client.invoke_async("flaky", {"n": 1})
    info = client.wait_invocation(inv, timeout=60)
    assert info.state == InvocationState.SUCCEEDED
    assert [a.attempt for a in info.attempts] == [1, 2]
    assert info.attempts[0].outcome == "crash"
    assert info.attempts[1].outcome == "succeeded"
    assert all(a.node_id and a.zone for a in info.attempts)


def test_boom_backs_off_then_dead_letters_and_redrives(client: Client) -> None:
    inv = client.invoke_async("boom_fast", {})
    info = client.wait_invocation(inv, timeout=60)
    assert info.state == InvocationState.DEAD_LETTERED
    attempts = info.attempts
    assert len(attempts) == 3
    assert info.error is not None and info.error.type == "ValueError"
    # backoff: initial 0.2 s, multiplier 2, jitter in [50 %, 100 %] of the step
    gaps = [b.started_at - (a.ended_at or a.started_at) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert 0.1 <= gaps[0] <= 0.2 + 1.0
    assert 0.2 <= gaps[1] <= 0.4 + 1.0
    assert inv in {d.invocation_id for d in client.dead_letters()}
    assert inv in client.redrive([inv])
    info = client.wait_invocation(inv, timeout=60)
    assert info.state == InvocationState.DEAD_LETTERED
    assert len(info.attempts) == 6


def test_idempotency_key_returns_the_same_id_and_runs_once(client: Client) -> None:
    key = f"k-{time.time_ns()}"
    first = client.invoke_async("count_runs", {"key": key}, idempotency_key=key)
    second = client.invoke_async("count_runs", {"key": key}, idempotency_key=key)
    assert first == second
    info = client.wait_invocation(first, timeout=60)
    assert info.state == InvocationState.SUCCEEDED
    assert len(info.attempts) == 1


def test_unknown_function_is_refused_at_submit(client: Client) -> None:
    with pytest.raises(FunctionNotFound):
        client.invoke_async("does_not_exist", {})


def test_cli_async_wait(cluster: Cluster) -> None:
    from tests.fixtures.cluster import stoic_cli

    out = stoic_cli("invoke", "echo", "--data", '{"a": 1}', "--async", "--wait",
                    "--target", ",".join(cluster.addresses))
    assert out.returncode == 0, out.stderr
    assert "SUCCEEDED" in out.stdout


@pytest.mark.slow
def test_chaos_async_none_lost(tmp_path: Path) -> None:
    """Submit a few thousand async echoes while SIGKILLing one node, then another
    (restarting each); every acknowledged id must end SUCCEEDED."""
    with running_cluster(tmp_path, zones=("a", "b", "c"), apps=APPS) as cluster:
        with Client(cluster.addresses) as c:
            ids: list[str] = []
            total = 2000
            for i in range(total):
                if i == total // 4:
                    victim = cluster.nodes[1]
                    assert victim.proc is not None
                    os.kill(victim.proc.pid, signal.SIGKILL)
                    victim.proc.wait(timeout=10)
                if i == total // 2:
                    cluster.restart_node(cluster.nodes[1].node_id)
                    victim = cluster.nodes[2]
                    assert victim.proc is not None
                    os.kill(victim.proc.pid, signal.SIGKILL)
                    victim.proc.wait(timeout=10)
                if i == 3 * total // 4:
                    cluster.restart_node(cluster.nodes[2].node_id)
                ids.append(c.invoke_async("echo", {"i": i}, idempotency_key=f"chaos-{i}"))
            assert len(set(ids)) == total
            deadline = time.monotonic() + 180
            pending = set(ids)
            states: dict[str, InvocationState] = {}
            while pending and time.monotonic() < deadline:
                for inv in list(pending)[:200]:
                    info = c.get_invocation(inv)
                    if info.state in (InvocationState.SUCCEEDED, InvocationState.DEAD_LETTERED,
                                      InvocationState.FAILED):
                        states[inv] = info.state
                        pending.discard(inv)
                        if len(info.attempts) > 1:
                            states[inv + ":multi"] = info.state
                time.sleep(0.2)
            lost = len(pending)
            failed = sum(1 for k, s in states.items() if ":" not in k and s != InvocationState.SUCCEEDED)
            multi = sum(1 for k in states if k.endswith(":multi"))
            print(f"async chaos: acknowledged={total} succeeded={total - lost - failed} "
                  f"failed={failed} lost={lost} executed_more_than_once={multi}")
            assert lost == 0
            assert failed == 0


def test_destinations_receive_the_outcome(cluster: Cluster, client: Client) -> None:
    import json

    import anyio

    from runtime import open_store

    ok = client.invoke_async("with_destinations", {"x": 21})
    bad = client.invoke_async("with_destinations", {"fail": True})
    assert client.wait_invocation(ok, timeout=60).state == InvocationState.SUCCEEDED
    assert client.wait_invocation(bad, timeout=60).state == InvocationState.DEAD_LETTERED

    async def delivered(inv: str) -> dict | None:  # type: ignore[type-arg]
        async with open_store(cluster.config.effective_store_url()) as store:
            v = await store.get(f"state/sink/{inv}")
            return json.loads(v.value) if v else None

    deadline = time.monotonic() + 30
    got: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline and len(got) < 2:
        for inv in (ok, bad):
            if inv not in got and (d := anyio.run(delivered, inv)) is not None:
                got[inv] = d
        time.sleep(0.1)
    assert got[ok]["state"] == "SUCCEEDED" and got[ok]["function"] == "with_destinations"
    assert got[bad]["state"] == "DEAD_LETTERED"
    assert got[bad]["error"]["type"] == "ValueError"
