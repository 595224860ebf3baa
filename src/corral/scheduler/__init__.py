"""The scheduler: `plan = schedule(snapshot, requests)`, with no I/O, clock or randomness.

It reads a frozen `Snapshot` (nodes and instances at one store revision) and returns a `Plan`
of placements and failures; the server's plan applier re-checks and commits it. Modules:
`snapshot` (input, per-node free resources), `feasibility` (which nodes, and why not:
resources, ports, driver, constraints), `colocation` (where each service's instances are, for
distinct_hosts and spread), `rank` (which is best), `ports` (which host ports), `schedule`
(the loop). The constraint language itself is `model/constraints.py`, shared with `spec/`.
"""

from __future__ import annotations

from corral.scheduler.feasibility import PlacementRequest, request_for
from corral.scheduler.schedule import Failure, Placement, Plan, schedule
from corral.scheduler.snapshot import NodeUsage, Snapshot, node_usage

__all__ = [
    "Failure", "NodeUsage", "Placement", "PlacementRequest", "Plan", "Snapshot", "node_usage",
    "request_for", "schedule",
]
