"""Test app for traces: a flaky function kept in one zone, so that a call entering at
another zone's node is forwarded."""

import os

from runtime import function


@function(min_zones=1, timeout=5.0, retries=2)
def flaky_one_zone(event, ctx):  # type: ignore[no-untyped-def]
    if ctx.attempt <= 1:
        os._exit(3)
    with ctx.tracer.start_as_current_span("user.step"):
        return {"attempt": ctx.attempt, "zone": ctx.zone}
