"""The node's event-loop watchdog names the code that blocks the loop."""

from __future__ import annotations

import logging
import time

import anyio
import anyio.lowlevel
import pytest

from supervisor._loop_watch import LoopWatch


def _blocks_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 - the point: a blocking call on the loop


@pytest.mark.anyio
async def test_a_stall_is_logged_with_the_blocking_stack(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stoic.node")
    watch = LoopWatch(threshold=0.3, tick=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        _blocks_the_loop(0.8)
        with anyio.fail_after(5):
            while not any("ran again" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - polls the log, bounded
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    # (one stall; a loaded machine may add one of its own, but not inside our call)
    assert 1 <= watch.stalls <= 2
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert any("_blocks_the_loop" in m for m in stalled), stalled


@pytest.mark.anyio
async def test_a_loop_that_keeps_running_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stoic.node")
    watch = LoopWatch(threshold=1.0, tick=0.05)  # generous: a loaded CI machine
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # busy, but yielding: not a stall
            _blocks_the_loop(0.01)
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert watch.stalls == 0
    assert not [r for r in caplog.records if r.name == "stoic.node"]


def test_threshold_must_exceed_the_tick() -> None:
    with pytest.raises(ValueError, match="threshold"):
        LoopWatch(threshold=0.1, tick=0.1)
