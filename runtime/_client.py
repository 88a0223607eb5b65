"""The Python client: `AsyncClient` (asyncio, grpc.aio) and `Client` (plain scripts).

    with Client("127.0.0.1:50051") as client:
        print(client.invoke("hello", {"name": "ada"}).value)

Errors: a handler's exception raises `FunctionError` (type, message, traceback); platform
failures raise the exceptions of `runtime._errors` mapped from the status code.

Failover: given several targets, the client keeps using the one that last answered and
moves to the next when the transport fails (an UNAVAILABLE the node did not send itself):
- when the node could not be reached at all (connection refused: `Unreachable`), any call
  moves on, since the request never reached a node;
- when the connection broke during the call (`ConnectionLost`), only calls that are safe to
  repeat move on: every Control read (functions, status, dead letters, get_invocation), and
  invoke / invoke_async with an idempotency key. A plain invoke, deploy and redrive raise
  `ConnectionLost` instead, because the node may have run them.
An UNAVAILABLE sent by a node itself (e.g. the function's circuit is open) is raised as
`Unavailable` without failover: any node would answer the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import anyio
import grpc.aio
from opentelemetry.trace import SpanKind

from runtime._errors import (
    ConnectionLost,
    FunctionError,
    InvalidInput,
    InvocationNotFound,
    InvocationTimeout,
    StoicError,
    Unreachable,
)
from runtime._tracing import ATTR_FUNCTION, Tracing, inject
from runtime.wire import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    JSON,
    ControlStub,
    DeployRequest,
    FunctionSpec,
    InvocationInfo,
    InvocationState,
    InvokeRequest,
    InvokeResult,
    InvokerStub,
    InvokeStreamClient,
    ListDeadLettersRequest,
    RedriveRequest,
    Status,
    is_json,
    open_channel,
)

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
_Failover = Literal["always", "unreached"]
_FINAL_STATES = (InvocationState.SUCCEEDED, InvocationState.FAILED, InvocationState.DEAD_LETTERED)


def _encode(event: Any, content_type: str, raw: bytes | None) -> bytes:
    if raw is not None:
        return bytes(raw)
    if isinstance(event, bytes | bytearray | memoryview):
        return bytes(event)
    if not is_json(content_type):
        raise InvalidInput(
            f"content type {content_type!r} is not JSON: pass the payload as bytes (raw=...)"
        )
    try:
        return json.dumps(event, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"event is not JSON-serializable: {exc}") from exc


class AsyncClient:
    """An asyncio client of one or more nodes (targets "host:port").

    Use as `async with AsyncClient(targets) as client:` inside an asyncio event loop (grpc.aio
    channels belong to the loop they were made in). `default_timeout` (seconds) applies
    to calls without their own `timeout`; None means no limit beyond the caller's scope.
    A timeout or a caller's deadline raises `InvocationTimeout` (a TimeoutError) and is sent
    along as the call's grpc-timeout. Cancelling a call cancels the RPC.

    `invoke` sends its calls over one `InvokeStream` per node (`multiplex=True`, the
    default): the same results and errors as unary `Invoke` calls at a fraction of
    grpc.aio's per-call cost. `multiplex=False` makes one unary `Invoke` per call.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        default_timeout: float | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        tracing: Tracing | None = None,
        multiplex: bool = True,
    ) -> None:
        self._tracing = tracing
        self.multiplex = multiplex
        self._streams: dict[grpc.aio.Channel, InvokeStreamClient] = {}
        self.targets: tuple[str, ...] = (targets,) if isinstance(targets, str) else tuple(targets)
        if not self.targets or not all(self.targets):
            raise ValueError(f"targets must be non-empty host:port strings, got {targets!r}")
        self.default_timeout = default_timeout
        self._max = max_payload_bytes
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._current = 0

    @contextlib.contextmanager
    def _span(self, name: str, function: str) -> Iterator[None]:
        if self._tracing is None:
            yield
            return
        with self._tracing.start_span(name, kind=SpanKind.CLIENT,
                                      attributes={ATTR_FUNCTION: function}):
            yield

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every channel; calls in progress fail. Idempotent."""
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            await stream.aclose()
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)

    @property
    def target(self) -> str:
        """The target currently preferred (the one that last answered)."""
        return self.targets[self._current]

    def _channel(self, index: int) -> grpc.aio.Channel:
        channel = self._channels.get(index)
        if channel is None:
            channel = open_channel(self.targets[index], max_payload_bytes=self._max)
            self._channels[index] = channel
        return channel

    async def _call(
        self,
        what: str,
        op: Callable[[grpc.aio.Channel], Awaitable[T]],
        failover: _Failover,
        timeout: float | None,  # noqa: ASYNC109 - the public methods' timeout, as a scope
    ) -> T:
        timeout = self.default_timeout if timeout is None else timeout
        try:
            with anyio.fail_after(timeout):
                return await self._failover(op, failover)
        except InvocationTimeout:
            raise
        except TimeoutError as exc:
            raise InvocationTimeout(f"{what} did not answer within {timeout}s") from exc

    async def _failover(
        self, op: Callable[[grpc.aio.Channel], Awaitable[T]], failover: _Failover
    ) -> T:
        failures: list[str] = []
        last: StoicError | None = None
        all_unreached = True
        n = len(self.targets)
        for k in range(n):  # each target at most once per call
            index = (self._current + k) % n
            try:
                result = await op(self._channel(index))
            except Unreachable as exc:
                last = exc
            except ConnectionLost as exc:
                if failover != "always":
                    raise
                last = exc
                all_unreached = False
            else:
                self._current = index
                return result
            failures.append(f"{self.targets[index]}: {last}")
        if n == 1 and last is not None:
            raise last
        summary = "; ".join(failures)
        if all_unreached:
            raise Unreachable(f"no node could be reached ({summary})") from last
        raise ConnectionLost(f"no node answered ({summary})") from last

    # ------------------------------------------------------------------ Invoker

    async def invoke(
        self,
        name: str,
        event: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the public API named in issue 3
        idempotency_key: str | None = None,
        content_type: str = JSON,
        raw: bytes | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> InvokeResult:
        """Run function `name` with `event` (JSON-encoded) or `raw` bytes of `content_type`
        and wait for its result (`.value` decodes it).

        Raises `FunctionError` when the handler raised (the invocation ran), `InvalidInput`
        for an event that cannot be encoded or a request the node rejects,
        `FunctionNotFound`, `InvocationTimeout`, `Unavailable` (and its subclasses for
        transport failures), `LimitExceeded`, `InstanceCrashed`."""
        request = InvokeRequest(
            function=name,
            payload=_encode(event, content_type, raw),
            content_type=content_type,
            idempotency_key=idempotency_key or "",
        )
        with self._span("stoic.client.invoke", name):
            # the caller's current trace (ours, or an instrumented caller's) is the parent
            sent = {**(metadata or {}), **inject()}
            result = await self._call(
                f"invoke {name!r}",
                lambda ch: self._invoke_on(ch, request, sent),
                "always" if idempotency_key else "unreached",
                timeout,
            )
        if result.error is not None:
            raise FunctionError(
                result.error.type,
                result.error.message,
                result.error.traceback,
                invocation_id=result.invocation_id,
            )
        return result

    def _invoke_on(
        self, channel: grpc.aio.Channel, request: InvokeRequest, metadata: Mapping[str, str],
    ) -> Awaitable[InvokeResult]:
        if not self.multiplex:
            return InvokerStub(channel).invoke(request, metadata=metadata)
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = InvokeStreamClient(
                channel, max_payload_bytes=self._max)
        return stream.invoke(request, metadata=metadata)

    async def invoke_async(
        self,
        name: str,
        event: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        idempotency_key: str | None = None,
        content_type: str = JSON,
        raw: bytes | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Submit an invocation to run durably and return its id at once (the same id for
        the same idempotency key)."""
        request = InvokeRequest(
            function=name,
            payload=_encode(event, content_type, raw),
            content_type=content_type,
            idempotency_key=idempotency_key or "",
        )
        with self._span("stoic.client.invoke_async", name):
            sent = {**(metadata or {}), **inject()}
            inv_id: str = await self._call(
                f"invoke_async {name!r}",
                lambda ch: InvokerStub(ch).invoke_async(request, metadata=sent),
                "always" if idempotency_key else "unreached",
                timeout,
            )
        return inv_id

    async def get_invocation(
        self,
        invocation_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        metadata: Mapping[str, str] | None = None,
    ) -> InvocationInfo:
        """State, result and attempts of an invocation; `InvocationNotFound` if unknown."""
        return await self._call(
            "get_invocation",
            lambda ch: InvokerStub(ch).get_invocation(invocation_id, metadata=metadata),
            "always",
            timeout,
        )

    async def wait_invocation(
        self,
        invocation_id: str,
        *,
        timeout: float | None = 60.0,  # noqa: ASYNC109 - same shape as invoke
        poll_interval: float = 0.2,
    ) -> InvocationInfo:
        """Poll `get_invocation` every `poll_interval` seconds until the invocation is
        SUCCEEDED, FAILED or DEAD_LETTERED and return it; `InvocationTimeout` after
        `timeout` seconds."""
        try:
            with anyio.fail_after(timeout):
                while True:  # bounded by the scope above
                    info = await self.get_invocation(invocation_id)
                    if info.state in _FINAL_STATES:
                        return info
                    await anyio.sleep(poll_interval)
        except InvocationTimeout:
            raise
        except TimeoutError as exc:
            raise InvocationTimeout(
                f"invocation {invocation_id} not finished within {timeout}s"
            ) from exc

    # ------------------------------------------------------------------ Control

    async def deploy(
        self,
        apps: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[FunctionSpec, ...]:
        """Deploy app files or modules (paths as the nodes see them); returns the specs."""
        request = DeployRequest(apps=tuple(apps))
        return await self._call(
            "deploy",
            lambda ch: ControlStub(ch).deploy(request, metadata=metadata),
            "unreached",
            timeout,
        )

    async def functions(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[FunctionSpec, ...]:
        """The deployed functions."""
        return await self._call(
            "functions",
            lambda ch: ControlStub(ch).list_functions(metadata=metadata),
            "always",
            timeout,
        )

    async def status(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        metadata: Mapping[str, str] | None = None,
    ) -> Status:
        """The supervision tree: nodes, pools, instances."""
        return await self._call(
            "status", lambda ch: ControlStub(ch).status(metadata=metadata), "always", timeout
        )

    async def dead_letters(
        self,
        *,
        limit: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[InvocationInfo, ...]:
        """Dead-lettered invocations (at most `limit`; 0 means the node's default)."""
        request = ListDeadLettersRequest(limit=limit)
        return await self._call(
            "dead_letters",
            lambda ch: ControlStub(ch).list_dead_letters(request, metadata=metadata),
            "always",
            timeout,
        )

    async def redrive(
        self,
        ids: Sequence[str] | Literal["all"] | None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same shape as invoke
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, ...]:
        """Re-queue the given dead-lettered invocations, or all of them for "all" (or None);
        returns the ids re-queued."""
        if ids is None or ids == "all":
            request = RedriveRequest(all=True)
        else:
            request = RedriveRequest(invocation_ids=tuple(ids))
        return await self._call(
            "redrive",
            lambda ch: ControlStub(ch).redrive(request, metadata=metadata),
            "unreached",
            timeout,
        )

    async def trace_spans(
        self, invocation_id: str, *, timeout: float | None = None,  # noqa: ASYNC109
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, ...]:
        """The spans the cluster's nodes recorded locally for an invocation (JSON objects)."""
        return await self._call(
            "get_trace",
            lambda ch: ControlStub(ch).get_trace(invocation_id, metadata=metadata),
            "always",
            timeout,
        )

    async def trace(self, invocation_id: str, *, timeout: float | None = None) -> str:  # noqa: ASYNC109
        """The invocation's trace as a tree with durations (for `stoic trace`)."""
        import json

        from runtime._tracing import SpanRecord, render_tree

        spans = await self.trace_spans(invocation_id, timeout=timeout)
        records = [SpanRecord.from_dict(json.loads(s)) for s in spans]
        if not records:
            raise InvocationNotFound(f"no spans recorded for invocation {invocation_id!r}")
        return render_tree(records)


_shared_loop: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None
_shared_loop_lock = threading.Lock()


def _client_loop() -> asyncio.AbstractEventLoop:
    """The asyncio event loop every `Client` of this process runs its calls on, in a
    daemon thread started with the first client and kept for the process's life (an idle
    loop costs nothing). One loop, not one per client: grpc.aio's poller serves every loop
    it has seen, and a completion arriving for a client's loop after that loop closed
    raised "Event loop is closed" inside another client's loop, dropping its events."""
    global _shared_loop
    with _shared_loop_lock:
        if (_shared_loop is None or _shared_loop[0].is_closed()
                or not _shared_loop[1].is_alive()):  # e.g. in a forked child: no thread
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="stoic-client",
                                      daemon=True)
            thread.start()
            _shared_loop = (loop, thread)
        return _shared_loop[0]


class Client:
    """The blocking client for plain scripts: same methods and errors as `AsyncClient`.

    It runs an `AsyncClient` on an asyncio event loop in a daemon thread that all the
    process's clients share; use it as a context manager (or call `close()`), which
    closes its channels. Safe to call from several threads. Ctrl-C while waiting cancels
    the call in progress.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        default_timeout: float | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        tracing: Tracing | None = None,
        multiplex: bool = True,
    ) -> None:
        self._async = AsyncClient(
            targets, default_timeout=default_timeout, max_payload_bytes=max_payload_bytes,
            tracing=tracing, multiplex=multiplex,
        )
        self._loop = _client_loop()
        self._closed = False

    @property
    def targets(self) -> tuple[str, ...]:
        return self._async.targets

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt or an error: do not leave the call running
            raise

    def close(self) -> None:
        """Close the client's channels (calls in progress fail). Idempotent. The event
        loop thread the clients share stays."""
        if self._closed:
            return
        try:
            self._run(self._async.aclose())
        finally:
            self._closed = True

    def invoke(self, name: str, event: Any = None, **kwargs: Any) -> InvokeResult:
        """See `AsyncClient.invoke`."""
        return self._run(self._async.invoke(name, event, **kwargs))

    def invoke_async(self, name: str, event: Any = None, **kwargs: Any) -> str:
        """See `AsyncClient.invoke_async`."""
        return self._run(self._async.invoke_async(name, event, **kwargs))

    def get_invocation(self, invocation_id: str, **kwargs: Any) -> InvocationInfo:
        """See `AsyncClient.get_invocation`."""
        return self._run(self._async.get_invocation(invocation_id, **kwargs))

    def wait_invocation(self, invocation_id: str, **kwargs: Any) -> InvocationInfo:
        """See `AsyncClient.wait_invocation`."""
        return self._run(self._async.wait_invocation(invocation_id, **kwargs))

    def deploy(self, apps: Sequence[str], **kwargs: Any) -> tuple[FunctionSpec, ...]:
        """See `AsyncClient.deploy`."""
        return self._run(self._async.deploy(apps, **kwargs))

    def functions(self, **kwargs: Any) -> tuple[FunctionSpec, ...]:
        """See `AsyncClient.functions`."""
        return self._run(self._async.functions(**kwargs))

    def status(self, **kwargs: Any) -> Status:
        """See `AsyncClient.status`."""
        return self._run(self._async.status(**kwargs))

    def dead_letters(self, **kwargs: Any) -> tuple[InvocationInfo, ...]:
        """See `AsyncClient.dead_letters`."""
        return self._run(self._async.dead_letters(**kwargs))

    def redrive(
        self, ids: Sequence[str] | Literal["all"] | None, **kwargs: Any
    ) -> tuple[str, ...]:
        """See `AsyncClient.redrive`."""
        return self._run(self._async.redrive(ids, **kwargs))

    def trace_spans(self, invocation_id: str, **kwargs: Any) -> tuple[str, ...]:
        """See `AsyncClient.trace_spans`."""
        return self._run(self._async.trace_spans(invocation_id, **kwargs))

    def trace(self, invocation_id: str, **kwargs: Any) -> str:
        """See `AsyncClient.trace`."""
        return self._run(self._async.trace(invocation_id, **kwargs))
