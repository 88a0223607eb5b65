"""Rendering the cluster's supervision tree for `stoic status` and `stoic up`."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.tree import Tree


def status_tree(status: Any) -> Tree:
    """zones -> nodes -> pools -> instances, with health, lease age and restarts."""
    root = Tree("[bold]stoic cluster[/bold]")
    zones: dict[str, Tree] = {}
    for node in sorted(status.nodes, key=lambda n: (n.zone, n.node_id)):
        zone = zones.get(node.zone)
        if zone is None:
            zone = zones[node.zone] = root.add(f"[bold cyan]zone {node.zone}[/bold cyan]")
        health = "[green]healthy[/green]" if node.healthy else "[red]down[/red]"
        branch = zone.add(
            f"node [bold]{node.node_id}[/bold] {node.address} pid {node.pid} {health} "
            f"lease age {node.lease_age * 1000:.0f} ms")
        for pool in node.pools:
            colour = {"healthy": "green", "draining": "yellow"}.get(pool.state, "red")
            label = (f"{pool.function} [{colour}]{pool.state}[/{colour}] "
                     f"restarts {pool.restarts}")
            if pool.last_exit_reason:
                label += f" (last exit: {pool.last_exit_reason})"
            pb = branch.add(label)
            for inst in pool.instances:
                pb.add(f"{inst.id} pid {inst.pid} {inst.state} in-flight {inst.in_flight}")
    return root


def render_status(status: Any, console: Console | None = None) -> None:
    (console or Console()).print(status_tree(status))


def live_status(client: Any, cluster: Any, refresh: float = 1.0) -> None:
    """Show the live status until KeyboardInterrupt (Ctrl-C or SIGTERM)."""
    console = Console()
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        for _ in iter(int, 1):
            try:
                tree = status_tree(client.status(timeout=2.0))
            except Exception as exc:  # a node down: show it, keep going
                tree = Tree(f"[red]status unavailable: {exc}[/red]")
            alive = sum(1 for n in cluster.nodes if n.alive())
            tree.label = f"[bold]stoic cluster[/bold] ({alive}/{len(cluster.nodes)} node processes up; Ctrl-C to stop)"
            live.update(tree)
            time.sleep(refresh)  # the refresh period of the display
