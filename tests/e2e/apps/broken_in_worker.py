"""Test app: imports fine where it is deployed, raises on import in function actor
processes (STOIC_WORKER=1 there), as a module depending on something only a worker lacks."""

import os

from runtime import function


@function(timeout=1.0, min_zones=3)
def broken_in_worker(event, ctx):  # type: ignore[no-untyped-def]
    return None


if os.environ.get("STOIC_WORKER") == "1":
    raise RuntimeError("broken_in_worker cannot start in a function actor process")
