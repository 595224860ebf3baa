"""The rollout: what one service's instances and its deployment should do next.

Pure (no store, no clock): `plan_service` reads the service's target (its current spec and
restart generation), its latest deployment and its instances, and returns a `Step`: how many
new instances to create, which to stop and why, the deployment record as it should now be,
and when time alone will change the answer. `controllers/applications.py` applies steps.

Rolling update, start before stop (Kubernetes' maxSurge with maxUnavailable 0), with
D = `instances`, P = `update.max_parallel`, S = `update.max_surge`:
- an instance is *ready* once it has been healthy (running, for a service without a health
  check) for `min_healthy_time`; once ready, it counts as ready for the whole deployment;
- an old instance stops only when a ready new one takes its place: old + ready new never
  drops below D. With `max_surge: 0` there is no room to start first, so up to P old
  instances stop before their replacements start (Nomad's order; capacity drops by P);
- at most P new instances are not ready at a time, and old + new never exceed D + S;
- a new instance not ready `healthy_deadline` after it was created, or no instance becoming
  ready for `progress_deadline`, fails the deployment. A failed (or cancelled) deployment
  rolls no further: its old instances keep running, and the new ones beyond D stop first;
- with `canary: N` (and old instances to replace), N new instances start beside the old
  ones and the rollout waits for a promotion; the progress deadline does not run while the
  ready canaries wait.
Instances that are needed regardless (a lost one, a scale-up) are created at once.

A service that has not started and waits for its dependencies (`waiting`, decided by
`server/dependencies.py`) gets no instance; its deployment shows the wait as its reason,
and its progress deadline starts again when the wait ends.

Neighbours: `model/deployment.py` (the record and its states), `server/api/apps.py` (shows
readiness with `is_ready`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from corral.model.app import Application
from corral.model.application import ServiceSpec, service_hash
from corral.model.deployment import Deployment, DeploymentId, DeploymentStatus
from corral.model.instance import TERMINAL_STATES, DesiredState, Instance, InstanceId, InstanceState

__all__ = ["WAITING_PREFIX", "Step", "Target", "is_ready", "new_deployment", "plan_service",
           "ready_at", "runs_target", "target_of", "targets"]

_UP = (InstanceState.RUNNING, InstanceState.HEALTHY)
_BAD = (InstanceState.UNHEALTHY, InstanceState.FAILED, InstanceState.EXITED)
# How the reason of a service that waits for its dependencies begins.
WAITING_PREFIX = "waiting for dependencies: "


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What a service's instances should run now."""

    version: int
    spec: ServiceSpec
    spec_hash: str
    generation: int


def target_of(app: Application, service: str) -> Target | None:
    spec = app.spec.services.get(service)
    if spec is None:
        return None
    return Target(version=app.version, spec=spec, spec_hash=service_hash(spec),
                  generation=app.generations.get(service, 0))


def runs_target(inst: Instance, target: Target) -> bool:
    return inst.spec_hash == target.spec_hash and inst.generation == target.generation


def _healthy_since(inst: Instance, spec: ServiceSpec) -> float | None:
    if inst.desired != DesiredState.RUN:
        return None
    if spec.health is not None:
        if inst.state != InstanceState.HEALTHY:
            return None
        # An instance reported healthy by an older server has no healthy_at.
        return inst.healthy_at if inst.healthy_at is not None else inst.updated_at
    return inst.started_at if inst.state in _UP else None


def ready_at(inst: Instance, spec: ServiceSpec) -> float | None:
    """When the instance is (or was) ready if it stays as it is; None: not on its way."""
    since = _healthy_since(inst, spec)
    return None if since is None else since + spec.update.min_healthy_time


def is_ready(inst: Instance, spec: ServiceSpec, now: float) -> bool:
    """Healthy (with a health check) or running (without one) for `min_healthy_time`
    (Nomad's rule for a deployment's allocations)."""
    at = ready_at(inst, spec)
    return at is not None and now >= at


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    create: int = 0  # new instances of the target to create
    stops: tuple[tuple[InstanceId, str], ...] = ()  # instance, reason
    deployments: tuple[Deployment, ...] = ()  # records to write (new or changed)
    events: tuple[tuple[str, str, str], ...] = ()  # deployment id, event type, message
    wake_at: float | None = None  # when the answer changes by time alone


def _stop_order(inst: Instance) -> tuple[int, int, int]:
    # Never-placed first, then those not running, then the highest slot.
    return (0 if inst.node is None else 1, 1 if inst.state in _UP else 0, -inst.slot)


def _first(instances: Sequence[Instance], n: int, reason: str
           ) -> list[tuple[InstanceId, str]]:
    return [(i.id, reason) for i in sorted(instances, key=_stop_order)[:max(n, 0)]]


def _label(dep: Deployment) -> str:
    return f"{dep.app}/{dep.service} deployment {dep.id} (version {dep.version})"


@dataclass(frozen=True, slots=True)
class _Split:
    new: list[Instance]  # live, runs the target, not migrating
    old: list[Instance]  # live, runs something else, not migrating
    migrating: list[Instance]


def _split(instances: Sequence[Instance], target: Target) -> _Split:
    live = [i for i in instances
            if i.desired == DesiredState.RUN and i.state not in TERMINAL_STATES]
    return _Split(new=[i for i in live if not i.migrate and runs_target(i, target)],
                  old=[i for i in live if not i.migrate and not runs_target(i, target)],
                  migrating=[i for i in live if i.migrate])


def _since(inst: Instance, dep: Deployment) -> float:
    # An instance older than the deployment (a revert to the spec it already runs) gets the
    # whole healthy_deadline too.
    return max(inst.created_at, dep.created_at)


def _assess(dep: Deployment, target: Target, split: _Split, now: float, waiting: str
            ) -> tuple[Deployment, list[tuple[str, str, str]], float | None]:
    """The running deployment's record brought up to date: counts, readiness, and whether it
    succeeded or failed. Returns it with its events and the next time-driven change.
    `waiting`: why the service may not start yet (its progress deadline does not run)."""
    update = target.spec.update
    desired = target.spec.instances
    ready_ids = set(dep.ready) | {i.id for i in split.new if is_ready(i, target.spec, now)}
    ready_new = [i for i in split.new if i.id in ready_ids]
    pending = [i for i in split.new if i.id not in ready_ids]
    progressed = len(ready_ids) > len(dep.ready)
    # The wait for dependencies just ended: the progress deadline starts now. (Not stored
    # as `now` during the wait, which would rewrite the record on every pass.)
    waited = not waiting and dep.reason.startswith(WAITING_PREFIX)
    unpromoted = dep.unpromoted and bool(split.old)
    goal = dep.canaries if unpromoted else desired
    new = dataclasses.replace(
        dep, desired=desired, placed=sum(1 for i in split.new if i.node is not None),
        healthy=len(ready_new), unhealthy=sum(1 for i in split.new if i.state in _BAD),
        ready=tuple(sorted(ready_ids)),
        progress_at=now if progressed or waited else dep.progress_at)
    events: list[tuple[str, str, str]] = []
    late = sorted((i for i in pending if now - _since(i, dep) >= update.healthy_deadline),
                  key=lambda i: (i.created_at, i.id))
    canaries_ready = unpromoted and len(ready_new) >= goal
    label = _label(dep)
    if waiting:
        new = dataclasses.replace(new, reason=waiting)
    elif late:
        i = late[0]
        why = f"{i.state}: {i.reason}" if i.reason else str(i.state)
        reason = (f"instance {i.id} not healthy within healthy_deadline "
                  f"{update.healthy_deadline:g}s ({why})")
        new = dataclasses.replace(new, status=DeploymentStatus.FAILED, reason=reason)
    elif not canaries_ready and now - new.progress_at >= update.progress_deadline:
        reason = (f"no progress within progress_deadline {update.progress_deadline:g}s: "
                  f"{len(ready_new)}/{goal} new instances ready")
        new = dataclasses.replace(new, status=DeploymentStatus.FAILED, reason=reason)
    elif not unpromoted and len(ready_new) >= desired and not split.old:
        new = dataclasses.replace(new, status=DeploymentStatus.SUCCESSFUL,
                                  reason=f"{len(ready_new)}/{desired} instances ready")
    elif canaries_ready:
        new = dataclasses.replace(
            new, reason=f"{len(ready_new)} canaries ready; waiting for `corral deployment "
                        f"promote {dep.app}/{dep.service}`")
    else:
        new = dataclasses.replace(new, reason=f"{len(ready_new)}/{goal} new instances ready")
    if new.status == DeploymentStatus.FAILED:
        events.append((dep.id, "failed", f"{label} failed: {new.reason}"))
    elif new.status == DeploymentStatus.SUCCESSFUL:
        events.append((dep.id, "successful", f"{label} successful: {new.reason}"))
    elif progressed:
        events.append((dep.id, "progress", f"{label}: {new.reason}"))
    wake: list[float] = []
    if not new.final and not waiting:
        for i in pending:
            at = ready_at(i, target.spec)
            if at is not None and at > now:
                wake.append(at)
            wake.append(_since(i, dep) + update.healthy_deadline)
        if not canaries_ready:
            wake.append(new.progress_at + update.progress_deadline)
    return new, events, min(wake, default=None)


def _roll(dep: Deployment, target: Target, split: _Split
          ) -> tuple[int, list[tuple[InstanceId, str]]]:
    """Creates and stops for a running deployment (its record already assessed)."""
    update = target.spec.update
    desired = target.spec.instances
    ready_ids = set(dep.ready)
    ready_new = [i for i in split.new if i.id in ready_ids]
    pending = [i for i in split.new if i.id not in ready_ids]
    old = split.old
    fill = max(0, desired - len(old) - len(split.new))  # needed whatever the rollout does
    if dep.unpromoted and old:
        wanted = max(dep.canaries, desired - len(old))
        extra = len(split.new) - wanted
        if extra > 0:
            return 0, _first(pending, extra, f"scaled down to {desired}")
        return wanted - len(split.new), []
    stops: list[tuple[InstanceId, str]] = []
    if len(split.new) > desired:  # scaled down mid-rollout: surplus new ones first
        surplus = len(split.new) - desired
        stops += _first(pending, surplus, f"scaled down to {desired}")
        stops += _first(ready_new, surplus - len(stops), f"scaled down to {desired}")
    unavailable = 0 if update.max_surge > 0 else update.max_parallel
    replace = min(len(old), max(0, len(old) + len(ready_new) - (desired - unavailable)))
    stops += _first(old, replace, f"replaced by version {dep.version} "
                                  f"(deployment {dep.id})")
    old_left = len(old) - replace
    roll = min(update.max_parallel - len(pending),
               desired + update.max_surge - old_left - len(split.new) - fill,
               desired - len(split.new) - fill)
    return fill + max(0, roll), stops


def _hold(desired: int, split: _Split, ready: set[str], why: str
          ) -> tuple[int, list[tuple[InstanceId, str]]]:
    """No rollout going on: keep `desired` live instances, creating the target's when short;
    beyond it stop new ones that never got ready, then old ones, then the rest."""
    total = len(split.new) + len(split.old)
    if total <= desired:
        return desired - total, []
    surplus = total - desired
    pending = [i for i in split.new if i.id not in ready]
    done = [i for i in split.new if i.id in ready]
    stops: list[tuple[InstanceId, str]] = []
    for group in (pending, split.old, done):
        stops += _first(group, surplus - len(stops), why)
    return 0, stops


def new_deployment(*, deployment_id: str, namespace: str, app: str, service: str,
                   target: Target, previous_version: int | None, cause: str, canaries: int,
                   now: float, reason: str = "") -> Deployment:
    return Deployment(
        id=DeploymentId(deployment_id), namespace=namespace, app=app, service=service,
        version=target.version, previous_version=previous_version, spec_hash=target.spec_hash,
        generation=target.generation, cause=cause, desired=target.spec.instances,
        canaries=canaries, reason=reason, created_at=now, updated_at=now, progress_at=now)


def targets(dep: Deployment, target: Target) -> bool:
    return (dep.spec_hash, dep.generation) == (target.spec_hash, target.generation)


def _cancel(dep: Deployment, reason: str, now: float
            ) -> tuple[Deployment, tuple[str, str, str]]:
    return (dataclasses.replace(dep, status=DeploymentStatus.CANCELLED, reason=reason,
                                updated_at=now),
            (dep.id, "cancelled", f"{_label(dep)} cancelled: {reason}"))


def plan_service(*, namespace: str, app: str, service: str, target: Target | None,
                 latest: Deployment | None, instances: Sequence[Instance], now: float,
                 new_id: Callable[[], str], waiting: str = "") -> Step:
    """The next step for one service. `latest`: its newest deployment, if any; `new_id`
    names a deployment this step has to start (old instances but no deployment on record);
    `waiting`: why the service, which has no live instance, may not start yet (a reason
    starting with `WAITING_PREFIX`): nothing is created."""
    records: list[Deployment] = []
    events: list[tuple[str, str, str]] = []
    if target is None:
        live = [i for i in instances
                if i.desired == DesiredState.RUN and i.state not in TERMINAL_STATES]
        if latest is not None and not latest.final:
            record, event = _cancel(latest, "service removed", now)
            records.append(record)
            events.append(event)
        return Step(stops=tuple((i.id, f"service {service} removed from the application")
                                for i in live),
                    deployments=tuple(records), events=tuple(events))
    split = _split(instances, target)
    desired = target.spec.instances
    dep = latest
    if dep is not None and not targets(dep, target):
        if not dep.final:  # cannot happen through the API, which supersedes in one txn
            record, event = _cancel(dep, "no longer the service's target", now)
            records.append(record)
            events.append(event)
        dep = None
    if dep is None and split.old:
        dep = new_deployment(
            deployment_id=new_id(), namespace=namespace, app=app, service=service,
            target=target, previous_version=max(i.version for i in split.old),
            cause="reconcile", canaries=0, now=now,
            reason="started by the application controller: no deployment on record")
        records.append(dep)
        events.append((dep.id, "created", f"{_label(dep)} started: {dep.reason}"))
    wake: float | None = None
    if dep is not None and not dep.final:
        assessed, evs, wake = _assess(dep, target, split, now, waiting)
        events += evs
        if dataclasses.replace(assessed, updated_at=dep.updated_at) != dep:
            assessed = dataclasses.replace(assessed, updated_at=now)
            records = [r for r in records if r.id != dep.id] + [assessed]
        dep = assessed
    if dep is not None and not dep.final:
        create, stops = _roll(dep, target, split)
    elif dep is not None and dep.status != DeploymentStatus.SUCCESSFUL:
        create, stops = _hold(desired, split, set(dep.ready),
                              f"deployment {dep.id} {dep.status}: not needed beside the "
                              "old instances")
    else:
        # Nothing to roll: every old instance goes (there are none after a successful
        # deployment), and the service keeps `instances` of its target.
        stops = [(i.id, f"replaced by version {target.version}") for i in split.old]
        create, more = _hold(desired, dataclasses.replace(split, old=[]),
                             {i.id for i in split.new}, f"scaled down to {desired}")
        stops += more
    # A migrating instance (its node drains) stops once the service has `instances`
    # running without it: capacity never drops while a node is drained.
    stopping = {i for i, _ in stops}
    up = sum(1 for i in split.new + split.old if i.state in _UP and i.id not in stopping)
    if up >= desired:
        stops += [(i.id, f"migrated off draining node {i.node}") for i in split.migrating]
    if waiting:
        create = 0
    return Step(create=create, stops=tuple(stops), deployments=tuple(records),
                events=tuple(events), wake_at=wake)
