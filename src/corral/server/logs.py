"""One log stream for many instances on many nodes: the server asks each instance's agent
for its lines and merges them by time (Kubernetes' apiserver proxies to kubelets the same
way; agents never push logs into the store).

The response is newline-delimited JSON, one object a line:
`{"time", "instance", "app", "service", "node", "stream", "text"}`.
Without `follow`, lines from all instances are merged by time and `tail` applies to the
merged stream. With `follow`, the history comes first, then live lines as they arrive.

A joined node's agent serves HTTPS with its node certificate: the server checks it against
the cluster CA *and* for that node's name (`<name>.node.corral`, sent as TLS SNI while
connecting to the node's address), so another node's certificate cannot answer for it.
It authenticates with the secret that node received at join (`agent_token`); an agent
that runs with the admin token (no join) is called over plain HTTP with the admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import StreamingResponse

from corral.model.credential import NodeCredential
from corral.model.instance import Instance
from corral.model.node import Node
from corral.server import keys
from corral.server.context import ServerContext
from corral.server.pki import node_dns_name

__all__ = ["stream_logs"]

log = logging.getLogger(__name__)


def _params(since: float | None, tail: int | None, follow: bool,
            stream: str | None) -> dict[str, str]:
    params: dict[str, str] = {"follow": "true" if follow else "false"}
    if since is not None:
        params["since"] = repr(since)
    if tail is not None:
        params["tail"] = str(tail)
    if stream:
        params["stream"] = stream
    return params


def _tag(inst: Instance, line: dict[str, Any]) -> dict[str, Any]:
    return {"time": line["time"], "instance": inst.id, "app": inst.app,
            "service": inst.service, "node": inst.node, "stream": line["stream"],
            "text": line["text"]}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Agent:
    url: str
    token: str
    sni: str | None  # the name its certificate must hold (HTTPS only)


async def _agents(ctx: ServerContext, nodes: dict[str, Node]) -> dict[str, _Agent]:
    found = {}
    for name, node in sorted(nodes.items()):
        if not node.agent_url:
            continue
        cred = await ctx.records.get(NodeCredential, keys.node_auth(name))
        https = node.agent_url.startswith("https://")
        found[name] = _Agent(url=node.agent_url,
                             token=cred.record.agent_token if cred else ctx.config.token,
                             sni=node_dns_name(name) if https else None)
    return found


def _verify(ctx: ServerContext) -> ssl.SSLContext | bool:
    if ctx.pki is None:
        return True
    return ssl.create_default_context(cadata=ctx.pki.ca_pem.decode())


async def _agent_lines(client: httpx.AsyncClient, agent: _Agent, inst: Instance,
                       params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    extensions = {"sni_hostname": agent.sni} if agent.sni else {}
    async with client.stream("GET", f"{agent.url}/v1/agent/instances/{inst.id}/logs",
                             params=params, extensions=extensions,
                             headers={"authorization": f"Bearer {agent.token}"}) as resp:
        if resp.status_code != 200:
            body = (await resp.aread()).decode(errors="replace")[:200]
            yield {"time": 0.0, "instance": inst.id, "app": inst.app, "service": inst.service,
                   "node": inst.node, "stream": "error",
                   "text": f"logs unavailable from node {inst.node}: {resp.status_code} {body}"}
            return
        async for raw in resp.aiter_lines():
            if raw.strip():
                yield _tag(inst, json.loads(raw))


async def stream_logs(ctx: ServerContext, instances: list[Instance], *, since: float | None,
                      tail: int | None, follow: bool, stream: str | None) -> StreamingResponse:
    nodes = {n.record.name: n.record for n in (await ctx.records.scan(Node, keys.NODES))[0]}
    agents = await _agents(ctx, nodes)
    placed = [i for i in instances if i.node and i.node in agents]

    async def body() -> AsyncIterator[bytes]:
        async with httpx.AsyncClient(verify=_verify(ctx),
                                     timeout=httpx.Timeout(10.0, read=None)) as client:
            history: list[dict[str, Any]] = []
            for inst in placed:
                try:
                    async for line in _agent_lines(client, agents[inst.node or ""], inst,
                                                   _params(since, tail, False, stream)):
                        history.append(line)
                except httpx.HTTPError as exc:
                    history.append({"time": 0.0, "instance": inst.id, "stream": "error",
                                    "text": f"logs unavailable from node {inst.node}: {exc}"})
            history.sort(key=lambda x: x["time"])
            if tail is not None:
                history = history[-tail:] if tail else []
            for line in history:
                yield (json.dumps(line) + "\n").encode()
            if not follow:
                return
            last = max((h["time"] for h in history), default=since or 0.0)
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

            async def pump(inst: Instance) -> None:
                params = _params(last if last else None, 0, True, stream)
                with contextlib.suppress(httpx.HTTPError):
                    async for line in _agent_lines(client, agents[inst.node or ""], inst,
                                                   params):
                        if line["time"] > last:
                            await queue.put(line)

            tasks = [asyncio.create_task(pump(i)) for i in placed]
            try:
                while True:
                    line = await queue.get()
                    yield (json.dumps(line) + "\n").encode()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    return StreamingResponse(body(), media_type="application/x-ndjson")
