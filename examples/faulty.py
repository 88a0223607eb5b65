"""Functions that misbehave on purpose; tests, the README and benchmarks use these names.

- `boom` raises ValueError (an error result; the instance stays up)
- `crash` ends its process with os._exit(3)
- `segfault` really segfaults (reads address 0)
- `hang` never returns (timeout 1 s: the instance is killed and replaced)
- `hog` allocates far past its 64 MiB memory limit
- `flaky` kills its process on attempt 1 and succeeds on attempt 2 and later
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

from runtime import Context, function


@function(timeout=5.0)
def boom(event: Any, ctx: Context) -> None:
    raise ValueError(f"boom: {event!r}")


@function(timeout=5.0, retries=2)
def crash(event: Any, ctx: Context) -> None:
    os._exit(3)


@function(timeout=5.0, retries=2)
def segfault(event: Any, ctx: Context) -> None:
    ctypes.string_at(0)


@function(timeout=1.0, retries=0)
def hang(event: Any, ctx: Context) -> None:
    threading.Event().wait()


@function(timeout=10.0, memory_mb=64, retries=0)
def hog(event: Any, ctx: Context) -> int:
    chunks = []
    for _ in range(10_000):  # bounded: 10_000 * 8 MiB is far past any limit
        chunk = bytearray(8 * 1024 * 1024)
        chunk[::4096] = b"x" * len(chunk[::4096])  # touch every page
        chunks.append(chunk)
    return len(chunks)


@function(timeout=5.0, retries=2)
def flaky(event: Any, ctx: Context) -> dict[str, int]:
    if ctx.attempt <= 1:
        os._exit(3)
    return {"attempt": ctx.attempt}
