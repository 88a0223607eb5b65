"""A counter kept in the function's state (placeholder: `ctx.state` arrives with the store).

Until then it counts per instance, in memory."""

from __future__ import annotations

from typing import Any

from runtime import Context, function

_count = 0


@function(timeout=5.0)
def counter(event: Any, ctx: Context) -> dict[str, int]:
    global _count
    step = int(event.get("add", 1)) if isinstance(event, dict) else 1
    _count += step
    return {"count": _count}
