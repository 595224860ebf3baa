"""Applications: apply a spec, read status, delete.

- `POST /v1/apps?dry_run=false` body `{"spec": {...}}` validates the spec (the same checks
  as `corral apply` runs locally), checks every artifact and rootfs was uploaded, and
  stores it as a new version if it changed. Returns the version and the per-service diff.
  With `dry_run` nothing is written (`corral apply --plan`).
- `GET /v1/apps` every application with per-service desired/running/healthy counts.
- `GET /v1/apps/{name}?namespace=default` one application, its services and instances.
- `GET /v1/apps/{name}/versions/{version}` the spec of one version (agents fetch it; a
  node credential only for a version one of its instances runs).
- `DELETE /v1/apps/{name}` marks it deleting; controllers stop every instance, then remove
  it. Returns at once; poll `GET` until 404 (the CLI does).
- `GET /v1/apps/{name}/logs?service=&since=&tail=&follow=` the merged log stream.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from corral.model.app import Application, AppStatus
from corral.model.application import ApplicationSpec, ServiceSpec, service_hash
from corral.model.codec import load_json, to_data
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.server import keys
from corral.server.api.artifacts import ArtifactKind, recorded_kind, serves_as
from corral.server.api.deps import check_name, get_ctx
from corral.server.api.instances import instance_view, node_versions, select_instances
from corral.server.auth import NODE_ACCESS, Identity, get_identity
from corral.server.context import ServerContext
from corral.server.diff import diff_specs
from corral.server.errors import ApiError
from corral.server.logs import stream_logs
from corral.spec import validate_spec_data

__all__ = ["router"]

router = APIRouter(prefix="/v1/apps", tags=["apps"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


class ApplyBody(BaseModel):
    spec: dict[str, Any]


async def _check_artifacts(ctx: ServerContext, spec: ApplicationSpec) -> None:
    parts: list[tuple[str, str | None, ArtifactKind]] = []
    for section, specs in (("services", spec.services), ("jobs", spec.jobs)):
        for n, s in specs.items():
            parts += [(f"{section}.{n}.artifact", s.artifact, "artifact"),
                      (f"{section}.{n}.isolation.rootfs", s.isolation.rootfs, "rootfs")]
    for path, artifact, kind in parts:
        if artifact is None:
            continue
        if not artifact.startswith("sha256:"):
            raise ApiError(422, f"{path}: {artifact!r} is a local path; upload it "
                                "first (`corral apply` packs and uploads it for you)")
        recorded = await recorded_kind(ctx, artifact)
        if recorded is None:
            raise ApiError(422, f"{path}: {artifact} was never uploaded; "
                                f"PUT /v1/artifacts/{{digest}}?kind={kind} first")
        if not serves_as(recorded, kind):
            raise ApiError(422, f"{path}: {artifact} was uploaded as a rootfs, whose links "
                                "may point anywhere; upload it as an artifact to use it as one")


@router.post("")
async def apply(body: ApplyBody, ctx: Ctx, dry_run: bool = False) -> dict[str, Any]:
    spec = validate_spec_data(body.spec, filename="request body")
    await _check_artifacts(ctx, spec)
    key = keys.app(spec.namespace, spec.name)
    for _ in range(10):
        current = await ctx.records.get(Application, key)
        old = current.record if current else None
        if old is not None and old.status == AppStatus.DELETING:
            raise ApiError(409, f"application {spec.name} is being deleted; wait until it is "
                                "gone, then apply again")
        changes = diff_specs(old.spec if old else None, spec)
        changed = old is None or old.spec != spec
        version = (old.version + 1 if changed else old.version) if old else 1
        result = {"name": spec.name, "namespace": spec.namespace, "version": version,
                  "changed": changed, "created": old is None,
                  "diff": [c.to_dict() for c in changes]}
        if dry_run or not changed:
            return result
        now = ctx.clock.now()
        app = Application(name=spec.name, namespace=spec.namespace, version=version, spec=spec,
                          created_at=old.created_at if old else now, updated_at=now)
        summary = ", ".join(f"{c.name} {c.change}" for c in changes if c.change != "unchanged")
        txn = (ctx.records.txn()
               .put(key, app, expect=current.mod_revision if current else 0)
               .put(keys.app_version(spec.namespace, spec.name, version), spec, expect=0)
               .event("app", f"{spec.namespace}/{spec.name}",
                      "registered" if old is None else "updated",
                      f"application {spec.name} version {version}: {summary or 'no change'}",
                      {"version": version, "diff": result["diff"]}))
        if await txn.commit() is not None:
            return result
    raise ApiError(409, f"application {spec.name} kept changing while applying; retry")


async def _get_app(ctx: ServerContext, name: str, namespace: str) -> Application:
    item = await ctx.records.get(Application, keys.app(namespace, name))
    if item is None:
        raise ApiError(404, f"no application {name!r} in namespace {namespace!r}")
    return item.record


def _ready(inst: Instance, spec: ServiceSpec | None, now: float) -> bool:
    """`healthy` for a service with a health check; otherwise running the current version
    for at least `update.min_healthy_time` (Nomad's rule for an allocation without checks)."""
    if inst.desired != DesiredState.RUN or spec is None or \
            inst.spec_hash != service_hash(spec):
        return False
    if inst.state == InstanceState.HEALTHY:
        return True
    if spec.health is not None:
        return False  # with a check, only `healthy` is ready
    return inst.state == InstanceState.RUNNING and inst.started_at is not None and \
        now - inst.started_at >= spec.update.min_healthy_time


def _service_rows(app: Application, instances: list[Instance], now: float
                  ) -> list[dict[str, Any]]:
    rows = []
    names = sorted(set(app.spec.services) | {i.service for i in instances})
    for svc in names:
        mine = [i for i in instances if i.service == svc]
        spec = app.spec.services.get(svc)
        rows.append({
            "service": svc,
            "desired": spec.instances if spec and app.status == AppStatus.ACTIVE else 0,
            "placed": sum(1 for i in mine if i.node and i.live),
            "running": sum(1 for i in mine if i.state in (InstanceState.RUNNING,
                                                          InstanceState.HEALTHY)),
            "healthy": sum(1 for i in mine if i.state == InstanceState.HEALTHY),
            "ready": sum(1 for i in mine if _ready(i, spec, now)),
            "pending": sum(1 for i in mine if i.state == InstanceState.PENDING),
            "failed": sum(1 for i in mine if i.state == InstanceState.FAILED),
            "version": max((i.version for i in mine if i.live), default=app.version),
        })
    return rows


def _app_view(app: Application, instances: list[Instance], now: float) -> dict[str, Any]:
    return {"name": app.name, "namespace": app.namespace, "version": app.version,
            "status": app.status, "created_at": app.created_at, "updated_at": app.updated_at,
            "services": _service_rows(app, instances, now)}


@router.get("")
async def list_apps(ctx: Ctx, namespace: str | None = None) -> list[dict[str, Any]]:
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    instances = await select_instances(ctx, namespace=namespace)
    now = ctx.clock.now()
    return [_app_view(a.record, [i for i in instances if i.app == a.record.name
                                 and i.namespace == a.record.namespace], now)
            for a in apps if namespace is None or a.record.namespace == namespace]


@router.get("/{name}")
async def get_app(name: str, ctx: Ctx, namespace: str = "default") -> dict[str, Any]:
    app = await _get_app(ctx, name, namespace)
    instances = await select_instances(ctx, namespace=namespace, app=name)
    view = _app_view(app, instances, ctx.clock.now())
    view["spec"] = to_data(app.spec)
    view["instances"] = [instance_view(ctx, i) for i in instances]
    return view


@router.get("/{name}/versions/{version}", openapi_extra=NODE_ACCESS)
async def get_version(name: str, version: int, ctx: Ctx,
                      caller: Annotated[Identity, Depends(get_identity)],
                      namespace: str = "default") -> dict[str, Any]:
    # A spec may hold secrets in its env: a node reads only what it runs (as Kubernetes'
    # node authorizer lets a kubelet read only its own pods' secrets).
    if caller.node is not None and \
            (namespace, name, version) not in await node_versions(ctx, caller.node):
        raise ApiError(403, f"node {caller.node} runs no instance of {namespace}/{name} "
                            f"version {version}")
    kv = await ctx.store.get(keys.app_version(namespace, name, version))
    if kv is None:
        raise ApiError(404, f"application {name!r} has no version {version}")
    return {"name": name, "namespace": namespace, "version": version,
            "spec": to_data(load_json(ApplicationSpec, kv.value))}


@router.delete("/{name}")
async def delete_app(name: str, ctx: Ctx, namespace: str = "default") -> dict[str, Any]:
    check_name(name, "application name")
    for _ in range(10):
        item = await ctx.records.get(Application, keys.app(namespace, name))
        if item is None:
            raise ApiError(404, f"no application {name!r} in namespace {namespace!r}")
        if item.record.status == AppStatus.DELETING:
            return {"name": name, "namespace": namespace, "status": "deleting"}
        app = dataclasses.replace(item.record, status=AppStatus.DELETING,
                                  updated_at=ctx.clock.now())
        txn = (ctx.records.txn().put(keys.app(namespace, name), app, expect=item.mod_revision)
               .event("app", f"{namespace}/{name}", "deleting",
                      f"application {name} is being deleted"))
        if await txn.commit() is not None:
            return {"name": name, "namespace": namespace, "status": "deleting"}
    raise ApiError(409, f"application {name} kept changing; retry")


@router.get("/{name}/logs")
async def app_logs(name: str, ctx: Ctx, namespace: str = "default",
                   service: str | None = None, since: float | None = None,
                   tail: Annotated[int | None, Query(ge=0)] = None, follow: bool = False,
                   stream: str | None = None) -> StreamingResponse:
    await _get_app(ctx, name, namespace)
    instances = await select_instances(ctx, namespace=namespace, app=name, service=service,
                                       include_terminal=True)
    return await stream_logs(ctx, instances, since=since, tail=tail, follow=follow,
                             stream=stream)
