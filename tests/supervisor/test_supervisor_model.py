"""Property test: the Supervisor against a small reference model of OTP's rules.

Hypothesis draws a strategy, children with restart types, an intensity, and a sequence of
child exits (which child, which reason, how long after the previous one). The model below
is written from OTP's documentation, independently of supervisor._restart_policy; the real
supervisor runs the same sequence on trio's virtual clock. Both must restart the same
children at the same times and give up at the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from runtime import ExitReason
from supervisor import Restart, RestartIntensity, RestartStrategy, Supervisor, SupervisorSpec
from tests.supervisor.test_supervisor import Kids

REASONS = {
    "normal": ExitReason.normal(),
    "shutdown": ExitReason.shutdown(),
    "error": ExitReason.error("crash"),
    "killed": ExitReason.killed(),
}


@dataclass
class ModelChild:
    id: str
    restart: Restart
    running: bool = True


@dataclass
class Model:
    strategy: RestartStrategy
    max_restarts: int
    period: float
    children: list[ModelChild]
    restarts: list[float] = field(default_factory=list)
    starts: list[tuple[float, str]] = field(default_factory=list)
    gave_up_at: float | None = None

    def target(self, index: int) -> ModelChild | None:
        if not self.children or self.gave_up_at is not None:
            return None
        child = self.children[index % len(self.children)]
        return child if child.running else None

    def exit(self, now: float, child: ModelChild, reason: str) -> None:
        abnormal = reason in ("error", "killed")
        child.running = False
        if child.restart is Restart.TEMPORARY or (
            child.restart is Restart.TRANSIENT and not abnormal
        ):
            if (
                child.restart is Restart.TEMPORARY
                or self.strategy is RestartStrategy.SIMPLE_ONE_FOR_ONE
            ):
                self.children.remove(child)
            return
        # More than max_restarts within period seconds (inclusive): give up.
        self.restarts = [t for t in self.restarts if now - t <= self.period] + [now]
        if len(self.restarts) > self.max_restarts:
            self.gave_up_at = now
            return
        position = self.children.index(child)
        if self.strategy is RestartStrategy.ONE_FOR_ALL:
            group = list(self.children)
        elif self.strategy is RestartStrategy.REST_FOR_ONE:
            group = self.children[position:]
        else:
            group = [child]
        for other in reversed(group):
            if other is not child and other.restart is Restart.TEMPORARY:
                self.children.remove(other)  # stopped, and never restarted
        for other in group:
            if other in self.children:
                other.running = True
                self.starts.append((now, other.id))


events_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=12),  # quarter seconds since the previous event
        st.integers(min_value=0, max_value=7),  # which child
        st.sampled_from(sorted(REASONS)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(list(RestartStrategy)),
    restarts=st.lists(st.sampled_from(list(Restart)), min_size=1, max_size=5),
    max_restarts=st.integers(min_value=0, max_value=4),
    period_quarters=st.integers(min_value=1, max_value=24),
    events=events_strategy,
)
def test_supervisor_matches_the_reference_model(
    strategy: RestartStrategy,
    restarts: list[Restart],
    max_restarts: int,
    period_quarters: int,
    events: list[tuple[int, int, str]],
) -> None:
    period = period_quarters / 4
    ids = [f"c{n}" for n in range(len(restarts))]
    model = Model(
        strategy,
        max_restarts,
        period,
        [ModelChild(i, r) for i, r in zip(ids, restarts, strict=True)],
    )
    kids = Kids()
    observed: dict[str, object] = {}

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            dynamic = strategy is RestartStrategy.SIMPLE_ONE_FOR_ONE
            specs = [kids.spec(i, restart=r) for i, r in zip(ids, restarts, strict=True)]
            sup = await Supervisor.start(
                tg,
                SupervisorSpec(
                    strategy=strategy,
                    intensity=RestartIntensity(max_restarts, period),
                    children=[] if dynamic else specs,
                ),
            )
            if dynamic:
                for spec in specs:
                    await sup.start_child(spec)
            kids.clear()
            now = 0.0
            for gap, index, reason in events:
                now += gap / 4
                target = model.target(index)
                if target is None:
                    continue
                await anyio.sleep_until(now)
                kids.current[target.id].exit(REASONS[reason])
                await anyio.wait_all_tasks_blocked()
                model.exit(now, target, reason)
                # the supervisor gave up exactly when the model did
                assert sup.ended == (model.gave_up_at is not None), (now, target.id, reason)
            observed["children"] = [(i.id, i.child is not None) for i in sup.which_children()]
            sup.stop()
            observed["reason"] = await sup.wait_exit()

    trio.run(scenario, clock=MockClock(autojump_threshold=0))

    real_starts = [(e[2], e[1]) for e in kids.journal if e[0] == "start"]
    assert real_starts == model.starts
    if model.gave_up_at is not None:
        assert observed["reason"] == ExitReason.error("reached_max_restart_intensity")
        children = observed["children"]
        assert isinstance(children, list) and not any(running for _, running in children)
    else:
        assert observed["reason"] == ExitReason.shutdown()
        assert observed["children"] == [(c.id, c.running) for c in model.children]
