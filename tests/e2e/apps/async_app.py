"""Test app for async invocations: fast backoff so tests stay short."""

from runtime import function


@function(max_attempts=3, initial_backoff=0.2, backoff_multiplier=2.0, max_backoff=5.0)
def boom_fast(event, ctx):  # type: ignore[no-untyped-def]
    raise ValueError("boom, fast")


@function()
def count_runs(event, ctx):  # type: ignore[no-untyped-def]
    return {"attempt": ctx.attempt}


@function(on_success="sink", on_failure="sink", max_attempts=1)
def with_destinations(event, ctx):  # type: ignore[no-untyped-def]
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"doubled": event["x"] * 2}


@function()
def sink(event, ctx):  # type: ignore[no-untyped-def]
    import json

    ctx.state.put(event["invocation_id"], json.dumps(event).encode())
    return {"stored": event["invocation_id"]}
