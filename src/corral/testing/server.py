"""An in-process API server for tests: memory store, fake clock, predictable ids, and a
client that talks to it through an ASGI transport (no sockets, no threads) that streams
answers as they are sent (`testing/asgi.py`), so a node's watch works here too.

Controllers do not run by themselves here; tests call `reconcile()` to run each one once,
so every step is deterministic. The server has a cluster CA (in the test's temp dir), so
machines can join: `join(name)` gives a client that acts with that node's credential.
There is no TLS in between (the transport is in-process).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from corral.agent.identity import new_key_and_csr
from corral.client import Client, ClientConfig
from corral.server.app import create_app
from corral.server.context import ServerConfig, ServerContext
from corral.server.controllers.applications import reconcile_applications
from corral.server.controllers.drain import reconcile_drains
from corral.server.controllers.jobs import reconcile_jobs
from corral.server.controllers.nodes import reconcile_nodes
from corral.server.controllers.scheduling import reconcile_scheduling
from corral.server.pki import load_or_create_pki
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.store import MemoryStore
from corral.store.base import Store
from corral.testing.asgi import StreamingASGITransport
from corral.testing.clock import FakeClock

__all__ = ["TOKEN", "JoinedNode", "ServerHarness", "server_harness"]

TOKEN = "test-token"


@dataclass
class JoinedNode:
    name: str
    client: Client  # authenticated with the node's credential
    answer: dict[str, Any]  # what POST /v1/join returned
    key_pem: bytes


@dataclass
class ServerHarness:
    ctx: ServerContext
    app: FastAPI
    client: Client
    clock: FakeClock

    async def reconcile(self, rounds: int = 3) -> None:
        """Run the application, job, scheduling and node controllers, a few rounds (each
        round can create work for the next)."""
        for _ in range(rounds):
            await reconcile_nodes(self.ctx)
            await reconcile_drains(self.ctx)
            await reconcile_applications(self.ctx)
            await reconcile_jobs(self.ctx)
            await reconcile_scheduling(self.ctx)

    def anonymous(self) -> Client:
        return self.client_with("")

    def client_with(self, token: str) -> Client:
        """A client that sends `token` (any secret: admin, node credential, junk)."""
        return Client(ClientConfig(addr="http://corral", token=token),
                      transport=StreamingASGITransport(self.app))

    async def join_token(self, *, ttl: float = 3600.0) -> str:
        answer = await self.client.create_token(ttl=ttl)
        return str(answer["token"])

    async def join(self, name: str, *, token: str | None = None,
                   key_and_csr: tuple[bytes, str] | None = None) -> JoinedNode:
        """Join as node `name` (with a fresh token and key unless given); raises ApiError
        when refused."""
        key_pem, csr = key_and_csr or new_key_and_csr(name)
        anon = self.anonymous()
        try:
            answer = await anon.join(token=token or await self.join_token(), name=name,
                                     csr=csr)
        finally:
            await anon.close()
        return JoinedNode(name=name, client=self.client_with(answer["credential"]),
                          answer=answer, key_pem=key_pem)


@asynccontextmanager
async def server_harness(tmp_path: Path, *, store: Store | None = None,
                      clock: FakeClock | None = None, agent_path: bool = True
                      ) -> AsyncIterator[ServerHarness]:
    """`agent_path` False: FastAPI serves the agents' hot requests too (`create_app`)."""
    clock = clock or FakeClock()
    store = store or MemoryStore()
    ids = (f"i{n:07x}" for n in itertools.count(1))
    config = ServerConfig(data_dir=tmp_path / "server", token=TOKEN)
    ctx = ServerContext(config=config, store=store, records=Records(store, clock),
                        hub=WatchHub(store), clock=clock, new_id=lambda: next(ids),
                        pki=load_or_create_pki(config.pki_dir, now=clock.now()))
    app = create_app(ctx, controllers=(), agent_path=agent_path)
    await ctx.hub.start()
    client = Client(ClientConfig(addr="http://corral", token=TOKEN),
                    transport=StreamingASGITransport(app))
    try:
        yield ServerHarness(ctx=ctx, app=app, client=client, clock=clock)
    finally:
        await client.close()
        await ctx.hub.stop()
        await store.close()
