"""The child interface a supervisor manages: an in-process actor or an OS process.

A supervisor starts a child with its spec's start function (an async callable returning a
`Child` once the child is ready to serve), learns how it ended from `wait_exit`, asks it to
stop with `stop` and, when a graceful stop takes too long, ends it with `kill`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

ExitKind = Literal["normal", "shutdown", "error", "killed"]


@dataclass(frozen=True)
class ExitReason:
    """Why a child ended, in OTP's terms.

    `normal` and `shutdown` are normal exits (a transient child is not restarted);
    `error` (an exception, a non-zero exit status, a crash signal) and `killed` are abnormal.
    `detail` is a human-readable description ("exit status 3", "SIGSEGV", "ValueError: x").
    """

    kind: ExitKind
    detail: str = ""

    @property
    def abnormal(self) -> bool:
        return self.kind in ("error", "killed")

    @classmethod
    def normal(cls) -> ExitReason:
        return cls("normal")

    @classmethod
    def shutdown(cls) -> ExitReason:
        return cls("shutdown")

    @classmethod
    def error(cls, detail: str) -> ExitReason:
        return cls("error", detail)

    @classmethod
    def killed(cls, detail: str = "killed") -> ExitReason:
        return cls("killed", detail)

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


@runtime_checkable
class Child(Protocol):
    """A running child, as its supervisor sees it."""

    @property
    def name(self) -> str:
        """A stable, human-readable name (for reports and status)."""
        ...

    async def wait_exit(self) -> ExitReason:
        """Wait until the child has ended and return why. Safe to call many times and
        concurrently; returns at once once the child has ended. Cancellable."""
        ...

    def stop(self) -> None:
        """Ask the child to stop gracefully (a stop message, SIGTERM). Returns at once;
        idempotent; no effect on a child that has ended."""
        ...

    def kill(self) -> None:
        """End the child now (cancel its task, SIGKILL). Returns at once; idempotent."""
        ...
