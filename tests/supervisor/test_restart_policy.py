"""The supervisor's pure decisions, tested without an event loop."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import Child, ExitReason
from supervisor import (
    BRUTAL_KILL,
    INFINITY,
    Backoff,
    ChildSpec,
    InvalidChildSpec,
    Restart,
    RestartIntensity,
    RestartStrategy,
    SupervisorSpec,
    affected_children,
    backoff_delay,
    record_restart,
    should_restart,
)

REASONS = {
    "normal": ExitReason.normal(),
    "shutdown": ExitReason.shutdown(),
    "error": ExitReason.error("boom"),
    "killed": ExitReason.killed(),
}

EXPECTED_RESTART = {
    (Restart.PERMANENT, "normal"): True,
    (Restart.PERMANENT, "shutdown"): True,
    (Restart.PERMANENT, "error"): True,
    (Restart.PERMANENT, "killed"): True,
    (Restart.TRANSIENT, "normal"): False,
    (Restart.TRANSIENT, "shutdown"): False,
    (Restart.TRANSIENT, "error"): True,
    (Restart.TRANSIENT, "killed"): True,
    (Restart.TEMPORARY, "normal"): False,
    (Restart.TEMPORARY, "shutdown"): False,
    (Restart.TEMPORARY, "error"): False,
    (Restart.TEMPORARY, "killed"): False,
}


@pytest.mark.parametrize(("restart", "reason"), sorted(EXPECTED_RESTART, key=str))
def test_should_restart(restart: Restart, reason: str) -> None:
    assert should_restart(restart, REASONS[reason]) is EXPECTED_RESTART[(restart, reason)]


def test_record_restart_default_intensity_allows_one_in_five_seconds() -> None:
    intensity = RestartIntensity()
    first = record_restart((), 10.0, intensity)
    assert first == record_restart((), 10.0, RestartIntensity(1, 5.0))
    assert first.history == (10.0,) and not first.exceeded
    assert record_restart(first.history, 15.0, intensity).exceeded  # inclusive, as OTP
    later = record_restart(first.history, 15.25, intensity)
    assert later.history == (15.25,) and not later.exceeded


def test_record_restart_drops_old_entries_and_counts_the_rest() -> None:
    intensity = RestartIntensity(max_restarts=3, period=10.0)
    history: tuple[float, ...] = ()
    for now in (0.0, 4.0, 8.0):
        check = record_restart(history, now, intensity)
        assert not check.exceeded
        history = check.history
    assert history == (8.0, 4.0, 0.0)
    check = record_restart(history, 10.0, intensity)
    assert check.exceeded and check.history == (10.0, 8.0, 4.0, 0.0)
    check = record_restart(history, 10.5, intensity)
    assert not check.exceeded and check.history == (10.5, 8.0, 4.0)


def test_zero_max_restarts_gives_up_at_once() -> None:
    assert record_restart((), 0.0, RestartIntensity(max_restarts=0, period=1.0)).exceeded


@given(
    gaps=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    max_restarts=st.integers(min_value=0, max_value=5),
    period_quarters=st.integers(min_value=1, max_value=40),
)
def test_record_restart_matches_a_sliding_window(
    gaps: list[int], max_restarts: int, period_quarters: int
) -> None:
    intensity = RestartIntensity(max_restarts, period_quarters / 4)
    times: list[float] = []
    history: tuple[float, ...] = ()
    now = 0.0
    for gap in gaps:
        now += gap / 4
        times.append(now)
        check = record_restart(history, now, intensity)
        window = [t for t in times if now - t <= intensity.period]
        assert check.exceeded == (len(window) > max_restarts)
        assert sorted(check.history) == window
        history = check.history


CHILDREN = ("a", "b", "c", "d")


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        (RestartStrategy.ONE_FOR_ONE, "b", ("b",)),
        (RestartStrategy.SIMPLE_ONE_FOR_ONE, "c", ("c",)),
        (RestartStrategy.ONE_FOR_ALL, "b", CHILDREN),
        (RestartStrategy.ONE_FOR_ALL, "d", CHILDREN),
        (RestartStrategy.REST_FOR_ONE, "b", ("b", "c", "d")),
        (RestartStrategy.REST_FOR_ONE, "a", CHILDREN),
        (RestartStrategy.REST_FOR_ONE, "d", ("d",)),
    ],
)
def test_affected_children(
    strategy: RestartStrategy, failed: str, expected: tuple[str, ...]
) -> None:
    assert affected_children(strategy, CHILDREN, failed) == expected


def test_affected_children_rejects_an_unknown_child() -> None:
    with pytest.raises(ValueError, match="'z'"):
        affected_children(RestartStrategy.ONE_FOR_ONE, CHILDREN, "z")


def test_backoff_grows_caps_and_jitters_within_bounds() -> None:
    no_jitter = Backoff(initial=0.5, multiplier=2.0, max=3.0, jitter=0.0)
    rng = random.Random(7)
    assert [backoff_delay(no_jitter, n, rng) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(no_jitter, 10_000, rng) == 3.0  # no overflow
    jittered = Backoff(initial=1.0, multiplier=2.0, max=8.0, jitter=0.25)
    for attempt in range(1, 6):
        base = min(8.0, 2.0 ** (attempt - 1))
        delay = backoff_delay(jittered, attempt, rng)
        assert base * 0.75 <= delay <= base * 1.25
    # the same seed gives the same delays
    a = [backoff_delay(jittered, 2, random.Random(3)) for _ in range(3)]
    assert a == [backoff_delay(jittered, 2, random.Random(3)) for _ in range(3)]
    with pytest.raises(ValueError):
        backoff_delay(jittered, 0, rng)


async def _start() -> Child:  # pragma: no cover - never started here
    raise NotImplementedError


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"id": ""}, "id", ""),
        ({"id": 3}, "id", 3),
        ({"start": "not callable"}, "start", "not callable"),
        ({"restart": "permanent"}, "restart", "permanent"),
        ({"shutdown": 0}, "shutdown", 0),
        ({"shutdown": -1.0}, "shutdown", -1.0),
        ({"shutdown": float("inf")}, "shutdown", float("inf")),
        ({"shutdown": True}, "shutdown", True),
        ({"start_backoff": 1.0}, "start_backoff", 1.0),
    ],
)
def test_invalid_child_spec_names_field_and_value(kwargs: dict, field: str, value: object) -> None:
    args: dict = {"id": "w", "start": _start, **kwargs}
    with pytest.raises(InvalidChildSpec) as info:
        ChildSpec(**args)
    assert info.value.field == field
    assert info.value.value == value or info.value.value is value
    assert field in str(info.value)


def test_valid_child_specs() -> None:
    for shutdown in (0.5, 5, BRUTAL_KILL, INFINITY):
        ChildSpec("w", _start, shutdown=shutdown)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": 0}, "start_backoff.initial"),
        ({"multiplier": 0.5}, "start_backoff.multiplier"),
        ({"initial": 2.0, "max": 1.0}, "start_backoff.max"),
        ({"jitter": 1.0}, "start_backoff.jitter"),
        ({"jitter": -0.1}, "start_backoff.jitter"),
    ],
)
def test_invalid_backoff(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidChildSpec) as info:
        Backoff(**kwargs)
    assert info.value.field == field


def test_invalid_intensity_and_supervisor_spec() -> None:
    with pytest.raises(InvalidChildSpec) as info:
        RestartIntensity(max_restarts=-1)
    assert info.value.field == "intensity.max_restarts"
    with pytest.raises(InvalidChildSpec) as info:
        RestartIntensity(period=0)
    assert info.value.field == "intensity.period"
    with pytest.raises(InvalidChildSpec) as info:
        SupervisorSpec(children=[ChildSpec("a", _start), ChildSpec("a", _start)])
    assert (info.value.field, info.value.value) == ("id", "a")
    with pytest.raises(InvalidChildSpec) as info:
        SupervisorSpec(RestartStrategy.SIMPLE_ONE_FOR_ONE, children=[ChildSpec("a", _start)])
    assert info.value.field == "children"
    with pytest.raises(InvalidChildSpec) as info:
        SupervisorSpec(strategy="one_for_one")  # type: ignore[arg-type]
    assert info.value.field == "strategy"
    with pytest.raises(InvalidChildSpec) as info:
        SupervisorSpec(name="")
    assert info.value.field == "name"
