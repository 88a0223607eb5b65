"""Function actor processes: the worker process itself and the node side that spawns it.

- `ForkServer` (node side): spawns workers by forking a pre-imported template process,
  or a fresh interpreter when the template is unavailable.
- `WorkerProcess` (node side): one running worker; implements `runtime.Child`.
- `python -m runtime._worker serve|template ...`: the process entry points.
"""

from runtime._worker._limits import (
    BASELINE_ALLOWANCE_MB,
    EXIT_MEMORY,
    EXIT_START_FAILED,
    address_space_limit,
)
from runtime._worker._process import ForkServer, WorkerProcess, WorkerStartFailed, exit_reason
from runtime._worker._serve import WorkerConfig

__all__ = [
    "ForkServer",
    "WorkerProcess",
    "WorkerStartFailed",
    "WorkerConfig",
    "exit_reason",
    "address_space_limit",
    "BASELINE_ALLOWANCE_MB",
    "EXIT_MEMORY",
    "EXIT_START_FAILED",
]
