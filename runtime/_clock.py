"""Where time comes from, so that tests can run on a virtual clock.

The default `LoopClock` reads the event loop's clock (`anyio.current_time`), which is what
cancel scopes (`move_on_after`, `fail_after`) use too. Tests get virtual time by running on
trio with `trio.testing.MockClock` rather than by replacing the clock object; a custom
`Clock` must agree with the event loop's clock, or timeouts and timestamps will disagree.
"""

from __future__ import annotations

from typing import Protocol

import anyio


class Clock(Protocol):
    """Monotonic time in seconds, and sleeping until a point of it."""

    def now(self) -> float:
        """The current monotonic time, in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now() >= deadline`. Cancellable."""
        ...


class LoopClock:
    """The event loop's clock (anyio.current_time / anyio.sleep_until)."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def __repr__(self) -> str:
        return "LoopClock()"
