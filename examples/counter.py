"""A counter kept in the function's state, incremented with compare-and-set.

Invocations are delivered at least once (a retry after a crash may repeat one), so the
counter remembers which invocation ids it already counted: the count ends exactly at the
number of distinct invocations, whatever crashed on the way.

    stoic invoke counter --data '{"add": 1}'
"""

from __future__ import annotations

import json
from typing import Any

from runtime import Context, VersionConflict, function

KEY = "count"
REMEMBER = 10_000  # invocation ids kept to make retries idempotent


@function(timeout=10.0, concurrency=8, min_zones=3)
def counter(event: Any, ctx: Context) -> dict[str, int]:
    step = int(event.get("add", 1)) if isinstance(event, dict) else 1
    for _ in range(1000):  # bounded: each round loses only to another writer's success
        current = ctx.state.get(KEY)
        data = json.loads(current.value) if current else {"count": 0, "seen": []}
        if ctx.invocation_id in data["seen"]:
            return {"count": data["count"], "repeated": True}
        data["count"] += step
        data["seen"] = [*data["seen"], ctx.invocation_id][-REMEMBER:]
        try:
            ctx.state.put(KEY, json.dumps(data).encode(),
                          expected_version=current.version if current else 0)
        except VersionConflict:
            continue
        return {"count": data["count"]}
    raise RuntimeError("counter: too much contention")
