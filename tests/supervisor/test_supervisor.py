"""The async Supervisor: strategies, restart types, intensity, trees, shutdown, backoff.

Runs on trio's MockClock (virtual time; times asserted exactly). Children are `FakeChild`
(exits on command) or real actors; a few tests run on asyncio in real time as well.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
from trio.testing import MockClock

from runtime import Actor, ActorDeadError, Child, ExitReason, Runtime
from supervisor import (
    BRUTAL_KILL,
    INFINITY,
    Backoff,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildStartError,
    InvalidChildSpec,
    Report,
    Restart,
    RestartIntensity,
    RestartStrategy,
    Supervisor,
    SupervisorSpec,
    backoff_delay,
)

pytestmark = pytest.mark.anyio

ERROR = ExitReason.error("boom")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


class FakeChild:
    """A child that ends when told to; stop() ends it with `shutdown` unless it ignores stops."""

    def __init__(self, name: str, journal: list[tuple[Any, ...]], *, ignore_stop: bool = False):
        self.name = name
        self.journal = journal
        self.ignore_stop = ignore_stop
        self.reason: ExitReason | None = None
        self._done = anyio.Event()

    async def wait_exit(self) -> ExitReason:
        await self._done.wait()
        assert self.reason is not None
        return self.reason

    def exit(self, reason: ExitReason) -> None:
        if self.reason is None:
            self.reason = reason
            self.journal.append(("exit", self.name, reason.kind, anyio.current_time()))
            self._done.set()

    def stop(self) -> None:
        self.journal.append(("stop", self.name))
        if not self.ignore_stop:
            self.exit(ExitReason.shutdown())

    def kill(self) -> None:
        self.exit(ExitReason.killed())


class Kids:
    """Start functions for FakeChild, and a journal of what happened to them."""

    def __init__(self) -> None:
        self.journal: list[tuple[Any, ...]] = []
        self.current: dict[str, FakeChild] = {}
        self.fail_next: dict[str, int] = {}
        self.ignore_stop: set[str] = set()

    def start_fn(self, child_id: str) -> Callable[[], Awaitable[Child]]:
        async def start() -> Child:
            if self.fail_next.get(child_id, 0) > 0:
                self.fail_next[child_id] -= 1
                self.journal.append(("start_failed", child_id, anyio.current_time()))
                raise OSError(f"cannot start {child_id}")
            child = FakeChild(child_id, self.journal, ignore_stop=child_id in self.ignore_stop)
            self.current[child_id] = child
            self.journal.append(("start", child_id, anyio.current_time()))
            return child

        return start

    def spec(self, child_id: str, **kwargs: Any) -> ChildSpec:
        return ChildSpec(child_id, self.start_fn(child_id), **kwargs)

    def starts(self) -> list[str]:
        return [e[1] for e in self.journal if e[0] == "start"]

    def stops(self) -> list[str]:
        return [e[1] for e in self.journal if e[0] == "stop"]

    def clear(self) -> None:
        self.journal.clear()


async def settle() -> None:
    """Let the supervisor handle what is already queued (no virtual time passes)."""
    await anyio.wait_all_tasks_blocked()


async def start_sup(
    tg: anyio.abc.TaskGroup,
    kids: Kids,
    ids: list[str],
    strategy: RestartStrategy = RestartStrategy.ONE_FOR_ONE,
    intensity: RestartIntensity | None = None,
    reports: list[Report] | None = None,
    name: str = "sup",
    **child_kwargs: Any,
) -> Supervisor:
    spec = SupervisorSpec(
        strategy=strategy,
        intensity=intensity or RestartIntensity(max_restarts=10, period=5.0),
        children=[kids.spec(i, **child_kwargs) for i in ids],
        name=name,
    )
    return await Supervisor.start(
        tg, spec, on_report=reports.append if reports is not None else None
    )


# -- strategies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "stopped", "restarted"),
    [
        (RestartStrategy.ONE_FOR_ONE, [], ["b"]),
        (RestartStrategy.ONE_FOR_ALL, ["d", "c", "a"], ["a", "b", "c", "d"]),
        (RestartStrategy.REST_FOR_ONE, ["d", "c"], ["b", "c", "d"]),
    ],
)
async def test_strategy_restarts_the_right_children_in_order(
    strategy: RestartStrategy, stopped: list[str], restarted: list[str]
) -> None:
    kids = Kids()
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, ["a", "b", "c", "d"], strategy)
        assert kids.starts() == ["a", "b", "c", "d"]
        before = dict(kids.current)
        kids.clear()
        before["b"].exit(ERROR)
        await settle()
        assert kids.stops() == stopped  # siblings stopped in reverse start order
        assert kids.starts() == restarted  # then started in start order
        for child_id in "abcd":
            same = kids.current[child_id] is before[child_id]
            assert same == (child_id not in restarted), child_id
        infos = {i.id: i for i in sup.which_children()}
        assert [i.id for i in sup.which_children()] == ["a", "b", "c", "d"]
        for child_id in "abcd":
            assert infos[child_id].child is kids.current[child_id]
            assert infos[child_id].restarts == (1 if child_id in restarted else 0)
        assert infos["b"].last_exit == ERROR
        sup.stop()
        assert await sup.wait_exit() == ExitReason.shutdown()


async def test_simple_one_for_one_dynamic_children() -> None:
    kids = Kids()
    reports: list[Report] = []
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, [], RestartStrategy.SIMPLE_ONE_FOR_ONE, reports=reports)
        assert sup.which_children() == ()
        children = [await sup.start_child(kids.spec(f"w{n}")) for n in range(3)]
        assert children == [kids.current[f"w{n}"] for n in range(3)]
        with pytest.raises(InvalidChildSpec) as info:
            await sup.start_child(kids.spec("w1"))
        assert (info.value.field, info.value.value) == ("id", "w1")
        kids.fail_next["bad"] = 1
        with pytest.raises(ChildStartError) as failed:
            await sup.start_child(kids.spec("bad"))
        assert failed.value.child_id == "bad" and isinstance(failed.value.__cause__, OSError)
        assert [i.id for i in sup.which_children()] == ["w0", "w1", "w2"]

        kids.clear()
        kids.current["w1"].exit(ERROR)
        await settle()
        assert kids.starts() == ["w1"] and kids.current["w1"] is not children[1]
        assert kids.current["w0"] is children[0] and kids.current["w2"] is children[2]

        assert await sup.terminate_child("w0") == ExitReason.shutdown()
        assert [i.id for i in sup.which_children()] == ["w1", "w2"]  # dynamic: removed
        with pytest.raises(ChildNotFound):
            await sup.terminate_child("w0")
        # a temporary dynamic child that ends is forgotten
        temp = await sup.start_child(kids.spec("t", restart=Restart.TEMPORARY))
        assert isinstance(temp, FakeChild)
        temp.exit(ERROR)
        await settle()
        assert [i.id for i in sup.which_children()] == ["w1", "w2"]
        kids.clear()
        sup.stop()
        await sup.wait_exit()
        assert kids.stops() == ["w2", "w1"]
    kinds = [r.kind for r in reports]
    assert kinds.count("start_error") == 1 and kinds.count("child_terminated") == 2


# -- restart types x exit reasons ------------------------------------------------------

REASONS = {
    "normal": ExitReason.normal(),
    "shutdown": ExitReason.shutdown(),
    "error": ExitReason.error("x"),
    "killed": ExitReason.killed(),
}


@pytest.mark.parametrize("reason", list(REASONS))
@pytest.mark.parametrize("restart", list(Restart))
async def test_restart_type_and_exit_reason(restart: Restart, reason: str) -> None:
    expected = restart is Restart.PERMANENT or (
        restart is Restart.TRANSIENT and reason in ("error", "killed")
    )
    kids = Kids()
    reports: list[Report] = []
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, ["a", "b"], reports=reports, restart=restart)
        first = kids.current["a"]
        kids.clear()
        first.exit(REASONS[reason])
        await settle()
        assert (kids.starts() == ["a"]) is expected
        ids = [i.id for i in sup.which_children()]
        if restart is Restart.TEMPORARY:
            assert ids == ["b"]  # a temporary child is forgotten
        else:
            assert ids == ["a", "b"]
            info = sup.which_children()[0]
            assert (info.child is not None) is expected and info.last_exit == REASONS[reason]
        terminated = [r for r in reports if r.kind == "child_terminated"]
        # OTP reports a restarted child, and any abnormal exit.
        assert bool(terminated) == (expected or REASONS[reason].abnormal)
        sup.stop()
        await sup.wait_exit()


# -- intensity -------------------------------------------------------------------------


async def crash_at(kids: Kids, child_id: str, times: list[float]) -> None:
    for t in times:
        await anyio.sleep_until(t)
        kids.current[child_id].exit(ERROR)
        await settle()


async def test_too_many_restarts_within_the_period_stop_the_supervisor() -> None:
    kids = Kids()
    reports: list[Report] = []
    async with anyio.create_task_group() as tg:
        sup = await start_sup(
            tg, kids, ["a", "b", "c"], intensity=RestartIntensity(2, 5.0), reports=reports
        )
        kids.clear()
        await crash_at(kids, "b", [1.0, 2.0, 6.0])  # three restarts within 5 s: 1, 2, 6
        reason = await sup.wait_exit()
        assert reason == ExitReason.error("reached_max_restart_intensity")
        assert anyio.current_time() == 6.0
        assert kids.starts() == ["b", "b"]  # the third crash is not restarted
        assert kids.stops() == ["c", "a"]  # the others, in reverse start order
        giving_up = [r for r in reports if r.kind == "reached_max_restart_intensity"]
        assert giving_up == [Report("reached_max_restart_intensity", "sup", "b", ERROR, 6.0)]
        with pytest.raises(ActorDeadError):
            await sup.start_child(kids.spec("late"))


async def test_the_same_crashes_spread_over_longer_than_the_period_are_fine() -> None:
    kids = Kids()
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, ["a", "b", "c"], intensity=RestartIntensity(2, 5.0))
        kids.clear()
        await crash_at(kids, "b", [1.0, 2.0, 6.25, 7.5, 12.0, 13.0])
        assert not sup.ended
        assert kids.starts() == ["b"] * 6
        assert sup.which_children()[1].restarts == 6
        sup.stop()
        await sup.wait_exit()


async def test_default_intensity_is_one_restart_in_five_seconds_inclusive() -> None:
    for second_crash, gives_up in ((5.0, True), (5.25, False)):
        kids = Kids()
        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            sup = await Supervisor.start(tg, SupervisorSpec(children=[kids.spec("a")]))
            await crash_at(kids, "a", [start + 1, start + 1 + second_crash])
            assert sup.ended is gives_up
            sup.stop()
            await sup.wait_exit()


async def test_a_child_that_cannot_restart_exhausts_the_intensity() -> None:
    kids = Kids()
    reports: list[Report] = []
    async with anyio.create_task_group() as tg:
        sup = await start_sup(
            tg, kids, ["a", "b"], intensity=RestartIntensity(3, 5.0), reports=reports
        )
        kids.fail_next["a"] = 100
        kids.current["a"].exit(ERROR)
        assert (await sup.wait_exit()).detail == "reached_max_restart_intensity"
    kinds = [r.kind for r in reports if r.child_id == "a"]
    # each failed start counts as a restart, as OTP's try_again_restart
    assert kinds == ["child_started", "child_terminated"] + ["start_error"] * 3 + [
        "reached_max_restart_intensity"
    ]


async def test_start_backoff_with_jitter_spaces_the_attempts_exactly() -> None:
    kids = Kids()
    backoff = Backoff(initial=1.0, multiplier=2.0, max=5.0, jitter=0.5)
    reports: list[Report] = []
    restarted = anyio.Event()

    def on_report(report: Report) -> None:
        reports.append(report)
        if report.kind == "child_started" and len(reports) > 1:
            restarted.set()

    async with anyio.create_task_group() as tg:
        spec = SupervisorSpec(
            intensity=RestartIntensity(10, 60.0),
            children=[kids.spec("a", start_backoff=backoff)],
        )
        sup = await Supervisor.start(tg, spec, rng=random.Random(42), on_report=on_report)
        kids.fail_next["a"] = 4
        kids.clear()
        kids.current["a"].exit(ERROR)
        with anyio.fail_after(60):
            await restarted.wait()
        attempts = [e[2] for e in kids.journal if e[0] in ("start_failed", "start")]
        rng = random.Random(42)
        expected = [0.0]
        for n in range(1, 5):
            expected.append(expected[-1] + backoff_delay(backoff, n, rng))
        assert attempts == pytest.approx(expected, abs=1e-9)
        assert expected[1:] != [1.0, 3.0, 7.0, 12.0]  # the jitter did something
        assert [r.kind for r in reports].count("start_error") == 4
        # a stop during a backoff wait cancels the retry
        kids.fail_next["a"] = 1
        kids.current["a"].exit(ERROR)
        await settle()
        sup.stop()
        assert await sup.wait_exit() == ExitReason.shutdown()


# -- trees -----------------------------------------------------------------------------


async def test_inner_supervisor_giving_up_is_restarted_by_the_outer_one() -> None:
    kids = Kids()
    outer_reports: list[Report] = []
    inner_sups: list[Supervisor] = []
    async with anyio.create_task_group() as tg:
        inner_spec = SupervisorSpec(
            strategy=RestartStrategy.ONE_FOR_ONE,
            intensity=RestartIntensity(1, 5.0),
            children=[kids.spec("x"), kids.spec("y")],
            name="inner",
        )

        async def start_inner() -> Child:
            sup = await Supervisor.start(tg, inner_spec)
            inner_sups.append(sup)
            return sup

        outer = await Supervisor.start(
            tg,
            SupervisorSpec(
                strategy=RestartStrategy.REST_FOR_ONE,
                intensity=RestartIntensity(3, 30.0),
                children=[
                    kids.spec("before"),
                    ChildSpec("inner", start_inner, shutdown=INFINITY),
                    kids.spec("after"),
                ],
                name="outer",
            ),
            on_report=outer_reports.append,
        )
        before, after = kids.current["before"], kids.current["after"]
        kids.clear()
        await crash_at(kids, "x", [1.0, 2.0])  # the second crash exceeds 1 in 5 s
        assert await inner_sups[0].wait_exit() == ExitReason.error("reached_max_restart_intensity")
        await settle()
        assert len(inner_sups) == 2 and not inner_sups[1].ended
        # inner: x restarted once, then gave up (y stopped); outer: rest_for_one from inner
        assert kids.stops() == ["y", "after"]
        assert kids.starts() == ["x", "x", "y", "after"]
        assert kids.current["before"] is before and kids.current["after"] is not after
        assert [(r.kind, r.child_id) for r in outer_reports if r.kind != "child_started"] == [
            ("child_terminated", "inner")
        ]
        kids.clear()
        outer.stop()
        assert await outer.wait_exit() == ExitReason.shutdown()
        assert kids.stops() == ["after", "y", "x", "before"]


async def test_outer_gives_up_when_the_inner_keeps_giving_up() -> None:
    kids = Kids()

    async with anyio.create_task_group() as tg:
        inner_spec = SupervisorSpec(
            intensity=RestartIntensity(0, 5.0), children=[kids.spec("x")], name="inner"
        )

        async def start_inner() -> Child:
            return await Supervisor.start(tg, inner_spec)

        outer = await Supervisor.start(
            tg,
            SupervisorSpec(
                intensity=RestartIntensity(1, 5.0),
                children=[ChildSpec("inner", start_inner, shutdown=INFINITY)],
                name="outer",
            ),
        )
        await crash_at(kids, "x", [1.0, 2.0])
        assert (await outer.wait_exit()).detail == "reached_max_restart_intensity"
        assert anyio.current_time() == 2.0


# -- shutdown --------------------------------------------------------------------------


class Slow(Actor):
    """Takes `stop_takes` seconds to stop."""

    def __init__(self, stop_takes: float, journal: list[Any]) -> None:
        self.stop_takes = stop_takes
        self.journal = journal

    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        return message

    async def on_stop(self, reason: ExitReason) -> None:
        self.journal.append(("stopping", self.ref.name, anyio.current_time()))
        await anyio.sleep(self.stop_takes)
        self.journal.append(("stopped", self.ref.name, anyio.current_time()))


async def test_graceful_shutdown_honours_the_timeout_then_kills() -> None:
    journal: list[Any] = []
    async with Runtime() as rt:

        def actor_spec(name: str, stop_takes: float, shutdown: Any) -> ChildSpec:
            async def start() -> Child:
                return await rt.spawn(Slow(stop_takes, journal), name=name)

            return ChildSpec(name, start, shutdown=shutdown)

        sup = await Supervisor.start(
            rt,
            SupervisorSpec(
                children=[
                    actor_spec("quick", 1.0, 2.0),  # stops within its 2 s
                    actor_spec("stuck", 100.0, 3.0),  # killed after 3 s
                    actor_spec("brutal", 100.0, BRUTAL_KILL),  # killed at once
                ]
            ),
        )
        refs = {i.id: i.child for i in sup.which_children()}
        start = anyio.current_time()
        sup.stop()
        assert await sup.wait_exit() == ExitReason.shutdown()
        assert anyio.current_time() - start == 4.0  # 0 + 3 + 1
        assert [(e[0], e[1], e[2] - start) for e in journal] == [
            ("stopping", "stuck", 0.0),  # reverse order; brutal got no stop at all
            ("stopping", "quick", 3.0),
            ("stopped", "quick", 4.0),
        ]
        assert await refs["brutal"].wait_exit() == ExitReason.killed()  # type: ignore[union-attr]
        assert await refs["stuck"].wait_exit() == ExitReason.killed()  # type: ignore[union-attr]
        assert await refs["quick"].wait_exit() == ExitReason.shutdown()  # type: ignore[union-attr]


async def test_terminate_child_of_a_static_child_keeps_its_spec() -> None:
    kids = Kids()
    kids.ignore_stop.add("b")
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, ["a", "b"], shutdown=2.5)
        start = anyio.current_time()
        assert await sup.terminate_child("b") == ExitReason.killed()
        assert anyio.current_time() - start == 2.5
        assert [(i.id, i.child) for i in sup.which_children()] == [
            ("a", kids.current["a"]),
            ("b", None),
        ]
        with pytest.raises(ChildRunning):
            await sup.delete_child("a")
        await sup.delete_child("b")
        with pytest.raises(ChildNotFound):
            await sup.delete_child("b")
        # start_child on a static supervisor appends a child
        await sup.start_child(kids.spec("c"))
        assert [i.id for i in sup.which_children()] == ["a", "c"]
        sup.stop()
        await sup.wait_exit()


async def test_initial_start_failure_stops_the_started_children() -> None:
    kids = Kids()
    kids.fail_next["c"] = 1
    reports: list[Report] = []
    async with anyio.create_task_group() as tg:
        with pytest.raises(ChildStartError) as info:
            await start_sup(tg, kids, ["a", "b", "c", "d"], reports=reports)
        assert info.value.child_id == "c"
        assert kids.starts() == ["a", "b"] and kids.stops() == ["b", "a"]
        assert [r.kind for r in reports if r.kind != "child_started"] == ["start_error"]


async def test_kill_kills_every_child() -> None:
    kids = Kids()
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, ["a", "b"])
        sup.kill()
        assert await sup.wait_exit() == ExitReason.killed()
        assert all(c.reason == ExitReason.killed() for c in kids.current.values())
        with pytest.raises(ActorDeadError):
            await sup.terminate_child("a")


async def test_runtime_closing_stops_its_supervisors_first() -> None:
    journal: list[Any] = []
    async with Runtime() as rt:

        async def start() -> Child:
            return await rt.spawn(Slow(0.5, journal), name="w")

        sup = await Supervisor.start(rt, SupervisorSpec(children=[ChildSpec("w", start)]))
    assert sup.exit_reason == ExitReason.shutdown()
    assert [e[0] for e in journal] == ["stopping", "stopped"]


async def test_reports_are_structured_log_records(caplog: pytest.LogCaptureFixture) -> None:
    kids = Kids()
    caplog.set_level(logging.INFO, logger="stoic.supervisor")

    def broken_callback(report: Report) -> None:
        raise RuntimeError("callback bug")  # must not break the supervisor

    async with anyio.create_task_group() as tg:
        sup = await Supervisor.start(
            tg, SupervisorSpec(children=[kids.spec("a")], name="logged"), on_report=broken_callback
        )
        await crash_at(kids, "a", [3.0])
        assert not sup.ended
        sup.stop()
        await sup.wait_exit()
    records = [r for r in caplog.records if hasattr(r, "event")]
    assert [(r.event, r.supervisor, r.child_id) for r in records] == [  # type: ignore[attr-defined]
        ("child_started", "logged", "a"),
        ("child_terminated", "logged", "a"),
        ("child_started", "logged", "a"),
    ]
    terminated = records[1]
    assert terminated.levelno == logging.ERROR and terminated.reason == "error: boom"  # type: ignore[attr-defined]
    assert terminated.at == 3.0  # type: ignore[attr-defined]


# -- actors as children, on both backends ----------------------------------------------

BOTH = pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {}), ("trio", {"clock": MockClock(autojump_threshold=0)})]
)


@BOTH
async def test_supervised_actors_are_restarted_after_a_crash() -> None:
    journal: list[Any] = []
    reports: list[Report] = []
    all_restarted = anyio.Event()

    def on_report(report: Report) -> None:
        reports.append(report)
        if sum(r.kind == "child_started" for r in reports) == 4:
            all_restarted.set()

    async with Runtime() as rt:

        def spec(name: str) -> ChildSpec:
            async def start() -> Child:
                return await rt.spawn(Slow(0.0, journal), name=name)

            return ChildSpec(name, start, shutdown=1.0)

        sup = await Supervisor.start(
            rt,
            SupervisorSpec(strategy=RestartStrategy.ONE_FOR_ALL, children=[spec("a"), spec("b")]),
            on_report=on_report,
        )
        a1 = rt.whereis("a")
        assert a1 is not None
        assert await a1.ask("hi") == "hi"
        with pytest.raises(ActorDeadError):
            await a1.ask("crash")
        with anyio.fail_after(5):
            await all_restarted.wait()
        a2 = rt.whereis("a")
        assert a2 is not None and a2 != a1 and await a2.ask("again") == "again"
        assert [i.restarts for i in sup.which_children()] == [1, 1]


@BOTH
async def test_intensity_in_real_time_on_both_backends() -> None:
    kids = Kids()
    async with anyio.create_task_group() as tg:
        sup = await start_sup(tg, kids, ["a"], intensity=RestartIntensity(2, 60.0))
        with anyio.fail_after(5):
            for _ in range(3):
                kids.current["a"].exit(ERROR)
                await settle()
            assert await sup.wait_exit() == ExitReason.error("reached_max_restart_intensity")
        assert kids.starts() == ["a", "a", "a"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_stray_cancelled_error_from_a_start_is_a_start_error() -> None:
    """A CancelledError that no cancel scope asked for (grpc.aio raises its own for a call
    it cancelled) out of a child's start is that start's failure, retried as any other:
    escaping, it would have silently cancelled the task group the supervisor runs in."""
    kids = Kids()
    reports: list[Report] = []
    stray = [True]

    async def start() -> Any:
        if stray:
            stray.pop()
            raise asyncio.CancelledError()
        return await kids.spec("a").start()

    async with anyio.create_task_group() as tg:
        sup = await Supervisor.start(tg, SupervisorSpec(
            strategy=RestartStrategy.SIMPLE_ONE_FOR_ONE, name="pool"),
            on_report=reports.append)
        with pytest.raises(ChildStartError, match="stray CancelledError"):
            await sup.start_child(ChildSpec("a", start))
        assert not sup.ended  # still serving
        child = await sup.start_child(ChildSpec("a", start))
        assert child is kids.current["a"]
        sup.stop()
        await sup.wait_exit()
    assert [r.kind for r in reports] == ["start_error", "child_started"]
