"""One Stoic node: the gRPC server, the supervision tree of its zone, routing, membership.

A node accepts any invocation. It runs it on an instance in its own pool when it hosts the
function, else forwards it to a peer that does (same zone first, then the others), reusing
one channel per peer. When the instance or the peer running an invocation dies, the
invocation is re-dispatched elsewhere while the function's retries last; the caller sees
one answer (at-least-once execution, one invocation id, attempt numbers counting up).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind

from runtime import (
    ATTR_ATTEMPT,
    ATTR_FUNCTION,
    ATTR_INVOCATION_ID,
    ATTR_REASON,
    ConnectionLost,
    FunctionNotFound,
    InstanceCrashed,
    InvalidInput,
    InvocationNotFound,
    InvocationTimeout,
    Metrics,
    PoolStopping,
    StoicError,
    Tracing,
    Unavailable,
    Unreachable,
    VersionConflict,
    inject,
    wire,
)
from supervisor._loop_watch import LoopWatch
from supervisor._membership import MemberRecord, Membership, MembershipConfig
from supervisor._placement import Member, should_host
from supervisor._pool import FunctionPool, PoolConfig

log = logging.getLogger("stoic.node")

FUNCTIONS_PREFIX = "functions/"
HOP_HEADER = "x-stoic-hop"
INVOCATION_HEADER = "x-stoic-invocation-id"
ATTEMPT_HEADER = "x-stoic-attempt"
# How long a pool no longer placed on this node keeps serving before it is stopped, so a
# flapping membership does not churn instances.
UNPLACED_GRACE = 5.0


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    zone: str
    listen: str = "127.0.0.1:50051"
    store_url: str = ""
    apps: tuple[str, ...] = ()
    state_dir: str = ".stoic"
    die_with_parent: bool = False
    advertise: str = ""  # HOST:PORT peers use to reach this node (default: listen)
    prometheus: str = ""  # HOST:PORT of a Prometheus scrape endpoint (off when empty)
    idempotency_window: float = 3600.0  # seconds a sync idempotency key keeps its result
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)

    def __post_init__(self) -> None:
        if not self.node_id or "/" in self.node_id:
            raise ValueError(f"node_id: must be non-empty without '/', got {self.node_id!r}")
        if not self.zone:
            raise ValueError("zone: must be non-empty")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen: expected HOST:PORT, got {self.listen!r}")
        ahost, _, aport = self.advertised.rpartition(":")
        if not ahost or not aport.isdigit():
            raise ValueError(f"advertise: expected HOST:PORT, got {self.advertised!r}")
        if ahost in ("0.0.0.0", "::", "[::]"):
            raise ValueError(f"listening on {self.listen}: pass --advertise HOST:PORT so "
                             "peers know where to reach this node")

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen


def spec_to_json(spec: wire.FunctionSpec) -> bytes:
    data = asdict(spec)
    return json.dumps(data, sort_keys=True).encode()


def spec_from_json(raw: bytes) -> wire.FunctionSpec:
    data = json.loads(raw)
    policy = data.pop("async_retry", {}) or {}
    policy["retry_on"] = tuple(policy.get("retry_on", ()))
    return wire.FunctionSpec(**data, async_retry=wire.RetryPolicy(**policy))


IDEM_SYNC_PREFIX = "idem-sync/"


def _result_to_record(result: wire.InvokeResult, expires_at: float) -> dict[str, Any]:
    return {
        "state": "done", "invocation_id": result.invocation_id,
        "payload": base64.b64encode(result.payload).decode(),
        "content_type": result.content_type, "attempts": result.attempts,
        "placement": asdict(result.placement),
        "error": asdict(result.error) if result.error is not None else None,
        "expires_at": expires_at,
    }


def _result_from_record(rec: dict[str, Any]) -> wire.InvokeResult:
    err = rec.get("error")
    return wire.InvokeResult(
        invocation_id=rec["invocation_id"], payload=base64.b64decode(rec["payload"]),
        content_type=rec["content_type"], attempts=int(rec["attempts"]),
        placement=wire.Placement(**rec["placement"]),
        error=wire.FunctionErrorInfo(**err) if err else None)


def load_function_specs(apps: Sequence[str]) -> list[wire.FunctionSpec]:
    """Import `apps` (module names or .py paths) and return their functions' specs.
    Raises InvalidFunctionConfig (INVALID_ARGUMENT) for bad options or a name clash."""
    from runtime import load_apps

    return [spec.to_wire() for spec in load_apps(list(apps)).values()]


def function_spec_from_wire(spec: wire.FunctionSpec) -> Any:
    from runtime import FunctionSpec

    return FunctionSpec.from_wire(spec)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


class Node:
    """A running node. `serve` runs it until cancelled; the handler methods are the
    Invoker and Control services (through `runtime.wire`'s adapters)."""

    def __init__(self, config: NodeConfig, store: Any, spawner_factory: Any,
                 tracing: Tracing | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics.from_env(
            node_id=config.node_id, zone=config.zone, role="node", environ={})
        self.tracing = tracing or Tracing.from_env(
            node_id=config.node_id, zone=config.zone, role="node",
            environ={"OTEL_TRACES_EXPORTER": "none"})
        self.store = TracedStore(store, self.tracing)
        self._spawner_factory = spawner_factory  # FunctionSpec -> (instance id -> WorkerProcess)
        self.functions: dict[str, wire.FunctionSpec] = {}
        self.pools: dict[str, FunctionPool] = {}
        self._unplaced_since: dict[str, float] = {}
        self._peers: dict[str, tuple[Any, wire.InvokerStub, wire.ControlStub]] = {}
        # forwarded invocations go over one InvokeStream per peer, as the client's do
        self._peer_streams: dict[str, wire.InvokeStreamClient] = {}
        # spans of invocations waiting on or running in each local pool (for supervisor
        # events that concern them)
        self._in_flight_spans: dict[str, set[Any]] = {}
        self._started_at = time.time()
        self._tg: anyio.abc.TaskGroup | None = None
        self._reconcile_wakeup = anyio.Event()
        self._pool_deaths: dict[str, list[float]] = {}  # pools that ended unasked: when
        self.membership = Membership(
            store=store,
            me=MemberRecord(node_id=config.node_id, zone=config.zone,
                            address=config.advertised, pid=os.getpid()),
            config=config.membership,
            describe=self._describe,
            on_fenced=self._on_fenced,
            on_change=self._wake_reconciler,
        )
        self.async_invocations: Any = None  # set by the async invocation service

    # --- lifecycle -------------------------------------------------------------------
    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster, start the pools placed here, serve gRPC; until cancelled.
        On cancellation: leave the cluster, stop serving, stop every pool (instances get
        SIGTERM, then SIGKILL after their shutdown timeout)."""
        server = wire.new_server()
        wire.add_invoker_service(server, self)
        wire.add_control_service(server, self)
        health = await wire.add_health_and_reflection(server)
        port = server.add_insecure_port(self.config.listen)
        if port == 0:
            raise RuntimeError(f"cannot listen on {self.config.listen}")
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(LoopWatch(threshold=1.0).run)
            await self._deploy_initial_apps()
            await tg.start(self.membership.run)
            await self._reconcile_once()
            with anyio.move_on_after(15.0):  # ready means warm: wait for the first instances
                for pool in list(self.pools.values()):
                    await pool.wait_started()
            tg.start_soon(self._reconcile_loop)
            if self.async_invocations is not None:
                await tg.start(self.async_invocations.run)
            await server.start()
            log.info("node %s (zone %s) serving on %s", self.config.node_id,
                     self.config.zone, self.config.listen)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await health.enter_graceful_shutdown()
                    await server.stop(grace=1.0)
                    for stream in self._peer_streams.values():
                        await stream.aclose()
                    for peer in self._peers.values():
                        await peer[0].close()
                tg.cancel_scope.cancel()

    async def _deploy_initial_apps(self) -> None:
        if self.config.apps:
            specs = load_function_specs(self.config.apps)
            for spec in specs:
                await self.store.put(FUNCTIONS_PREFIX + spec.name, spec_to_json(spec))

    def _describe(self) -> tuple[tuple[str, ...], int]:
        hosted = tuple(name for name, p in self.pools.items() if p.healthy)
        load = sum(p.in_flight for p in self.pools.values())
        return hosted, load

    def _on_fenced(self) -> None:
        # Our lease lapsed (we were paused): peers have taken over what we owned. Pools
        # stay (sync invocations need no ownership); the async consumer drops its leases.
        if self.async_invocations is not None:
            self.async_invocations.fenced()

    def _wake_reconciler(self) -> None:
        self._reconcile_wakeup.set()

    async def _reconcile_loop(self) -> None:
        for _ in iter(int, 1):  # until cancelled
            with anyio.move_on_after(self.config.membership.heartbeat * 2):
                await self._reconcile_wakeup.wait()
            self._reconcile_wakeup = anyio.Event()
            try:
                await self._reconcile_once()
            except Exception:
                log.exception("reconciling pools failed; will retry")

    async def _reconcile_once(self) -> None:
        """Load the deployed functions and start/stop pools to match placement."""
        rows = await self.store.scan(FUNCTIONS_PREFIX)
        functions: dict[str, wire.FunctionSpec] = {}
        for key, versioned in rows:
            try:
                spec = spec_from_json(versioned.value)
            except (ValueError, TypeError) as exc:
                log.warning("ignoring malformed function record %s: %s", key, exc)
                continue
            functions[spec.name] = spec
        self.functions = functions
        members = [Member(r.node_id, r.zone) for r in self.membership.live_members()]
        me = Member(self.config.node_id, self.config.zone)
        now = time.monotonic()
        for name, spec in functions.items():
            wanted = should_host(name, spec.min_zones, me, members)
            pool = self.pools.get(name)
            if wanted:
                self._unplaced_since.pop(name, None)
                if pool is None or pool.spec != spec:
                    if pool is not None:
                        pool.stop()
                    await self._start_pool(spec)
            elif pool is not None:
                since = self._unplaced_since.setdefault(name, now)
                if now - since > UNPLACED_GRACE:
                    self._stop_pool(name)
        for name in list(self.pools):
            if name not in functions:
                self._stop_pool(name)

    async def _start_pool(self, spec: wire.FunctionSpec) -> None:
        if self._tg is None:
            raise RuntimeError("node is not serving")
        pool = FunctionPool(
            spec=spec, spawner=self._spawner_factory(spec), config=self.config.pool,
            name=f"{self.config.node_id}/{spec.name}",
        )
        pool.report_hooks.append(self._on_pool_report)
        self.pools[spec.name] = pool
        self._tg.start_soon(self._run_pool, pool)
        log.info("pool started: %s", spec.name,
                 extra={"function": spec.name, "node": self.config.node_id})

    async def _run_pool(self, pool: FunctionPool) -> None:
        """Run `pool` until it is stopped. One that ends without being stopped (a bug: it
        raised, or a stray cancellation took its task group down) is logged and replaced
        by a new pool for the function, after a backoff that grows while it keeps
        happening: left alone, the function would keep a pool with no instances that
        never restarts them, and callers would wait for nothing."""
        try:
            await pool.run()
        except Exception:
            log.exception("pool %s failed", pool.name)
        name = pool.spec.name
        if pool.stop_requested or self.pools.get(name) is not pool:
            return
        now = time.monotonic()
        deaths = [t for t in self._pool_deaths.get(name, []) if now - t < 60.0] + [now]
        self._pool_deaths[name] = deaths
        delay = min(10.0, 0.1 * 2 ** (len(deaths) - 1))
        log.error("pool %s ended without being stopped (%d time(s) in the last minute); "
                  "starting a new one in %.1fs", pool.name, len(deaths), delay)
        await anyio.sleep(delay)
        if self.pools.get(name) is pool:
            await self._start_pool(pool.spec)

    def _on_pool_report(self, function: str, report: Any) -> None:
        if report.kind in ("child_terminated", "start_error"):
            self.metrics.restart(function, self.config.zone)
        if report.kind in ("start_error", "reached_max_restart_intensity"):
            # invocations waiting for this pool's instances see why in their traces
            reason = str(report.reason) if report.reason is not None else ""
            for span in list(self._in_flight_spans.get(function, ())):
                self.tracing.record_supervisor_event(
                    span, report.kind, {ATTR_REASON: reason, ATTR_FUNCTION: function,
                                        "stoic.child_id": report.child_id})

    def _stop_pool(self, name: str) -> None:
        pool = self.pools.pop(name, None)
        self._unplaced_since.pop(name, None)
        if pool is not None:
            pool.stop()
            log.info("pool stopped: %s", name,
                     extra={"function": name, "node": self.config.node_id})

    # --- peers ---------------------------------------------------------------------
    def _peer(self, address: str) -> tuple[Any, wire.InvokerStub, wire.ControlStub]:
        peer = self._peers.get(address)
        if peer is None:
            channel = wire.open_channel(address)
            peer = (channel, wire.InvokerStub(channel), wire.ControlStub(channel))
            self._peers[address] = peer
        return peer

    def _candidates(self, function: str, exclude: set[str]) -> list[MemberRecord]:
        """Peers hosting `function`, same zone first, least loaded first."""
        peers = [p for p in self.membership.peers()
                 if function in p.functions and p.node_id not in exclude]
        return sorted(peers, key=lambda p: (p.zone != self.config.zone, p.load, p.node_id))

    # --- Invoker ---------------------------------------------------------------------
    async def invoke(self, request: wire.InvokeRequest, call: wire.CallInfo) -> wire.InvokeResult:
        spec = self.functions.get(request.function)
        if spec is None:
            await self._refresh_function(request.function)
            spec = self.functions.get(request.function)
            if spec is None:
                raise FunctionNotFound(f"function {request.function!r} is not deployed")
        invocation_id = call.metadata.get(INVOCATION_HEADER) or os.urandom(16).hex()  # as uuid4().hex, cheaper
        attrs = {ATTR_FUNCTION: spec.name, ATTR_INVOCATION_ID: invocation_id,
                 "stoic.node": self.config.node_id, "stoic.zone": self.config.zone}
        # Made current only where code below relies on the current span (the store calls
        # of an idempotent call); elsewhere it is passed on explicitly, a context switch
        # less per call.
        idempotent = bool(request.idempotency_key)
        with self.tracing.start_span("stoic.node.receive", parent=call.metadata,
                                     kind=SpanKind.SERVER, attributes=attrs,
                                     attach=idempotent) as receive:
            if call.metadata.get(HOP_HEADER):
                attempt = int(call.metadata.get(ATTEMPT_HEADER, "1") or 1)
                return await self._run_local(spec, request, invocation_id, attempt, call,
                                             receive)
            started = time.perf_counter()
            outcome = "ok"
            try:
                if idempotent:
                    result = await self._invoke_idempotent(spec, request, call.deadline)
                else:
                    result = await self.dispatch(spec, request, invocation_id, call.deadline,
                                                 parent=receive)
                if result.error is not None:
                    outcome = "error"
                return result
            except StoicError as exc:
                outcome = type(exc).__name__
                raise
            finally:
                self.metrics.invocation(spec.name, self.config.zone, outcome,
                                        (time.perf_counter() - started) * 1000)

    async def _invoke_idempotent(
        self, spec: wire.FunctionSpec, request: wire.InvokeRequest, deadline: float | None,
    ) -> wire.InvokeResult:
        """A sync invocation with an idempotency key: the first call runs it and records
        the result for `idempotency_window` seconds; a repeat gets the same invocation id
        and result (waiting while the first is still running). A call whose node died
        mid-run is taken over after the function's worst-case run time."""
        key = f"{IDEM_SYNC_PREFIX}{spec.name}/{request.idempotency_key}"
        stale_after = float(spec.timeout) * (spec.retries + 1) + 5.0
        claimed: tuple[str, int] | None = None
        for _ in range(100_000):  # bounded by the deadline below as well
            now = time.time()
            if deadline is not None and now >= deadline:
                raise InvocationTimeout(
                    f"{spec.name}: a call with idempotency key {request.idempotency_key!r} "
                    "is still running")
            current = await self.store.get(key)
            rec = json.loads(current.value) if current is not None else None
            if rec is not None and rec["expires_at"] > now:
                if rec["state"] == "done":
                    return _result_from_record(rec)
                owner_alive = rec.get("node") in {
                    m.node_id for m in self.membership.live_members()}
                if owner_alive and now - rec["started_at"] < stale_after:
                    await anyio.sleep(0.02)  # poll interval while the first call runs
                    continue
                # its node died (or it ran far too long): take the call over
            invocation_id = rec["invocation_id"] if rec is not None else uuid.uuid4().hex
            pending = {"state": "pending", "invocation_id": invocation_id,
                       "node": self.config.node_id, "started_at": now, "expires_at": now + self.config.idempotency_window}
            try:
                version = await self.store.put(
                    key, json.dumps(pending).encode(),
                    expected_version=current.version if current is not None else 0)
            except VersionConflict:
                continue
            claimed = (invocation_id, version)
            break
        if claimed is None:
            raise Unavailable(f"{spec.name}: could not claim idempotency key")
        invocation_id, version = claimed
        try:
            result = await self.dispatch(spec, request, invocation_id, deadline)
        except BaseException:
            # let a retry with the same key run it again
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.store.delete(key, expected_version=version)
            raise
        done = _result_to_record(result, time.time() + self.config.idempotency_window)
        await self.store.put(key, json.dumps(done).encode())
        return result

    async def dispatch(
        self, spec: wire.FunctionSpec, request: wire.InvokeRequest, invocation_id: str,
        deadline: float | None, *, first_attempt: int = 1, max_attempts: int | None = None,
        trace_context: dict[str, str] | None = None, parent: otel_trace.Span | None = None,
    ) -> wire.InvokeResult:
        """Run `request` here or on a peer, re-dispatching after a crash or a dead peer
        while attempts remain (`spec.retries` re-runs by default). Raises the last
        platform error when attempts run out; a handler error is a result, not retried.
        Each attempt's span is a child of `parent` (default: the caller's current span)."""
        attempts = max_attempts if max_attempts is not None else spec.retries + 1
        excluded: set[str] = set()
        last: StoicError | None = None
        attempt = first_attempt
        unreachable_budget = 8  # re-routes that never reached a node do not use attempts
        settle = 8  # heartbeats to wait for membership when no node hosts the function
        while attempt < first_attempt + attempts:
            if deadline is not None and time.time() >= deadline:
                raise InvocationTimeout(
                    f"{spec.name}: deadline passed after {attempt - first_attempt} attempt(s)"
                    + (f"; last failure: {last}" if last else ""))
            local = self.pools.get(spec.name)
            attrs: dict[str, str | int] = {
                ATTR_FUNCTION: spec.name, ATTR_INVOCATION_ID: invocation_id,
                ATTR_ATTEMPT: attempt}
            try:
                # Not made current (attach=False, a context switch less per attempt): its
                # children below get it as their parent explicitly.
                with self.tracing.start_span("stoic.attempt", attributes=attrs,
                                             parent=parent, attach=False) as span:
                    routed_at = time.time_ns()
                    use_local = (local is not None and local.usable
                                 and self.config.node_id not in excluded)
                    peers = [] if use_local else self._candidates(spec.name, excluded)
                    target = "local" if use_local else (peers[0].node_id if peers else "none")
                    self.tracing.record_route(span, routed_at, time.time_ns(), spec.name,
                                              invocation_id, attempt, target)
                    if use_local:
                        try:
                            return await self._run_local(spec, request, invocation_id, attempt,
                                                         wire.CallInfo(deadline=deadline), span)
                        except InstanceCrashed as exc:
                            self.tracing.record_supervisor_event(
                                span, "child_terminated", {ATTR_REASON: str(exc), **attrs},
                                parent=span)
                            raise
                        except PoolStopping as exc:
                            # The pool stopped while the request waited for an instance;
                            # it did not run. Re-routed below, same attempt: to the pool
                            # that replaced it (a redeploy), else (placed elsewhere, or
                            # this node is stopping) to a peer.
                            if self.pools.get(spec.name) is local:
                                span.add_event("local pool stopping; routing to a peer")
                                setattr(exc, "node_id", self.config.node_id)  # noqa: B010
                            raise
                        except Unavailable:
                            if local is not None and local.state == "failing":
                                self.tracing.record_supervisor_event(
                                    span, "reached_max_restart_intensity",
                                    {ATTR_REASON: local.last_exit_reason or "unknown", **attrs},
                                    parent=span)
                            raise
                    if not peers:
                        if local is not None and local.state == "failing":
                            # the crash loop shows up in the trace of the call it turns away
                            self.tracing.record_supervisor_event(
                                span, "reached_max_restart_intensity",
                                {ATTR_REASON: local.last_exit_reason or "unknown", **attrs},
                                parent=span)
                            raise local.unavailable_error()
                        if settle > 0 and (deadline is None or time.time() < deadline):
                            # placement may be moving (a node joined or left a moment ago):
                            # give membership a heartbeat to catch up, same attempt
                            settle -= 1
                            span.add_event("waiting for membership")
                            await anyio.sleep(self.config.membership.heartbeat)
                            continue
                        raise last or Unavailable(
                            f"no healthy instance of {spec.name!r} in any zone")
                    return await self._forward(peers[0], request, invocation_id, attempt,
                                               deadline, span)
            except (Unreachable, PoolStopping) as exc:
                # The request never reached that node, or never ran there: route around
                # it, same attempt.
                node = getattr(exc, "node_id", None)
                if node:
                    excluded.add(node)
                last = exc
                unreachable_budget -= 1
                if unreachable_budget <= 0:
                    raise
                continue
            except (InstanceCrashed, ConnectionLost) as exc:
                last = exc
                node = getattr(exc, "node_id", None)
                if node and isinstance(exc, ConnectionLost):
                    excluded.add(node)
                log.info("attempt %d of %s failed: %s; re-dispatching", attempt,
                         invocation_id, exc)
                self.metrics.retry(spec.name, self.config.zone)
                attempt += 1
                continue
        if last is None:
            raise Unavailable(f"{spec.name}: no attempt could be made")
        raise type(last)(f"{last} (after {attempts} attempt(s))", retryable=last.retryable) from last

    async def _run_local(
        self, spec: wire.FunctionSpec, request: wire.InvokeRequest, invocation_id: str,
        attempt: int, call: wire.CallInfo, span: otel_trace.Span | None = None,
    ) -> wire.InvokeResult:
        """Run one attempt on a local instance; `span` (default: the current span) is the
        attempt's, parent of the worker's spans."""
        pool = self.pools.get(spec.name)
        if pool is None:
            raise Unavailable(f"node {self.config.node_id} hosts no instance of {spec.name!r}")
        if span is None:
            span = otel_trace.get_current_span()
        exec_req = wire.ExecuteRequest(
            invocation_id=invocation_id, attempt=attempt, function=spec.name,
            payload=request.payload, content_type=request.content_type or wire.JSON,
            deadline=call.deadline, trace_context=inject(span))
        waiting = self._in_flight_spans.setdefault(spec.name, set())
        waiting.add(span)
        try:
            result, pid = await pool.invoke(exec_req, call.deadline)
        except InstanceCrashed as exc:
            if call.metadata.get(HOP_HEADER):
                # the forwarding node records the crash on its attempt span; here, on ours
                self.tracing.record_supervisor_event(
                    span, "child_terminated",
                    {ATTR_REASON: str(exc), ATTR_INVOCATION_ID: invocation_id,
                     ATTR_FUNCTION: spec.name, ATTR_ATTEMPT: attempt}, parent=span)
            raise
        finally:
            waiting.discard(span)
        if result.timing is not None:
            self.tracing.record_worker_spans(
                span, result.timing, spec.name, invocation_id, attempt,
                result.error.type if result.error is not None else None)
        return wire.InvokeResult(
            invocation_id=invocation_id, payload=result.payload,
            content_type=result.content_type, attempts=attempt,
            placement=wire.Placement(node_id=self.config.node_id, zone=self.config.zone, pid=pid),
            error=result.error)

    async def _forward(
        self, peer: MemberRecord, request: wire.InvokeRequest, invocation_id: str,
        attempt: int, deadline: float | None, parent: otel_trace.Span | None = None,
    ) -> wire.InvokeResult:
        invoker = self._peer_streams.get(peer.address)
        if invoker is None:
            channel, _, _ = self._peer(peer.address)
            invoker = self._peer_streams[peer.address] = wire.InvokeStreamClient(channel)
        with self.tracing.start_span(
                "stoic.forward", kind=SpanKind.CLIENT, parent=parent,
                attributes={ATTR_FUNCTION: request.function, ATTR_INVOCATION_ID: invocation_id,
                            ATTR_ATTEMPT: attempt, "stoic.peer": peer.node_id,
                            "stoic.peer.zone": peer.zone}):
            metadata = {HOP_HEADER: self.config.node_id, INVOCATION_HEADER: invocation_id,
                        ATTEMPT_HEADER: str(attempt), **inject()}
            return await self._forward_call(peer, invoker, request, metadata, deadline)

    async def _forward_call(
        self, peer: MemberRecord, invoker: wire.InvokeStreamClient, request: wire.InvokeRequest,
        metadata: dict[str, str], deadline: float | None,
    ) -> wire.InvokeResult:
        try:
            if deadline is not None:
                with anyio.fail_after(max(deadline - time.time(), 0.001)):
                    return await invoker.invoke(request, metadata=metadata)
            return await invoker.invoke(request, metadata=metadata)
        except (Unreachable, ConnectionLost) as exc:
            self.membership.mark_broken(peer.node_id)
            setattr(exc, "node_id", peer.node_id)  # noqa: B010 - read back by dispatch
            raise
        except PoolStopping as exc:  # the peer is fine; its pool of the function is not
            setattr(exc, "node_id", peer.node_id)  # noqa: B010 - read back by dispatch
            raise
        except TimeoutError as exc:
            if isinstance(exc, StoicError):
                raise
            raise InvocationTimeout(f"{request.function}: timed out on node {peer.node_id}") from exc

    async def _refresh_function(self, name: str) -> None:
        versioned = await self.store.get(FUNCTIONS_PREFIX + name)
        if versioned is not None:
            self.functions[name] = spec_from_json(versioned.value)
            self._wake_reconciler()

    async def invoke_async(self, request: wire.InvokeRequest, call: wire.CallInfo) -> str:
        if self.async_invocations is None:
            raise Unavailable("async invocations are not enabled on this node")
        spec = self.functions.get(request.function)
        if spec is None:
            await self._refresh_function(request.function)
            spec = self.functions.get(request.function)
        if spec is None:
            raise FunctionNotFound(f"function {request.function!r} is not deployed")
        with self.tracing.start_span("stoic.node.receive", parent=call.metadata,
                                     kind=SpanKind.SERVER,
                                     attributes={ATTR_FUNCTION: spec.name, "stoic.async": True}):
            invocation_id: str = await self.async_invocations.submit(spec, request)
        return invocation_id

    async def get_invocation(self, invocation_id: str, call: wire.CallInfo) -> wire.InvocationInfo:
        if self.async_invocations is None:
            raise InvocationNotFound(f"no invocation {invocation_id!r}")
        info: wire.InvocationInfo = await self.async_invocations.get(invocation_id)
        return info

    # --- Control ---------------------------------------------------------------------
    async def deploy(self, request: wire.DeployRequest, call: wire.CallInfo) -> Sequence[wire.FunctionSpec]:
        if not request.apps:
            raise InvalidInput("deploy: no apps given")
        try:
            specs = load_function_specs(request.apps)
        except StoicError:
            raise
        except Exception as exc:
            raise InvalidInput(f"deploy: {exc}") from exc
        for spec in specs:
            await self.store.put(FUNCTIONS_PREFIX + spec.name, spec_to_json(spec))
        await self._reconcile_once()
        return specs

    async def list_functions(self, call: wire.CallInfo) -> Sequence[wire.FunctionSpec]:
        await self._reconcile_once()
        return [self.functions[n] for n in sorted(self.functions)]

    def local_status(self) -> wire.NodeStatus:
        return wire.NodeStatus(
            node_id=self.config.node_id, zone=self.config.zone, address=self.config.advertised,
            healthy=self.membership.holds_lease, lease_age=0.0, pid=os.getpid(),
            pools=tuple(self._pool_status(n) for n in sorted(self.pools)))

    def _pool_status(self, name: str) -> wire.PoolStatus:
        status = self.pools[name].status()
        if name in self._unplaced_since:
            # placed elsewhere now: it keeps serving for UNPLACED_GRACE, then stops
            status = dataclasses.replace(status, state="draining")
        return status

    async def status(self, call: wire.CallInfo) -> wire.Status:
        """The whole cluster: this node's tree, and each peer's (asked over gRPC, unless
        this call is itself such a question). Dead peers show with healthy=False."""
        nodes = [self.local_status()]
        if call.metadata.get(HOP_HEADER):
            return wire.Status(nodes=tuple(nodes))
        now = time.time()
        live = {r.node_id for r in self.membership.live_members()}
        for rec in self.membership.all_records():
            if rec.node_id == self.config.node_id:
                continue
            lease_age = max(0.0, now - rec.renewed_at)
            remote: wire.NodeStatus | None = None
            if rec.node_id in live:
                _, _, control = self._peer(rec.address)
                try:
                    with anyio.fail_after(1.0):
                        st = await control.status(metadata={HOP_HEADER: self.config.node_id})
                    remote = next((n for n in st.nodes if n.node_id == rec.node_id), None)
                except (StoicError, TimeoutError):
                    remote = None
            if remote is None:
                remote = wire.NodeStatus(node_id=rec.node_id, zone=rec.zone, address=rec.address,
                                         healthy=False, lease_age=lease_age, pid=rec.pid)
            else:
                remote = wire.NodeStatus(
                    node_id=remote.node_id, zone=remote.zone, address=remote.address,
                    healthy=remote.healthy and rec.node_id in live, lease_age=lease_age,
                    pid=remote.pid, pools=remote.pools)
            nodes.append(remote)
        return wire.Status(nodes=tuple(sorted(nodes, key=lambda n: (n.zone, n.node_id))))

    async def get_trace(self, invocation_id: str, call: wire.CallInfo) -> Sequence[str]:
        """Spans recorded locally for the invocation, from this node and (unless asked by
        a peer) every live peer."""
        spans = [json.dumps(r.to_dict()) for r in self.tracing.spans_for_invocation(invocation_id)]
        if call.metadata.get(HOP_HEADER):
            return spans
        for rec in self.membership.peers():
            _, _, control = self._peer(rec.address)
            try:
                with anyio.fail_after(2.0):
                    spans.extend(await control.get_trace(
                        invocation_id, metadata={HOP_HEADER: self.config.node_id}))
            except (StoicError, TimeoutError) as exc:
                log.info("trace: peer %s did not answer: %s", rec.node_id, exc)
        return spans

    async def list_dead_letters(self, request: wire.ListDeadLettersRequest, call: wire.CallInfo) -> Sequence[wire.InvocationInfo]:
        if self.async_invocations is None:
            return []
        out: Sequence[wire.InvocationInfo] = await self.async_invocations.dead_letters(request.limit or 100)
        return out

    async def redrive(self, request: wire.RedriveRequest, call: wire.CallInfo) -> Sequence[str]:
        if self.async_invocations is None:
            return []
        ids: Sequence[str] = await self.async_invocations.redrive(
            None if request.all else list(request.invocation_ids))
        return ids


def run_node(config: NodeConfig) -> int:
    """Run a node in this process until SIGTERM/SIGINT; returns the exit status."""
    logging.basicConfig(
        level=os.environ.get("STOIC_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {config.node_id} %(name)s %(levelname)s %(message)s")
    if config.die_with_parent:
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() == 1:
            return 1
    # Start-up's objects (modules, the app's specs) never die: keep them out of every
    # collection. And collect the young generation every 20,000 allocations instead of
    # 700: an invocation allocates a few hundred short-lived objects (spans, messages,
    # futures), so by default a collection ran every few calls (measured: the node's CPU
    # per call at 64 in flight dropped from ~370 to ~300 µs). Refcounting frees nearly all
    # of them anyway; only cycles wait for a collection.
    gc.freeze()
    gc.set_threshold(*NODE_GC_THRESHOLDS)
    try:
        anyio.run(_serve_until_signalled, config, backend_options=_loop_options())
    except KeyboardInterrupt:
        pass
    return 0


NODE_GC_THRESHOLDS = (20_000, 50, 1000)
"""gc.set_threshold for a node process (generation 0, 1, 2)."""


def _loop_options() -> dict[str, Any]:
    """uvloop when STOIC_UVLOOP=1 and installed (measured: no gain with grpc.aio here)."""
    if os.environ.get("STOIC_UVLOOP", "0") != "1":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def _serve_until_signalled(config: NodeConfig) -> None:
    from runtime import ForkServer, open_store

    socket_dir = tempfile.mkdtemp(prefix=f"stoic-{config.node_id}-")
    # function actor processes (forked from the template, which inherits this) open the
    # same store for ctx.state
    os.environ["STOIC_STORE_URL"] = config.store_url
    async with open_store(config.store_url) as store:
        async with ForkServer.open(socket_dir) as forks:

            def spawner_factory(spec: wire.FunctionSpec) -> Any:
                fspec = function_spec_from_wire(spec)
                # the template imports the app once: later forks and spares have it
                forks.preload_soon(fspec.app)

                async def spawn(instance_id: str) -> Any:
                    return await forks.spawn(fspec, node_id=config.node_id, zone=config.zone,
                                             instance_id=instance_id)
                return spawn

            tracing = Tracing.from_env(node_id=config.node_id, zone=config.zone, role="node")
            prometheus = None
            if config.prometheus:
                host, _, port = config.prometheus.rpartition(":")
                prometheus = (host, int(port))
            metrics = Metrics.from_env(node_id=config.node_id, zone=config.zone, role="node",
                                       prometheus=prometheus)
            node = Node(config, store, spawner_factory, tracing, metrics)
            from supervisor._async import AsyncInvocations

            node.async_invocations = AsyncInvocations(node)
            async with anyio.create_task_group() as tg:
                await tg.start(node.serve)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        log.info("node %s stopping", config.node_id)
                        break
                tg.cancel_scope.cancel()
            await anyio.to_thread.run_sync(tracing.shutdown, 5.0)
            await anyio.to_thread.run_sync(metrics.shutdown, 5.0)


class TracedStore:
    """The store, with one child span per operation (`stoic.store.<op>`) made inside a
    trace. An operation with no current span (the async consumer's idle lease polls,
    membership heartbeats) makes no span: as roots they would be traces of their own, ten
    a second per node, flooding the collector and pushing invocations' spans out of the
    bounded local recorder."""

    def __init__(self, store: Any, tracing: Tracing) -> None:
        self._store = store
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name.startswith("_") or not callable(attr):
            return attr
        tracing = self._tracing

        async def traced(*args: Any, **kwargs: Any) -> Any:
            if not otel_trace.get_current_span().get_span_context().is_valid:
                return await attr(*args, **kwargs)
            with tracing.start_span(f"stoic.store.{name}"):
                return await attr(*args, **kwargs)

        return traced
