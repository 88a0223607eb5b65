"""`stoic up`: a local cluster of separate `stoic node` OS processes.

The launcher starts one node process per zone member, waits until each answers its
health check, and stops them all (SIGTERM, then SIGKILL after a grace period) when it is
told to stop. Nodes are started with a parent-death signal, so even a SIGKILLed launcher
leaves no node behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.wire import check_health


@dataclass(frozen=True)
class ClusterConfig:
    """What `stoic up` starts. `port` is the first node's port; the others take the next."""

    apps: tuple[str, ...] = ()
    zones: tuple[str, ...] = ("a", "b", "c")
    nodes_per_zone: int = 1
    store_url: str = ""
    host: str = "127.0.0.1"
    port: int = 50051
    state_dir: str = ".stoic"
    extra_env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.zones or any(not z or "," in z for z in self.zones):
            raise ValueError(f"zones: expected a comma-separated list of names, got {self.zones!r}")
        if self.nodes_per_zone < 1:
            raise ValueError(f"nodes_per_zone: must be >= 1, got {self.nodes_per_zone}")
        if not 0 < self.port < 65536 - len(self.zones) * self.nodes_per_zone:
            raise ValueError(f"port: out of range: {self.port}")

    def effective_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{os.path.abspath(os.path.join(self.state_dir, 'store.db'))}"


@dataclass
class NodeProcess:
    node_id: str
    zone: str
    address: str
    args: list[str]
    env: dict[str, str]
    log_path: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        try:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def node_command(
    node_id: str, zone: str, address: str, store_url: str, apps: Sequence[str], *,
    state_dir: str, parent_death: bool = True,
) -> list[str]:
    """The argv of one `stoic node` process (`python -m supervisor.cli node ...`)."""
    cmd = [
        sys.executable, "-m", "supervisor.cli", "node",
        "--node-id", node_id, "--zone", zone, "--listen", address,
        "--store", store_url, "--state-dir", state_dir,
    ]
    if parent_death:
        cmd.append("--die-with-parent")
    return [*cmd, *apps]


@dataclass
class Cluster:
    """A running local cluster. Use as a context manager or call `start`/`stop`."""

    config: ClusterConfig
    nodes: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        os.makedirs(cfg.state_dir, exist_ok=True)
        store = cfg.effective_store_url()
        port = cfg.port
        env = {**os.environ, **dict(cfg.extra_env)}
        for zone in cfg.zones:
            for i in range(cfg.nodes_per_zone):
                node_id = f"{zone}{i + 1}"
                address = f"{cfg.host}:{port}"
                port += 1
                self.nodes.append(NodeProcess(
                    node_id=node_id, zone=zone, address=address,
                    args=node_command(node_id, zone, address, store, cfg.apps,
                                      state_dir=cfg.state_dir),
                    env=env,
                    log_path=os.path.join(cfg.state_dir, f"node-{node_id}.log"),
                ))

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, node_id: str) -> NodeProcess:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id!r} in this cluster (nodes: {[n.node_id for n in self.nodes]})")

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start every node and return once all answer their health check.

        Raises RuntimeError naming the node (and its log) that exited or did not become
        ready within `ready_timeout` seconds; the nodes already started are stopped."""
        try:
            for n in self.nodes:
                n.start()
            deadline = time.monotonic() + ready_timeout
            for n in self.nodes:
                wait_ready(n, deadline)
        except BaseException:
            self.stop()
            raise

    def restart_node(self, node_id: str, ready_timeout: float = 30.0) -> NodeProcess:
        n = self.node(node_id)
        if n.alive():
            raise RuntimeError(f"node {node_id} is still running (pid {n.pid})")
        n.start()
        wait_ready(n, time.monotonic() + ready_timeout)
        return n

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every node (and its process group), then SIGKILL what is left after
        `grace` seconds. Returns when every node process has been reaped."""
        for n in self.nodes:
            if n.alive() and n.proc is not None:
                _signal_group(n.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for n in self.nodes:
            if n.proc is None:
                continue
            try:
                n.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(n.proc.pid, signal.SIGKILL)
                n.proc.wait(timeout=10)
            # whatever the node left in its group (it should have left nothing)
            _signal_group(n.proc.pid, signal.SIGKILL)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(n: NodeProcess, deadline: float) -> None:
    """Poll `n`'s health until SERVING; raise RuntimeError if it exits or the deadline passes."""
    for _ in range(100_000):
        if not n.alive():
            raise RuntimeError(f"node {n.node_id} exited during start-up; see {n.log_path}")
        if check_health(n.address, timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {n.node_id} not ready at {n.address} in time; see {n.log_path}")
        time.sleep(0.05)  # poll interval of a bounded readiness poll, not a wait for an event
    raise RuntimeError(f"node {n.node_id} not ready")
