"""One log stream for many instances on many nodes: the server asks each instance's agent
for its lines and merges them by time (Kubernetes' apiserver proxies to kubelets the same
way; agents never push logs into the store).

The response is newline-delimited JSON, one object a line:
`{"time", "instance", "app", "service", "node", "stream", "text"}`.
Without `follow`, lines from all instances are merged by time and `tail` applies to the
merged stream. With `follow`, the history comes first, then live lines as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import StreamingResponse

from corral.model.instance import Instance
from corral.model.node import Node
from corral.server import keys
from corral.server.context import ServerContext

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


async def _agent_lines(client: httpx.AsyncClient, url: str, inst: Instance,
                       params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("GET", f"{url}/v1/agent/instances/{inst.id}/logs",
                             params=params) as resp:
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
    placed = [i for i in instances if i.node and i.node in nodes and nodes[i.node].agent_url]
    token = ctx.config.token

    async def body() -> AsyncIterator[bytes]:
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"},
                                     timeout=httpx.Timeout(10.0, read=None)) as client:
            history: list[dict[str, Any]] = []
            for inst in placed:
                try:
                    async for line in _agent_lines(client, nodes[inst.node or ""].agent_url,
                                                   inst, _params(since, tail, False, stream)):
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
                    async for line in _agent_lines(client, nodes[inst.node or ""].agent_url,
                                                   inst, params):
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
