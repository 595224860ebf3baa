"""One log stream for many instances on many nodes: the server asks each instance's agent
for its lines and merges them by time (Kubernetes' apiserver proxies to kubelets the same
way; agents never push logs into the store).

The response is newline-delimited JSON, one object a line:
`{"time", "instance", "app", "service", "node", "stream", "text"}` (`stream` is `stdout`,
`stderr`, or `error` for a line the server adds when a node cannot be read).
Without `follow`, lines from all instances are fetched concurrently, merged by time, and
`tail` applies to the merged stream. With `follow`, the history comes first, then live lines:
each agent's stream is read as it arrives and released in batches every `FLUSH` seconds,
each batch ordered by time (`order_batch`), so lines of different nodes written within a
batch come out in order. The set of instances is looked up again (`refresh`) whenever the
store's instances change, so a follow picks up the instances a rollout or a restart adds
while it runs; an instance not followed from the start is read from its first line.

An instance whose agent has no logs for it (never started there, or its directory was
garbage-collected: the agent's `--log-retention`) contributes nothing; a node that cannot
be reached contributes one `error` line.

Neighbours: `server/agents.py` (reaching agents), `agent/api.py` (the agent's endpoint),
`agent/logs.py` (the readers behind it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
from fastapi.responses import StreamingResponse

from corral.model.instance import Instance, InstanceState
from corral.server import keys
from corral.server.agents import AgentRoute, agent_client, agent_routes
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["FLUSH", "order_batch", "stream_logs"]

log = logging.getLogger(__name__)

FLUSH = 0.3  # seconds live lines wait to be merged with those of other instances
_RETRY = 1.0  # seconds before asking again for the logs of an instance not started yet
_RETRIES = 30
_REFRESH_WAIT = 10.0  # a refresh at least this often, even without a store change
_NOT_STARTED = frozenset({InstanceState.PENDING, InstanceState.SCHEDULED})

Refresh = Callable[[], Awaitable[list[Instance]]]


class _NoLogs(Exception):
    """The agent has no logs for this instance (404)."""


def order_batch(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lines ordered by time; at equal times by instance, keeping each instance's own order
    (a stable sort)."""
    return sorted(lines, key=lambda line: (line["time"], line["instance"]))


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


def _error(inst: Instance, text: str, time: float = 0.0) -> dict[str, Any]:
    return {"time": time, "instance": inst.id, "app": inst.app, "service": inst.service,
            "node": inst.node, "stream": "error", "text": text}


async def _agent_lines(client: httpx.AsyncClient, agent: AgentRoute, inst: Instance,
                       params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("GET", f"{agent.url}/v1/agent/instances/{inst.id}/logs",
                             params=params, extensions=agent.extensions,
                             headers=agent.headers) as resp:
        if resp.status_code == 404:
            raise _NoLogs(inst.id)
        if resp.status_code != 200:
            body = (await resp.aread()).decode(errors="replace")[:200]
            yield _error(inst, f"logs unavailable from node {inst.node}: "
                               f"{resp.status_code} {body}")
            return
        async for raw in resp.aiter_lines():
            if raw.strip():
                yield _tag(inst, json.loads(raw))


async def _history(client: httpx.AsyncClient, agent: AgentRoute, inst: Instance,
                   params: dict[str, str]) -> list[dict[str, Any]]:
    try:
        return [line async for line in _agent_lines(client, agent, inst, params)]
    except _NoLogs:
        return []
    except httpx.HTTPError as exc:
        return [_error(inst, f"logs unavailable from node {inst.node}: {exc}")]


async def stream_logs(ctx: ServerContext, instances: list[Instance], *, since: float | None,
                      tail: int | None, follow: bool, stream: str | None,
                      refresh: Refresh | None = None) -> StreamingResponse:
    """`instances` as they are now; `refresh` (with `follow`) looks up the matching
    instances again, to follow those that appear meanwhile."""
    if stream not in (None, "stdout", "stderr"):
        raise ApiError(400, f"stream must be stdout or stderr, not {stream!r}")
    agents = await agent_routes(ctx)
    placed = [i for i in instances if i.node and i.node in agents]

    async def body() -> AsyncIterator[bytes]:
        async with agent_client(ctx, read=None) as client:
            fetched = await asyncio.gather(*(
                _history(client, agents[i.node or ""], i, _params(since, tail, False, stream))
                for i in placed))
            history = order_batch(line for lines in fetched for line in lines)
            if tail is not None:
                history = history[-tail:] if tail else []
            for line in history:
                yield (json.dumps(line) + "\n").encode()
            if not follow:
                return
            last = max((h["time"] for h in history), default=since or 0.0)
            async for batch in _follow(ctx, client, agents, placed, last, stream, refresh):
                yield "".join(json.dumps(line) + "\n" for line in batch).encode()

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def _follow(ctx: ServerContext, client: httpx.AsyncClient,
                  agents: dict[str, AgentRoute], initial: list[Instance], last: float,
                  stream: str | None, refresh: Refresh | None
                  ) -> AsyncIterator[list[dict[str, Any]]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
    tasks: dict[str, asyncio.Task[None]] = {}

    async def pump(inst: Instance, since: float | None) -> None:
        agent = agents[inst.node or ""]
        # From `since` on, history included: a line written between the history read and
        # this request is neither lost nor repeated.
        params = _params(since or None, None, True, stream)
        for _ in range(_RETRIES):
            try:
                async for line in _agent_lines(client, agent, inst, params):
                    if not since or line["time"] > since:
                        await queue.put(line)
                return
            except _NoLogs:
                await asyncio.sleep(_RETRY)  # placed, not started yet: its logs come
            except httpx.HTTPError as exc:
                await queue.put(_error(inst, f"stopped following: node {inst.node}: {exc}",
                                       ctx.clock.now()))
                return

    def start(inst: Instance, since: float | None) -> None:
        if inst.id not in tasks and inst.node in agents:
            tasks[inst.id] = asyncio.create_task(pump(inst, since), name=f"logs-{inst.id}")

    async def watch() -> None:
        nonlocal agents
        assert refresh is not None
        index = ctx.hub.revision
        while True:
            index = await ctx.hub.wait(index, [keys.INSTANCES, keys.NODES], _REFRESH_WAIT)
            found = [i for i in await refresh()
                     if i.id not in tasks and i.node and i.state not in _NOT_STARTED]
            if any(i.node not in agents for i in found):
                agents = await agent_routes(ctx)
            for inst in found:
                start(inst, None)  # new since the follow began: every line is news

    for inst in initial:
        start(inst, last)
    watcher = asyncio.create_task(watch(), name="logs-watch") if refresh else None
    try:
        while True:
            batch = [await queue.get()]
            await asyncio.sleep(FLUSH)
            while not queue.empty():
                batch.append(queue.get_nowait())
            yield order_batch(batch)
    finally:
        everything = [*tasks.values(), *([watcher] if watcher else [])]
        for t in everything:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*everything, return_exceptions=True)
