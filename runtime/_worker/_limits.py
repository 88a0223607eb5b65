"""Process-level guards of a function actor: die with the parent, stay under a memory limit.

Exit statuses a worker uses on purpose, so the node can say why it ended:
- `EXIT_START_FAILED` (the app failed to import / the handler is missing; the reason is
  written to the instance's error file first),
- `EXIT_MEMORY` (a MemoryError: the function went past its memory limit),
- `EXIT_ORPHANED` (the parent was already gone when the worker started).
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import signal

__all__ = [
    "EXIT_START_FAILED",
    "EXIT_MEMORY",
    "EXIT_ORPHANED",
    "EXIT_INTERNAL",
    "BASELINE_ALLOWANCE_MB",
    "THREAD_ALLOWANCE_MB",
    "die_with_parent",
    "limit_malloc_arenas",
    "set_memory_limit",
    "address_space_limit",
]

EXIT_START_FAILED = 86
EXIT_MEMORY = 87
EXIT_ORPHANED = 88
EXIT_INTERNAL = 89

BASELINE_ALLOWANCE_MB = 256
"""Address space granted on top of a function's `memory_mb` for the interpreter, the
imported runtime (grpc, protobuf, OpenTelemetry) and gRPC's threads.

Measured on x86-64 Linux, glibc malloc capped at 2 arenas, 2 cores: a worker serving one
handler has a VmSize of ~182 MiB with 8 threads (~190 MiB after its first sync call
started a handler thread; its resident set is only ~40 MiB). RLIMIT_AS counts virtual
memory, so the allowance covers that baseline with ~65 MiB of headroom; each handler
thread adds `THREAD_ALLOWANCE_MB` on top (see `address_space_limit`)."""

THREAD_ALLOWANCE_MB = 8
"""Per allowed concurrent invocation: a handler thread's stack (8 MiB by default)."""

_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded once, in the template: forked workers inherit it.
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG),
    then exit with EXIT_ORPHANED at once if the parent is already gone (it may have died
    before the request took effect: then we were re-parented and no signal will come)."""
    if _libc().prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected_parent:
        os._exit(EXIT_ORPHANED)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas: each thread arena reserves 64 MiB of address space,
    which RLIMIT_AS counts even if it is never touched. Best effort (no-op off glibc)."""
    try:
        _libc().mallopt(_M_ARENA_MAX, arenas)
    except (AttributeError, OSError):
        pass


def address_space_limit(memory_mb: int, concurrency: int = 1) -> int:
    """RLIMIT_AS in bytes for a function configured with `memory_mb` and `concurrency`."""
    mb = memory_mb + BASELINE_ALLOWANCE_MB + THREAD_ALLOWANCE_MB * concurrency
    return mb * 1024 * 1024


def set_memory_limit(memory_mb: int, concurrency: int = 1) -> None:
    """Limit this process's address space (RLIMIT_AS) to `address_space_limit(...)`:
    allocations past it fail (MemoryError in Python code) instead of growing the process
    until the machine's OOM killer picks a victim, possibly the node."""
    limit = address_space_limit(memory_mb, concurrency)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
