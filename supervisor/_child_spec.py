"""Child specifications, in OTP's terms, validated before anything starts.

A `ChildSpec` says how to start a child (`start`: an async callable returning a ready
`runtime.Child`; raising means the start failed), when to restart it (`Restart`), how to
stop it (`shutdown`: seconds of grace before a kill, `BRUTAL_KILL`, or `INFINITY`), and an
optional `Backoff` between attempts when it keeps failing at start. Constructing an invalid
spec raises `InvalidChildSpec` naming the field and the value, like OTP's `check_childspec`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime import Child


class Restart(enum.Enum):
    """When a child that ended is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit (error, killed)
    TEMPORARY = "temporary"  # never


class Shutdown(enum.Enum):
    """Shutdowns that are not a number of seconds of grace."""

    BRUTAL_KILL = "brutal_kill"  # kill at once, no stop request
    INFINITY = "infinity"  # stop, and wait as long as it takes (for supervisor children)


BRUTAL_KILL = Shutdown.BRUTAL_KILL
INFINITY = Shutdown.INFINITY


class InvalidChildSpec(ValueError):
    """A child or supervisor specification is invalid (your configuration).

    `field` names the offending field, `value` is what it was given."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"invalid {field}={value!r}: {problem}")


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True)
class Backoff:
    """Delay before the next start attempt of a child that failed at start.

    Attempt n (1 for the first retry) waits `min(max, initial * multiplier**(n-1))`,
    scaled by a random factor in `[1 - jitter, 1 + jitter]`. Seconds."""

    initial: float = 0.1
    multiplier: float = 2.0
    max: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not _positive_number(self.initial):
            raise InvalidChildSpec("start_backoff.initial", self.initial, "must be a number > 0")
        if not (_positive_number(self.multiplier) and self.multiplier >= 1):
            raise InvalidChildSpec(
                "start_backoff.multiplier", self.multiplier, "must be a number >= 1"
            )
        if not (_positive_number(self.max) and self.max >= self.initial):
            raise InvalidChildSpec("start_backoff.max", self.max, "must be a number >= initial")
        if (
            not isinstance(self.jitter, int | float)
            or isinstance(self.jitter, bool)
            or not 0 <= self.jitter < 1
        ):
            raise InvalidChildSpec("start_backoff.jitter", self.jitter, "must be in [0, 1)")


StartFn = Callable[[], Awaitable[Child]]


@dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    `id`: unique among a supervisor's children. `start`: async callable returning a ready
    `Child`; raising means `start_error`. `shutdown`: seconds a stopped child gets before it
    is killed (default 5 s, OTP's), `BRUTAL_KILL` or `INFINITY`. `start_backoff`: if set,
    a failed restart is retried after a backoff delay instead of at once.

    Raises `InvalidChildSpec(field, value)` when constructed with an invalid field."""

    id: str
    start: StartFn
    restart: Restart = Restart.PERMANENT
    shutdown: float | Shutdown = 5.0
    start_backoff: Backoff | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidChildSpec("id", self.id, "must be a non-empty string")
        if not callable(self.start):
            raise InvalidChildSpec(
                "start", self.start, "must be an async callable returning a Child"
            )
        if not isinstance(self.restart, Restart):
            raise InvalidChildSpec("restart", self.restart, "must be a Restart")
        if not (isinstance(self.shutdown, Shutdown) or _positive_number(self.shutdown)):
            raise InvalidChildSpec(
                "shutdown", self.shutdown, "must be seconds > 0, BRUTAL_KILL or INFINITY"
            )
        if self.start_backoff is not None and not isinstance(self.start_backoff, Backoff):
            raise InvalidChildSpec("start_backoff", self.start_backoff, "must be a Backoff or None")
