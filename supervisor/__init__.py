"""Stoic's control plane: supervision trees, zones, the node, the cluster, the CLI.

Built on `runtime`; never sees protobuf. Each section re-exports one part's public API.
"""

__all__: list[str] = []

# --- supervision (issue 2) ---
from supervisor._child_spec import (  # noqa: E402
    BRUTAL_KILL,
    INFINITY,
    Backoff,
    ChildSpec,
    InvalidChildSpec,
    Restart,
    Shutdown,
)
from supervisor._restart_policy import (  # noqa: E402
    RestartCheck,
    RestartIntensity,
    RestartStrategy,
    affected_children,
    backoff_delay,
    record_restart,
    should_restart,
)
from supervisor._supervisor import (  # noqa: E402
    ChildInfo,
    ChildNotFound,
    ChildRunning,
    ChildStartError,
    Report,
    Supervisor,
    SupervisorSpec,
)

__all__ += [
    "BRUTAL_KILL", "INFINITY", "Backoff", "ChildSpec", "InvalidChildSpec", "Restart",
    "Shutdown", "RestartCheck", "RestartIntensity", "RestartStrategy", "affected_children",
    "backoff_delay", "record_restart", "should_restart", "ChildInfo", "ChildNotFound",
    "ChildRunning", "ChildStartError", "Report", "Supervisor", "SupervisorSpec",
]

# --- node, pools, router (issue 3) ---

# --- cluster, membership (issue 5) ---
