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

