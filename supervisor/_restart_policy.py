"""The supervisor's decisions, as pure functions of their inputs (the current time included).

The async `Supervisor` only applies them; these need no event loop to test. They follow
OTP's `supervisor.erl`: `should_restart` is its restart-type check, `record_restart` its
`add_restart/3`, `affected_children` the set each strategy restarts.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from runtime import ExitReason
from supervisor._child_spec import Backoff, InvalidChildSpec, Restart


class RestartStrategy(enum.Enum):
    """Which children are restarted when one of them must be (OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"  # the failed child only
    ONE_FOR_ALL = "one_for_all"  # all children
    REST_FOR_ONE = "rest_for_one"  # the failed child and those started after it
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"  # dynamic children, each on its own


@dataclass(frozen=True)
class RestartIntensity:
    """More than `max_restarts` restarts within `period` seconds makes the supervisor give
    up. OTP's default: 1 restart in 5 seconds. `max_restarts=0` gives up at the first."""

    max_restarts: int = 1
    period: float = 5.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_restarts, int)
            or isinstance(self.max_restarts, bool)
            or self.max_restarts < 0
        ):
            raise InvalidChildSpec(
                "intensity.max_restarts", self.max_restarts, "must be an integer >= 0"
            )
        if (
            not isinstance(self.period, int | float)
            or isinstance(self.period, bool)
            or not math.isfinite(self.period)
            or self.period <= 0
        ):
            raise InvalidChildSpec("intensity.period", self.period, "must be seconds > 0")


@dataclass(frozen=True)
class RestartCheck:
    """What `record_restart` decided: the new history (restart times, newest first, only
    those still inside the period) and whether the intensity is exceeded."""

    history: tuple[float, ...]
    exceeded: bool


def should_restart(restart: Restart, reason: ExitReason) -> bool:
    """Whether a child of this restart type that ended with `reason` is restarted:
    permanent always, transient only after an abnormal exit (`error`, `killed`),
    temporary never."""
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return reason.abnormal
    return False


def record_restart(
    history: Sequence[float], now: float, intensity: RestartIntensity
) -> RestartCheck:
    """Add a restart at `now` to `history` (restart times, newest first).

    Restarts at time t are kept while `now - t <= period` (inclusive, as OTP's
    `add_restart/3`); the intensity is exceeded when more than `max_restarts` remain."""
    threshold = now - intensity.period
    kept: list[float] = [now]
    for t in history:
        if t < threshold:
            break
        kept.append(t)
    return RestartCheck(tuple(kept), len(kept) > intensity.max_restarts)


def affected_children(
    strategy: RestartStrategy, children: Sequence[str], failed: str
) -> tuple[str, ...]:
    """The ids restarted when `failed` must be restarted, in start order.

    `children` are all the supervisor's child ids in start order. one_for_one and
    simple_one_for_one: only `failed`; one_for_all: all; rest_for_one: `failed` and those
    after it. Raises ValueError if `failed` is not among `children`."""
    if failed not in children:
        raise ValueError(f"{failed!r} is not one of the children {list(children)!r}")
    if strategy is RestartStrategy.ONE_FOR_ALL:
        return tuple(children)
    if strategy is RestartStrategy.REST_FOR_ONE:
        index = list(children).index(failed)
        return tuple(children[index:])
    return (failed,)


def backoff_delay(backoff: Backoff, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before start attempt `attempt` (1 = the first retry) of a child that
    failed at start: `min(max, initial * multiplier**(attempt-1))` times a factor drawn
    from `rng` in `[1 - jitter, 1 + jitter]`."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    try:
        grown = backoff.initial * float(backoff.multiplier) ** (attempt - 1)
    except OverflowError:
        grown = math.inf
    base = min(backoff.max, grown)
    if backoff.jitter == 0:
        return base
    return base * (1 + backoff.jitter * (2 * rng.random() - 1))
