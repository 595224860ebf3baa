"""The application controller: turns each application's desired instance counts into
instance records, and removes what is no longer wanted.

For each service it keeps exactly `instances` live instances of the current service spec:
it creates pending ones (the scheduler places them), asks for extra ones to stop (highest
slot first, never-placed ones before running ones), and replaces instances whose spec hash
is outdated (stop old, create new; issue 5 turns this into rolling deployments). Scaling
alone never replaces an instance: `instances` is not part of the spec hash.
An application being deleted has all its instances stopped; once none is left, its record
and versions are removed.

Neighbours: `server/api/apps.py` writes applications; the scheduler controller places
pending instances; agents move instances through their states.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from corral.model.app import Application, AppStatus
from corral.model.application import ServiceSpec, service_hash
from corral.model.instance import (
    TERMINAL_STATES,
    DesiredState,
    Instance,
    InstanceId,
    InstanceState,
)
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.records import Txn, Versioned

__all__ = ["CONTROLLER", "reconcile_applications"]


def _stop(txn: Txn, item: Versioned[Instance], reason: str, now: float) -> None:
    inst = item.record
    if inst.node is None or inst.state == InstanceState.PENDING:
        # Never placed: nothing runs, so it is stopped the moment it is no longer wanted.
        new = dataclasses.replace(inst, desired=DesiredState.STOP, state=InstanceState.STOPPED,
                                  reason=reason, updated_at=now)
        txn.put(keys.instance(inst.id), new, expect=item.mod_revision)
        txn.event("instance", inst.id, "stopped", f"{inst.app}/{inst.service} instance "
                  f"{inst.id} stopped before placement: {reason}",
                  {"app": inst.app, "namespace": inst.namespace, "service": inst.service,
                   "state": "stopped", "reason": reason})
        return
    new = dataclasses.replace(inst, desired=DesiredState.STOP, reason=reason, updated_at=now)
    txn.put(keys.instance(inst.id), new, expect=item.mod_revision)
    txn.event("instance", inst.id, "stop-requested", f"{inst.app}/{inst.service} instance "
              f"{inst.id} on {inst.node}: stop requested ({reason})",
              {"app": inst.app, "namespace": inst.namespace, "service": inst.service,
               "node": inst.node, "reason": reason})


def _stop_order(item: Versioned[Instance]) -> tuple[int, int, int]:
    inst = item.record
    placed = 0 if inst.node is None else 1
    running = 1 if inst.state in (InstanceState.RUNNING, InstanceState.HEALTHY) else 0
    return (placed, running, -inst.slot)


def _new_instance(ctx: ServerContext, app: Application, name: str, spec: ServiceSpec,
                  slot: int, taken: set[str], now: float) -> Instance:
    iid = ctx.new_id()
    while iid in taken:
        iid = ctx.new_id()
    taken.add(iid)
    return Instance(
        id=InstanceId(iid), namespace=app.namespace, app=app.name, service=name, slot=slot,
        version=app.version, spec_hash=service_hash(spec), resources=spec.resources,
        port_names=tuple(p.name for p in spec.ports),
        static_ports={p.name: p.static for p in spec.ports if p.static is not None},
        driver=spec.isolation.driver, created_at=now, updated_at=now,
        reason="waiting for placement",
    )


def _reconcile_service(ctx: ServerContext, txn: Txn, app: Application, name: str,
                       spec: ServiceSpec | None, items: list[Versioned[Instance]],
                       taken: set[str], now: float) -> None:
    wanted = [i for i in items if i.record.desired == DesiredState.RUN
              and i.record.state not in TERMINAL_STATES]
    if spec is None:
        for item in wanted:
            _stop(txn, item, f"service {name} removed from the application", now)
        return
    digest = service_hash(spec)
    current: list[Versioned[Instance]] = []
    migrating: list[Versioned[Instance]] = []
    for item in wanted:
        if item.record.spec_hash != digest:
            _stop(txn, item, f"replaced by version {app.version}", now)
        elif item.record.migrate:
            migrating.append(item)
        else:
            current.append(item)
    # A migrating instance (its node drains) stops once its replacements run: capacity
    # never drops below the desired count while a node is drained.
    running = sum(1 for i in current if i.record.state in (InstanceState.RUNNING,
                                                           InstanceState.HEALTHY))
    if running >= spec.instances:
        for item in migrating:
            _stop(txn, item, f"migrated off draining node {item.record.node}", now)
    if len(current) > spec.instances:
        for item in sorted(current, key=_stop_order)[: len(current) - spec.instances]:
            _stop(txn, item, f"scaled down to {spec.instances}", now)
    elif len(current) < spec.instances:
        used = {i.record.slot for i in current}
        free = (s for s in range(spec.instances * 2 + len(used)) if s not in used)
        for _ in range(spec.instances - len(current)):
            inst = _new_instance(ctx, app, name, spec, next(free), taken, now)
            txn.put(keys.instance(inst.id), inst, expect=0)
            txn.event("instance", inst.id, "pending", f"{app.name}/{name} instance {inst.id} "
                      f"created for version {app.version}",
                      {"app": app.name, "namespace": app.namespace, "service": name,
                       "version": app.version, "slot": inst.slot})


async def _reconcile_app(ctx: ServerContext, app: Versioned[Application],
                         items: list[Versioned[Instance]], taken: set[str]) -> None:
    now = ctx.clock.now()
    record = app.record
    txn = ctx.records.txn()
    if record.status == AppStatus.DELETING:
        remaining = 0
        for item in items:
            inst = item.record
            if inst.state in TERMINAL_STATES or inst.node is None:
                txn.delete(keys.instance(inst.id), expect=item.mod_revision)
            elif inst.desired == DesiredState.RUN:
                _stop(txn, item, f"application {record.name} deleted", now)
                remaining += 1
            else:
                remaining += 1
        if remaining == 0:
            txn.delete(keys.app(record.namespace, record.name), expect=app.mod_revision)
            txn.delete(keys.app_versions(record.namespace, record.name), prefix=True)
            txn.event("app", f"{record.namespace}/{record.name}", "deleted",
                      f"application {record.name} deleted")
    else:
        by_service: dict[str, list[Versioned[Instance]]] = defaultdict(list)
        for item in items:
            by_service[item.record.service].append(item)
        for name in sorted(set(record.spec.services) | set(by_service)):
            _reconcile_service(ctx, txn, record, name, record.spec.services.get(name),
                               by_service.get(name, []), taken, now)
    if txn.ops:
        await txn.commit()  # a lost race is retried on the wake-up the winner causes


async def reconcile_applications(ctx: ServerContext) -> None:
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    instances, _ = await ctx.records.scan(Instance, keys.INSTANCES)
    taken: set[str] = {i.record.id for i in instances}
    by_app: dict[tuple[str, str], list[Versioned[Instance]]] = defaultdict(list)
    for item in instances:
        by_app[(item.record.namespace, item.record.app)].append(item)
    known = set()
    for app in apps:
        ident = (app.record.namespace, app.record.name)
        known.add(ident)
        await _reconcile_app(ctx, app, by_app.get(ident, []), taken)
    # Instances of an application that no longer exists (e.g. removed by hand): stop them.
    now = ctx.clock.now()
    txn = ctx.records.txn()
    for ident, items in by_app.items():
        if ident in known:
            continue
        for item in items:
            if item.record.state in TERMINAL_STATES:
                continue
            if item.record.desired == DesiredState.RUN:
                _stop(txn, item, f"application {ident[1]} no longer exists", now)
    if txn.ops:
        await txn.commit()


CONTROLLER = Controller(name="applications", watches=(keys.APPS, keys.INSTANCES),
                        reconcile=reconcile_applications)
