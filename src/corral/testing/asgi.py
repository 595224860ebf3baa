"""An httpx transport that calls an ASGI app in this process and streams its answer.

httpx's own `ASGITransport` runs the app to the end before it returns the response, so a
streamed answer that never ends by itself (a node's watch, a followed event stream) never
arrives. Here the app runs in a task: the response returns at `http.response.start`, the
body arrives chunk by chunk as the app sends it, and closing the response tells the app
the client went away (`http.disconnect`), as a closed socket does under uvicorn.

An exception the app raises is raised to the caller, as with `ASGITransport`: from the
request if nothing was sent yet, else from reading the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx

__all__ = ["StreamingASGITransport"]

_END = object()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: Any, client: tuple[str, int] = ("127.0.0.1", 123)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": url.scheme,
            "path": unquote(url.path), "raw_path": url.raw_path.split(b"?")[0],
            "query_string": url.query, "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": self.client, "server": (url.host, url.port or 80),
        }
        exchange = _Exchange(body)
        task = asyncio.create_task(exchange.run(self.app, scope))
        waiting = asyncio.ensure_future(exchange.started)
        await asyncio.wait([waiting, task], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            await exchange.close(task)
            task.result()  # the app's exception
            raise RuntimeError("the ASGI app ended without a response")
        start = waiting.result()
        return httpx.Response(start["status"], headers=start.get("headers", []),
                              stream=_Body(exchange, task), request=request)


class _Exchange:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sent_request = False
        self.gone = asyncio.Event()
        self.started: asyncio.Future[dict[str, Any]] = \
            asyncio.get_running_loop().create_future()
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()

    async def run(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)
        finally:
            self.chunks.put_nowait(_END)

    async def receive(self) -> dict[str, Any]:
        if not self.sent_request:
            self.sent_request = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if not self.started.done():
                self.started.set_result(message)
        elif message["type"] == "http.response.body" and not self.gone.is_set():
            if message.get("body"):
                self.chunks.put_nowait(message["body"])
            if not message.get("more_body", False):
                self.chunks.put_nowait(_END)

    async def close(self, task: asyncio.Task[None]) -> None:
        """The client went away: the app hears it; one still running after a moment is
        cancelled. `asyncio.wait`, not `wait_for`: in Python 3.11 `wait_for` returns the
        result instead of raising when the caller is cancelled in the turn the app ends,
        and the caller then runs on as if never cancelled."""
        self.gone.set()
        await asyncio.wait({task}, timeout=1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Body(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange, task: asyncio.Task[None]) -> None:
        self.exchange = exchange
        self.task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.exchange.chunks.get()) is not _END:
            yield chunk
        if self.task.done() and not self.task.cancelled():
            error = self.task.exception()
            if error is not None:
                raise error

    async def aclose(self) -> None:
        await self.exchange.close(self.task)
