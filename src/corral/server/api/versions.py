"""An application's versions: its history, a rollback to an earlier one, a rolling restart.

- `GET /v1/apps/{name}/history?namespace=default` every stored version, oldest first:
  `{version, created_at, cause, reason, current, changes, deployments}` (`changes`: what
  differs from the version before; `deployments`: the version's deployments, restarts
  included, oldest first).
- `POST /v1/apps/{name}/rollback?namespace=default` body `{"service": null, "version":
  null}`: applies a stored version's spec again as a new version (cause `rollback`). With
  `service`, only that service's spec; without, the whole spec (services and jobs as they
  were). Current instance counts are kept: a rollback undoes a release, not a scale.
  Without `version`: the newest earlier version whose spec (of that service) differs from
  the current one. Answers like `POST /v1/apps`, plus `rolled_back_to`.
- `POST /v1/apps/{name}/restart?namespace=default` body `{"service": null}`: a rolling
  restart of one service or all: every instance is replaced by the deployment rules, with
  no new version (the service's restart generation goes up).
- `POST /v1/apps/{name}/scale?namespace=default` body `{"service": "web", "instances": 5}`:
  a new version (cause `scale`) whose only change is that service's `instances`. It starts
  no deployment: instances are added or stopped at once (`instances` is not part of the
  spec hash). Answers `{name, namespace, version, service, from, to, changed}`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from corral.model.app import Application, AppStatus, AppVersion
from corral.model.application import ApplicationSpec
from corral.model.deployment import Deployment
from corral.server import keys
from corral.server.api.deployments import deployment_view
from corral.server.api.deps import check_name, get_ctx
from corral.server.context import ServerContext
from corral.server.diff import diff_specs
from corral.server.errors import ApiError
from corral.server.records import Versioned
from corral.server.versions import Staged, parse_version, stage_restart, stage_version

__all__ = ["router"]

router = APIRouter(prefix="/v1/apps", tags=["versions"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


class RollbackBody(BaseModel):
    service: str | None = None
    version: int | None = None


class RestartBody(BaseModel):
    service: str | None = None


class ScaleBody(BaseModel):
    service: str
    instances: Annotated[int, Field(ge=0, le=100_000)]


async def _current(ctx: ServerContext, name: str, namespace: str) -> Versioned[Application]:
    check_name(name, "application name")
    item = await ctx.records.get(Application, keys.app(namespace, name))
    if item is None:
        raise ApiError(404, f"no application {name!r} in namespace {namespace!r}")
    if item.record.status == AppStatus.DELETING:
        raise ApiError(409, f"application {name} is being deleted")
    return item


async def _versions(ctx: ServerContext, namespace: str, name: str) -> list[AppVersion]:
    kvs, _ = await ctx.store.range(keys.app_versions(namespace, name))
    return sorted((parse_version(kv) for kv in kvs), key=lambda v: v.version)


async def _deployments(ctx: ServerContext, namespace: str, name: str
                       ) -> list[Versioned[Deployment]]:
    items, _ = await ctx.records.scan(Deployment, keys.app_deployments(namespace, name))
    return items


def _started(staged: Staged) -> list[dict[str, Any]]:
    return [{"service": d.service, "id": d.id, "canaries": d.canaries}
            for d in staged.deployments]


@router.get("/{name}/history")
async def history(name: str, ctx: Ctx, namespace: str = "default") -> list[dict[str, Any]]:
    item = await ctx.records.get(Application, keys.app(namespace, name))
    if item is None:
        raise ApiError(404, f"no application {name!r} in namespace {namespace!r}")
    deps = sorted((d.record for d in await _deployments(ctx, namespace, name)),
                  key=lambda d: (d.version, d.generation, d.service, d.created_at))
    out = []
    before: ApplicationSpec | None = None
    for v in await _versions(ctx, namespace, name):
        changes = [c.to_dict() for c in diff_specs(before, v.spec) if c.change != "unchanged"]
        out.append({"version": v.version, "created_at": v.created_at, "cause": v.cause,
                    "reason": v.reason, "current": v.version == item.record.version,
                    "changes": changes,
                    "deployments": [deployment_view(d) for d in deps if d.version == v.version]})
        before = v.spec
    return out


def _rolled_back_spec(current: Application, old: AppVersion, service: str | None
                      ) -> ApplicationSpec:
    counts = {n: s.instances for n, s in current.spec.services.items()}
    if service is None:
        services = {n: dataclasses.replace(s, instances=counts.get(n, s.instances))
                    for n, s in old.spec.services.items()}
        return dataclasses.replace(old.spec, services=services)
    if service not in current.spec.services:
        raise ApiError(404, f"application {current.name} has no service {service!r}")
    was = old.spec.services.get(service)
    if was is None:
        raise ApiError(404, f"version {old.version} of {current.name} has no service "
                            f"{service!r}")
    services = dict(current.spec.services)
    services[service] = dataclasses.replace(was, instances=counts[service])
    return dataclasses.replace(current.spec, services=services)


def _pick(current: Application, versions: list[AppVersion], service: str | None
          ) -> AppVersion:
    """The newest earlier version that would change something."""
    for v in reversed(versions):
        if v.version >= current.version:
            continue
        if service is not None and service not in v.spec.services:
            continue
        if _rolled_back_spec(current, v, service) != current.spec:
            return v
    what = f"service {service}" if service else "application"
    raise ApiError(409, f"no earlier version of {current.name} differs from the current "
                        f"{what}; `corral history {current.name}` lists them")


@router.post("/{name}/rollback")
async def rollback(name: str, body: RollbackBody, ctx: Ctx, namespace: str = "default"
                   ) -> dict[str, Any]:
    for _ in range(10):
        current = await _current(ctx, name, namespace)
        app = current.record
        versions = await _versions(ctx, namespace, name)
        if body.version is None:
            old = _pick(app, versions, body.service)
        else:
            found = [v for v in versions if v.version == body.version]
            if not found:
                raise ApiError(404, f"application {name!r} has no version {body.version}")
            old = found[0]
        spec = _rolled_back_spec(app, old, body.service)
        result: dict[str, Any] = {
            "name": name, "namespace": namespace, "version": app.version,
            "rolled_back_to": old.version, "changed": spec != app.spec, "created": False,
            "diff": [c.to_dict() for c in diff_specs(app.spec, spec)], "deployments": []}
        if spec == app.spec:
            return result
        txn = ctx.records.txn()
        staged = stage_version(txn, current=current, spec=spec,
                               deployments=await _deployments(ctx, namespace, name),
                               now=ctx.clock.now(), new_id=ctx.new_id, cause="rollback",
                               reason=f"back to version {old.version}"
                                      + (f" for {body.service}" if body.service else ""))
        if await txn.commit() is not None:
            result.update(version=staged.app.version, deployments=_started(staged))
            return result
    raise ApiError(409, f"application {name} kept changing; retry")


@router.post("/{name}/restart")
async def restart(name: str, body: RestartBody, ctx: Ctx, namespace: str = "default"
                  ) -> dict[str, Any]:
    for _ in range(10):
        current = await _current(ctx, name, namespace)
        app = current.record
        if body.service is not None and body.service not in app.spec.services:
            raise ApiError(404, f"application {name} has no service {body.service!r}")
        services = [body.service] if body.service else sorted(app.spec.services)
        if not services:
            raise ApiError(409, f"application {name} has no services to restart")
        txn = ctx.records.txn()
        staged = stage_restart(txn, current=current, services=services,
                               deployments=await _deployments(ctx, namespace, name),
                               now=ctx.clock.now(), new_id=ctx.new_id)
        if await txn.commit() is not None:
            return {"name": name, "namespace": namespace, "version": app.version,
                    "services": services, "deployments": _started(staged)}
    raise ApiError(409, f"application {name} kept changing; retry")


@router.post("/{name}/scale")
async def scale(name: str, body: ScaleBody, ctx: Ctx, namespace: str = "default"
                ) -> dict[str, Any]:
    for _ in range(10):
        current = await _current(ctx, name, namespace)
        app = current.record
        service = app.spec.services.get(body.service)
        if service is None:
            raise ApiError(404, f"application {name} has no service {body.service!r}")
        result: dict[str, Any] = {
            "name": name, "namespace": namespace, "version": app.version,
            "service": body.service, "from": service.instances, "to": body.instances,
            "changed": service.instances != body.instances}
        if not result["changed"]:
            return result
        services = dict(app.spec.services)
        services[body.service] = dataclasses.replace(service, instances=body.instances)
        spec = dataclasses.replace(app.spec, services=services)
        txn = ctx.records.txn()
        staged = stage_version(txn, current=current, spec=spec,
                               deployments=await _deployments(ctx, namespace, name),
                               now=ctx.clock.now(), new_id=ctx.new_id, cause="scale",
                               reason=f"{body.service}: {service.instances} -> "
                                      f"{body.instances} instances")
        if await txn.commit() is not None:
            result["version"] = staged.app.version
            return result
    raise ApiError(409, f"application {name} kept changing; retry")
