"""Async submit: an acknowledged id is always queued, even when the first submit of the
same idempotency key died between writing the record and enqueueing it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime import Tracing, open_store, wire
from supervisor._async import IDEM_PREFIX, INV_PREFIX, QUEUE, AsyncInvocations


@pytest.mark.anyio
async def test_resubmit_after_a_crash_between_record_and_enqueue_queues_it(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        node = SimpleNamespace(store=store, functions={}, tracing=Tracing.from_env(environ={}))
        service = AsyncInvocations(node)  # type: ignore[arg-type]
        spec = wire.FunctionSpec(name="echo", app="examples/hello.py", handler="echo")
        # what a first submit leaves behind when its node dies before enqueueing
        await store.put(f"{IDEM_PREFIX}echo/k1", b"inv-1", expected_version=0)
        await store.put(INV_PREFIX + "inv-1", json.dumps({
            "id": "inv-1", "function": "echo", "state": "QUEUED", "payload": "",
            "content_type": wire.JSON, "submitted_at": 0.0, "attempts": [], "error": None,
            "result": ""}).encode(), expected_version=0)
        assert await store.lease(QUEUE, max_items=10, visibility_timeout=30) == []
        request = wire.InvokeRequest(function="echo", payload=b"1", idempotency_key="k1")
        assert await service.submit(spec, request) == "inv-1"
        assert await service.submit(spec, request) == "inv-1"
        items = await store.lease(QUEUE, max_items=10, visibility_timeout=30)
        assert [i.payload for i in items] == [b"inv-1"]  # queued once, not twice


@pytest.mark.anyio
async def test_store_operations_are_spans_only_inside_a_trace() -> None:
    """A store call inside an invocation's trace is its child span; one outside any trace
    (the consumer's idle lease poll, ten a second) makes no trace of its own."""
    from runtime import MemoryStore
    from supervisor._node import TracedStore

    tracing = Tracing.from_env(environ={})
    store = TracedStore(MemoryStore(), tracing)
    for _ in range(5):
        assert await store.lease(QUEUE, max_items=1, visibility_timeout=30) == []
    assert len(tracing.recorder) == 0
    with tracing.start_span("stoic.async.run") as parent:
        await store.put("k", b"v", expected_version=0)
    (put,) = [s for s in tracing.spans_for_trace(parent.get_span_context().trace_id)
              if s.name == "stoic.store.put"]
    assert put.parent_id == f"{parent.get_span_context().span_id:016x}"
