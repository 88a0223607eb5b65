"""Test app: a function kept in exactly one zone, to check cross-zone routing."""

from runtime import function


@function(min_zones=1, timeout=5.0)
def single_zone(event, ctx):  # type: ignore[no-untyped-def]
    return {"zone": ctx.zone, "node": ctx.node_id, "event": event}
