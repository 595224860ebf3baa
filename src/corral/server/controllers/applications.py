"""The application controller: keeps each service's instances at its desired count and
version, replacing outdated ones through the service's deployment, and removes what is no
longer wanted.

Per service, `server/rollout.py` decides the step (the rolling update's rules are there)
and this module applies it in one transaction per application: new pending instances (the
scheduler places them), stop requests (never-placed instances become `stopped` at once), and
the deployment record with its events. Scaling alone never replaces an instance:
`instances` is not part of the spec hash. An application being deleted has all its
instances stopped and running deployments cancelled; once no instance is left, its record,
versions, deployments, job states and runs are removed (the job controller cancels the
active runs first). Instances of kind `job` are the job controller's: the active reconcile
leaves them alone.

`depends_on` (`server/dependencies.py`): a service that has not started gets no instance
until its dependencies are ready (the application record keeps which services wait, so an
`app` event says so once, and another when the wait ends); each new instance carries its
dependencies' addresses (`Instance.dependency_env`); and a deleted application stops a
service only once the services that depend on it have stopped.

It returns how soon time alone changes a rollout (`min_healthy_time` passing, a deadline),
so the loop wakes then rather than at the next resync.

Neighbours: `server/api/apps.py` and `server/versions.py` write applications and start
deployments; the scheduler controller places pending instances; agents move instances
through their states.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict

from corral.model.app import Application, AppStatus
from corral.model.deployment import Deployment, DeploymentStatus, can_transition
from corral.model.instance import (
    TERMINAL_STATES,
    DesiredState,
    Instance,
    InstanceId,
    InstanceState,
)
from corral.model.job import JobRun
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.controllers.base import Controller
from corral.server.dependencies import (
    Unready,
    dependency_env,
    held_for_dependents,
    waiting_for,
    waiting_reason,
)
from corral.server.index import IdsInUse
from corral.server.records import Txn, Versioned
from corral.server.rollout import Step, Target, plan_service, runs_target, target_of
from corral.server.versions import latest_deployments, stage_reverts

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


def _new_instance(ctx: ServerContext, app: Application, target: Target, name: str, slot: int,
                  taken: IdsInUse, now: float, env: dict[str, str]) -> Instance:
    iid = ctx.new_id()
    while iid in taken:
        iid = ctx.new_id()
    taken.add(iid)
    spec = target.spec
    return Instance(
        id=InstanceId(iid), namespace=app.namespace, app=app.name, service=name, slot=slot,
        version=target.version, spec_hash=target.spec_hash, generation=target.generation,
        resources=spec.resources, port_names=tuple(p.name for p in spec.ports),
        static_ports={p.name: p.static for p in spec.ports if p.static is not None},
        driver=spec.isolation.driver, created_at=now, updated_at=now,
        reason="waiting for placement", dependency_env=env,
    )


def _put_deployment(txn: Txn, dep: Deployment, known: dict[str, Versioned[Deployment]]) -> None:
    item = known.get(dep.id)
    if item is not None and not can_transition(item.record.status, dep.status):
        raise RuntimeError(f"deployment {dep.id}: no transition from {item.record.status} "
                           f"to {dep.status}")
    txn.put(keys.deployment(dep.namespace, dep.app, dep.service, dep.id), dep,
            expect=item.mod_revision if item else 0)


def _apply_step(ctx: ServerContext, txn: Txn, app: Application, name: str, step: Step,
                items: list[Versioned[Instance]], latest: Versioned[Deployment] | None,
                taken: IdsInUse, now: float, *, instances: bool,
                siblings: list[Instance]) -> None:
    """`siblings`: every instance of the application (the dependencies' among them)."""
    known: dict[str, Versioned[Deployment]] = {latest.record.id: latest} if latest else {}
    for dep in step.deployments:
        _put_deployment(txn, dep, known)
    records: dict[str, Deployment] = {d.id: d for d in step.deployments}
    for dep_id, event_type, message in step.events:
        txn.event("deployment", dep_id, event_type, message, _payload(records[dep_id]))
    if not instances:
        return
    by_id = {i.record.id: i for i in items}
    for iid, reason in step.stops:
        _stop(txn, by_id[iid], reason, now)
    target = target_of(app, name)
    if target is None:
        return
    stopping = {iid for iid, _ in step.stops}
    used = {i.record.slot for i in items if i.record.live and not i.record.migrate
            and i.record.id not in stopping and runs_target(i.record, target)}
    free = (s for s in range(step.create + len(items) + 1) if s not in used)
    for _ in range(step.create):
        slot = next(free)
        env = dependency_env(app, target.spec, slot, siblings)
        inst = _new_instance(ctx, app, target, name, slot, taken, now, env)
        txn.put(keys.instance(inst.id), inst, expect=0)
        txn.event("instance", inst.id, "pending", f"{app.name}/{name} instance {inst.id} "
                  f"created for version {target.version}",
                  {"app": app.name, "namespace": app.namespace, "service": name,
                   "version": target.version, "slot": inst.slot})


def _failed_now(step: Step, latest: Versioned[Deployment] | None) -> Deployment | None:
    """The service's deployment if this step fails it."""
    if latest is None or latest.record.final:
        return None
    return next((d for d in step.deployments if d.id == latest.record.id
                 and d.status == DeploymentStatus.FAILED), None)


def _payload(dep: Deployment) -> dict[str, object]:
    return {"app": dep.app, "namespace": dep.namespace, "service": dep.service,
            "version": dep.version, "status": dep.status, "reason": dep.reason,
            "desired": dep.desired, "healthy": dep.healthy, "cause": dep.cause}


def _reconcile_deleting(txn: Txn, app: Versioned[Application], items: list[Versioned[Instance]],
                        deployments: list[Versioned[Deployment]], now: float, *,
                        active_runs: int = 0) -> None:
    """`active_runs`: job runs the job controller has not cancelled yet; the application
    and its job records stay until it has (so every run ends recorded)."""
    record = app.record
    remaining = active_runs
    held = held_for_dependents(record.spec.services, [i.record for i in items])
    for item in items:
        inst = item.record
        if inst.state in TERMINAL_STATES or inst.node is None:
            txn.delete(keys.instance(inst.id), expect=item.mod_revision)
        elif inst.desired == DesiredState.RUN and inst.service not in held:
            _stop(txn, item, f"application {record.name} deleted", now)
            remaining += 1
        else:
            remaining += 1
    for dep_item in deployments:
        dep = dep_item.record
        if not dep.final:
            dep = dataclasses.replace(dep, status=DeploymentStatus.CANCELLED,
                                      reason="application deleted", updated_at=now)
            _put_deployment(txn, dep, {dep.id: dep_item})
            txn.event("deployment", dep.id, "cancelled", f"{dep.app}/{dep.service} deployment "
                      f"{dep.id} (version {dep.version}) cancelled: application deleted",
                      _payload(dep))
    if remaining == 0:
        txn.delete(keys.app(record.namespace, record.name), expect=app.mod_revision)
        txn.delete(keys.app_versions(record.namespace, record.name), prefix=True)
        txn.delete(keys.app_deployments(record.namespace, record.name), prefix=True)
        txn.delete(keys.app_job_states(record.namespace, record.name), prefix=True)
        txn.delete(keys.app_job_runs(record.namespace, record.name), prefix=True)
        txn.event("app", f"{record.namespace}/{record.name}", "deleted",
                  f"application {record.name} deleted")


def _note_waits(txn: Txn, app: Versioned[Application],
                waits: dict[str, tuple[Unready, ...]]) -> None:
    """Keep in the application record which services wait for their dependencies, with an
    event when one starts waiting and when its wait ends: once each, not on every pass."""
    record = app.record
    now_waiting = {name: tuple(u.service for u in w) for name, w in waits.items()}
    if now_waiting == record.waiting:
        return
    txn.put(keys.app(record.namespace, record.name),
            dataclasses.replace(record, waiting=now_waiting), expect=app.mod_revision)
    key = f"{record.namespace}/{record.name}"
    for name in sorted(now_waiting.keys() - record.waiting.keys()):
        reason = waiting_reason(waits[name])
        txn.event("app", key, "waiting", f"{record.name}/{name} {reason}",
                  {"app": record.name, "namespace": record.namespace, "service": name,
                   "waiting_for": list(now_waiting[name]), "reason": reason})
    for name in sorted(record.waiting.keys() - now_waiting.keys()):
        if name in record.spec.services:
            txn.event("app", key, "dependencies-ready",
                      f"{record.name}/{name}: dependencies ready "
                      f"({', '.join(record.waiting[name])}); starting",
                      {"app": record.name, "namespace": record.namespace, "service": name,
                       "dependencies": list(record.waiting[name])})


async def _reconcile_active(ctx: ServerContext, txn: Txn, app: Versioned[Application],
                            items: list[Versioned[Instance]],
                            deployments: list[Versioned[Deployment]], taken: IdsInUse,
                            now: float) -> list[float]:
    record = app.record
    by_service: dict[str, list[Versioned[Instance]]] = defaultdict(list)
    for item in items:
        by_service[item.record.service].append(item)
    latest = latest_deployments(deployments)
    siblings = [i.record for i in items]
    steps: dict[str, Step] = {}
    waits = {name: w for name in sorted(record.spec.services)
             if (w := waiting_for(record, name, siblings))}
    for name in sorted(set(record.spec.services) | set(by_service) | set(latest)):
        newest = latest.get(name)
        steps[name] = plan_service(
            namespace=record.namespace, app=record.name, service=name,
            target=target_of(record, name), latest=newest.record if newest else None,
            instances=[i.record for i in by_service.get(name, [])], now=now,
            new_id=ctx.new_id,
            waiting=waiting_reason(waits[name]) if name in waits else "")
    failed = [d for name, step in steps.items()
              if (d := _failed_now(step, latest.get(name))) is not None]
    revert = ctx.records.txn()  # committed with the rest, after it (events in order)
    reverted = await stage_reverts(ctx.records, revert, current=app, failed=failed,
                                   deployments=deployments, now=now,
                                   new_id=ctx.new_id) if failed else None
    for name, step in steps.items():
        # A service being reverted waits for the next round to act on its instances: this
        # step was planned for the version that just failed.
        hold = reverted is not None and any(d.service == name for d in reverted.deployments)
        _apply_step(ctx, txn, record, name, step, by_service.get(name, []), latest.get(name),
                    taken, now, instances=not hold, siblings=siblings)
    if reverted is None:  # a revert rewrites the application record: next round
        _note_waits(txn, app, waits)
    txn.merge(revert)
    return [s.wake_at for s in steps.values() if s.wake_at is not None]


async def _reconcile_app(ctx: ServerContext, app: Versioned[Application],
                         items: list[Versioned[Instance]],
                         deployments: list[Versioned[Deployment]], taken: IdsInUse
                         ) -> float | None:
    now = ctx.clock.now()
    txn = ctx.records.txn()
    wake: list[float] = []
    if app.record.status == AppStatus.DELETING:
        runs, _ = await ctx.records.scan(JobRun, keys.app_job_runs(app.record.namespace,
                                                                   app.record.name))
        _reconcile_deleting(txn, app, items, deployments, now,
                            active_runs=sum(1 for r in runs if r.record.active))
    else:
        # A job's instances belong to the job controller (`controllers/jobs.py`).
        services = [i for i in items if i.record.kind != "job"]
        wake = await _reconcile_active(ctx, txn, app, services, deployments, taken, now)
    if txn.ops:
        await txn.commit()  # a lost race is retried on the wake-up the winner causes
    return min(wake, default=None)


@dataclasses.dataclass(slots=True)
class _Seen:
    """Per application, what its last pass was given and when time alone changes it."""

    # revisions of the app record, of its newest deployment change, of its newest instance
    # change; and how many deployments it has
    inputs: tuple[int, int, int, int]
    due: float | None  # when time alone changes its rollout (None: never)


@dataclasses.dataclass(slots=True)
class _Memory:
    seen: dict[tuple[str, str], _Seen] = dataclasses.field(default_factory=dict)
    full_at: float = float("-inf")  # the last pass that reconciled every application


async def reconcile_applications(ctx: ServerContext) -> float | None:
    """Returns how soon time alone changes a rollout (a new instance ready, a deadline).

    An application is reconciled when its record, one of its deployments or one of its
    instances changed since its last pass, when a deadline it returned has come, or when
    it is being deleted; and every application at least once per resync period. A pass
    then costs the applications that changed, not every instance of the cluster (a rollout
    of one application no longer re-plans the other 99), and the loop yields between
    applications so one large pass never stalls the API."""
    memory: _Memory = ctx.controller_state.setdefault("applications", _Memory())
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    deployments, _ = await ctx.records.scan(Deployment, keys.DEPLOYMENTS)
    index = ctx.records.index
    await index.ready()
    taken = IdsInUse(index)
    deps_by_app: dict[tuple[str, str], list[Versioned[Deployment]]] = defaultdict(list)
    for dep in deployments:
        deps_by_app[(dep.record.namespace, dep.record.app)].append(dep)
    now = ctx.clock.now()
    full = now - memory.full_at >= CONTROLLER.resync
    if full:
        memory.full_at = now
    known = set()
    wake: list[float] = []
    for app in apps:
        ident = (app.record.namespace, app.record.name)
        known.add(ident)
        deps = deps_by_app.get(ident, [])
        inputs = (app.mod_revision, max((d.mod_revision for d in deps), default=0),
                  index.app_revision(*ident), len(deps))
        seen = memory.seen.get(ident)
        if not full and seen is not None and seen.inputs == inputs and \
                (seen.due is None or seen.due > ctx.clock.now()) and \
                app.record.status != AppStatus.DELETING:
            if seen.due is not None:
                wake.append(seen.due)
            continue
        # Instances read after the last await (the index moves only between awaits).
        at = await _reconcile_app(ctx, app, index.of_app(*ident), deps, taken)
        # Its own writes change its inputs: the next pass looks once more and, finding
        # nothing to do, remembers the inputs it then saw.
        memory.seen[ident] = _Seen(inputs=inputs, due=at)
        if at is not None:
            wake.append(at)
        await asyncio.sleep(0)
    for ident in set(memory.seen) - known:
        del memory.seen[ident]
    # Instances of an application that no longer exists (e.g. removed by hand): stop them.
    now = ctx.clock.now()
    txn = ctx.records.txn()
    for ident in index.apps():
        if ident in known:
            continue
        for item in index.of_app(*ident):
            if item.record.state in TERMINAL_STATES:
                continue
            if item.record.desired == DesiredState.RUN:
                _stop(txn, item, f"application {ident[1]} no longer exists", now)
    if txn.ops:
        await txn.commit()
    return max(0.0, min(wake) - now) if wake else None


CONTROLLER = Controller(name="applications",
                        watches=(keys.APPS, keys.INSTANCES, keys.DEPLOYMENTS),
                        reconcile=reconcile_applications)
