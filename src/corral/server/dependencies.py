"""Dependencies between the services of one application (`depends_on`): when a service may
start, what its new instances are told about their dependencies, and in which order the
services of an application being deleted stop.

Pure (no store, no clock); `controllers/applications.py` applies the answers and
`server/api/apps.py` shows the waits.

- **Start order** (docker compose's `condition: service_healthy`): a service that has not
  started (it has no live instance) gets its first instances only once every service it
  depends on is *ready*: as many instances in service (`server/catalog.py`: healthy, or
  running without a health check) as its `instances`, or `instances: 0`. Once started, a
  service keeps running and is replaced, scaled and rolled whatever its dependencies do
  later: the order is about starting, not about staying up (Kubernetes has no order at all;
  compose and systemd order the start only).
- **Addresses in env**: a new instance of S gets, for each dependency D, the addresses of
  D's instances in service at that moment, named after D (`CACHE_ADDR`, ...; see
  `dependency_env`). They are fixed for the instance's life; what changes later is in the
  catalog (`GET /v1/services`).
- **Reverse delete order**: the instances of D are asked to stop only once no instance of a
  service that depends on D directly is still live, so a web tier never outlives the
  database it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.model.app import Application
from corral.model.application import ServiceSpec
from corral.model.instance import TERMINAL_STATES, Instance
from corral.server.catalog import endpoints
from corral.server.rollout import WAITING_PREFIX

__all__ = ["Unready", "dependency_env", "env_prefix", "held_for_dependents", "started",
           "waiting_for", "waiting_reason"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Unready:
    """A dependency that is not ready: `healthy` of its `wanted` instances in service."""

    service: str
    healthy: int
    wanted: int


def started(service: str, instances: Sequence[Instance]) -> bool:
    """Whether the service has a live instance (`instances`: its application's)."""
    return any(i.service == service and i.live for i in instances)


def waiting_for(app: Application, service: str, instances: Sequence[Instance]
                ) -> tuple[Unready, ...]:
    """The dependencies a service that has not started waits for (nothing once started).
    `instances`: every instance of `app`."""
    spec = app.spec.services.get(service)
    if spec is None or not spec.depends_on or spec.instances == 0 or \
            started(service, instances):
        return ()
    waits = []
    for name in spec.depends_on:
        dep = app.spec.services.get(name)
        if dep is None or dep.instances == 0:  # validation rejects unknown names
            continue
        healthy = len(endpoints(app, name, instances))
        if healthy < dep.instances:
            waits.append(Unready(service=name, healthy=healthy, wanted=dep.instances))
    return tuple(waits)


def waiting_reason(waits: Sequence[Unready]) -> str:
    """"waiting for dependencies: cache (0/1 healthy), db (1/2 healthy)"."""
    return WAITING_PREFIX + ", ".join(f"{w.service} ({w.healthy}/{w.wanted} healthy)"
                                      for w in waits)


def env_prefix(service: str) -> str:
    """`cache` -> `CACHE`, `user-db` -> `USER_DB`."""
    return service.upper().replace("-", "_")


def dependency_env(app: Application, spec: ServiceSpec, slot: int,
                   instances: Sequence[Instance]) -> dict[str, str]:
    """What a new instance (in `slot`) of a service with `spec` learns about each service
    D it depends on, with N = `env_prefix(D)`, from D's instances in service now:

    `N_HOST`, `N_PORT` (its first port), `N_ADDR` (`host:port`) and `N_PORT_<NAME>` for
    each named port: of one instance, the one at `slot` modulo their number in catalog
    order, so a service's instances spread over their dependency's; `N_ADDRS`: every
    instance's `host:port`, sorted, comma-separated. A dependency without ports gets
    `N_HOST` and `N_ADDRS` (its hosts). A dependency with nothing in service (one with
    `instances: 0`) gets nothing."""
    env: dict[str, str] = {}
    for name in spec.depends_on:
        found = endpoints(app, name, instances)
        if not found:
            continue
        n = env_prefix(name)
        one = found[slot % len(found)]
        env[f"{n}_HOST"] = one.address
        if one.port is not None:
            env[f"{n}_PORT"] = str(one.port)
            env[f"{n}_ADDR"] = one.addr
        for port_name, port in one.ports.items():
            env[f"{n}_PORT_{port_name.upper()}"] = str(port)
        env[f"{n}_ADDRS"] = ",".join(sorted({e.addr for e in found}))
    return env


def held_for_dependents(services: Mapping[str, ServiceSpec], instances: Sequence[Instance]
                        ) -> set[str]:
    """The services of an application being deleted whose instances must not be asked to
    stop yet: a service depending on them directly still has a placed instance that is
    not terminal (never-placed ones are removed at once, so they hold nothing)."""
    alive = {i.service for i in instances
             if i.state not in TERMINAL_STATES and i.node is not None}
    return {dep for name, spec in services.items() if name in alive
            for dep in spec.depends_on}
