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
from collections import Counter

from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler import Plan
from corral.server import keys
from corral.server.context import ServerContext

__all__ = ["apply_plan"]

log = logging.getLogger(__name__)


async def apply_plan(ctx: ServerContext, plan: Plan) -> tuple[int, int]:
    """Commit what still holds. Returns (placed, dropped)."""
    if not plan.placements and not plan.failures:
        return (0, 0)
    index = ctx.records.index
    await index.ready()
    node_items, _ = await ctx.records.scan(Node, keys.NODES)
    nodes = {n.record.name: n.record for n in node_items}
    # The index is the store at its current revision, with what each node holds kept
    # current (server/index.py): re-checking costs the plan's size, not every instance.
    usage = index.usage()
    cpu_used = {name: u.cpu_milli for name, u in usage.items()}
    mem_used = {name: u.memory for name, u in usage.items()}
    ports_used: dict[str, set[int]] = {}  # filled for the nodes the plan names only
    now = ctx.clock.now()
    txn = ctx.records.txn()
    placed = 0
    why: Counter[str] = Counter()  # dropped placements by reason, for the log
    for p in plan.placements:
        item = index.instance(p.instance_id)
        node = nodes.get(p.node)
        if item is None or node is None:
            why["instance or node gone"] += 1
            continue
        inst = item.record
        need_cpu = round(inst.resources.cpu * 1000)
        wanted = set(p.ports.values())
        if node.name not in ports_used:
            held = usage.get(node.name)
            ports_used[node.name] = set(held.ports) if held is not None else set()
        reason = _stale(inst, node, need_cpu, cpu_used.get(node.name, 0),
                        mem_used.get(node.name, 0), wanted, ports_used[node.name], p.ports)
        if reason:
            why[reason] += 1
            continue
        cpu_used[node.name] = cpu_used.get(node.name, 0) + need_cpu
        mem_used[node.name] = mem_used.get(node.name, 0) + inst.resources.memory
        ports_used[node.name].update(wanted)
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
        item = index.instance(f.instance_id)
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
    dropped = sum(why.values())
    if dropped:
        log.info("plan re-check dropped placements", extra={"why": dict(why)})
    if txn.ops and await txn.commit() is None:
        log.info("plan lost a race with another write; it will be recomputed")
        return (0, placed + dropped)
    return (placed, dropped)


def _stale(inst: Instance, node: Node, need_cpu: int, cpu_used: int, mem_used: int,
           wanted: set[int], ports_used: set[int], ports: dict[str, int]) -> str:
    """Why a placement no longer holds ("" if it does)."""
    if inst.node is not None or inst.state != InstanceState.PENDING:
        return "instance no longer pending"
    if inst.desired != DesiredState.RUN:
        return "instance asked to stop"
    if node.state != NodeState.READY:
        return f"node {node.state}"
    if cpu_used + need_cpu > round(node.capacity.cpu * 1000):
        return "cpu"
    if mem_used + inst.resources.memory > node.capacity.memory:
        return "memory"
    if wanted & ports_used or wanted & set(node.reserved_ports) or len(wanted) != len(ports):
        return "ports"
    return ""
