"""An in-process API server for tests: memory store, fake clock, predictable ids, and a
client that talks to it through httpx's ASGI transport (no sockets, no threads).

Controllers do not run by themselves here; tests call `reconcile()` to run each one once,
so every step is deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from corral.client import Client, ClientConfig
from corral.server.app import create_app
from corral.server.context import ServerConfig, ServerContext
from corral.server.controllers.applications import reconcile_applications
from corral.server.controllers.drain import reconcile_drains
from corral.server.controllers.nodes import reconcile_nodes
from corral.server.controllers.scheduling import reconcile_scheduling
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.store import MemoryStore
from corral.store.base import Store
from corral.testing.clock import FakeClock

__all__ = ["TOKEN", "ServerHarness", "server_harness"]

TOKEN = "test-token"


@dataclass
class ServerHarness:
    ctx: ServerContext
    app: FastAPI
    client: Client
    clock: FakeClock

    async def reconcile(self, rounds: int = 3) -> None:
        """Run the application, scheduling and node controllers, a few rounds (each round
        can create work for the next)."""
        for _ in range(rounds):
            await reconcile_nodes(self.ctx)
            await reconcile_drains(self.ctx)
            await reconcile_applications(self.ctx)
            await reconcile_scheduling(self.ctx)

    def anonymous(self) -> Client:
        return Client(ClientConfig(addr="http://corral", token=""),
                      transport=httpx.ASGITransport(app=self.app))


@asynccontextmanager
async def server_harness(tmp_path: Path, *, store: Store | None = None,
                      clock: FakeClock | None = None) -> AsyncIterator[ServerHarness]:
    clock = clock or FakeClock()
    store = store or MemoryStore()
    ids = (f"i{n:07x}" for n in itertools.count(1))
    config = ServerConfig(data_dir=tmp_path / "server", token=TOKEN)
    ctx = ServerContext(config=config, store=store, records=Records(store, clock),
                        hub=WatchHub(store), clock=clock, new_id=lambda: next(ids))
    app = create_app(ctx, controllers=())
    await ctx.hub.start()
    client = Client(ClientConfig(addr="http://corral", token=TOKEN),
                    transport=httpx.ASGITransport(app=app))
    try:
        yield ServerHarness(ctx=ctx, app=app, client=client, clock=clock)
    finally:
        await client.close()
        await ctx.hub.stop()
        await store.close()
