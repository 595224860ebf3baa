"""The scheduling controller: finds pending instances, asks the pure scheduler for a plan
over a snapshot of nodes and instances, and hands the plan to the applier.

Woken by changes to instances and nodes (a node joining may make a pending instance
placeable), and every few seconds anyway.

Each pass that placed anything logs one line (`scheduling pass`) with the batch
size and where its time went: `schedule_seconds` is the pure `schedule()` alone (what
`bench/c1m.py` divides placements by), `snapshot_seconds` reading the snapshot, and
`apply_seconds` the plan applier's re-check and commit.
"""

from __future__ import annotations

import logging
import time

from corral.model.app import Application
from corral.model.application import PlacementSpec
from corral.model.instance import Instance
from corral.model.node import Node
from corral.scheduler import Snapshot, request_for, schedule
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.plan_apply import apply_plan

__all__ = ["CONTROLLER", "reconcile_scheduling"]

log = logging.getLogger(__name__)


async def reconcile_scheduling(ctx: ServerContext) -> None:
    # perf_counter only measures, for the log line: no decision depends on it.
    started = time.perf_counter()
    index = ctx.records.index
    await index.ready()
    # The index knows which instances wait and what every node holds: a pass costs
    # O(nodes + pending), not a read of every instance (server/index.py).
    waiting = [item.record for iid in index.pending
               if (item := index.instance(iid)) is not None]
    pending = sorted(waiting, key=lambda i: (i.created_at, i.app, i.service, i.slot))
    if not pending:
        return
    app_items, _ = await ctx.records.scan(Application, keys.APPS)
    apps = {(a.record.namespace, a.record.name): a.record for a in app_items}
    # Read after the last await, so the nodes, the instances and the usage of the snapshot
    # are the store at one revision (the index changes only between awaits).
    node_items, _ = await ctx.records.scan(Node, keys.NODES)

    def placement(inst: Instance) -> PlacementSpec:
        app = apps.get((inst.namespace, inst.app))
        svc = app.spec.services.get(inst.service) if app else None
        return svc.placement if svc else PlacementSpec()

    # Usage per node and, for the services placed, their counts per node come from the
    # index: the snapshot needs no instance records at all.
    services = {(i.namespace, i.app, i.service) for i in pending}
    snapshot = Snapshot(nodes=tuple(n.record for n in node_items), instances=(),
                        usage=index.usage(), placed=index.placed(services))
    requests = [request_for(i, placement(i)) for i in pending]
    scheduling = time.perf_counter()
    plan = schedule(snapshot, requests)
    applying = time.perf_counter()
    placed, dropped = await apply_plan(ctx, plan)
    done = time.perf_counter()
    # Quiet while nothing moves (pending instances that fit nowhere are retried often).
    log.log(logging.INFO if placed or dropped else logging.DEBUG, "scheduling pass", extra={
        "requests": len(requests), "placed": placed, "dropped": dropped,
        "failed": len(plan.failures), "nodes": len(snapshot.nodes),
        "instances": len(index.instances.items),
        "snapshot_seconds": round(scheduling - started, 6),
        "schedule_seconds": round(applying - scheduling, 6),
        "apply_seconds": round(done - applying, 6)})


CONTROLLER = Controller(name="scheduling", watches=(keys.INSTANCES, keys.NODES),
                        reconcile=reconcile_scheduling, resync=5.0)
