"""The plan applier: the only place scheduling decisions become writes.

The scheduler decided on a snapshot; by now the world may have moved. Before committing,
the applier re-reads nodes and instances and re-checks every placement against the
current state (the instance is still pending and unchanged, the node is still ready, its
resources and ports still free counting every placement committed before it in this plan),
as Nomad's `plan_apply` re-validates before the Raft commit. Placements that no longer
hold are dropped and retried on the next pass. The rest commit in one transaction, each
guarded by the instance's mod_revision.
"""

from __future__ import annotations

import dataclasses
import logging

from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler import Plan, Snapshot, node_usage
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.records import Versioned

__all__ = ["apply_plan"]

log = logging.getLogger(__name__)


async def apply_plan(ctx: ServerContext, plan: Plan) -> tuple[int, int]:
    """Commit what still holds. Returns (placed, dropped)."""
    if not plan.placements and not plan.failures:
        return (0, 0)
    node_items, _ = await ctx.records.scan(Node, keys.NODES)
    inst_items, _ = await ctx.records.scan(Instance, keys.INSTANCES)
    nodes = {n.record.name: n.record for n in node_items}
    instances: dict[str, Versioned[Instance]] = {i.record.id: i for i in inst_items}
    usage = node_usage(Snapshot(nodes=tuple(nodes.values()),
                                instances=tuple(i.record for i in inst_items)))
    cpu_used = {name: u.cpu_milli for name, u in usage.items()}
    mem_used = {name: u.memory for name, u in usage.items()}
    ports_used = {name: set(u.ports) for name, u in usage.items()}
    now = ctx.clock.now()
    txn = ctx.records.txn()
    placed = dropped = 0
    for p in plan.placements:
        item = instances.get(p.instance_id)
        node = nodes.get(p.node)
        if item is None or node is None:
            dropped += 1
            continue
        inst = item.record
        need_cpu = round(inst.resources.cpu * 1000)
        wanted = set(p.ports.values())
        if (inst.node is not None or inst.state != InstanceState.PENDING
                or inst.desired != DesiredState.RUN or node.state != NodeState.READY
                or cpu_used.get(node.name, 0) + need_cpu > round(node.capacity.cpu * 1000)
                or mem_used.get(node.name, 0) + inst.resources.memory > node.capacity.memory
                or wanted & ports_used.get(node.name, set())
                or wanted & set(node.reserved_ports)
                or len(wanted) != len(p.ports)):
            dropped += 1
            continue
        cpu_used[node.name] = cpu_used.get(node.name, 0) + need_cpu
        mem_used[node.name] = mem_used.get(node.name, 0) + inst.resources.memory
        ports_used.setdefault(node.name, set()).update(wanted)
        new = dataclasses.replace(inst, node=node.name, address=node.address,
                                  ports=dict(p.ports), state=InstanceState.SCHEDULED,
                                  reason="", updated_at=now)
        txn.put(keys.instance(inst.id), new, expect=item.mod_revision)
        ports = ", ".join(f"{k}={v}" for k, v in sorted(p.ports.items()))
        txn.event("instance", inst.id, "scheduled",
                  f"{inst.app}/{inst.service} instance {inst.id} scheduled on {node.name}"
                  + (f" ({ports})" if ports else ""),
                  {"app": inst.app, "namespace": inst.namespace, "service": inst.service,
                   "node": node.name, "ports": dict(p.ports)})
        placed += 1
    for f in plan.failures:
        item = instances.get(f.instance_id)
        if item is None or item.record.reason == f.reason or item.record.node is not None:
            continue
        inst = item.record
        txn.put(keys.instance(inst.id), dataclasses.replace(inst, reason=f.reason,
                                                            updated_at=now),
                expect=item.mod_revision)
        txn.event("instance", inst.id, "placement-failed",
                  f"{inst.app}/{inst.service} instance {inst.id} cannot be placed: {f.reason}",
                  {"app": inst.app, "namespace": inst.namespace, "service": inst.service,
                   "reason": f.reason, "dimensions": dict(f.dimensions)})
    if txn.ops and await txn.commit() is None:
        log.info("plan lost a race with another write; it will be recomputed")
        return (0, placed + dropped)
    return (placed, dropped)
