"""The context handed to a handler with each event: who is invoking, where, how long is left."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Context"]


class _ContextFilter(logging.Filter):
    """Adds the invocation's fields to every record logged through a context's logger."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self._fields.items():
            setattr(record, key, value)
        return True


class Context:
    """What a handler learns about its invocation (`handler(event, ctx)`).

    - `invocation_id`: stable across retries of one invocation; `attempt` counts from 1.
    - `function`, `node_id`, `zone`, `instance_id`: where it runs.
    - `deadline`: unix wall-clock seconds when the attempt is killed, or None;
      `remaining_time()` is the seconds left (`math.inf` without a deadline, never < 0).
    - `logger`: a `logging.Logger` (child of `stoic.function.<name>`) whose records carry
      `invocation_id`, `attempt`, `function`, `node_id` and `zone` attributes.
    - `state`: the function's key-value namespace in the store (None until the store
      issue wires it); `trace_context`: the W3C trace headers of the invocation;
      `tracer`: an OpenTelemetry tracer for the handler's own child spans.
    """

    __slots__ = (
        "invocation_id", "attempt", "function", "node_id", "zone", "instance_id",
        "deadline", "state", "trace_context", "_clock", "_logger", "_tracer",
    )

    def __init__(
        self,
        *,
        invocation_id: str,
        attempt: int,
        function: str,
        node_id: str = "",
        zone: str = "",
        instance_id: str = "",
        deadline: float | None = None,
        state: Any = None,
        trace_context: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Any = None,
    ) -> None:
        self.invocation_id = invocation_id
        self._tracer = tracer
        self.attempt = attempt
        self.function = function
        self.node_id = node_id
        self.zone = zone
        self.instance_id = instance_id
        self.deadline = deadline
        self.state = state
        self.trace_context: dict[str, str] = dict(trace_context or {})
        self._clock = clock
        self._logger: logging.Logger | None = None

    @property
    def tracer(self) -> Any:
        """An OpenTelemetry tracer: `with ctx.tracer.start_as_current_span("step"):` makes
        a child span of the handler's span (a no-op tracer when tracing is off)."""
        if self._tracer is None:
            from opentelemetry import trace

            return trace.NoOpTracer()
        return self._tracer

    def remaining_time(self) -> float:
        """Seconds until the deadline (0.0 once passed; `math.inf` if there is none)."""
        if self.deadline is None:
            return math.inf
        return max(self.deadline - self._clock(), 0.0)

    @property
    def logger(self) -> logging.Logger:
        """A logger for this invocation (created on first use: cheap when unused)."""
        if self._logger is None:
            parent = logging.getLogger(f"stoic.function.{self.function}")
            # Not registered with logging's manager: one per invocation must not leak.
            logger = logging.Logger(parent.name)
            logger.parent = parent
            logger.propagate = True
            logger.addFilter(_ContextFilter({
                "invocation_id": self.invocation_id,
                "attempt": self.attempt,
                "function": self.function,
                "node_id": self.node_id,
                "zone": self.zone,
            }))
            self._logger = logger
        return self._logger

    def __repr__(self) -> str:
        return (
            f"Context(invocation_id={self.invocation_id!r}, attempt={self.attempt}, "
            f"function={self.function!r}, node_id={self.node_id!r}, zone={self.zone!r})"
        )
