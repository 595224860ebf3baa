"""How the server reaches a node's agent: its URL, the secret it presents, and the TLS check
that the node's own certificate answers. Every proxy to agents (`server/logs.py`,
`server/remote.py`, `server/exec.py`) goes through here, so they all authenticate alike.

A joined node's agent serves HTTPS with its node certificate: the server checks it against
the cluster CA *and* for that node's name (`<name>.node.corral`, sent as TLS SNI while
connecting to the node's address), so another node's certificate cannot answer for it.
It authenticates with the secret that node received at join (`agent_token`); an agent
that runs with the admin token (no join) is called over plain HTTP with the admin token.

Neighbours: `agent/api.py` (what answers), `server/pki.py` (the CA and the node names).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

from corral.model.credential import NodeCredential
from corral.model.node import Node
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.pki import node_dns_name

__all__ = ["AgentRoute", "agent_client", "agent_routes", "route_to", "tls_for"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRoute:
    node: str
    url: str  # http(s)://address:port, no trailing slash
    token: str
    sni: str | None  # the name its certificate must hold (HTTPS only)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: the TLS name to check."""
        return {"sni_hostname": self.sni} if self.sni else {}

    def ws_url(self, path: str) -> str:
        return ("wss://" + self.url.removeprefix("https://") if self.url.startswith("https://")
                else "ws://" + self.url.removeprefix("http://")) + path


async def _route(ctx: ServerContext, node: Node) -> AgentRoute | None:
    if not node.agent_url:
        return None
    cred = await ctx.records.get(NodeCredential, keys.node_auth(node.name))
    https = node.agent_url.startswith("https://")
    return AgentRoute(node=node.name, url=node.agent_url.rstrip("/"),
                      token=cred.record.agent_token if cred else ctx.config.token,
                      sni=node_dns_name(node.name) if https else None)


async def agent_routes(ctx: ServerContext) -> dict[str, AgentRoute]:
    """Every node that has an agent API, by node name."""
    found = {}
    for item in (await ctx.records.scan(Node, keys.NODES))[0]:
        route = await _route(ctx, item.record)
        if route is not None:
            found[route.node] = route
    return dict(sorted(found.items()))


async def route_to(ctx: ServerContext, node: str) -> AgentRoute | None:
    """The route to one node's agent; None for an unknown node or one without an API."""
    item = await ctx.records.get(Node, keys.node(node))
    return None if item is None else await _route(ctx, item.record)


def tls_for(ctx: ServerContext) -> ssl.SSLContext | bool:
    """What agents' certificates are verified against: the cluster CA (True: the system's
    CAs, for a harness without one)."""
    if ctx.pki is None:
        return True
    return ssl.create_default_context(cadata=ctx.pki.ca_pem.decode())


def agent_client(ctx: ServerContext, *, timeout: float = 10.0,
                 read: float | None = None) -> httpx.AsyncClient:
    """An httpx client for agent calls (`read`: None for streams that may idle)."""
    return httpx.AsyncClient(verify=tls_for(ctx), timeout=httpx.Timeout(timeout, read=read))
