"""Where a function's instances live: a pure function of the live membership.

Each function keeps instances in at least `min_zones` zones (default 2) so that losing a
zone never leaves it without an instance. Zones are ranked per function by rendezvous
(highest-random-weight) hashing, so every node computes the same answer from the same
membership without talking to the others, and a zone loss moves only the functions that
zone hosted. Inside a chosen zone, the node ranked first by the same hashing hosts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """A live node as placement sees it."""

    node_id: str
    zone: str


def _weight(function: str, key: str) -> int:
    digest = hashlib.blake2b(f"{function}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank_zones(function: str, zones: Iterable[str]) -> list[str]:
    """All zones, best first, for `function`."""
    return sorted(set(zones), key=lambda z: (-_weight(function, z), z))


def hosting_nodes(function: str, min_zones: int, members: Sequence[Member]) -> list[Member]:
    """The nodes that should run instances of `function`: one node in each of the
    `min_zones` best-ranked live zones (every zone when `min_zones` is 0 or exceeds them)."""
    zones = rank_zones(function, (m.zone for m in members))
    if 0 < min_zones < len(zones):
        zones = zones[:min_zones]
    chosen: list[Member] = []
    for zone in zones:
        in_zone = [m for m in members if m.zone == zone]
        chosen.append(max(in_zone, key=lambda m: (_weight(function, m.node_id), m.node_id)))
    return chosen


def should_host(function: str, min_zones: int, me: Member, members: Sequence[Member]) -> bool:
    """Whether node `me` should run instances of `function` (`me` counts as live)."""
    everyone = list(members) if me in members else [*members, me]
    return me in hosting_nodes(function, min_zones, everyone)
