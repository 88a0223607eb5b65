"""Async submit: an acknowledged id is always queued, even when the first submit of the
same idempotency key died between writing the record and enqueueing it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import anyio
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
async def test_a_stray_cancelled_error_in_one_item_does_not_stop_the_consumer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc.aio raises a CancelledError of its own for a call it cancelled; out of one
    item's run it would have cancelled the consumer's task group, and the node would have
    stopped consuming without a word."""
    node = SimpleNamespace(store=None, functions={}, tracing=Tracing.from_env(environ={}))
    service = AsyncInvocations(node)  # type: ignore[arg-type]
    ran: list[str] = []

    async def process(item: SimpleNamespace) -> None:
        ran.append(item.id)
        if item.id == "stray":
            raise asyncio.CancelledError()  # raised by nobody's cancel scope

    service._process = process  # type: ignore[method-assign]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in ("stray", "next"):
                await service._slots.acquire()
                tg.start_soon(service._run_item, SimpleNamespace(id=name))
    assert ran == ["stray", "next"]
    assert service._free_slots() == 32  # both slots given back
    assert any("stray CancelledError" in r.getMessage() for r in caplog.records)
