"""The scheduling controller: finds pending instances, asks the pure scheduler for a plan
over a snapshot of nodes and instances, and hands the plan to the applier.

Woken by changes to instances and nodes (a node joining may make a pending instance
placeable), and every few seconds anyway.
"""

from __future__ import annotations

from corral.model.app import Application
from corral.model.application import PlacementSpec
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.node import Node
from corral.scheduler import Snapshot, request_for, schedule
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.plan_apply import apply_plan

__all__ = ["CONTROLLER", "reconcile_scheduling"]


async def reconcile_scheduling(ctx: ServerContext) -> None:
    inst_items, _ = await ctx.records.scan(Instance, keys.INSTANCES)
    pending = sorted((i.record for i in inst_items
                      if i.record.node is None and i.record.state == InstanceState.PENDING
                      and i.record.desired == DesiredState.RUN),
                     key=lambda i: (i.created_at, i.app, i.service, i.slot))
    if not pending:
        return
    node_items, _ = await ctx.records.scan(Node, keys.NODES)
    app_items, _ = await ctx.records.scan(Application, keys.APPS)
    apps = {(a.record.namespace, a.record.name): a.record for a in app_items}

    def placement(inst: Instance) -> PlacementSpec:
        app = apps.get((inst.namespace, inst.app))
        svc = app.spec.services.get(inst.service) if app else None
        return svc.placement if svc else PlacementSpec()

    snapshot = Snapshot(nodes=tuple(n.record for n in node_items),
                        instances=tuple(i.record for i in inst_items))
    plan = schedule(snapshot, [request_for(i, placement(i)) for i in pending])
    await apply_plan(ctx, plan)


CONTROLLER = Controller(name="scheduling", watches=(keys.INSTANCES, keys.NODES),
                        reconcile=reconcile_scheduling, resync=5.0)
