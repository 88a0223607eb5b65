"""A watchdog for a node's event loop: names the code that keeps the loop from running.

Everything a node does (invocations, restarts, health pings, leases) runs on one event
loop, so one blocking call stalls all of it, and a caller then sees a timeout with no
trace of why. `LoopWatch.run` ticks on the loop; a thread checks the ticks and, when the
loop has not ticked for `threshold` seconds, logs a warning with the loop thread's stack
at that moment (once per stall), then how long the stall lasted when the loop resumes.

    async with anyio.create_task_group() as tg:
        await tg.start(LoopWatch(threshold=1.0).run)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback

import anyio
import anyio.abc

__all__ = ["LoopWatch"]

log = logging.getLogger("stoic.node")


class LoopWatch:
    """Warns (logger `stoic.node`) when the event loop stalls longer than `threshold`
    seconds. `stalls` counts the stalls seen. Costs the loop `1 / tick` wake-ups a second
    and one thread that wakes as often."""

    def __init__(self, threshold: float = 1.0, tick: float = 0.1) -> None:
        if threshold <= tick:
            raise ValueError(f"threshold ({threshold}) must be longer than tick ({tick})")
        self.threshold = threshold
        self.tick = tick
        self.stalls = 0
        self._beat = time.monotonic()
        self._loop_thread = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled (the watching thread ends with it)."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        stop = threading.Event()
        thread = threading.Thread(target=self._watch, args=(stop,), name="stoic-loop-watch",
                                  daemon=True)
        thread.start()
        task_status.started()
        try:
            while True:
                self._beat = time.monotonic()
                await anyio.sleep(self.tick)
        finally:
            stop.set()

    def _watch(self, stop: threading.Event) -> None:
        stalled_since: float | None = None
        while not stop.wait(self.tick):
            beat = self._beat
            lag = time.monotonic() - beat
            if lag >= self.threshold and stalled_since != beat:
                stalled_since = beat
                self.stalls += 1
                frame = sys._current_frames().get(self._loop_thread)
                where = "".join(traceback.format_stack(frame)) if frame is not None else "?"
                log.warning("event loop stalled for %.1fs so far; it is running:\n%s",
                            lag, where.rstrip())
            elif stalled_since is not None and beat != stalled_since:
                log.warning("event loop ran again after a stall of %.1fs",
                            beat - stalled_since)
                stalled_since = None
