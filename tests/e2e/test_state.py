"""ctx.state: a counter incremented concurrently across zones stays exact, also when an
instance is SIGKILLed during the run (issue 4, function state)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import anyio

from runtime import Client, StoicError, open_store
from tests.fixtures.cluster import ROOT, running_cluster


def _counter_pids(client: Client) -> list[int]:
    return [i.pid for n in client.status().nodes for p in n.pools if p.function == "counter"
            for i in p.instances]


def test_counter_is_exact_across_zones_and_a_kill(tmp_path: Path) -> None:
    apps = (str(ROOT / "examples" / "counter.py"),)
    with running_cluster(tmp_path, zones=("a", "b", "c"), apps=apps) as cluster:
        results: Counter[str] = Counter()
        errors: list[str] = []
        started = threading.Event()

        def worker(k: int) -> None:
            targets = cluster.addresses[k % 3:] + cluster.addresses[:k % 3]
            with Client(targets) as c:
                for _ in range(40):
                    try:
                        c.invoke("counter", {"add": 1}, timeout=30)
                        results["ok"] += 1
                        started.set()
                    except StoicError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        assert started.wait(60)
        with Client(cluster.addresses) as c:
            pids = _counter_pids(c)
        assert pids
        os.kill(pids[0], signal.SIGKILL)
        for t in threads:
            t.join(timeout=120)
        assert errors == []

        async def read() -> int:
            async with open_store(cluster.config.effective_store_url()) as store:
                v = await store.get("state/counter/count")
                return int(json.loads(v.value)["count"]) if v else 0

        assert anyio.run(read) == results["ok"] == 240
