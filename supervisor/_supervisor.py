"""The OTP supervisor, over anyio: starts children in order, restarts them by strategy and
restart type, gives up when the restart intensity is exceeded, stops them in reverse order.

    sup = await Supervisor.start(runtime_or_task_group, SupervisorSpec(
        name="pool",
        strategy=RestartStrategy.ONE_FOR_ONE,
        intensity=RestartIntensity(max_restarts=3, period=5.0),
        children=(ChildSpec("a", start_a), ChildSpec("b", start_b)),
    ), on_report=print)
    ...
    sup.stop(); await sup.wait_exit()

A `Supervisor` is itself a `runtime.Child` (`name`, `wait_exit`, `stop`, `kill`), so a
function that starts one can be another supervisor's `ChildSpec.start`, and trees nest:
when an inner supervisor gives up it exits with `error: reached_max_restart_intensity`
and its parent restarts it according to the parent's own strategy.

Like OTP's, a supervisor is one sequential loop: child exits, `start_child`,
`terminate_child` and `stop` are handled one at a time, in arrival order. Each running
child has one small watcher task waiting on its `wait_exit`.

Reports (`Report`, OTP's names) go to the `on_report` callback and to the `stoic.supervisor`
logger as structured records (`extra={"event", "supervisor", "child_id", "reason", "at"}`):
- `child_started`: a child was started or restarted;
- `child_terminated`: a child ended on its own and is restarted, or ended abnormally;
- `start_error`: a child's start function raised (or returned something not a Child);
- `reached_max_restart_intensity`: the supervisor gives up.
Children the supervisor stops itself (shutdown, restart of siblings, `terminate_child`)
are not reported, as in OTP.

A restart whose start fails is retried (at once, or after the child's `start_backoff`
delay) and each attempt counts as a restart towards the intensity, as OTP's
`try_again_restart`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime import ActorDeadError, Child, Clock, ExitReason, LoopClock, Runtime
from runtime._aio import stray_cancellation
from supervisor._child_spec import (
    ChildSpec,
    InvalidChildSpec,
    Restart,
    Shutdown,
)
from supervisor._restart_policy import (
    RestartIntensity,
    RestartStrategy,
    affected_children,
    backoff_delay,
    record_restart,
    should_restart,
)

log = logging.getLogger("stoic.supervisor")

ReportKind = Literal[
    "child_started", "child_terminated", "start_error", "reached_max_restart_intensity"
]

MAX_INTENSITY_REASON = "reached_max_restart_intensity"


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor's configuration. `children` start in order and stop in reverse order;
    a `SIMPLE_ONE_FOR_ONE` supervisor starts with none and gets them from `start_child`.

    Raises `InvalidChildSpec(field, value)` when constructed with an invalid field
    (including two children with one id)."""

    strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE
    intensity: RestartIntensity = field(default_factory=RestartIntensity)
    children: Sequence[ChildSpec] = ()
    name: str = "supervisor"

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, RestartStrategy):
            raise InvalidChildSpec("strategy", self.strategy, "must be a RestartStrategy")
        if not isinstance(self.intensity, RestartIntensity):
            raise InvalidChildSpec("intensity", self.intensity, "must be a RestartIntensity")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidChildSpec("name", self.name, "must be a non-empty string")
        children = tuple(self.children)
        object.__setattr__(self, "children", children)
        seen: set[str] = set()
        for spec in children:
            if not isinstance(spec, ChildSpec):
                raise InvalidChildSpec("children", spec, "must be a ChildSpec")
            if spec.id in seen:
                raise InvalidChildSpec("id", spec.id, "is used by two children")
            seen.add(spec.id)
        if self.strategy is RestartStrategy.SIMPLE_ONE_FOR_ONE and children:
            raise InvalidChildSpec(
                "children",
                [spec.id for spec in children],
                "a simple_one_for_one supervisor starts empty; use start_child",
            )


@dataclass(frozen=True)
class Report:
    """A supervisor report, with OTP's names. `at` is the clock's time (seconds)."""

    kind: ReportKind
    supervisor: str
    child_id: str
    reason: ExitReason | None
    at: float


@dataclass(frozen=True)
class ChildInfo:
    """One child as `which_children` sees it: its current `Child` (None when not running),
    how many times it was restarted, and how it last ended."""

    id: str
    child: Child | None
    restarts: int
    last_exit: ExitReason | None


class ChildStartError(Exception):
    """A child's start function failed (raised, or returned something not a Child).
    `child_id` names the child; the original exception is `__cause__`."""

    def __init__(self, child_id: str, reason: ExitReason) -> None:
        self.child_id = child_id
        self.reason = reason
        super().__init__(f"child {child_id!r} failed to start: {reason.detail}")


class ChildNotFound(LookupError):
    """The supervisor has no child with this id."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(f"no child with id {child_id!r}")


class ChildRunning(RuntimeError):
    """`delete_child` of a child that is running: terminate it first."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(f"child {child_id!r} is running; terminate it first")


OnReport = Callable[[Report], None]


# -- the loop's events ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _ChildExit:
    child_id: str
    child: Child
    reason: ExitReason


@dataclass(frozen=True, eq=False)
class _Retry:
    child_id: str
    token: int


class _Stop:
    pass


class _Call:
    __slots__ = ("op", "args", "done", "value", "error")

    def __init__(self, op: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.op = op
        self.args = args
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


@dataclass(eq=False)
class _Entry:
    spec: ChildSpec
    dynamic: bool
    child: Child | None = None
    watch: anyio.CancelScope | None = None
    restarts: int = 0
    last_exit: ExitReason | None = None
    start_failures: int = 0
    retry_token: int | None = None
    retry_timer: anyio.CancelScope | None = None

    @property
    def id(self) -> str:
        return self.spec.id


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _GiveUp(Exception):
    """Internal: the intensity is exceeded; carries the exit reason out of the loop."""

    def __init__(self, reason: ExitReason) -> None:
        self.reason = reason


class Supervisor:
    """A running supervisor. Create it with `Supervisor.start`. Implements `runtime.Child`."""

    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        clock: Clock,
        on_report: OnReport | None,
        rng: random.Random,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._on_report = on_report
        self._rng = rng
        self._entries: dict[str, _Entry] = {}
        self._history: tuple[float, ...] = ()
        self._send: MemoryObjectSendStream[Any]
        self._recv: MemoryObjectReceiveStream[Any]
        self._send, self._recv = anyio.create_memory_object_stream(math.inf)
        self._pending: set[_Call] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._kill_requested = False
        self._tokens = 0
        self.ended = False
        self._reason: ExitReason | None = None
        self._exited = anyio.Event()

    # -- starting ---------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        owner: Runtime | anyio.abc.TaskGroup,
        spec: SupervisorSpec,
        *,
        clock: Clock | None = None,
        on_report: OnReport | None = None,
        rng: random.Random | None = None,
    ) -> Supervisor:
        """Start a supervisor and its children, in order; return once all are started.

        `owner` is the task group the supervisor runs in, or a `Runtime` (its task group;
        the runtime then stops the supervisor when it closes, and lends it its clock).
        `clock` defaults to the runtime's or the event loop's; `rng` is the jitter source
        of start backoffs. Raises `ChildStartError` if a child fails to start (the
        children already started are stopped first, in reverse order), `RuntimeClosed` if
        the runtime is not running. If cancelled while starting, the children started so
        far are killed."""
        if isinstance(owner, Runtime):
            tg = owner.task_group
            clock = clock if clock is not None else owner.clock
        else:
            tg = owner
        sup = cls(
            spec,
            clock=clock if clock is not None else LoopClock(),
            on_report=on_report,
            rng=rng if rng is not None else random.Random(),
        )
        failure = await tg.start(sup._run, name=f"supervisor {spec.name}")
        if failure is not None:
            raise failure
        if isinstance(owner, Runtime):
            owner.own(sup)
        return sup

    # -- the Child interface ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the supervisor ended, or None while it runs."""
        return self._reason

    async def wait_exit(self) -> ExitReason:
        """Wait until the supervisor has ended (its children stopped) and return why:
        `shutdown` after `stop`, `killed` after `kill`, `error:
        reached_max_restart_intensity` when it gave up. Cancellable."""
        await self._exited.wait()
        if self._reason is None:  # pragma: no cover - set before the event
            raise RuntimeError("supervisor ended without a reason")
        return self._reason

    def stop(self) -> None:
        """Stop gracefully: children are terminated in reverse start order, each per its
        shutdown, then the supervisor exits with `shutdown`. Returns at once; idempotent."""
        if not self.ended:
            self._send.send_nowait(_Stop())

    def kill(self) -> None:
        """Kill the supervisor now: every running child is killed (not waited for), and it
        exits with `killed`. Returns at once; idempotent."""
        self._kill_requested = True
        if self._scope is not None:
            self._scope.cancel()

    # -- the API ----------------------------------------------------------------------

    async def start_child(self, spec: ChildSpec) -> Child:
        """Add a child and start it; return it once started. For `SIMPLE_ONE_FOR_ONE` this
        is how children come to be; for the other strategies it appends a static child.

        Raises `InvalidChildSpec` if the id is in use, `ChildStartError` if its start
        fails (the child is then not added), `ActorDeadError` if the supervisor has ended.
        Cancelling the caller does not cancel the start."""
        if not isinstance(spec, ChildSpec):
            raise InvalidChildSpec("spec", spec, "must be a ChildSpec")
        result: Child = await self._call(self._do_start_child, spec)
        return result

    async def terminate_child(self, child_id: str) -> ExitReason | None:
        """Stop a child per its shutdown and return how it ended (None if it was not
        running). A dynamic (`SIMPLE_ONE_FOR_ONE`) child is removed; a static child's spec
        is kept (not running) until `delete_child`. It is not restarted.

        Raises `ChildNotFound`, or `ActorDeadError` if the supervisor has ended."""
        result: ExitReason | None = await self._call(self._do_terminate_child, child_id)
        return result

    async def delete_child(self, child_id: str) -> None:
        """Remove a static child that is not running. Raises `ChildNotFound`,
        `ChildRunning`, or `ActorDeadError` if the supervisor has ended."""
        await self._call(self._do_delete_child, child_id)

    def which_children(self) -> tuple[ChildInfo, ...]:
        """A snapshot of the children, in start order."""
        return tuple(
            ChildInfo(e.id, e.child, e.restarts, e.last_exit) for e in self._entries.values()
        )

    async def _call(self, op: Callable[..., Any], *args: Any) -> Any:
        if self.ended:
            raise ActorDeadError(self.name, self._reason)
        call = _Call(op, args)
        self._pending.add(call)
        try:
            self._send.send_nowait(call)
            await call.done.wait()
        finally:
            self._pending.discard(call)
        if call.error is not None:
            raise call.error
        return call.value

    # -- the loop ---------------------------------------------------------------------

    async def _run(self, *, task_status: anyio.abc.TaskStatus[BaseException | None]) -> None:
        reason: ExitReason | None = None
        started = False
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._kill_requested:
                    scope.cancel()
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    try:
                        await self._start_initial()
                    except ChildStartError as exc:
                        reason = ExitReason.error(f"start_error: {exc}")
                        started = True
                        task_status.started(exc)
                        tg.cancel_scope.cancel()
                    else:
                        started = True
                        task_status.started(None)
                        try:
                            reason = await self._loop()
                        except _GiveUp as give_up:
                            reason = give_up.reason
                        except Exception as exc:
                            log.exception("supervisor %s failed", self.name)
                            reason = ExitReason.error(f"supervisor failed: {_describe(exc)}")
                        tg.cancel_scope.cancel()
            if scope.cancelled_caught and reason is None:
                reason = ExitReason.killed()
        finally:
            # Killed, cancelled from outside, or failed: nothing may outlive us.
            for entry in reversed(self._entries.values()):
                if entry.child is not None:
                    entry.child.kill()
            self._finish(reason or ExitReason.killed())
            if not started:
                task_status.started(ActorDeadError(self.name, self._reason))

    def _finish(self, reason: ExitReason) -> None:
        self.ended = True
        self._reason = reason
        dead = ActorDeadError(self.name, reason)
        for call in self._pending:
            call.error = dead
            call.done.set()
        while True:
            try:
                item = self._recv.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if isinstance(item, _Call):
                item.error = dead
                item.done.set()
        self._send.close()
        self._recv.close()
        self._exited.set()

    async def _loop(self) -> ExitReason:
        while True:
            event = await self._recv.receive()
            if isinstance(event, _ChildExit):
                entry = self._entries.get(event.child_id)
                if entry is not None and entry.child is event.child:
                    await self._on_child_exit(entry, event.reason)
            elif isinstance(event, _Retry):
                entry = self._entries.get(event.child_id)
                if entry is not None and entry.retry_token == event.token:
                    entry.retry_token = None
                    entry.retry_timer = None
                    await self._restart(entry)
            elif isinstance(event, _Call):
                try:
                    event.value = await event.op(*event.args)
                except (_GiveUp, anyio.get_cancelled_exc_class()):
                    raise
                except Exception as exc:
                    event.error = exc
                event.done.set()
            elif isinstance(event, _Stop):
                await self._terminate_all()
                return ExitReason.shutdown()

    async def _start_initial(self) -> None:
        for spec in self.spec.children:
            entry = _Entry(spec, dynamic=False)
            self._entries[spec.id] = entry
            try:
                await self._start_entry(entry)
            except ChildStartError:
                del self._entries[spec.id]
                await self._terminate_all()
                raise

    # -- applying the decisions -------------------------------------------------------

    async def _on_child_exit(self, entry: _Entry, reason: ExitReason) -> None:
        entry.child = None
        entry.watch = None
        entry.last_exit = reason
        restart = should_restart(entry.spec.restart, reason)
        if restart or reason.abnormal:
            self._report("child_terminated", entry.id, reason)
        if not restart:
            if entry.dynamic or entry.spec.restart is Restart.TEMPORARY:
                del self._entries[entry.id]
            return
        await self._restart(entry)

    async def _restart(self, failed: _Entry) -> None:
        """Restart `failed` and the children its strategy affects, or give up."""
        check = record_restart(self._history, self._clock.now(), self.spec.intensity)
        self._history = check.history
        if check.exceeded:
            self._report("reached_max_restart_intensity", failed.id, failed.last_exit)
            await self._terminate_all()
            raise _GiveUp(ExitReason.error(MAX_INTENSITY_REASON))
        ids = affected_children(self.spec.strategy, list(self._entries), failed.id)
        affected = [self._entries[i] for i in ids]
        for entry in reversed(affected):
            self._cancel_retry(entry)
            if entry is not failed and entry.child is not None:
                await self._terminate(entry)
                if entry.spec.restart is Restart.TEMPORARY:
                    del self._entries[entry.id]
        for entry in affected:
            if self._entries.get(entry.id) is not entry:
                continue
            try:
                await self._start_entry(entry)
            except ChildStartError:
                self._schedule_retry(entry)
                return
            entry.restarts += 1

    async def _start_entry(self, entry: _Entry) -> None:
        """Start one child and watch it. Raises ChildStartError (reported)."""
        try:
            try:
                child = await entry.spec.start()
            except asyncio.CancelledError as exc:
                # asyncio only: a CancelledError that no cancel scope asked for (grpc.aio
                # raises its own for a call it cancelled) is the start's failure; let
                # out, it would silently cancel the task group the supervisor runs in
                if not stray_cancellation():
                    raise
                raise RuntimeError("the start raised a stray CancelledError") from exc
            if not isinstance(child, Child):
                raise TypeError(f"start returned {child!r}, which is not a Child")
        except Exception as exc:
            reason = ExitReason.error(_describe(exc))
            entry.last_exit = reason
            self._report("start_error", entry.id, reason)
            raise ChildStartError(entry.id, reason) from exc
        entry.child = child
        entry.start_failures = 0
        if self._tg is None:  # pragma: no cover - _run sets it before any start
            raise RuntimeError("supervisor task group missing")
        watch = anyio.CancelScope()
        entry.watch = watch
        self._tg.start_soon(self._watch, watch, entry.id, child, name=f"watch {entry.id}")
        self._report("child_started", entry.id, None)

    async def _watch(self, scope: anyio.CancelScope, child_id: str, child: Child) -> None:
        with scope:
            try:
                reason = await child.wait_exit()
            except Exception as exc:
                reason = ExitReason.error(f"wait_exit raised {_describe(exc)}")
            if not self.ended:
                self._send.send_nowait(_ChildExit(child_id, child, reason))

    def _schedule_retry(self, entry: _Entry) -> None:
        self._tokens += 1
        token = self._tokens
        entry.retry_token = token
        backoff = entry.spec.start_backoff
        if backoff is None:
            # Through the queue, as OTP's try_again_restart, so that other requests
            # (a stop, say) are handled in between.
            self._send.send_nowait(_Retry(entry.id, token))
            return
        entry.start_failures += 1
        delay = backoff_delay(backoff, entry.start_failures, self._rng)
        deadline = self._clock.now() + delay
        timer = anyio.CancelScope()
        entry.retry_timer = timer
        if self._tg is None:  # pragma: no cover
            raise RuntimeError("supervisor task group missing")
        self._tg.start_soon(self._retry_later, timer, entry.id, token, deadline)

    async def _retry_later(
        self, scope: anyio.CancelScope, child_id: str, token: int, deadline: float
    ) -> None:
        with scope:
            await self._clock.sleep_until(deadline)
            if not self.ended:
                self._send.send_nowait(_Retry(child_id, token))

    def _cancel_retry(self, entry: _Entry) -> None:
        entry.retry_token = None
        if entry.retry_timer is not None:
            entry.retry_timer.cancel()
            entry.retry_timer = None

    async def _terminate(self, entry: _Entry) -> ExitReason | None:
        """Stop one child per its shutdown; it is not restarted. Not reported."""
        self._cancel_retry(entry)
        child = entry.child
        if child is None:
            return None
        if entry.watch is not None:
            entry.watch.cancel()
            entry.watch = None
        # entry.child stays set until the child has ended, so that a kill of the
        # supervisor meanwhile also kills this child.
        shutdown = entry.spec.shutdown
        reason: ExitReason | None = None
        if shutdown is Shutdown.BRUTAL_KILL:
            child.kill()
        else:
            child.stop()
            if shutdown is Shutdown.INFINITY:
                reason = await child.wait_exit()
            else:
                with anyio.move_on_after(shutdown):
                    reason = await child.wait_exit()
                if reason is None:
                    child.kill()
        if reason is None:
            reason = await child.wait_exit()
        entry.child = None
        entry.last_exit = reason
        return reason

    async def _terminate_all(self) -> None:
        for entry in reversed(list(self._entries.values())):
            await self._terminate(entry)

    async def _do_start_child(self, spec: ChildSpec) -> Child:
        if spec.id in self._entries:
            raise InvalidChildSpec("id", spec.id, f"is already a child of {self.name!r}")
        dynamic = self.spec.strategy is RestartStrategy.SIMPLE_ONE_FOR_ONE
        entry = _Entry(spec, dynamic=dynamic)
        self._entries[spec.id] = entry
        try:
            await self._start_entry(entry)
        except ChildStartError:
            del self._entries[spec.id]
            raise
        if entry.child is None:  # pragma: no cover - _start_entry sets it
            raise RuntimeError("child missing after start")
        return entry.child

    async def _do_terminate_child(self, child_id: str) -> ExitReason | None:
        entry = self._entries.get(child_id)
        if entry is None:
            raise ChildNotFound(child_id)
        reason = await self._terminate(entry)
        if entry.dynamic or entry.spec.restart is Restart.TEMPORARY:
            self._entries.pop(child_id, None)
        return reason

    async def _do_delete_child(self, child_id: str) -> None:
        entry = self._entries.get(child_id)
        if entry is None:
            raise ChildNotFound(child_id)
        if entry.child is not None:
            raise ChildRunning(child_id)
        self._cancel_retry(entry)
        del self._entries[child_id]

    # -- reports ----------------------------------------------------------------------

    def _report(self, kind: ReportKind, child_id: str, reason: ExitReason | None) -> None:
        report = Report(kind, self.name, child_id, reason, self._clock.now())
        level = logging.INFO if kind == "child_started" else logging.ERROR
        if kind == "child_terminated" and reason is not None and not reason.abnormal:
            level = logging.INFO
        log.log(
            level,
            "%s: supervisor=%s child=%s reason=%s",
            kind,
            self.name,
            child_id,
            reason,
            extra={
                "event": kind,
                "supervisor": self.name,
                "child_id": child_id,
                "reason": str(reason) if reason is not None else None,
                "at": report.at,
            },
        )
        if self._on_report is not None:
            try:
                self._on_report(report)
            except Exception:
                log.exception("on_report callback of supervisor %s raised", self.name)

    def __repr__(self) -> str:
        state = "running" if not self.ended else f"ended: {self._reason}"
        return f"<Supervisor {self.name!r} {self.spec.strategy.value} {state}>"
