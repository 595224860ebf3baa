"""`corral exec`'s relay: the CLI's websocket (`/v1/instances/{id}/exec`, admin token only)
joined to a websocket on the agent that runs the instance, frames passed on unchanged in
both directions (`corral/exec_protocol.py`), and the agent's close code passed back, so
a refusal there (not running, bad command) reaches the CLI as it was said.

The server checks the caller and the first frame itself, so a bad request is refused
before any node is reached; it reaches the agent with the same credentials and TLS name
check as the log proxy (`server/agents.py`). A refusal is an error frame, then close code
4000 + the HTTP status.

Neighbours: `server/api/instances.py` (the route), `agent/api.py` and
`agent/exec_session.py` (the other end), `client/remote.py` (the CLI's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from corral.exec_protocol import ProtocolError, close_code, error_frame, parse_request
from corral.model.instance import TERMINAL_STATES, Instance
from corral.server import keys
from corral.server.agents import route_to, tls_for
from corral.server.auth import identify
from corral.server.context import ServerContext
from corral.server.errors import ApiError

__all__ = ["relay_exec"]

log = logging.getLogger(__name__)

_OPEN_TIMEOUT = 10.0


async def _refuse(ws: WebSocket, status: int, message: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.send_text(error_frame(message))
        await ws.close(code=close_code(status), reason=message[:120])


async def _receive(ws: WebSocket) -> bytes | str | None:
    try:
        message = await ws.receive()
    except (WebSocketDisconnect, RuntimeError):
        return None
    if message["type"] == "websocket.disconnect":
        return None
    data: bytes | str | None = message.get("bytes")
    return data if data is not None else message.get("text") or ""


async def relay_exec(ctx: ServerContext, ws: WebSocket, instance_id: str) -> None:
    """Serve one exec websocket, from its handshake to its close."""
    await ws.accept()
    try:
        caller = await identify(ws)
        if not caller.is_admin:
            raise ApiError(403, f"node {caller.node}'s credential may not run commands in "
                                "instances: it needs the admin token")
        item = await ctx.records.get(Instance, keys.instance(instance_id))
        if item is None:
            raise ApiError(404, f"no instance {instance_id!r}; `corral ps` lists them")
        inst = item.record
        first = await _receive(ws)
        if first is None:
            return
        request = parse_request(first if isinstance(first, str) else first.decode())
        if inst.state in TERMINAL_STATES or inst.node is None:
            raise ApiError(409, f"instance {inst.id} is {inst.state}: nothing runs to "
                                "exec in")
        agent = await route_to(ctx, inst.node)
        if agent is None:
            raise ApiError(502, f"node {inst.node} has no agent API")
    except ApiError as exc:
        await _refuse(ws, exc.status, exc.message)
        return
    except (ProtocolError, UnicodeDecodeError) as exc:
        await _refuse(ws, 400, str(exc))
        return
    verify = tls_for(ctx)
    tls: ssl.SSLContext | None = None
    if agent.url.startswith("https://"):
        tls = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
    try:
        upstream = await connect(agent.ws_url(f"/v1/agent/instances/{inst.id}/exec"),
                                 additional_headers=agent.headers, ssl=tls,
                                 server_hostname=agent.sni if tls else None,
                                 open_timeout=_OPEN_TIMEOUT, max_size=None,
                                 compression=None)
    except (OSError, TimeoutError, InvalidHandshake, InvalidStatus) as exc:
        await _refuse(ws, 502, f"node {inst.node} cannot be reached: "
                               f"{exc or type(exc).__name__}")
        return
    log.info("exec in instance %s on %s: %s", inst.id, inst.node,
             " ".join(request.command)[:200], extra={"instance": inst.id})
    async with upstream:
        await upstream.send(request.to_text())
        await _pipe(ws, upstream)


async def _pipe(ws: WebSocket, upstream: ClientConnection) -> None:
    async def down() -> None:  # agent -> client
        try:
            async for frame in upstream:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_text(frame)
        except ConnectionClosed:
            pass
        code = upstream.close_code or 1011
        reason = upstream.close_reason or ""
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close(code=1000 if code == 1005 else code, reason=reason)

    async def up() -> None:  # client -> agent
        while (frame := await _receive(ws)) is not None:
            await upstream.send(frame)

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
