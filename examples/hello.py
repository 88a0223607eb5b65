"""Example functions: `hello`, `echo`, `whoami`.

    stoic invoke hello --data '{"name": "Ada"}'
"""

from __future__ import annotations

import os
from typing import Any

from runtime import Context, function


@function(timeout=5.0, retries=2, memory_mb=256, concurrency=1)
def hello(event: Any, ctx: Context) -> dict[str, str]:
    """Greets `event["name"]` (default "world")."""
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    ctx.logger.debug("greeting %s", name)
    return {"greeting": f"hello {name}"}


# async: runs on the instance's event loop, no thread hop; many in flight per instance
@function(timeout=5.0, concurrency=64)
async def echo(event: Any, ctx: Context) -> Any:
    """Returns the event unchanged (raw bytes come back as bytes)."""
    return event


# min_zones at or above the number of zones: an instance in every zone
@function(timeout=5.0, min_zones=3)
async def whoami(event: Any, ctx: Context) -> dict[str, Any]:
    """Where it runs: node, zone, instance, pid, and the invocation's attempt."""
    return {
        "node": ctx.node_id,
        "zone": ctx.zone,
        "instance": ctx.instance_id,
        "pid": os.getpid(),
        "invocation_id": ctx.invocation_id,
        "attempt": ctx.attempt,
    }
