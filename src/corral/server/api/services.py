"""The service catalog (`server/catalog.py`): the instances in service of every service,
for load balancers, templates and people (`corral services`).

- `GET /v1/services?namespace=&app=&digest=&wait=` `{"digest", "services": [ENTRY, ...]}`:
  every service of every application not being deleted (or of the matching ones), sorted
  by namespace, application, service. ENTRY is `{namespace, app, service, port_names,
  instances}`; an instance is `{id, node, address, port, ports, version, slot, state,
  health}` (`port`: its first port, or null), sorted by address, port, id.
- `GET /v1/services/{namespace}/{app}/{service}?digest=&wait=` one ENTRY plus its
  `digest`; 404 for an unknown (or deleting) application or service.

`digest` is the sha256 of the answer's canonical JSON. A *watch* (Consul's blocking
query, by content rather than by index): with `digest=D&wait=30s` the request answers as
soon as the digest differs from D, or after `wait` with the unchanged answer. `wait` is a
duration (`30s`, `5m`) or plain seconds, 0 (the default) to 300 s; without `digest` the
answer comes at once. A watcher sleeps on the server's one store watch (`server/watchhub.py`)
and wakes only when an application or an instance changes; the catalog is then built once
per store revision however many watchers woke (`CatalogCache`).

Discovery is cluster-wide (as Consul's default): any node's credential may read the whole
catalog, so there is nothing to check with `act_for`; the admin token may too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from corral.model.app import Application, AppStatus
from corral.model.codec import to_data
from corral.model.instance import Instance
from corral.model.units import parse_duration
from corral.server import keys
from corral.server.api.deps import check_name, get_ctx
from corral.server.auth import NODE_ACCESS
from corral.server.catalog import build_catalog, catalog_digest
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["MAX_WAIT", "CatalogCache", "router"]

router = APIRouter(prefix="/v1/services", tags=["services"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]

MAX_WAIT = 300.0
_WATCHED = (keys.APPS, keys.INSTANCES)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    revision: int  # the store's revision before it was read: it holds at least that
    services: list[dict[str, Any]]  # every entry, as plain data
    apps: dict[tuple[str, str], AppStatus]


class CatalogCache:
    """The whole catalog at the newest store revision seen, built once per revision: many
    watchers woken by one change share one read of the store."""

    def __init__(self) -> None:
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()

    async def get(self, ctx: ServerContext) -> _Snapshot:
        revision = await ctx.store.revision()
        async with self._lock:
            snap = self._snapshot
            if snap is None or snap.revision < revision:
                apps, _ = await ctx.records.scan(Application, keys.APPS)
                instances, _ = await ctx.records.scan(Instance, keys.INSTANCES)
                entries = build_catalog((a.record for a in apps),
                                        (i.record for i in instances))
                snap = self._snapshot = _Snapshot(
                    revision=revision, services=[to_data(e) for e in entries],
                    apps={(a.record.namespace, a.record.name): a.record.status
                          for a in apps})
            return snap


def get_cache(request: Request) -> CatalogCache:
    state = request.app.state
    cache: CatalogCache | None = getattr(state, "catalog_cache", None)
    if cache is None:
        cache = state.catalog_cache = CatalogCache()
    return cache


Cache = Annotated[CatalogCache, Depends(get_cache)]


def wait_seconds(value: str) -> float:
    """`wait`: a duration (`30s`, `5m`) or plain seconds, at most `MAX_WAIT`."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ApiError(400, f"wait: {exc}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ApiError(400, f"wait: expected a duration such as 30s or 5m, got {value!r}")
    if seconds > MAX_WAIT:
        raise ApiError(400, f"wait: at most {MAX_WAIT:g}s (5m), got {value!r}")
    return seconds


async def _watch(ctx: ServerContext, cache: CatalogCache,
                 answer: Callable[[_Snapshot], dict[str, Any]], digest: str | None,
                 wait: float) -> dict[str, Any]:
    """`answer` (with its `digest`) once it differs from `digest`, or after `wait` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # Taken before the read: a change committed while we read wakes the wait at once.
    index = ctx.hub.revision
    while True:
        result = answer(await cache.get(ctx))
        remaining = deadline - loop.time()
        if digest is None or result["digest"] != digest or remaining <= 0:
            return result
        index = await ctx.hub.wait(index, _WATCHED, remaining)


@router.get("", openapi_extra=NODE_ACCESS)
async def list_services(ctx: Ctx, cache: Cache, namespace: str | None = None,
                        app: str | None = None, digest: str | None = None,
                        wait: str = "0") -> dict[str, Any]:
    seconds = wait_seconds(wait)

    def answer(snap: _Snapshot) -> dict[str, Any]:
        services = [s for s in snap.services
                    if (namespace is None or s["namespace"] == namespace)
                    and (app is None or s["app"] == app)]
        return {"digest": catalog_digest(services), "services": services}

    return await _watch(ctx, cache, answer, digest, seconds)


@router.get("/{namespace}/{app}/{service}", openapi_extra=NODE_ACCESS)
async def get_service(namespace: str, app: str, service: str, ctx: Ctx, cache: Cache,
                      digest: str | None = None, wait: str = "0") -> dict[str, Any]:
    check_name(namespace, "namespace")
    check_name(app, "application name")
    check_name(service, "service name")
    seconds = wait_seconds(wait)

    def answer(snap: _Snapshot) -> dict[str, Any]:
        status = snap.apps.get((namespace, app))
        if status is None:
            raise ApiError(404, f"no application {app!r} in namespace {namespace!r}")
        if status == AppStatus.DELETING:
            raise ApiError(404, f"application {app!r} in namespace {namespace!r} is being "
                                "deleted")
        for entry in snap.services:
            if (entry["namespace"], entry["app"], entry["service"]) == \
                    (namespace, app, service):
                return {**entry, "digest": catalog_digest(entry)}
        raise ApiError(404, f"application {app!r} has no service {service!r}")

    return await _watch(ctx, cache, answer, digest, seconds)
