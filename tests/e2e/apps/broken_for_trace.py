"""Test app: fails to start in function actor processes (see broken_in_worker.py)."""

import os

from runtime import function


@function(timeout=1.0, min_zones=3)
def broken_for_trace(event, ctx):  # type: ignore[no-untyped-def]
    return None


if os.environ.get("STOIC_WORKER") == "1":
    raise RuntimeError("broken_for_trace cannot start in a function actor process")
