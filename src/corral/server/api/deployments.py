"""Deployments: the record of each change to a service, and the two decisions a person can
make about a running one.

- `GET /v1/deployments?app=&namespace=&service=&status=` deployments, sorted by namespace,
  app, service, then oldest first.
- `GET /v1/deployments/{id}` one deployment.
- `POST /v1/deployments/{id}/promote` a running deployment whose canaries are all ready
  rolls on (409: not running, no canaries, or canaries not ready yet). Promoting twice
  is harmless.
- `POST /v1/deployments/{id}/fail` body `{"reason": ""}` (optional): fails a running
  deployment now (409 otherwise). With `update.auto_revert`, the service goes back to its
  last successful spec as a new version, in the same transaction, as when a deadline fails
  it.

Deployments are started by applies, rollbacks, restarts and reverts (`server/versions.py`)
and moved on by the application controller (`server/rollout.py`); nothing else writes them.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from corral.model.app import Application, AppStatus
from corral.model.codec import to_data
from corral.model.deployment import Deployment, DeploymentStatus
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.context import ServerContext
from corral.server.errors import ApiError
from corral.server.records import Versioned
from corral.server.versions import stage_reverts

__all__ = ["deployment_view", "router"]

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


def deployment_view(dep: Deployment) -> dict[str, Any]:
    data: dict[str, Any] = to_data(dep)
    data["waiting_for_promotion"] = dep.unpromoted and dep.healthy >= dep.canaries
    return data


def _order(dep: Deployment) -> tuple[str, str, str, int, int, float]:
    return (dep.namespace, dep.app, dep.service, dep.version, dep.generation, dep.created_at)


@router.get("")
async def list_deployments(ctx: Ctx, app: str | None = None, namespace: str | None = None,
                           service: str | None = None, status: DeploymentStatus | None = None
                           ) -> list[dict[str, Any]]:
    items, _ = await ctx.records.scan(Deployment, keys.DEPLOYMENTS)
    found = [i.record for i in items
             if (app is None or i.record.app == app)
             and (namespace is None or i.record.namespace == namespace)
             and (service is None or i.record.service == service)
             and (status is None or i.record.status == status)]
    return [deployment_view(d) for d in sorted(found, key=_order)]


async def _find(ctx: ServerContext, deployment_id: str) -> Versioned[Deployment]:
    items, _ = await ctx.records.scan(Deployment, keys.DEPLOYMENTS)
    for item in items:
        if item.record.id == deployment_id:
            return item
    raise ApiError(404, f"no deployment {deployment_id!r}; `corral deployment list` shows them")


@router.get("/{deployment_id}")
async def get_deployment(deployment_id: str, ctx: Ctx) -> dict[str, Any]:
    return deployment_view((await _find(ctx, deployment_id)).record)


def _running(dep: Deployment) -> None:
    if dep.final:
        raise ApiError(409, f"deployment {dep.id} of {dep.app}/{dep.service} is {dep.status}: "
                            f"{dep.reason}", {"status": dep.status})


@router.post("/{deployment_id}/promote")
async def promote(deployment_id: str, ctx: Ctx) -> dict[str, Any]:
    for _ in range(10):
        item = await _find(ctx, deployment_id)
        dep = item.record
        _running(dep)
        if dep.canaries == 0:
            raise ApiError(409, f"deployment {dep.id} has no canaries to promote")
        if dep.promoted:
            return deployment_view(dep)
        if dep.healthy < dep.canaries:
            raise ApiError(409, f"only {dep.healthy} of {dep.canaries} canaries of deployment "
                                f"{dep.id} are ready; wait, or fail it "
                                f"(`corral deployment fail {dep.app}/{dep.service}`)")
        now = ctx.clock.now()
        # The progress deadline did not run while the canaries waited: it starts again now.
        new = dataclasses.replace(dep, promoted=True, progress_at=now, updated_at=now,
                                  reason="promoted")
        txn = (ctx.records.txn()
               .put(keys.deployment(dep.namespace, dep.app, dep.service, dep.id), new,
                    expect=item.mod_revision)
               .event("deployment", dep.id, "promoted",
                      f"{dep.app}/{dep.service} deployment {dep.id} (version {dep.version}) "
                      f"promoted: {dep.canaries} canaries ready",
                      {"app": dep.app, "namespace": dep.namespace, "service": dep.service,
                       "version": dep.version, "status": new.status}))
        if await txn.commit() is not None:
            return deployment_view(new)
    raise ApiError(409, f"deployment {deployment_id} kept changing; retry")


@router.post("/{deployment_id}/fail")
async def fail(deployment_id: str, ctx: Ctx,
               reason: Annotated[str, Body(embed=True, max_length=500)] = ""
               ) -> dict[str, Any]:
    for _ in range(10):
        item = await _find(ctx, deployment_id)
        dep = item.record
        _running(dep)
        now = ctx.clock.now()
        why = f"failed by request: {reason}" if reason else "failed by request"
        new = dataclasses.replace(dep, status=DeploymentStatus.FAILED, reason=why,
                                  updated_at=now)
        txn = (ctx.records.txn()
               .put(keys.deployment(dep.namespace, dep.app, dep.service, dep.id), new,
                    expect=item.mod_revision)
               .event("deployment", dep.id, "failed",
                      f"{dep.app}/{dep.service} deployment {dep.id} (version {dep.version}) "
                      f"failed: {why}", {"app": dep.app, "namespace": dep.namespace,
                                          "service": dep.service, "version": dep.version,
                                          "status": new.status, "reason": why}))
        app = await ctx.records.get(Application, keys.app(dep.namespace, dep.app))
        staged = None
        if app is not None and app.record.status == AppStatus.ACTIVE:
            deployments, _ = await ctx.records.scan(
                Deployment, keys.app_deployments(dep.namespace, dep.app))
            staged = await stage_reverts(ctx.records, txn, current=app, failed=[new],
                                         deployments=deployments, now=now, new_id=ctx.new_id)
        if await txn.commit() is not None:
            view = deployment_view(new)
            view["reverted"] = None if staged is None else {
                "version": staged.app.version,
                "deployments": [{"service": d.service, "id": d.id}
                                for d in staged.deployments]}
            return view
    raise ApiError(409, f"deployment {deployment_id} kept changing; retry")
