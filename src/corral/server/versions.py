"""Writing a new application version, and the deployments it starts, into one transaction.

Every path that changes what a service runs goes through here: `POST /v1/apps` (apply),
rollback, restart and the application controller's auto-revert. For each service whose
target changes (its spec hash, or its restart generation), one deployment starts and the
service's running deployment, if any, is cancelled as superseded; a service removed from
the spec has its running deployment cancelled. The caller commits; every write is guarded
by compare-and-swap, so a lost race writes nothing and the caller retries.

Neighbours: `server/api/apps.py`, `server/api/deployments.py`,
`controllers/applications.py`; `server/rollout.py` makes the records.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from corral.model.app import Application, AppVersion
from corral.model.application import ApplicationSpec, service_hash
from corral.model.codec import from_data, to_data
from corral.model.deployment import Deployment, DeploymentStatus
from corral.server import keys
from corral.server.diff import ServiceChange, diff_specs
from corral.server.records import Records, Txn, Versioned
from corral.server.rollout import new_deployment, target_of
from corral.store.base import KeyValue

__all__ = ["Staged", "last_successful", "latest_deployments", "load_version", "parse_version",
           "stage_restart", "stage_reverts", "stage_version"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Staged:
    app: Application
    changes: tuple[ServiceChange, ...]
    deployments: tuple[Deployment, ...]  # started


def parse_version(kv: KeyValue) -> AppVersion:
    data = json.loads(kv.value)
    if "spec" not in data:  # written by an older Corral: the bare spec, no time
        spec = from_data(ApplicationSpec, data)
        return AppVersion(version=int(kv.key.rsplit("/", 1)[1]), spec=spec)
    return from_data(AppVersion, data)


async def load_version(records: Records, namespace: str, name: str, version: int
                       ) -> AppVersion | None:
    kv = await records.store.get(keys.app_version(namespace, name, version))
    return None if kv is None else parse_version(kv)


def latest_deployments(items: Sequence[Versioned[Deployment]]
                       ) -> dict[str, Versioned[Deployment]]:
    """service -> its newest deployment. Versions and restart generations only grow, so
    the newest is the one with the highest (version, generation)."""
    latest: dict[str, Versioned[Deployment]] = {}
    for item in items:
        d = item.record
        seen = latest.get(d.service)
        if seen is None or (d.version, d.generation, d.created_at) > (
                seen.record.version, seen.record.generation, seen.record.created_at):
            latest[d.service] = item
    return latest


def _cancel(txn: Txn, item: Versioned[Deployment], reason: str, now: float) -> None:
    dep = dataclasses.replace(item.record, status=DeploymentStatus.CANCELLED, reason=reason,
                              updated_at=now)
    txn.put(keys.deployment(dep.namespace, dep.app, dep.service, dep.id), dep,
            expect=item.mod_revision)
    txn.event("deployment", dep.id, "cancelled",
              f"{dep.app}/{dep.service} deployment {dep.id} (version {dep.version}) "
              f"cancelled: {reason}", {"app": dep.app, "namespace": dep.namespace,
                                       "service": dep.service, "version": dep.version,
                                       "status": dep.status, "reason": reason})


def _start(txn: Txn, *, old: Application | None, app: Application, services: Sequence[str],
           deployments: Sequence[Versioned[Deployment]], cause: str, now: float,
           new_id: Callable[[], str], reason: str) -> tuple[Deployment, ...]:
    latest = latest_deployments(deployments)
    started: list[Deployment] = []
    for name in sorted(set(latest) | set(services)):
        running = latest.get(name)
        if running is not None and running.record.final:
            running = None
        target = target_of(app, name)
        if target is None:
            if running is not None:
                _cancel(txn, running, "service removed", now)
            continue
        if name not in services:
            continue
        before = old.spec.services.get(name) if old else None
        # Canaries guard a change to a running service; a first deployment has nothing
        # to protect, and a revert, a rollback or a restart should not wait for a person.
        canaries = target.spec.update.canary if (
            cause == "apply" and before is not None and before.instances > 0) else 0
        dep = new_deployment(deployment_id=new_id(), namespace=app.namespace, app=app.name,
                             service=name, target=target, cause=cause, canaries=canaries,
                             previous_version=old.version if before is not None and old
                             else None, now=now, reason=reason)
        if running is not None:
            _cancel(txn, running, f"superseded by deployment {dep.id} (version "
                                  f"{dep.version}, {cause})", now)
        txn.put(keys.deployment(app.namespace, app.name, name, dep.id), dep, expect=0)
        what = f"canary {canaries}, " if canaries else ""
        txn.event("deployment", dep.id, "created",
                  f"{app.name}/{name} deployment {dep.id} (version {dep.version}) started: "
                  f"{what}{cause}" + (f": {reason}" if reason else ""), to_data(dep))
        started.append(dep)
    return tuple(started)


def stage_version(txn: Txn, *, current: Versioned[Application] | None, spec: ApplicationSpec,
                  deployments: Sequence[Versioned[Deployment]], now: float,
                  new_id: Callable[[], str], cause: str = "apply", reason: str = ""
                  ) -> Staged:
    """`spec` as the application's next version (the caller checked it differs)."""
    old = current.record if current else None
    app = Application(name=spec.name, namespace=spec.namespace,
                      version=old.version + 1 if old else 1, spec=spec,
                      created_at=old.created_at if old else now, updated_at=now,
                      generations=dict(old.generations) if old else {},
                      waiting=dict(old.waiting) if old else {})
    changes = tuple(diff_specs(old.spec if old else None, spec))
    summary = ", ".join(f"{c.name} {c.change}" for c in changes if c.change != "unchanged")
    why = f" ({cause}{': ' + reason if reason else ''})" if cause != "apply" else ""
    txn.put(keys.app(spec.namespace, spec.name), app,
            expect=current.mod_revision if current else 0)
    txn.put(keys.app_version(spec.namespace, spec.name, app.version),
            AppVersion(version=app.version, spec=spec, created_at=now, cause=cause,
                       reason=reason), expect=0)
    txn.event("app", f"{spec.namespace}/{spec.name}", "registered" if old is None else "updated",
              f"application {spec.name} version {app.version}: {summary or 'no change'}{why}",
              {"version": app.version, "cause": cause,
               "diff": [c.to_dict() for c in changes]})
    old_services = old.spec.services if old else {}
    changed = [n for n, s in spec.services.items()
               if n not in old_services or service_hash(old_services[n]) != service_hash(s)]
    started = _start(txn, old=old, app=app, services=changed, deployments=deployments,
                     cause=cause, now=now, new_id=new_id, reason=reason)
    return Staged(app=app, changes=changes, deployments=started)


def stage_restart(txn: Txn, *, current: Versioned[Application], services: Sequence[str],
                  deployments: Sequence[Versioned[Deployment]], now: float,
                  new_id: Callable[[], str]) -> Staged:
    """A rolling restart of `services`: their restart generations go up, which makes every
    instance an old one for the rollout; the spec and version stay."""
    old = current.record
    generations: Mapping[str, int] = old.generations
    app = dataclasses.replace(old, updated_at=now, generations={
        **generations, **{s: generations.get(s, 0) + 1 for s in services}})
    txn.put(keys.app(app.namespace, app.name), app, expect=current.mod_revision)
    txn.event("app", f"{app.namespace}/{app.name}", "restarted",
              f"application {app.name}: rolling restart of {', '.join(sorted(services))}",
              {"version": app.version, "services": sorted(services)})
    started = _start(txn, old=old, app=app, services=services, deployments=deployments,
                     cause="restart", now=now, new_id=new_id, reason="")
    return Staged(app=app, changes=(), deployments=started)


def last_successful(deployments: Sequence[Deployment], service: str, before: Deployment
                    ) -> Deployment | None:
    """The service's newest successful deployment older than `before`."""
    older = [d for d in deployments if d.service == service
             and d.status == DeploymentStatus.SUCCESSFUL
             and (d.version, d.generation) < (before.version, before.generation)]
    return max(older, key=lambda d: (d.version, d.generation, d.created_at), default=None)


async def stage_reverts(records: Records, txn: Txn, *, current: Versioned[Application],
                        failed: Sequence[Deployment],
                        deployments: Sequence[Versioned[Deployment]], now: float,
                        new_id: Callable[[], str]) -> Staged | None:
    """`auto_revert`: each failed deployment's service back at the spec of its last
    successful deployment (its instance count kept: a scale is no failure), all as one new
    version. A revert that fails is not reverted again (that would loop), nor is a service
    whose last good spec is the one that failed (a failed restart). None: nothing to do."""
    app = current.record
    services = dict(app.spec.services)
    history = [d.record for d in deployments]
    notes: list[str] = []
    for dep in sorted(failed, key=lambda d: d.service):
        spec = services.get(dep.service)
        if spec is None or not spec.update.auto_revert or dep.cause == "auto-revert" or \
                service_hash(spec) != dep.spec_hash:
            continue
        good = last_successful(history, dep.service, dep)
        stored = await load_version(records, app.namespace, app.name, good.version) \
            if good else None
        before = stored.spec.services.get(dep.service) if stored else None
        if good is None or before is None:
            continue
        before = dataclasses.replace(before, instances=spec.instances)
        if service_hash(before) == service_hash(spec):
            continue
        services[dep.service] = before
        notes.append(f"{dep.service} deployment {dep.id} (version {dep.version}) failed: "
                     f"back to version {good.version}'s spec")
    if not notes:
        return None
    # The failed records are written by the caller in this transaction: they must not be
    # written (cancelled) again here.
    done = {d.id for d in failed}
    merged = [Versioned(d, 0) for d in failed] + [d for d in deployments
                                                   if d.record.id not in done]
    return stage_version(txn, current=current, spec=dataclasses.replace(app.spec,
                                                                        services=services),
                         deployments=merged, now=now, new_id=new_id, cause="auto-revert",
                         reason="; ".join(notes))
