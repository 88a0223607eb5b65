"""`stray_cancellation`: telling grpc.aio's own CancelledError from a real cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import anyio

from runtime._aio import stray_cancellation


def test_a_raised_cancelled_error_is_stray_and_a_cancellation_is_not() -> None:
    seen: list[tuple[str, bool]] = []

    async def raises_its_own() -> None:  # what grpc.aio does for a call it cancelled
        try:
            raise asyncio.CancelledError
        except asyncio.CancelledError:
            seen.append(("raised", stray_cancellation()))

    waiting = asyncio.Event()

    async def cancelled() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(("Task.cancel", stray_cancellation()))
            raise

    async def main() -> None:
        await asyncio.create_task(raises_its_own())
        task = asyncio.create_task(cancelled())
        await waiting.wait()  # it is inside its try block
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with anyio.move_on_after(0):  # an anyio cancel scope cancels the task too
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append(("cancel scope", stray_cancellation()))
                raise

    asyncio.run(main())
    assert seen == [("raised", True), ("Task.cancel", False), ("cancel scope", False)]
