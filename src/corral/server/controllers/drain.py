"""The drain controller: moves instances off nodes being drained, a few at a time, then
makes the node ineligible (Nomad's node drainer).

```
  ready --drain--> draining --(no instance left, or deadline passed)--> ineligible
    ^                 |                                                    |
    +---uncordon------+----------------------------------------------------+
```
For each service with instances on a draining node, at most `update.max_parallel` are
marked `migrate` at a time; the application controller creates their replacements on other
nodes and stops each migrating instance once the service runs its desired count without
it. At the deadline every instance still on the node is stopped outright.

Neighbours: `server/api/nodes.py` (drain, cordon, uncordon), `controllers/applications.py`
(replaces migrating instances), the scheduler (places only on `ready` nodes).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from corral.model.app import Application
from corral.model.instance import TERMINAL_STATES, DesiredState, Instance
from corral.model.node import NodeState
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.records import Versioned

__all__ = ["CONTROLLER", "reconcile_drains"]


def _max_parallel(apps: dict[tuple[str, str], Application], inst: Instance) -> int:
    app = apps.get((inst.namespace, inst.app))
    svc = app.spec.services.get(inst.service) if app else None
    return svc.update.max_parallel if svc else 1


async def reconcile_drains(ctx: ServerContext) -> None:
    index = ctx.records.index
    await index.ready()
    # Only draining nodes and the nodes of migrating instances concern a drain, and the
    # index lists both: a pass costs what is draining, never a read of every node or
    # instance (it is woken by every instance change of the cluster).
    if not index.draining and not index.migrating:
        return
    apps = {(a.record.namespace, a.record.name): a.record
            for a in (await ctx.records.scan(Application, keys.APPS))[0]}
    # Read after the last await: nodes and instances at one revision.
    now = ctx.clock.now()
    concerned = set(index.draining)
    for iid in index.migrating:
        found = index.instance(iid)
        if found is not None and found.record.node is not None:
            concerned.add(found.record.node)
    on: dict[str, list[Versioned[Instance]]] = {
        name: [item for item in index.on_node(name)
               if item.record.desired == DesiredState.RUN
               and item.record.state not in TERMINAL_STATES]
        for name in concerned}
    txn = ctx.records.txn()
    for name in sorted(concerned):
        node_item = index.node(name)
        if node_item is None:
            continue
        node = node_item.record
        mine = on[node.name]
        if node.state != NodeState.DRAINING:
            # Uncordoned (or down) mid-drain: nothing there should migrate any more.
            for item in mine:
                if item.record.migrate and node.state == NodeState.READY:
                    txn.put(keys.instance(item.record.id),
                            dataclasses.replace(item.record, migrate=False, updated_at=now),
                            expect=item.mod_revision)
            continue
        if not mine:
            txn.put(keys.node(node.name), dataclasses.replace(
                node, state=NodeState.INELIGIBLE, drain_deadline=None),
                expect=node_item.mod_revision)
            txn.event("node", node.name, "drained",
                      f"node {node.name} drained: no instance left; it is ineligible")
            continue
        if node.drain_deadline is not None and now >= node.drain_deadline:
            for item in mine:
                inst = item.record
                txn.put(keys.instance(inst.id), dataclasses.replace(
                    inst, desired=DesiredState.STOP, updated_at=now,
                    reason=f"node {node.name} drain deadline passed"),
                    expect=item.mod_revision)
                txn.event("instance", inst.id, "stop-requested",
                          f"{inst.app}/{inst.service} instance {inst.id}: drain deadline of "
                          f"node {node.name} passed", _payload(inst, node.name))
            continue
        by_service: dict[tuple[str, str, str], list[Versioned[Instance]]] = defaultdict(list)
        for item in mine:
            r = item.record
            by_service[(r.namespace, r.app, r.service)].append(item)
        for items in by_service.values():
            moving = sum(1 for i in items if i.record.migrate)
            room = _max_parallel(apps, items[0].record) - moving
            for item in sorted((i for i in items if not i.record.migrate),
                               key=lambda i: i.record.slot)[:max(room, 0)]:
                inst = item.record
                txn.put(keys.instance(inst.id), dataclasses.replace(
                    inst, migrate=True, updated_at=now,
                    reason=f"migrating off draining node {node.name}"),
                    expect=item.mod_revision)
                txn.event("instance", inst.id, "migrating",
                          f"{inst.app}/{inst.service} instance {inst.id}: migrating off "
                          f"draining node {node.name}", _payload(inst, node.name))
    if txn.ops:
        await txn.commit()  # a lost race is retried on the wake-up the winner causes


def _payload(inst: Instance, node: str) -> dict[str, str]:
    return {"app": inst.app, "namespace": inst.namespace, "service": inst.service,
            "node": node}


CONTROLLER = Controller(name="drain", watches=(keys.NODES, keys.INSTANCES),
                        reconcile=reconcile_drains, resync=5.0)
