"""The three requests every agent makes over and over, served without FastAPI's
per-request machinery: the watch or long poll (`GET /v1/nodes/{name}/instances`; a watch
streams its lines until they end or the client goes away), the batched status
reports (`PUT /v1/nodes/{name}/status`) and the heartbeat (`PUT /v1/nodes/{name}/heartbeat`).

Why: with ten thousand agents these are nearly every request the server answers (260,000
in a C1M run, `bench/c1m.py`), and FastAPI spent about 900 us on each before and after the
handler (route matching through every included router, dependency solving, the body read
through `json.loads` and validated again, the response model), on the one core the server's
event loop has. Here: one regular expression, the same bearer-token check, the query or
body validated by the same pydantic models in one pass, and the same handler functions
(`server/api/nodes.py`).

What does not change: the routes stay declared in FastAPI (the OpenAPI spec documents them
and the auth rule `NODE_ACCESS` marks them), the answers and errors are the same bytes
(`tests/server/test_agent_path.py` sends the same requests both ways and compares), the
request metrics are labelled by the same route templates, and the outer middleware (the
body-size limit, the request timer, the 500 handler) still wraps these requests. Anything
else, or a method these routes do not take, goes on to FastAPI.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection
from starlette.routing import Route

from corral.server.api import nodes
from corral.server.auth import Identity, identify
from corral.server.context import ServerContext
from corral.server.errors import ApiError, error_body, validation_message

__all__ = ["AgentPath"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]
# (context, caller, node name, query string, body) -> the JSON answer, or a watch's lines
Answer = bytes | AsyncIterator[bytes]
Serve = Callable[[ServerContext, Identity, str, bytes, bytes], Awaitable[Answer]]

_PATH = re.compile(r"^/v1/nodes/([^/]+)/(instances|status|heartbeat)$")
_JSON = [(b"content-type", b"application/json")]
_NDJSON = [(b"content-type", nodes.NDJSON.encode())]


def _query(model: type[BaseModel], raw: bytes) -> Any:
    # The last of a repeated parameter wins, as with FastAPI (Starlette's QueryParams).
    return model.model_validate(dict(parse_qsl(raw.decode("latin-1"))))


async def _instances(ctx: ServerContext, caller: Identity, name: str, query: bytes,
                     _: bytes) -> Answer:
    parsed = _query(nodes.InstancesQuery, query)
    if parsed.watch:
        return await nodes.instances_watch(ctx, caller, name, parsed)
    return await nodes.instances_answer(ctx, caller, name, parsed)


async def _heartbeat(ctx: ServerContext, caller: Identity, name: str, query: bytes,
                     _: bytes) -> bytes:
    return orjson.dumps(await nodes.heartbeat_answer(
        ctx, caller, name, _query(nodes.HeartbeatQuery, query)))


async def _status(ctx: ServerContext, caller: Identity, name: str, _: bytes,
                  body: bytes) -> bytes:
    if not body:
        raise ApiError(422, validation_message([{"loc": ("body",), "msg": "Field required"}]))
    batch = nodes.StatusBatch.model_validate_json(body)
    return orjson.dumps(await nodes.statuses_answer(ctx, caller, name, batch))


_SERVED: dict[tuple[str, str], tuple[str, Serve]] = {
    ("GET", "instances"): ("/v1/nodes/{name}/instances", _instances),
    ("PUT", "status"): ("/v1/nodes/{name}/status", _status),
    ("PUT", "heartbeat"): ("/v1/nodes/{name}/heartbeat", _heartbeat),
}


class AgentPath:
    """ASGI middleware, inside the request timer: serves the agent's three hot requests,
    passes everything else on to `app`."""

    def __init__(self, app: Asgi, routes: Iterable[Any]) -> None:
        self.app = app
        # The FastAPI routes these requests stand for: the request timer labels a request
        # by its route's template, so the metrics read as before.
        declared = {(method, route.path): route for route in routes
                    if isinstance(route, Route) for method in (route.methods or ())}
        self.served: dict[tuple[str, str], tuple[Any, Serve]] = {}
        for key, (path, serve) in _SERVED.items():
            route = declared.get((key[0], path))
            if route is None:
                raise ValueError(f"no FastAPI route {key[0]} {path} to stand for")
            self.served[key] = (route, serve)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.match(scope["path"]) if scope["type"] == "http" else None
        found = self.served.get((scope["method"], match[2])) if match else None
        if match is None or found is None:
            await self.app(scope, receive, send)
            return
        route, serve = found
        scope["route"] = route
        status: int = 200
        answer: Answer = b""
        try:
            caller = await identify(HTTPConnection(scope))
            body = await _body(receive) if scope["method"] == "PUT" else b""
            ctx: ServerContext = scope["app"].state.ctx
            answer = await serve(ctx, caller, match[1], scope["query_string"], body)
        except ApiError as exc:
            status = exc.status
            answer = orjson.dumps(error_body(exc.status, exc.message, exc.details))
        except ValidationError as exc:
            status = 422
            answer = orjson.dumps(error_body(422, validation_message(exc.errors())))
        if not isinstance(answer, bytes):
            await _stream(answer, receive, send)
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _stream(lines: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
    """Send `lines` as one chunked response until they end or the client goes away (then
    the watch stops waiting at once, rather than at its next line)."""
    await send({"type": "http.response.start", "status": 200, "headers": _NDJSON})

    async def send_all() -> None:
        async for line in lines:
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def until_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.ensure_future(send_all()), asyncio.ensure_future(until_disconnect())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # an error while streaming goes on to the server's error handling
