"""Actors: mailbox, tell/send/ask, lifecycle hooks, links, monitors, the Runtime.

Timing tests run on trio's MockClock (virtual time, exact); a few run on asyncio too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from runtime import (
    Actor,
    ActorDeadError,
    ActorRef,
    Child,
    Down,
    Exit,
    ExitReason,
    MailboxFull,
    NameTaken,
    Runtime,
    RuntimeClosed,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


BOTH = pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {}), ("trio", {"clock": MockClock(autojump_threshold=0)})]
)


@dataclass(frozen=True)
class Add:
    n: int


@dataclass(frozen=True)
class Get:
    pass


@dataclass(frozen=True)
class Fail:
    message: str


@dataclass(frozen=True)
class Block:
    pass


@dataclass(frozen=True)
class Sleep:
    seconds: float


class Counter(Actor):
    def __init__(self, events: list[Any] | None = None) -> None:
        self.total = 0
        self.events = events if events is not None else []
        self.release = anyio.Event()

    async def on_start(self) -> None:
        self.events.append(("start", self.ref.name))

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Add):
            self.total += message.n
            return self.total
        if isinstance(message, Get):
            return self.total
        if isinstance(message, Fail):
            raise ValueError(message.message)
        if isinstance(message, Block):
            await self.release.wait()
            return "released"
        if isinstance(message, Sleep):
            await anyio.sleep(message.seconds)
            return "slept"
        self.events.append(message)
        return None

    async def on_stop(self, reason: ExitReason) -> None:
        self.events.append(("stop", self.ref.name, reason.kind))

    async def on_failure(self, exc: BaseException) -> None:
        self.events.append(("failure", self.ref.name, repr(exc)))


class Trapper(Counter):
    trap_exits = True


@BOTH
async def test_tell_and_ask_keep_order() -> None:
    async with Runtime() as rt:
        ref = await rt.spawn(Counter(), name="counter")
        for n in range(1, 11):
            ref.tell(Add(n))
        assert await ref.ask(Get()) == 55
        assert await ref.ask(Add(1)) == 56
        assert isinstance(ref, Child)
        assert ref.name == "counter" and ref.alive and ref.exit_reason is None
        assert rt.whereis("counter") == ref


@BOTH
async def test_ask_to_a_dead_actor_raises_promptly() -> None:
    async with Runtime() as rt:
        stopped = await rt.spawn(Counter())
        stopped.stop()
        assert (await stopped.wait_exit()).kind == "shutdown"
        killed = await rt.spawn(Counter())
        killed.kill()
        assert await killed.wait_exit() == ExitReason.killed()
        for ref in (stopped, killed):
            with anyio.fail_after(1):
                with pytest.raises(ActorDeadError) as info:
                    await ref.ask(Get())
            assert info.value.reason == ref.exit_reason
            with pytest.raises(ActorDeadError):
                ref.tell(Get())
            with pytest.raises(ActorDeadError):
                await ref.send(Get())


async def test_ask_raises_when_the_actor_dies_before_replying() -> None:
    async with Runtime() as rt:
        events: list[Any] = []
        ref = await rt.spawn(Counter(events), name="c")
        with pytest.raises(ActorDeadError) as info:
            await ref.ask(Fail("bad input"))
        assert info.value.reason == ExitReason.error("ValueError: bad input")
        assert ("failure", "c", "ValueError('bad input')") in events
        assert ("stop", "c", "error") not in events

        # An ask queued behind a blocked request, then the actor is killed: both fail at once.
        blocked = await rt.spawn(Counter())
        failures: list[tuple[float, str]] = []

        async def asker(message: Any) -> None:
            try:
                await blocked.ask(message)
            except ActorDeadError as exc:
                assert exc.reason is not None
                failures.append((anyio.current_time(), exc.reason.kind))

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(asker, Block())
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(asker, Get())
            await anyio.sleep(3)
            blocked.kill()
        assert failures == [(start + 3, "killed"), (start + 3, "killed")]


async def test_ask_is_bounded_by_the_callers_scope() -> None:
    async with Runtime() as rt:
        ref = await rt.spawn(Counter())
        start = anyio.current_time()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(1.5):
                await ref.ask(Block())
        assert anyio.current_time() - start == 1.5
        ref.kill()


async def test_full_mailbox_raises_mailbox_full_and_send_waits_for_room() -> None:
    async with Runtime() as rt:
        actor = Counter()
        ref = await rt.spawn(actor, mailbox_size=2)
        ref.tell(Block())
        await anyio.wait_all_tasks_blocked()  # the actor has taken Block and blocks
        ref.tell(Add(1))
        ref.tell(Add(2))
        with pytest.raises(MailboxFull) as info:
            ref.tell(Add(3))
        assert info.value.capacity == 2
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:

            async def release_later() -> None:
                await anyio.sleep(2)
                actor.release.set()

            tg.start_soon(release_later)
            await ref.send(Add(3))  # waits until the actor makes room
            assert anyio.current_time() - start == 2
        assert await ref.ask(Get()) == 6


async def test_invalid_spawns() -> None:
    async with Runtime() as rt:
        await rt.spawn(Counter(), name="x")
        with pytest.raises(NameTaken):
            await rt.spawn(Counter(), name="x")
        for size in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                await rt.spawn(Counter(), mailbox_size=size)  # type: ignore[arg-type]
        actor = Counter()
        await rt.spawn(actor)
        with pytest.raises(ValueError):
            await rt.spawn(actor)
    with pytest.raises(RuntimeClosed):
        await rt.spawn(Counter())
    with pytest.raises(RuntimeClosed):
        await Runtime().spawn(Counter())


async def test_on_start_failure_makes_spawn_raise() -> None:
    class BadStart(Counter):
        async def on_start(self) -> None:
            raise OSError("no such device")

    async with Runtime() as rt:
        with pytest.raises(OSError, match="no such device"):
            await rt.spawn(BadStart(), name="bad")
        assert rt.whereis("bad") is None
        await rt.spawn(Counter(), name="bad")  # the name is free again


async def test_runtime_exit_stops_actors_in_reverse_order() -> None:
    events: list[Any] = []
    async with Runtime() as rt:
        for name in ("a", "b", "c"):
            await rt.spawn(Counter(events), name=name)
        refs = rt.actors()
    assert [e for e in events if e[0] == "stop"] == [
        ("stop", "c", "shutdown"),
        ("stop", "b", "shutdown"),
        ("stop", "a", "shutdown"),
    ]
    assert all(not r.alive for r in refs)
    assert rt.actors() == []


async def test_stop_handles_queued_messages_first_and_self_stop_is_normal() -> None:
    events: list[Any] = []

    class Quitter(Counter):
        async def receive(self, message: Any) -> Any:
            if message == "quit":
                self.stop()
                return None
            return await super().receive(message)

    async with Runtime() as rt:
        ref = await rt.spawn(Counter(events), name="c")
        ref.tell("one")
        ref.tell("two")
        ref.stop()
        assert (await ref.wait_exit()).kind == "shutdown"
        assert events[1:] == ["one", "two", ("stop", "c", "shutdown")]
        quitter = await rt.spawn(Quitter(events), name="q")
        quitter.tell("quit")
        assert await quitter.wait_exit() == ExitReason.normal()


async def test_abnormal_exit_kills_linked_actors_unless_they_trap() -> None:
    async with Runtime() as rt:
        a = await rt.spawn(Counter(), name="a")
        b = await rt.spawn(Counter(), name="b", link=a)
        c = await rt.spawn(Counter(), name="c", link=b)  # a - b - c: the signal travels
        trap_events: list[Any] = []
        t = await rt.spawn(Trapper(trap_events), name="t", link=a)
        a.tell(Fail("crash"))
        reason_a = await a.wait_exit()
        assert reason_a == ExitReason.error("ValueError: crash")
        reason_b = await b.wait_exit()
        assert reason_b.abnormal and "'a'" in reason_b.detail
        assert (await c.wait_exit()).abnormal
        assert t.alive
        await t.ask(Get())  # the Exit message is handled before this ask
        assert Exit(a, reason_a) in trap_events


async def test_normal_exit_does_not_kill_links_and_links_are_both_ways() -> None:
    async with Runtime() as rt:
        a = await rt.spawn(Counter())
        b = await rt.spawn(Counter(), link=a)
        a.stop()
        await a.wait_exit()
        assert b.alive and await b.ask(Get()) == 0
        c = await rt.spawn(Counter())
        d = await rt.spawn(Counter(), link=c)
        d.kill()  # the other direction
        assert (await c.wait_exit()).kind == "killed"
        # Linking to an actor that has ended delivers its exit signal at once.
        e = await rt.spawn(Counter(), link=d)
        assert (await e.wait_exit()).kind == "killed"


async def test_monitors_get_down_messages() -> None:
    events: list[Any] = []

    class Watcher(Counter):
        async def receive(self, message: Any) -> Any:
            if isinstance(message, tuple) and message[0] == "watch":
                self.monitor(message[1])
                return None
            return await super().receive(message)

    async with Runtime() as rt:
        watcher = await rt.spawn(Watcher(events), name="w")
        target = await rt.spawn(Counter(), name="target")
        await watcher.ask(("watch", target))
        target.tell(Fail("down"))
        await target.wait_exit()
        await watcher.ask(Get())
        assert Down(target, ExitReason.error("ValueError: down")) in events
        await watcher.ask(("watch", target))  # already dead: Down at once
        await watcher.ask(Get())
        assert events.count(Down(target, ExitReason.error("ValueError: down"))) == 2
        assert watcher.alive  # monitors never kill


async def test_kill_cancels_a_busy_actor_at_once() -> None:
    events: list[Any] = []
    async with Runtime() as rt:
        ref = await rt.spawn(Counter(events), name="busy")
        ref.tell(Sleep(100))
        await anyio.sleep(1)
        start = anyio.current_time()
        ref.kill()
        assert await ref.wait_exit() == ExitReason.killed()
        assert anyio.current_time() == start
        assert not any(e[0] in ("stop", "failure") for e in events if isinstance(e, tuple))


async def test_refs_compare_by_identity() -> None:
    async with Runtime() as rt:
        a = await rt.spawn(Counter())
        b = await rt.spawn(Counter())
        assert a != b and a == rt.whereis(a.name) and len({a, b, a}) == 2
        assert isinstance(a, ActorRef) and "alive" in repr(a)
