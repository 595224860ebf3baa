"""Health, cluster summary and Prometheus metrics.

- `GET /healthz` (no token: load balancers and `corral up` probe it) -> `{"ok": true}`.
- `GET /v1/status` server version, store revision, counts.
- `GET /metrics` Prometheus text format: the series `server/metrics.py` lists.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from corral import __version__
from corral.model.app import Application
from corral.model.instance import Instance
from corral.model.node import Node
from corral.server import keys
from corral.server.api.deps import get_ctx
from corral.server.context import ServerContext

__all__ = ["public", "router"]

public = APIRouter(tags=["system"])
router = APIRouter(tags=["system"])
Ctx = Annotated[ServerContext, Depends(get_ctx)]


@public.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


async def _counts(ctx: ServerContext) -> tuple[Counter[str], Counter[str], int]:
    nodes, _ = await ctx.records.scan(Node, keys.NODES)
    instances, _ = await ctx.records.scan(Instance, keys.INSTANCES)
    apps, _ = await ctx.records.scan(Application, keys.APPS)
    return (Counter(str(n.record.state) for n in nodes),
            Counter(str(i.record.state) for i in instances), len(apps))


@router.get("/v1/status")
async def status(ctx: Ctx) -> dict[str, Any]:
    nodes, instances, apps = await _counts(ctx)
    return {"version": __version__, "revision": await ctx.store.revision(),
            "nodes": dict(nodes), "instances": dict(instances), "applications": apps}


@router.get("/metrics", response_class=Response)
async def metrics(ctx: Ctx) -> Response:
    return Response(await ctx.metrics.render(ctx), media_type=CONTENT_TYPE_LATEST)
