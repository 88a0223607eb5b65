"""A function's pool: its instances (OS processes) under a simple_one_for_one supervisor.

The pool keeps `min_instances` warm, hands each invocation to the least-loaded ready
instance below its `concurrency` cap, kills an instance whose invocation overran the
function's timeout or that stops answering health pings (its supervisor replaces it), and
acts as the function's circuit breaker: when the instances' supervisor gives up
(restart intensity exceeded), the pool turns `failing` and callers get a fast UNAVAILABLE
naming the last exit reason, until a probe restart (with backoff) succeeds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from runtime import (
    ExitReason,
    InstanceCrashed,
    InvocationTimeout,
    PoolStopping,
    Unavailable,
)
from supervisor._child_spec import ChildSpec, Restart
from supervisor._restart_policy import RestartIntensity, RestartStrategy
from supervisor._supervisor import ChildStartError, Report, Supervisor, SupervisorSpec

log = logging.getLogger("stoic.pool")


@dataclass(frozen=True)
class PoolConfig:
    """Health checking and circuit timings (seconds)."""

    ping_interval: float = 0.5
    ping_timeout: float = 1.0
    max_restarts: int = 5
    restart_period: float = 10.0
    probe_initial: float = 1.0
    probe_max: float = 30.0
    # Keep one started spare instance per pool: a restart takes it at once (no fork on the
    # restart path) and a new spare is forked in the background. One more process each.
    warm_standby: bool = False


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    pid: int
    state: str
    in_flight: int


Spawner = Callable[[str], Awaitable[Any]]  # instance id -> ready WorkerProcess
ReportSink = Callable[[str, str, ExitReason | None], None]  # (kind, function, reason)


class FunctionPool:
    """One function's instances on one node. `run` until cancelled or `stop`ped."""

    def __init__(self, spec: Any, spawner: Spawner, config: PoolConfig, name: str) -> None:
        self.spec = spec
        self.name = name
        self._spawn = spawner
        self.config = config
        self.state = "starting"
        self.restarts = 0
        self.last_exit_reason = ""
        self._condemned: set[Any] = set()  # children killed by us, until their exit is seen
        self._in_flight: dict[str, int] = {}
        self._capacity_changed = anyio.Event()
        self._stop_requested = anyio.Event()
        self._counter = 0
        self._sup: Any = None
        self._random = random.Random()
        self._spare: Any = None
        self._spare_counter = 0
        self._refill_wakeup: anyio.Event | None = None
        self.report_hooks: list[Callable[[str, Report], None]] = []

    # --- queries -----------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.state == "healthy"

    @property
    def usable(self) -> bool:
        """Healthy, or starting (an invocation then waits for the first instance)."""
        return self.state in ("healthy", "starting")

    async def wait_started(self) -> None:
        """Return once the pool has left the `starting` state (healthy or failing)."""
        while self.state == "starting":
            await self._capacity_changed.wait()

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    def unavailable_error(self) -> Unavailable:
        return Unavailable(
            f"function {self.spec.name!r} is failing (restart intensity exceeded); "
            f"last exit: {self.last_exit_reason or 'unknown'}")

    @property
    def _instances(self) -> dict[str, Any]:
        """Ready instances: the supervisor's running children not condemned by us."""
        if self._sup is None or self._sup.ended:
            return {}
        return {info.id: info.child for info in self._sup.which_children()
                if info.child is not None and info.child not in self._condemned}

    def status(self) -> Any:
        from runtime import wire

        return wire.PoolStatus(
            function=self.spec.name, state=self.state, restarts=self.restarts,
            last_exit_reason=self.last_exit_reason,
            instances=tuple(
                wire.InstanceStatus(
                    id=iid, pid=int(w.pid), in_flight=self._in_flight.get(iid, 0),
                    state="busy" if self._in_flight.get(iid, 0) else "ready")
                for iid, w in sorted(self._instances.items())))

    def instances(self) -> list[InstanceView]:
        return [InstanceView(iid, int(w.pid), "ready", self._in_flight.get(iid, 0))
                for iid, w in self._instances.items()]

    def stop(self) -> None:
        """Ask the pool to stop its instances and end `run`. Returns at once."""
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def _signal_capacity(self) -> None:
        self._capacity_changed.set()
        self._capacity_changed = anyio.Event()

    # --- invocations ---------------------------------------------------------------------
    async def invoke(self, request: Any, deadline: float | None) -> tuple[Any, int]:
        """Run `request` on the least-loaded ready instance with a free slot, waiting for
        one until the deadline. Returns (ExecuteResult, pid).

        Raises `Unavailable` while the circuit is open or the pool is stopping,
        `InvocationTimeout` when the function's timeout (or `deadline`, unix seconds) passes
        first (the instance is then killed and replaced), `InstanceCrashed` when the
        instance died mid-invocation (retryable elsewhere). Cancellation leaves the
        instance running."""
        import time

        if self.state == "failing":
            raise self.unavailable_error()
        timeout = float(self.spec.timeout)
        wait_until = time.time() + timeout if deadline is None else min(deadline, time.time() + timeout)
        instance_id, worker = await self._acquire(wait_until)
        self._in_flight[instance_id] = self._in_flight.get(instance_id, 0) + 1
        try:
            exec_deadline = time.time() + timeout
            if deadline is not None:
                exec_deadline = min(exec_deadline, deadline)
            with anyio.move_on_after(max(exec_deadline - time.time(), 0.0)) as scope:
                result = await worker.execute(request)
            if scope.cancelled_caught:
                # A hung handler cannot be interrupted inside its process: replace it.
                self._condemn(worker)
                raise InvocationTimeout(
                    f"{self.spec.name}: no answer within {timeout:g}s "
                    f"(instance pid {worker.pid} killed and replaced)")
            return result, int(worker.pid)
        except InstanceCrashed:
            self._condemned.add(worker)
            raise
        finally:
            left = self._in_flight.get(instance_id, 1) - 1
            if left <= 0:
                self._in_flight.pop(instance_id, None)
            else:
                self._in_flight[instance_id] = left
            self._signal_capacity()

    async def _acquire(self, wait_until: float) -> tuple[str, Any]:
        import time

        limit = max(1, int(self.spec.concurrency))
        for _ in range(1_000_000):
            if self.state == "failing":
                raise self.unavailable_error()
            if self._stop_requested.is_set() or self.state == "stopped":
                raise PoolStopping(f"{self.name}: pool is stopping")
            best: tuple[int, str, Any] | None = None
            for iid, w in self._instances.items():
                used = self._in_flight.get(iid, 0)
                if used < limit and (best is None or used < best[0]):
                    best = (used, iid, w)
            if best is not None:
                return best[1], best[2]
            remaining = wait_until - time.time()
            if remaining <= 0:
                if not self._instances:
                    raise Unavailable(f"{self.spec.name}: no ready instance on {self.name}"
                                      + (f" (last exit: {self.last_exit_reason})"
                                         if self.last_exit_reason else ""))
                raise InvocationTimeout(
                    f"{self.spec.name}: all instances busy (concurrency {limit}) until the deadline")
            with anyio.move_on_after(remaining):
                await self._capacity_changed.wait()
        raise Unavailable(f"{self.name}: no capacity")

    def _condemn(self, worker: Any) -> None:
        self._condemned.add(worker)
        worker.kill()
        self._signal_capacity()

    # --- supervision ---------------------------------------------------------------------
    def _child_spec(self) -> ChildSpec:
        self._counter += 1
        instance_id = f"{self.spec.name}-{self._counter}"

        async def start() -> Any:
            spare = self._take_spare()
            if spare is not None:
                return spare
            return await self._spawn(instance_id)

        # Instances are started as fast as the fork server allows; a broken function fails
        # at start and trips the intensity, which opens the circuit below.
        return ChildSpec(id=instance_id, start=start, restart=Restart.PERMANENT, shutdown=2.0)

    def _take_spare(self) -> Any:
        """The warm spare, if one is ready and alive (a refill is then started)."""
        spare, self._spare = self._spare, None
        if self._refill_wakeup is not None:
            self._refill_wakeup.set()
        if spare is not None and getattr(spare, "exit_reason", None) is None:
            return spare
        return None

    async def _standby_loop(self) -> None:
        """Keep one spare instance started (when `warm_standby`), until cancelled."""
        for _ in iter(int, 1):
            if self._spare is None and self.state != "failing":
                try:
                    self._spare_counter += 1
                    spare = await self._spawn(f"{self.spec.name}-spare{self._spare_counter}")
                except Exception as exc:  # the supervisor's own starts report failures
                    log.info("%s: warm spare failed to start: %s", self.name, exc)
                    await anyio.sleep(self.config.probe_initial)
                    continue
                self._spare = spare
            self._refill_wakeup = anyio.Event()
            with anyio.move_on_after(self.config.ping_interval):
                await self._refill_wakeup.wait()
            if self._spare is not None and self._spare.exit_reason is not None:
                self._spare = None  # it died while waiting: start another

    def _on_report(self, report: Report) -> None:
        if report.kind in ("child_terminated", "start_error"):
            self.restarts += 1
            if report.reason is not None:
                self.last_exit_reason = report.reason.detail or str(report.reason)
            log.info("%s: %s %s (%s)", self.name, report.kind, report.child_id, report.reason)
        elif report.kind == "reached_max_restart_intensity":
            log.warning("%s: reached_max_restart_intensity; last exit: %s", self.name,
                        self.last_exit_reason)
        self._condemned = {c for c in self._condemned if self._is_running(c)}
        for hook in self.report_hooks:
            hook(self.spec.name, report)
        self._signal_capacity()

    def _is_running(self, child: Any) -> bool:
        return self._sup is not None and any(
            info.child is child for info in self._sup.which_children())

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start `min_instances` instances and keep them: restart what dies, replace what
        stops answering pings, open the circuit when restarts exceed the intensity and
        probe with backoff until a start succeeds. Until cancelled or `stop`ped; then
        every instance is stopped (SIGTERM, then SIGKILL after its shutdown time)."""
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ping_loop)
                if self.config.warm_standby:
                    tg.start_soon(self._standby_loop)
                await self._supervise(tg)
                tg.cancel_scope.cancel()
        finally:
            # also when the task group ended some other way (a bug): callers waiting
            # for an instance are turned away (PoolStopping) instead of waiting for one
            # that never comes, and the node replaces the pool
            self.state = "stopped"
            self._signal_capacity()
            if self._spare is not None:
                self._spare.kill()
                self._spare = None

    async def _supervise(self, tg: anyio.abc.TaskGroup) -> None:
        """Run instance supervisors in `tg` until a stop is requested: a fresh one after
        each gives up (the circuit is open meanwhile), after a backoff with jitter."""
        probe_delay = self.config.probe_initial
        while not self._stop_requested.is_set():
            sup = await Supervisor.start(tg, SupervisorSpec(
                strategy=RestartStrategy.SIMPLE_ONE_FOR_ONE,
                intensity=RestartIntensity(max_restarts=self.config.max_restarts,
                                           period=self.config.restart_period),
                name=self.name), on_report=self._on_report)
            self._sup = sup
            try:
                for _i in range(max(1, int(self.spec.min_instances))):
                    await sup.start_child(self._child_spec())
            except ChildStartError as exc:
                cause = exc.__cause__
                self.last_exit_reason = str(getattr(exc, "reason", "") or cause or exc)
                self.restarts += 1
                sup.stop()
                await sup.wait_exit()
            else:
                self.state = "healthy"
                probe_delay = self.config.probe_initial
                self._signal_capacity()
                async with anyio.create_task_group() as waiters:
                    waiters.start_soon(self._stop_on_request, sup)
                    reason = await sup.wait_exit()
                    waiters.cancel_scope.cancel()
                if self._stop_requested.is_set():
                    return
                log.warning("%s: supervisor ended (%s)", self.name, reason)
            # The circuit is open until a probe start succeeds.
            self.state = "failing"
            self._signal_capacity()
            with anyio.move_on_after(probe_delay * (0.8 + 0.4 * self._random.random())):
                await self._stop_requested.wait()
            probe_delay = min(self.config.probe_max, probe_delay * 2)

    async def _stop_on_request(self, sup: Supervisor) -> None:
        await self._stop_requested.wait()
        sup.stop()

    async def _ping_loop(self) -> None:
        for _ in iter(int, 1):
            await anyio.sleep(self.config.ping_interval)
            for worker in list(self._instances.values()):
                ok = refused = False
                with anyio.move_on_after(self.config.ping_timeout):
                    try:
                        await worker.ping()
                        ok = True
                    except Exception as exc:
                        refused = True
                        log.info("%s: ping of pid %s failed: %s", self.name, worker.pid, exc)
                if refused and worker.exit_reason is None:
                    # A ping that failed because the process just died (its exit report
                    # is on its way) is not a hang: let the exit speak for itself rather
                    # than kill a dead process and report "killed by the node".
                    with anyio.move_on_after(0.2):
                        await worker.wait_exit()
                if not ok and worker.exit_reason is None and worker in self._instances.values():
                    log.warning("%s: instance pid %s stopped answering pings; replacing it",
                                self.name, worker.pid)
                    self._condemn(worker)
