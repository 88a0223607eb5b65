"""In-process actors: a loop over a bounded mailbox, reached only through an `ActorRef`.

An actor is an `Actor` subclass whose `receive` handles one message at a time. A `Runtime`
owns the task group the actors run in, their name registry and the clock; there is no
process-global state. `Runtime.spawn` returns an `ActorRef` once `on_start` has finished.

- `ref.tell(msg)` enqueues without waiting and raises `MailboxFull` when the mailbox is at
  capacity; `await ref.send(msg)` waits for room instead (bounded by the caller's scope).
- `await ref.ask(msg)` enqueues a request and returns what `receive` returned for it. It is
  bounded by the caller's cancel scope (wrap it in `anyio.fail_after`), and raises
  `ActorDeadError` if the actor is gone or ends before replying: an ask never hangs on a
  dead actor.
- Links and monitors (Erlang's): when an actor ends, every linked actor gets an exit signal
  and every monitoring actor a `Down(ref, reason)` message. An abnormal exit signal kills a
  linked actor unless its `trap_exits` is true, in which case it receives `Exit(ref, reason)`
  as a message; a normal exit signal is ignored unless trapped.
- An `ActorRef` implements `runtime.Child` (`name`, `wait_exit`, `stop`, `kill`), so an actor
  can be a supervisor's child.

How an actor ends, and its `ExitReason`:
- `ref.stop()` (or the runtime closing): the messages already queued are handled, then
  `on_stop(reason)` runs; reason `shutdown`. `Actor.stop()` from inside: reason `normal`.
- `receive`/`on_start`/`on_stop` raised: `on_failure(exc)` runs; reason `error`.
- `ref.kill()` or an untrapped abnormal exit signal: the actor's task is cancelled at once,
  no hook runs; reason `killed` (or the linked actor's reason).

Messages are ideally frozen dataclasses. Asks cost one small object and one event each;
no task is created per message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from runtime._child import Child, ExitReason
from runtime._clock import Clock, LoopClock

log = logging.getLogger("stoic.actor")

DEFAULT_MAILBOX_SIZE = 1000


class ActorDeadError(Exception):
    """The callee is gone: the actor (or supervisor) has ended, or ended before replying."""

    def __init__(self, name: str, reason: ExitReason | None = None) -> None:
        self.name = name
        self.reason = reason
        suffix = f" ({reason})" if reason is not None else ""
        super().__init__(f"actor {name!r} is not running{suffix}")


class MailboxFull(Exception):
    """The actor's mailbox is at capacity: back off, or use `send` to wait for room."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        super().__init__(f"mailbox of actor {name!r} is full ({capacity} messages)")


class NameTaken(ValueError):
    """Another live actor of this runtime already has this name (your configuration)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"an actor named {name!r} is already running")


class RuntimeClosed(RuntimeError):
    """The runtime is not running (not entered yet, or closing): nothing can be spawned."""


@dataclass(frozen=True)
class Exit:
    """An exit signal from a linked actor, delivered as a message to a trapping actor."""

    ref: ActorRef
    reason: ExitReason


@dataclass(frozen=True)
class Down:
    """A monitored actor has ended, and why."""

    ref: ActorRef
    reason: ExitReason


class _Ask:
    __slots__ = ("message", "done", "value", "error")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _Stop:
    __slots__ = ("reason",)

    def __init__(self, reason: ExitReason) -> None:
        self.reason = reason


class Actor:
    """Base class of actors. Override `receive`, and the hooks you need.

    `self.ref` (this actor's `ActorRef`) and `self.runtime` are set before `on_start` runs.
    An `Actor` instance can be spawned once.
    """

    trap_exits: ClassVar[bool] = False
    """When true, exit signals from linked actors arrive as `Exit` messages instead of
    killing this actor."""

    ref: ActorRef
    runtime: Runtime

    async def on_start(self) -> None:
        """Runs before the first message. Raising makes `spawn` raise it; no hook runs."""

    async def receive(self, message: Any) -> Any:
        """Handle one message. The return value is the reply to an `ask` (ignored for a
        `tell`). Raising ends the actor with reason `error` (`on_failure` runs, a pending
        ask gets `ActorDeadError`)."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {message!r}")

    async def on_stop(self, reason: ExitReason) -> None:
        """Runs when the actor stops gracefully (`normal` or `shutdown`)."""

    async def on_failure(self, exc: BaseException) -> None:
        """Runs when `on_start`, `receive` or `on_stop` raised; the actor then ends."""

    def stop(self) -> None:
        """Stop this actor with reason `normal` once the messages already queued are handled."""
        self.ref._cell.request_stop(ExitReason.normal())

    def link(self, other: ActorRef) -> None:
        """Link this actor with `other` (both ways). Linking to an ended actor delivers its
        exit signal at once."""
        self.runtime.link(self.ref, other)

    def unlink(self, other: ActorRef) -> None:
        self.ref._cell.links.discard(other._cell)
        other._cell.links.discard(self.ref._cell)

    def monitor(self, other: ActorRef) -> None:
        """Get a `Down` message when `other` ends (at once if it has ended)."""
        self.runtime.monitor(self.ref, other)

    def demonitor(self, other: ActorRef) -> None:
        other._cell.monitors.discard(self.ref._cell)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Cell:
    """The state of one running actor. Private; everything goes through ActorRef."""

    def __init__(self, actor: Actor, name: str, capacity: int) -> None:
        self.actor = actor
        self.name = name
        self.capacity = capacity
        # The stream is unbounded so that system messages (stop, Exit, Down) are never
        # refused; `queued` enforces the capacity for user messages.
        self.send_stream: MemoryObjectSendStream[Any]
        self.recv_stream: MemoryObjectReceiveStream[Any]
        self.send_stream, self.recv_stream = anyio.create_memory_object_stream(math.inf)
        self.queued = 0
        self.room: anyio.Event | None = None
        self.pending: set[_Ask] = set()
        self.links: set[_Cell] = set()
        self.monitors: set[_Cell] = set()
        self.scope: anyio.CancelScope | None = None
        self.stopping = False
        self.kill_reason: ExitReason | None = None
        self.ended = False
        self.reason: ExitReason | None = None
        self.exited = anyio.Event()
        self.ref = ActorRef(self)

    # -- delivery ---------------------------------------------------------------------

    def enqueue_system(self, item: Any) -> None:
        if self.ended:
            return
        self.queued += 1
        self.send_stream.send_nowait(item)

    def request_stop(self, reason: ExitReason) -> None:
        if self.ended or self.stopping:
            return
        self.stopping = True
        self.enqueue_system(_Stop(reason))

    def kill(self, reason: ExitReason) -> None:
        if self.ended or self.kill_reason is not None:
            return
        self.kill_reason = reason
        if self.scope is not None:
            self.scope.cancel()

    def exit_signal(self, source: _Cell, reason: ExitReason) -> None:
        if self.ended:
            return
        if self.actor.trap_exits:
            self.enqueue_system(Exit(source.ref, reason))
        elif reason.abnormal:
            self.kill(ExitReason(reason.kind, f"linked actor {source.name!r} exited ({reason})"))

    # -- ending -----------------------------------------------------------------------

    def finish(self, reason: ExitReason) -> None:
        """Record the end, fail what waits on this actor, notify links and monitors.
        Synchronous, so nothing can slip in between."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        dead = ActorDeadError(self.name, reason)
        for ask in self.pending:
            ask.error = dead
            ask.done.set()
        self.pending.clear()
        for item in self._drain():
            if isinstance(item, _Ask):
                item.error = dead
                item.done.set()
        self.send_stream.close()
        self.recv_stream.close()
        if self.room is not None:
            self.room.set()
        self.exited.set()
        links, self.links = self.links, set()
        for other in links:
            other.links.discard(self)
            other.exit_signal(self, reason)
        monitors, self.monitors = self.monitors, set()
        for watcher in monitors:
            watcher.enqueue_system(Down(self.ref, reason))

    def _drain(self) -> Iterator[Any]:
        while True:
            try:
                yield self.recv_stream.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return


class ActorRef:
    """The only handle on an actor. Cheap to copy around; compares by actor identity.

    Implements `runtime.Child`."""

    __slots__ = ("_cell",)

    def __init__(self, cell: _Cell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def alive(self) -> bool:
        return not self._cell.ended

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the actor ended, or None while it runs."""
        return self._cell.reason

    def tell(self, message: Any) -> None:
        """Enqueue `message` without waiting.

        Raises `MailboxFull` when the mailbox is at capacity, `ActorDeadError` when the
        actor has ended or is stopping."""
        cell = self._cell
        if cell.ended or cell.stopping:
            raise ActorDeadError(cell.name, cell.reason)
        if cell.queued >= cell.capacity:
            raise MailboxFull(cell.name, cell.capacity)
        cell.queued += 1
        cell.send_stream.send_nowait(message)

    async def send(self, message: Any) -> None:
        """Enqueue `message`, waiting for room in the mailbox.

        Raises `ActorDeadError` if the actor has ended or ends while we wait. Cancellable
        (the message is then not enqueued)."""
        await self._wait_room()
        self.tell(message)

    async def _wait_room(self) -> None:
        cell = self._cell
        await anyio.lowlevel.checkpoint_if_cancelled()
        while cell.queued >= cell.capacity and not cell.ended:
            if cell.room is None:
                cell.room = anyio.Event()
            await cell.room.wait()

    async def ask(self, message: Any) -> Any:
        """Send `message` and return the actor's reply (what `receive` returned).

        Waits for room in the mailbox, then for the reply; both bounded by the caller's
        cancel scope. Raises `ActorDeadError` if the actor has ended or ends before
        replying (including because handling this message raised). If cancelled, the
        request may still be handled; its reply is dropped."""
        cell = self._cell
        if cell.queued >= cell.capacity:
            await self._wait_room()
        if cell.ended or cell.stopping:
            raise ActorDeadError(cell.name, cell.reason)
        request = _Ask(message)
        cell.pending.add(request)
        try:
            cell.queued += 1
            cell.send_stream.send_nowait(request)
            await request.done.wait()
        finally:
            cell.pending.discard(request)
        if request.error is not None:
            raise request.error
        return request.value

    def stop(self) -> None:
        """Ask the actor to stop gracefully (reason `shutdown`) once the messages already
        queued are handled. Returns at once; idempotent."""
        self._cell.request_stop(ExitReason.shutdown())

    def kill(self) -> None:
        """Cancel the actor's task now (reason `killed`; no hook runs). Returns at once;
        idempotent."""
        self._cell.kill(ExitReason.killed())

    async def wait_exit(self) -> ExitReason:
        """Wait until the actor has ended and return why. Cancellable."""
        cell = self._cell
        await cell.exited.wait()
        if cell.reason is None:  # pragma: no cover - finish() sets it before the event
            raise RuntimeError("actor ended without a reason")
        return cell.reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"ended: {self._cell.reason}"
        return f"<ActorRef {self.name!r} {state}>"


class Runtime:
    """Owns the task group actors run in, their name registry and the clock.

    Use as `async with Runtime() as rt:`. Leaving the block stops what the runtime owns:
    first the children handed to `own` (supervisors), in reverse order, then the actors,
    in reverse spawn order, each gracefully (waiting for it to end), then cancels what is
    left. Cancelling the enclosing scope kills everything at once.
    """

    def __init__(self, *, clock: Clock | None = None, name: str = "runtime") -> None:
        self.name = name
        self.clock: Clock = clock if clock is not None else LoopClock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._cells: dict[str, _Cell] = {}
        self._owned: list[Child] = []
        self._counter = 0
        self._closing = False

    async def __aenter__(self) -> Runtime:
        if self._tg is not None:
            raise RuntimeError("a Runtime can be entered once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        tg = self._tg
        if tg is None:
            return None
        self._closing = True
        try:
            if exc_type is None:
                await self._stop_all()
        finally:
            tg.cancel_scope.cancel()
            result = await tg.__aexit__(exc_type, exc, tb)
        return result

    async def _stop_all(self) -> None:
        owned, self._owned = self._owned, []
        for child in reversed(owned):
            child.stop()
            await child.wait_exit()
        for cell in reversed(list(self._cells.values())):
            cell.request_stop(ExitReason.shutdown())
            await cell.ref.wait_exit()

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """The task group actors (and supervisors started on this runtime) run in."""
        if self._tg is None or self._closing:
            raise RuntimeClosed(f"runtime {self.name!r} is not running")
        return self._tg

    def own(self, child: Child) -> None:
        """Make the runtime stop `child` (gracefully, before the actors) when it closes."""
        self._owned = [c for c in self._owned if not _ended(c)]
        self._owned.append(child)

    def whereis(self, name: str) -> ActorRef | None:
        """The live actor registered under `name`, or None."""
        cell = self._cells.get(name)
        return cell.ref if cell is not None else None

    def actors(self) -> list[ActorRef]:
        """The live actors, in spawn order."""
        return [cell.ref for cell in self._cells.values()]

    async def spawn(
        self,
        actor: Actor,
        *,
        name: str | None = None,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        link: ActorRef | None = None,
    ) -> ActorRef:
        """Start `actor` and return its ref once `on_start` has finished.

        `mailbox_size` (>= 1) bounds the user messages queued. `link` links the new actor
        to an existing one before it starts. Raises whatever `on_start` raised,
        `NameTaken` if `name` is in use, `RuntimeClosed` if the runtime is not running,
        `ValueError` for a bad mailbox size. If cancelled while starting, the actor is
        killed."""
        tg = self.task_group
        if isinstance(mailbox_size, bool) or not isinstance(mailbox_size, int) or mailbox_size < 1:
            raise ValueError(f"mailbox_size must be a positive integer, got {mailbox_size!r}")
        if hasattr(actor, "ref"):
            raise ValueError(f"{actor!r} has already been spawned")
        if name is None:
            self._counter += 1
            name = f"{type(actor).__name__}-{self._counter}"
        if name in self._cells:
            raise NameTaken(name)
        cell = _Cell(actor, name, mailbox_size)
        actor.ref = cell.ref
        actor.runtime = self
        self._cells[name] = cell
        if link is not None:
            self.link(cell.ref, link)
        failure = await tg.start(self._run, cell, name=f"actor {name}")
        if failure is not None:
            raise failure
        return cell.ref

    def link(self, a: ActorRef, b: ActorRef) -> None:
        """Link two actors both ways. If one has ended, the other gets its exit signal now."""
        ca, cb = a._cell, b._cell
        if ca is cb:
            return
        if ca.ended or cb.ended:
            if ca.ended and cb.ended:
                return
            dead, live = (ca, cb) if ca.ended else (cb, ca)
            live.exit_signal(dead, dead.reason or ExitReason.killed())
            return
        ca.links.add(cb)
        cb.links.add(ca)

    def monitor(self, watcher: ActorRef, target: ActorRef) -> None:
        """Send `watcher` a `Down` message when `target` ends (now, if it has ended)."""
        wc, tc = watcher._cell, target._cell
        if tc.ended:
            wc.enqueue_system(Down(target, tc.reason or ExitReason.killed()))
        else:
            tc.monitors.add(wc)

    async def _run(
        self, cell: _Cell, *, task_status: anyio.abc.TaskStatus[BaseException | None]
    ) -> None:
        actor = cell.actor
        reason: ExitReason | None = None
        started = False
        try:
            with anyio.CancelScope() as scope:
                cell.scope = scope
                if cell.kill_reason is not None:
                    scope.cancel()
                try:
                    await actor.on_start()
                except Exception as exc:
                    reason = ExitReason.error(f"on_start raised {_describe(exc)}")
                    cell.finish(reason)
                    self._forget(cell)
                    started = True
                    task_status.started(exc)
                    return
                started = True
                task_status.started(None)
                try:
                    reason = await self._loop(cell)
                except Exception as exc:
                    reason = ExitReason.error(_describe(exc))
                    log.debug("actor %s failed", cell.name, exc_info=True)
                    await self._call_on_failure(cell, exc)
            if scope.cancelled_caught:
                reason = cell.kill_reason or ExitReason.killed()
        finally:
            cell.finish(reason or cell.kill_reason or ExitReason.killed())
            self._forget(cell)
            if not started:
                task_status.started(ActorDeadError(cell.name, cell.reason))

    async def _call_on_failure(self, cell: _Cell, exc: BaseException) -> None:
        try:
            await cell.actor.on_failure(exc)
        except Exception:
            log.exception("on_failure of actor %s raised", cell.name)

    def _forget(self, cell: _Cell) -> None:
        if self._cells.get(cell.name) is cell:
            del self._cells[cell.name]

    @staticmethod
    async def _loop(cell: _Cell) -> ExitReason:
        actor = cell.actor
        receive = cell.recv_stream.receive
        while True:
            item = await receive()
            cell.queued -= 1
            if cell.room is not None:
                cell.room.set()
                cell.room = None
            kind = type(item)
            if kind is _Ask:
                item.value = await actor.receive(item.message)
                cell.pending.discard(item)
                item.done.set()
            elif kind is _Stop:
                await actor.on_stop(item.reason)
                return item.reason
            else:
                await actor.receive(item)


def _ended(child: Child) -> bool:
    if isinstance(child, ActorRef):
        return not child.alive
    ended = getattr(child, "ended", None)
    return bool(ended) if isinstance(ended, bool) else False
