"""asyncio details shared by the node, the worker client and the supervisor."""

from __future__ import annotations

import asyncio

__all__ = ["stray_cancellation"]


def stray_cancellation() -> bool:
    """Called while handling an `asyncio.CancelledError`: whether nobody asked for it.

    grpc.aio raises a CancelledError of its own out of an `await` on a call that it
    cancelled (the channel closed under it, a worker's stream broke). No cancel scope or
    `Task.cancel()` asked for that one, so the current task's `cancelling()` count is 0.
    It must not be let out as it is: anyio takes a child task that raises CancelledError
    as cancelled and silently cancels the whole task group it runs in (a pool, the
    supervisor, the async consumer). A real cancellation (the count is above 0) must be
    re-raised."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
