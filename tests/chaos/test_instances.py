"""Chaos on function instances: SIGKILL and SIGSTOP them under load on a 3-zone cluster,
and count every invocation (answered, failed, lost, re-run)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from runtime import Client, StoicError
from tests.fixtures.cluster import ROOT, running_cluster
from tests.fixtures.ports import poll

ZONES = ("a", "b", "c")
APPS = (str(ROOT / "examples" / "hello.py"),)
STOP_STEPS = {2, 4, 9, 10, 14}  # zones c, b, a, b, c; the other ten steps SIGKILL


def _instances(c: Client, function: str) -> dict[str, list[int]]:
    """zone -> pids of `function`'s ready instances there."""
    out: dict[str, list[int]] = {}
    for node in c.status().nodes:
        for pool in node.pools:
            if pool.function == function:
                out.setdefault(node.zone, []).extend(i.pid for i in pool.instances)
    return out


def _load(target: list[str], stop: threading.Event, counts: Counter[str],
          errors: list[str], lock: threading.Lock) -> None:
    with Client(target) as c:
        for _ in range(1_000_000):
            if stop.is_set():
                return
            with lock:
                counts["sent"] += 1
            try:
                result = c.invoke("whoami", {}, timeout=20)
            except StoicError as exc:
                with lock:
                    counts["failed"] += 1
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                counts["answered"] += 1
                if result.value["zone"] not in ZONES or result.value["pid"] != result.placement.pid:
                    counts["wrong"] += 1
                if result.attempts > 1:
                    counts["re-run"] += 1  # its first attempt's instance died under it


@pytest.mark.slow
def test_killed_and_stopped_instances_under_load_fail_no_call(tmp_path: Path) -> None:
    """Every second, one `whoami` instance (round-robin over the zones, so each pool is hit
    every 3 s, under its restart intensity of 5 in 10 s) is SIGKILLed, or five times in
    fifteen SIGSTOPped (a hang: health pings find it and it is replaced). Six clients call
    `whoami` all along. Every call must be answered, correctly; re-runs are counted."""
    with running_cluster(tmp_path, zones=ZONES, apps=APPS) as cluster:
        with Client(cluster.addresses) as c:
            poll(lambda: set(_instances(c, "whoami")) == set(ZONES), what="whoami everywhere")
            stop = threading.Event()
            lock = threading.Lock()
            counts: Counter[str] = Counter()
            errors: list[str] = []
            threads = [threading.Thread(target=_load, args=(
                cluster.addresses[i % 3:] + cluster.addresses[:i % 3], stop, counts, errors,
                lock)) for i in range(6)]
            for t in threads:
                t.start()
            stopped: list[int] = []
            actions: Counter[str] = Counter()
            waited: list[float] = []  # for a replacement before each hit
            try:
                poll(lambda: counts["answered"] > 100, what="load running")
                for step in range(15):
                    zone = ZONES[step % 3]
                    # the zone's instance hit 3 s ago has been replaced by now, normally
                    began = time.monotonic()
                    pid = poll(lambda zone=zone: (_instances(c, "whoami").get(zone) or [0])[0],
                               timeout=15, what=f"a whoami instance in zone {zone}")
                    waited.append(time.monotonic() - began)
                    if step in STOP_STEPS:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                        actions["SIGSTOP"] += 1
                    else:
                        os.kill(pid, signal.SIGKILL)
                        actions["SIGKILL"] += 1
                    stop.wait(1.0)  # the chaos rate, not a wait for something
                # the calls in flight when the chaos ends finish too
                answered = counts["answered"]
                poll(lambda: counts["answered"] > answered + 50, what="load after the chaos")
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
                for pid in stopped:  # the node should have killed them; never leave one
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            lost = counts["sent"] - counts["answered"] - counts["failed"]
            print(f"instance chaos: {dict(actions)}; calls sent={counts['sent']} "
                  f"answered={counts['answered']} failed={counts['failed']} lost={lost} "
                  f"wrong={counts['wrong']} re-run={counts['re-run']}; longest wait for a "
                  f"replacement before a hit {max(waited, default=0):.2f}s")
            assert not any(t.is_alive() for t in threads), "a client call never returned"
            assert actions == {"SIGKILL": 10, "SIGSTOP": 5}, actions
            assert errors == [], f"{len(errors)} failed calls: {errors[:5]}"
            assert lost == 0 and counts["wrong"] == 0
            assert counts["re-run"] > 0  # the kills did land on calls in flight
            # the stopped processes were replaced, not left hanging
            for pid in stopped:
                assert pid not in {p for ps in _instances(c, "whoami").values() for p in ps}
