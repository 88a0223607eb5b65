"""Stoic's control plane: supervision trees, zones, the node, the cluster, the CLI.

Built on `runtime`; never sees protobuf. Each section re-exports one part's public API.
"""

__all__: list[str] = []

# --- supervision (issue 2) ---

# --- node, pools, router (issue 3) ---

# --- cluster, membership (issue 5) ---
