"""The service catalog: the instances of each service that are *in service*, as load
balancers, templates and dependent services should see them.

Pure (no store, no clock): `in_service` judges one instance, `build_catalog` lists every
service of a set of applications with its endpoints, `catalog_digest` names an answer so a
watcher can ask "tell me when this changes". `server/api/services.py` serves it (with the
digest watch); `server/dependencies.py` gives dependents the same endpoints in their env
and decides from them when a dependency is ready.

An instance is in service when it is wanted (`desired: run`), not migrating off a draining
node, and healthy: `healthy`, or `running` for an instance without a health check. An
instance asked to stop (scaled down, replaced by a rollout, its application deleted) leaves
the catalog at that moment, before it is stopped, so load balancers stop sending to it
while it drains (Consul deregisters a service before stopping it; Kubernetes takes a
terminating pod out of its endpoints). A migrating instance leaves once its replacement is
placed: it is about to stop.

Everything is sorted (applications, services, endpoints by address, port and id) so an
unchanged cluster always gives the same bytes and the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from corral.model.app import Application, AppStatus
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.server.rollout import Target, target_of

__all__ = ["Endpoint", "ServiceEntry", "build_catalog", "catalog_digest", "endpoints",
           "health_checked", "in_service"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One instance in service, as the catalog shows it."""

    id: str
    node: str | None
    address: str
    port: int | None  # its first port (the spec's order); None: the service has no ports
    ports: dict[str, int]
    version: int
    slot: int
    state: str
    health: str

    @property
    def addr(self) -> str:
        """`host:port` of the first port, or the host alone without ports."""
        return self.address if self.port is None else f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntry:
    namespace: str
    app: str
    service: str
    port_names: tuple[str, ...]
    instances: tuple[Endpoint, ...]


def health_checked(inst: Instance, target: Target | None) -> bool:
    """Whether the instance runs with a health check. The service's current spec says so
    for an instance that runs it; an older instance's agent said so in its reports (it
    reports `none` for an instance without checks)."""
    if target is not None and inst.spec_hash == target.spec_hash:
        return target.spec.health is not None
    return inst.health != "none"


def in_service(inst: Instance, target: Target | None) -> bool:
    """`target`: the instance's service as it is now (None: removed from the spec)."""
    if inst.desired != DesiredState.RUN or inst.migrate or inst.address is None:
        return False
    if inst.state == InstanceState.HEALTHY:
        return True
    return inst.state == InstanceState.RUNNING and not health_checked(inst, target)


def _endpoint(inst: Instance) -> Endpoint:
    assert inst.address is not None  # in_service checked it
    first = inst.port_names[0] if inst.port_names else None
    return Endpoint(id=inst.id, node=inst.node, address=inst.address,
                    port=inst.ports.get(first) if first is not None else None,
                    ports=dict(sorted(inst.ports.items())), version=inst.version,
                    slot=inst.slot, state=str(inst.state), health=inst.health)


def _order(e: Endpoint) -> tuple[str, int, str]:
    return (e.address, -1 if e.port is None else e.port, e.id)


def endpoints(app: Application, service: str, instances: Iterable[Instance]
              ) -> tuple[Endpoint, ...]:
    """The in-service instances of one service of `app`, sorted by address, port, id.
    `instances` may hold other services' and other applications' instances."""
    target = target_of(app, service)
    return tuple(sorted((_endpoint(i) for i in instances
                         if i.namespace == app.namespace and i.app == app.name
                         and i.service == service and in_service(i, target)), key=_order))


def build_catalog(apps: Iterable[Application], instances: Iterable[Instance]
                  ) -> list[ServiceEntry]:
    """Every service of every application not being deleted, sorted by namespace,
    application and service; a service with nothing in service has no endpoints."""
    by_app: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    for inst in instances:
        by_app[(inst.namespace, inst.app)].append(inst)
    entries = []
    for app in apps:
        if app.status == AppStatus.DELETING:
            continue
        mine = by_app.get((app.namespace, app.name), [])
        for name, spec in app.spec.services.items():
            entries.append(ServiceEntry(
                namespace=app.namespace, app=app.name, service=name,
                port_names=tuple(p.name for p in spec.ports),
                instances=endpoints(app, name, mine)))
    return sorted(entries, key=lambda e: (e.namespace, e.app, e.service))


def catalog_digest(services: Any) -> str:
    """sha256 (hex) of the canonical JSON of a catalog answer (plain data)."""
    text = json.dumps(services, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
