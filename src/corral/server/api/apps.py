"""Applications: apply a spec, read status, delete.

- `POST /v1/apps?dry_run=false` body `{"spec": {...}}` validates the spec (the same checks
  as `corral apply` runs locally), checks every artifact and rootfs was uploaded, and
  stores it as a new version if it changed. Returns the version and the per-service diff.
  With `dry_run` nothing is written (`corral apply --plan`).
- `GET /v1/apps` every application with per-service desired/running/healthy counts and the
  service's latest deployment; a service that waits for its dependencies before it starts
  has `waiting_for` (their names) and `reason` ("waiting for dependencies: cache (0/1
  healthy)").
- `GET /v1/apps/{name}?namespace=default` one application, its services and instances.
  Both views have `jobs`: per job, its `running` and `pending` instances and `last_run`
  (`services` counts services' instances only).
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
from corral.model.application import ApplicationSpec
from corral.model.codec import to_data
from corral.model.deployment import Deployment
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.job import JobState
from corral.server import keys
from corral.server.api.artifacts import ArtifactKind, recorded_kind, serves_as
from corral.server.api.deployments import deployment_view
from corral.server.api.deps import check_name, get_ctx
from corral.server.api.instances import instance_view, node_versions, select_instances
from corral.server.auth import NODE_ACCESS, Identity, get_identity
from corral.server.context import ServerContext
from corral.server.dependencies import waiting_for, waiting_reason
from corral.server.diff import diff_specs
from corral.server.errors import ApiError
from corral.server.logs import stream_logs
from corral.server.rollout import Target, is_ready, runs_target, target_of
from corral.server.versions import load_version, stage_version
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
        result: dict[str, Any] = {
            "name": spec.name, "namespace": spec.namespace, "version": version,
            "changed": changed, "created": old is None, "diff": [c.to_dict() for c in changes],
            "deployments": []}
        if dry_run or not changed:
            return result
        deployments, _ = await ctx.records.scan(Deployment,
                                                keys.app_deployments(spec.namespace, spec.name))
        txn = ctx.records.txn()
        staged = stage_version(txn, current=current, spec=spec, deployments=deployments,
                               now=ctx.clock.now(), new_id=ctx.new_id)
        if await txn.commit() is not None:
            result["deployments"] = [{"service": d.service, "id": d.id, "canaries": d.canaries}
                                     for d in staged.deployments]
            return result
    raise ApiError(409, f"application {spec.name} kept changing while applying; retry")


async def _get_app(ctx: ServerContext, name: str, namespace: str) -> Application:
    item = await ctx.records.get(Application, keys.app(namespace, name))
    if item is None:
        raise ApiError(404, f"no application {name!r} in namespace {namespace!r}")
    return item.record


def _ready(inst: Instance, target: Target | None, now: float) -> bool:
    """Runs the service's target and is ready as a rollout counts it (`server/rollout.py`)."""
    return target is not None and inst.desired == DesiredState.RUN and \
        runs_target(inst, target) and is_ready(inst, target.spec, now)


def _service_rows(app: Application, instances: list[Instance], deployments: list[Deployment],
                  now: float) -> list[dict[str, Any]]:
    latest: dict[str, Deployment] = {}
    for d in sorted(deployments, key=lambda d: (d.version, d.generation, d.created_at)):
        latest[d.service] = d
    rows = []
    instances = [i for i in instances if i.kind != "job"]
    names = sorted(set(app.spec.services) | {i.service for i in instances})
    for svc in names:
        mine = [i for i in instances if i.service == svc]
        spec = app.spec.services.get(svc)
        target = target_of(app, svc)
        waits = waiting_for(app, svc, instances) if app.status == AppStatus.ACTIVE else ()
        rows.append({
            "service": svc,
            "desired": spec.instances if spec and app.status == AppStatus.ACTIVE else 0,
            "placed": sum(1 for i in mine if i.node and i.live),
            "running": sum(1 for i in mine if i.state in (InstanceState.RUNNING,
                                                          InstanceState.HEALTHY)),
            "healthy": sum(1 for i in mine if i.state == InstanceState.HEALTHY),
            "ready": sum(1 for i in mine if _ready(i, target, now)),
            "pending": sum(1 for i in mine if i.state == InstanceState.PENDING),
            "failed": sum(1 for i in mine if i.state == InstanceState.FAILED),
            "version": max((i.version for i in mine if i.live), default=app.version),
            "deployment": deployment_view(latest[svc]) if svc in latest else None,
            "waiting_for": [w.service for w in waits],
            "reason": waiting_reason(waits) if waits else "",
        })
    return rows


def _job_rows(app: Application, instances: list[Instance], states: list[JobState]
              ) -> list[dict[str, Any]]:
    """Per job: its instances now (running, pending) and its newest run."""
    last = {s.job: s.last_run for s in states}
    rows = []
    for name in sorted(set(app.spec.jobs) | {i.service for i in instances if i.kind == "job"}):
        mine = [i for i in instances if i.kind == "job" and i.service == name]
        run = last.get(name)
        rows.append({
            "job": name,
            "running": sum(1 for i in mine if i.state == InstanceState.RUNNING),
            "pending": sum(1 for i in mine if i.state == InstanceState.PENDING),
            "last_run": to_data(run) if run is not None else None,
        })
    return rows


def _app_view(app: Application, instances: list[Instance], deployments: list[Deployment],
              now: float, states: list[JobState] | None = None) -> dict[str, Any]:
    """`jobs`: per job, its instances now and its newest run (`GET /v1/jobs` has more)."""
    return {"name": app.name, "namespace": app.namespace, "version": app.version,
            "status": app.status, "created_at": app.created_at, "updated_at": app.updated_at,
            "services": _service_rows(app, instances, deployments, now),
            "jobs": _job_rows(app, instances, states or [])}


@router.get("")
async def list_apps(ctx: Ctx, namespace: str | None = None) -> list[dict[str, Any]]:
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    instances = await select_instances(ctx, namespace=namespace)
    deployments, _ = await ctx.records.scan(Deployment, keys.DEPLOYMENTS)
    states, _ = await ctx.records.scan(JobState, keys.JOBS)
    now = ctx.clock.now()

    def mine(a: Application, things: list[Any]) -> list[Any]:
        return [t for t in things if t.app == a.name and t.namespace == a.namespace]

    return [_app_view(a.record, mine(a.record, instances),
                      mine(a.record, [d.record for d in deployments]), now,
                      mine(a.record, [s.record for s in states]))
            for a in apps if namespace is None or a.record.namespace == namespace]


@router.get("/{name}")
async def get_app(name: str, ctx: Ctx, namespace: str = "default") -> dict[str, Any]:
    app = await _get_app(ctx, name, namespace)
    instances = await select_instances(ctx, namespace=namespace, app=name)
    deployments, _ = await ctx.records.scan(Deployment, keys.app_deployments(namespace, name))
    states, _ = await ctx.records.scan(JobState, keys.app_job_states(namespace, name))
    view = _app_view(app, instances, [d.record for d in deployments], ctx.clock.now(),
                     [s.record for s in states])
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
    stored = await load_version(ctx.records, namespace, name, version)
    if stored is None:
        raise ApiError(404, f"application {name!r} has no version {version}")
    return {"name": name, "namespace": namespace, "version": version,
            "created_at": stored.created_at, "cause": stored.cause, "reason": stored.reason,
            "spec": to_data(stored.spec)}


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
    async def matching() -> list[Instance]:
        return await select_instances(ctx, namespace=namespace, app=name, service=service,
                                      include_terminal=True)

    # `refresh`: a follow also streams the instances a rollout adds while it runs.
    return await stream_logs(ctx, await matching(), since=since, tail=tail, follow=follow,
                             stream=stream, refresh=matching)
