"""Builds the API server: FastAPI routes under `/v1`, authentication (`server/auth.py`),
error handlers, and the controllers that run beside it in the same event loop.

Data flows one way: handlers validate and write desired state; controllers watch the store
and write decisions; agents report through the API. Nothing but this process touches the
store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI

from corral import __version__
from corral.server.api import (
    apps,
    artifacts,
    deployments,
    events,
    instances,
    jobs,
    join,
    nodes,
    services,
    system,
    tokens,
    versions,
)
from corral.server.api.agent_path import AgentPath
from corral.server.auth import authenticate
from corral.server.context import ServerContext
from corral.server.controllers import applications, drain, gc, scheduling
from corral.server.controllers import jobs as job_controller
from corral.server.controllers import nodes as node_controller
from corral.server.controllers.base import Controller, run_controller
from corral.server.errors import install_error_handlers
from corral.server.metrics import RequestTimer

__all__ = ["CONTROLLERS", "create_app"]

log = logging.getLogger(__name__)

CONTROLLERS: tuple[Controller, ...] = (
    applications.CONTROLLER, scheduling.CONTROLLER, node_controller.CONTROLLER,
    drain.CONTROLLER, gc.CONTROLLER, job_controller.CONTROLLER,
)


def _measured(ctx: ServerContext, controller: Controller) -> Controller:
    """The controller with its passes timed (`server/metrics.py`)."""
    placements = (lambda: ctx.events.placements) if controller.name == "scheduling" else None
    return dataclasses.replace(controller, reconcile=ctx.metrics.timed(
        controller.name, controller.reconcile, placements))


def create_app(ctx: ServerContext, *, controllers: Sequence[Controller] = CONTROLLERS,
               agent_path: bool = True) -> FastAPI:
    """`agent_path` False: FastAPI serves the agent's hot requests too (the reference the
    lean path, `server/api/agent_path.py`, is tested against)."""
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ctx.hub.start()
        await ctx.events.start()
        await node_controller.renew_all_leases(ctx)
        tasks = [asyncio.create_task(run_controller(ctx, _measured(ctx, c)), name=c.name)
                 for c in controllers]
        log.info("server ready", extra={"controllers": [c.name for c in controllers]})
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctx.events.stop()
            await ctx.hub.stop()

    # The spec is served by our own route below, behind the token like everything but
    # /healthz and joining; FastAPI's public /openapi.json, /docs and /redoc are off.
    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan,
                  description="Run a multi-service application on a cluster from one file.",
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.state.token = ctx.config.token
    install_error_handlers(app)
    app.include_router(system.public)
    app.include_router(join.public)
    auth = [Depends(authenticate)]
    for module in (system, apps, versions, deployments, instances, nodes, events, artifacts,
                   tokens, join, services, jobs):
        app.include_router(module.router, dependencies=auth)
    app.include_router(instances.ws_router)  # websockets authenticate themselves
    # The last added is the outermost: the timer sees the agent path's requests too.
    if agent_path:
        app.add_middleware(AgentPath, routes=nodes.router.routes)
    app.add_middleware(RequestTimer, metrics=lambda: ctx.metrics)

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    return app
