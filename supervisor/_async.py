"""Async invocations: durable before acknowledged, retried with backoff, dead-lettered.

`submit` writes the invocation record and enqueues it in the store before it returns the
id, so an acknowledged invocation survives any node's death. Consumers on every node lease
queued invocations (with a visibility timeout: an invocation whose node died reappears
and runs again elsewhere), run them through the node's routing, and record each attempt.
A failed attempt is retried after an exponential backoff with jitter while the function's
policy allows (max attempts, max event age, which outcomes retry); then the invocation is
dead-lettered with its last error. Delivery is at-least-once: an invocation whose node
died after running it but before recording it runs again; idempotency keys make repeated
submits return the same invocation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from runtime import (
    ATTR_FUNCTION,
    ATTR_INVOCATION_ID,
    InstanceCrashed,
    InvocationNotFound,
    InvocationTimeout,
    StoicError,
    VersionConflict,
    inject,
    wire,
)
from runtime._aio import stray_cancellation

if TYPE_CHECKING:
    from supervisor._node import Node

log = logging.getLogger("stoic.async")

QUEUE = "invocations"
INV_PREFIX = "inv/"
IDEM_PREFIX = "idem/"
LEASE_BATCH = 16
VISIBILITY_MARGIN = 5.0


def backoff_delay(policy: wire.RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempt + 1` after attempt `attempt` failed:
    initial * multiplier**(attempt-1), capped, with full jitter in [50 %, 100 %]."""
    base = policy.initial_backoff * policy.backoff_multiplier ** max(0, attempt - 1)
    capped = min(policy.max_backoff, base)
    return capped * (0.5 + 0.5 * rng.random())


def _record_to_info(rec: dict[str, Any]) -> wire.InvocationInfo:
    err = rec.get("error")
    return wire.InvocationInfo(
        invocation_id=rec["id"], function=rec["function"],
        state=wire.InvocationState[rec["state"]],
        payload=base64.b64decode(rec.get("result", "") or ""),
        content_type=rec.get("result_content_type", wire.JSON) or wire.JSON,
        error=wire.FunctionErrorInfo(**err) if err else None,
        attempts=tuple(wire.AttemptInfo(**a) for a in rec.get("attempts", [])),
        submitted_at=rec.get("submitted_at", 0.0))


class AsyncInvocations:
    """The async invocation service of one node: submit, query, consume, dead letters."""

    def __init__(self, node: Node, *, consumers: int = 32) -> None:
        self.node = node
        self.store = node.store
        self._slots = anyio.Semaphore(consumers)
        self._rng = random.Random()
        self._fenced = False
        self._wakeup = anyio.Event()
        self.executed = 0

    def fenced(self) -> None:
        """Our node lease lapsed: results of leases we hold may be stale; the store's
        receipts refuse stale acks, so we just note it for logging."""
        self._fenced = True

    # --- records ---------------------------------------------------------------------
    async def _load(self, invocation_id: str) -> tuple[dict[str, Any], int] | None:
        v = await self.store.get(INV_PREFIX + invocation_id)
        if v is None:
            return None
        return json.loads(v.value), v.version

    async def _update(self, invocation_id: str, change: Any) -> dict[str, Any] | None:
        """Read-modify-write the record with compare-and-set, retrying on conflict."""
        for _ in range(50):
            loaded = await self._load(invocation_id)
            if loaded is None:
                return None
            rec, version = loaded
            change(rec)
            try:
                await self.store.put(INV_PREFIX + invocation_id, json.dumps(rec).encode(),
                                     expected_version=version)
                return rec
            except VersionConflict:
                continue
        raise StoicError(f"invocation {invocation_id}: too much contention updating its record")

    # --- API ---------------------------------------------------------------------------
    async def submit(self, spec: wire.FunctionSpec, request: wire.InvokeRequest) -> str:
        """Make the invocation durable (record + queue item) and return its id. With an
        idempotency key, a repeated submit returns the first submit's id."""
        invocation_id = uuid.uuid4().hex
        with self.node.tracing.start_span(
                "stoic.queue.enqueue",
                attributes={ATTR_FUNCTION: spec.name, ATTR_INVOCATION_ID: invocation_id}) as span:
            invocation_id = await self._submit(spec, request, invocation_id)
            span.set_attribute(ATTR_INVOCATION_ID, invocation_id)
        return invocation_id

    async def _submit(self, spec: wire.FunctionSpec, request: wire.InvokeRequest,
                      invocation_id: str) -> str:
        if request.idempotency_key:
            idem_key = f"{IDEM_PREFIX}{spec.name}/{request.idempotency_key}"
            try:
                await self.store.put(idem_key, invocation_id.encode(), expected_version=0)
            except VersionConflict:
                existing = await self.store.get(idem_key)
                if existing is not None:
                    invocation_id = existing.value.decode()
                    if await self._load(invocation_id) is not None:
                        # The first submit may have died between writing the record and
                        # enqueueing it: enqueue again (idempotent per invocation id).
                        await self.store.enqueue(QUEUE, invocation_id.encode(),
                                                 idempotency_key=invocation_id)
                        return invocation_id
                    # the first submit died before its record was written: finish it
        rec = {
            "id": invocation_id, "function": spec.name, "state": "QUEUED",
            "payload": base64.b64encode(request.payload).decode(),
            "content_type": request.content_type or wire.JSON,
            "submitted_at": time.time(), "attempts": [], "error": None, "result": "",
            "trace": inject(),
        }
        try:
            await self.store.put(INV_PREFIX + invocation_id, json.dumps(rec).encode(),
                                 expected_version=0)
        except VersionConflict:
            pass  # written by an earlier submit with the same key
        await self.store.enqueue(QUEUE, invocation_id.encode(), idempotency_key=invocation_id)
        self._wakeup.set()
        return invocation_id

    async def get(self, invocation_id: str) -> wire.InvocationInfo:
        loaded = await self._load(invocation_id)
        if loaded is None:
            raise InvocationNotFound(f"no invocation {invocation_id!r}")
        return _record_to_info(loaded[0])

    async def dead_letters(self, limit: int) -> Sequence[wire.InvocationInfo]:
        items = await self.store.list_dead_letters(QUEUE, limit=limit)
        out = []
        for item in items:
            loaded = await self._load(item.payload.decode())
            if loaded is not None:
                out.append(_record_to_info(loaded[0]))
        return out

    async def redrive(self, invocation_ids: list[str] | None) -> Sequence[str]:
        items = await self.store.list_dead_letters(QUEUE, limit=100_000)
        by_inv = {item.payload.decode(): item.id for item in items}
        if invocation_ids is None:
            chosen = list(by_inv)
        else:
            unknown = [i for i in invocation_ids if i not in by_inv]
            if unknown:
                raise InvocationNotFound(f"not dead-lettered: {', '.join(unknown)}")
            chosen = invocation_ids
        if not chosen:
            return []

        def requeue(rec: dict[str, Any]) -> None:
            rec["state"] = "QUEUED"
            rec["redriven_at"] = time.time()
            rec["attempt_base"] = len(rec.get("attempts", []))

        for inv in chosen:
            await self._update(inv, requeue)
        await self.store.redrive(QUEUE, [by_inv[i] for i in chosen])
        self._wakeup.set()
        return chosen

    # --- consumer ----------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Lease and run queued invocations until cancelled."""
        task_status.started()
        async with anyio.create_task_group() as tg:
            for _ in iter(int, 1):
                if not self.node.membership.holds_lease:
                    await anyio.sleep(self.node.config.membership.heartbeat)
                    continue
                free = self._free_slots()
                items = []
                if free > 0:
                    try:
                        items = await self.store.lease(
                            QUEUE, max_items=min(free, LEASE_BATCH),
                            visibility_timeout=self._visibility())
                    except Exception as exc:
                        log.warning("leasing async invocations failed: %s", exc)
                for item in items:
                    await self._slots.acquire()
                    tg.start_soon(self._run_item, item)
                if not items:
                    with anyio.move_on_after(0.1):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()

    def _free_slots(self) -> int:
        return int(self._slots.value)

    def _visibility(self) -> float:
        timeouts = [float(s.timeout) for s in self.node.functions.values()] or [30.0]
        return max(timeouts) + VISIBILITY_MARGIN

    async def _run_item(self, item: Any) -> None:
        try:
            await self._process(item)
        except Exception:
            log.exception("async invocation item %s failed in the consumer", item.id)
        except asyncio.CancelledError:
            if not stray_cancellation():
                raise  # a real cancellation: the node is stopping
            # A CancelledError nobody asked for (grpc.aio raises its own for a call it
            # cancelled): escaping, it would silently cancel the consumer's task group and
            # end consuming on this node. The item's lease lapses and it runs again.
            log.error("async invocation item %s: a stray CancelledError ended its run; "
                      "it runs again when its lease lapses", item.id)
        finally:
            self._slots.release()

    async def _process(self, item: Any) -> None:
        invocation_id = item.payload.decode()
        loaded = await self._load(invocation_id)
        parent = (loaded[0].get("trace") or None) if loaded else None
        with self.node.tracing.start_span(
                "stoic.async.run", parent=parent,
                attributes={ATTR_INVOCATION_ID: invocation_id,
                            "stoic.queue.delivery": int(item.attempts)}):
            await self._process_loaded(item, invocation_id, loaded)

    async def _process_loaded(self, item: Any, invocation_id: str,
                              loaded: tuple[dict[str, Any], int] | None) -> None:
        if loaded is None:
            log.warning("queue item for unknown invocation %s; acking", invocation_id)
            await self.store.ack(QUEUE, item)
            return
        rec = loaded[0]
        if rec["state"] in ("SUCCEEDED", "FAILED", "DEAD_LETTERED"):
            await self.store.ack(QUEUE, item)  # already done (a redelivery after a late ack)
            return
        spec = self.node.functions.get(rec["function"])
        if spec is None:
            await self._finish(item, rec, "DEAD_LETTERED", None, wire.FunctionErrorInfo(
                "FunctionNotFound", f"function {rec['function']!r} is no longer deployed"))
            return
        attempt = int(rec.get("attempt_base", 0)) + int(item.attempts)
        started = time.time()
        node = self.node.config

        def mark_running(r: dict[str, Any]) -> None:
            r["state"] = "RUNNING"
            r["attempts"].append({"attempt": attempt, "node_id": node.node_id,
                                  "zone": node.zone, "started_at": started,
                                  "ended_at": None, "outcome": "running", "detail": ""})

        await self._update(invocation_id, mark_running)
        request = wire.InvokeRequest(
            function=spec.name, payload=base64.b64decode(rec["payload"]),
            content_type=rec["content_type"])
        outcome, detail = "succeeded", ""
        result: wire.InvokeResult | None = None
        error: wire.FunctionErrorInfo | None = None
        try:
            result = await self.node.dispatch(
                spec, request, invocation_id, deadline=time.time() + float(spec.timeout),
                first_attempt=attempt, max_attempts=1)
            self.executed += 1
            if result.error is not None:
                outcome, detail, error = "error", f"{result.error.type}: {result.error.message}", result.error
        except InvocationTimeout as exc:
            outcome, detail = "timeout", str(exc)
            error = wire.FunctionErrorInfo("InvocationTimeout", str(exc))
        except InstanceCrashed as exc:
            outcome, detail = "crash", str(exc)
            error = wire.FunctionErrorInfo("InstanceCrashed", str(exc))
        except StoicError as exc:
            outcome, detail = "unavailable", str(exc)
            error = wire.FunctionErrorInfo(type(exc).__name__, str(exc))
        ended = time.time()

        def mark_attempt(r: dict[str, Any]) -> None:
            for a in reversed(r["attempts"]):
                if a["attempt"] == attempt and a["node_id"] == node.node_id:
                    a["ended_at"], a["outcome"], a["detail"] = ended, outcome, detail
                    break

        if outcome == "succeeded" and result is not None:
            await self._update(invocation_id, mark_attempt)
            await self._finish(item, rec, "SUCCEEDED", result, None)
            return
        await self._update(invocation_id, mark_attempt)
        policy = spec.async_retry
        age = ended - float(rec.get("redriven_at") or rec["submitted_at"])
        # an "unavailable" outcome (no instance anywhere, circuit open) always retries
        retryable = outcome == "unavailable" or outcome in policy.retry_on
        if retryable and item.attempts < policy.max_attempts and age < policy.max_event_age:
            delay = backoff_delay(policy, int(item.attempts), self._rng)

            def requeue(r: dict[str, Any]) -> None:
                r["state"] = "QUEUED"
                r["error"] = error.__dict__ if error else None
                r["next_attempt_at"] = time.time() + delay

            await self._update(invocation_id, requeue)
            await self.store.retry(QUEUE, item, delay=delay, error=detail)
            return
        await self._finish(item, rec, "DEAD_LETTERED", None, error, reason=detail)

    async def _finish(
        self, item: Any, rec: dict[str, Any], state: str, result: wire.InvokeResult | None,
        error: wire.FunctionErrorInfo | None, reason: str = "",
    ) -> None:
        def done(r: dict[str, Any]) -> None:
            r["state"] = state
            r["error"] = error.__dict__ if error else None
            if result is not None:
                r["result"] = base64.b64encode(result.payload).decode()
                r["result_content_type"] = result.content_type
            r["finished_at"] = time.time()

        final = await self._update(rec["id"], done)
        if state == "DEAD_LETTERED":
            await self.store.dead_letter(QUEUE, item, reason=reason or state)
        else:
            await self.store.ack(QUEUE, item)
        spec = self.node.functions.get(rec["function"])
        if spec is None or final is None:
            return
        dest = spec.on_success if state == "SUCCEEDED" else spec.on_failure
        if dest:
            await self._send_to_destination(dest, final)

    async def _send_to_destination(self, dest: str, rec: dict[str, Any]) -> None:
        target = self.node.functions.get(dest)
        if target is None:
            log.warning("destination %r of %s is not deployed", dest, rec["function"])
            return
        payload = {
            "invocation_id": rec["id"], "function": rec["function"], "state": rec["state"],
            "result": rec.get("result", ""), "error": rec.get("error"),
        }
        await self.submit(target, wire.InvokeRequest(
            function=dest, payload=json.dumps(payload).encode(),
            idempotency_key=f"destination-{rec['id']}"))
