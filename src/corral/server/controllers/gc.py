"""Garbage collection: forgets instances that ended long ago, events and deployments
beyond retention.

Stopped and lost instances stay visible to `corral ps -a` for `terminal_retention`
seconds; events are kept for replay by count and age (`server/event_retention.py`); the newest
`deployment_retention` deployments of each service are kept for `corral history` (a running
one always); the store keeps the last `history_retention` revisions of change history.
"""

from __future__ import annotations

from collections import defaultdict

from corral.model.deployment import Deployment
from corral.model.instance import TERMINAL_STATES
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.event_retention import prune_events

__all__ = ["CONTROLLER", "reconcile_gc"]


async def reconcile_gc(ctx: ServerContext) -> None:
    now = ctx.clock.now()
    index = ctx.records.index
    await index.ready()
    txn = ctx.records.txn()
    for iid in sorted(index.ended):  # the index lists the ended ones: no pass over all
        item = index.instance(iid)
        if item is None:
            continue
        inst = item.record
        if inst.state in TERMINAL_STATES and \
                now - inst.updated_at > ctx.config.terminal_retention:
            txn.delete(keys.instance(inst.id), expect=item.mod_revision)
    deployments, _ = await ctx.records.scan(Deployment, keys.DEPLOYMENTS)
    per_service: dict[tuple[str, str, str], list[Deployment]] = defaultdict(list)
    for dep_item in deployments:
        d = dep_item.record
        per_service[(d.namespace, d.app, d.service)].append(d)
    for deps in per_service.values():
        deps.sort(key=lambda d: (d.version, d.generation, d.created_at), reverse=True)
        for d in deps[ctx.config.deployment_retention:]:
            if d.final:
                txn.delete(keys.deployment(d.namespace, d.app, d.service, d.id))
    if txn.ops:
        await txn.commit()
    await prune_events(ctx)
    # Bound the store's change history; watchers further behind re-list (CompactedError).
    revision = await ctx.store.revision()
    if revision > ctx.config.history_retention:
        await ctx.store.compact(revision - ctx.config.history_retention)


CONTROLLER = Controller(name="gc", watches=(), reconcile=reconcile_gc, resync=60.0)
