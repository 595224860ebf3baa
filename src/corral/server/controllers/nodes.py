"""The node controller: expires node leases and marks nodes whose agent stopped
heartbeating `down`, their instances `lost` (the application controller then replaces them
elsewhere, since lost instances no longer count).

Leases live in the store, but time does not: this controller calls
`store.expire_leases(now)`. When a server starts it first renews every node's lease (as
Nomad resets heartbeat timers on leader election), so a server that was down longer than
the TTL does not declare every node dead the moment it is back.
"""

from __future__ import annotations

import dataclasses

from corral.model.instance import TERMINAL_STATES, InstanceState
from corral.model.node import NodeState
from corral.server import keys
from corral.server.context import ServerContext, heartbeat_ttl
from corral.server.controllers.base import Controller

__all__ = ["CONTROLLER", "reconcile_nodes", "renew_all_leases"]


async def renew_all_leases(ctx: ServerContext) -> None:
    alive, _ = await ctx.store.range(keys.NODES_ALIVE)
    now = ctx.clock.now()
    ttl = heartbeat_ttl(ctx.config, len(alive))
    for kv in alive:
        await ctx.store.lease_grant(int(kv.value), ttl, now=now)


async def reconcile_nodes(ctx: ServerContext) -> None:
    await ctx.store.expire_leases(now=ctx.clock.now())
    index = ctx.records.index
    await index.ready()
    # The index lists the nodes without a live lease: a pass never reads every node.
    down = [item for name in sorted(index.unalive)
            if (item := index.node(name)) is not None and item.record.state != NodeState.DOWN]
    if not down:
        return
    now = ctx.clock.now()
    for item in down:
        node = item.record
        txn = ctx.records.txn()
        txn.put(keys.node(node.name), dataclasses.replace(node, state=NodeState.DOWN),
                expect=item.mod_revision)
        txn.event("node", node.name, "down", f"node {node.name} missed its heartbeats "
                  "(lease expired): down")
        for inst_item in index.on_node(node.name):
            inst = inst_item.record
            if inst.state in TERMINAL_STATES:
                continue
            reason = f"node {node.name} is down"
            txn.put(keys.instance(inst.id), dataclasses.replace(
                inst, state=InstanceState.LOST, reason=reason, updated_at=now),
                expect=inst_item.mod_revision)
            txn.event("instance", inst.id, "lost", f"{inst.app}/{inst.service} instance "
                      f"{inst.id} lost: {reason}", {"app": inst.app, "namespace": inst.namespace,
                                                     "service": inst.service, "node": node.name})
        await txn.commit()


CONTROLLER = Controller(name="nodes", watches=(keys.NODES, keys.NODES_ALIVE),
                        reconcile=reconcile_nodes, resync=1.0)
