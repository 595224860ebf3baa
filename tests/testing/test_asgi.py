"""The in-process streaming ASGI transport (`corral.testing.asgi`): what the in-process
server tests stand on."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from corral.testing.asgi import StreamingASGITransport


async def test_a_caller_cancelled_as_the_answer_ends_is_cancelled() -> None:
    # Closing a response waits a moment for the app to end. A caller cancelled just as the
    # app ends must still be cancelled: Python 3.11's `wait_for` returned the app's result
    # instead when both happened in one turn of the loop, and a test's background loop
    # then ran on after its cancel, until the suite's timeout (tests/cli/test_follow.py).
    for turns in range(12):  # the cancel lands 0..11 loop turns after the app can end
        finish = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any, finish: asyncio.Event = finish
                      ) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await finish.wait()

        async def caller(app: Any = app) -> None:
            async with httpx.AsyncClient(transport=StreamingASGITransport(app),
                                         base_url="http://test") as client:
                async with client.stream("GET", "/"):
                    pass  # leaving closes the response: the transport waits for the app
                await asyncio.sleep(3600)  # only a cancel that got through ends this

        task = asyncio.create_task(caller())
        for _ in range(20):
            await asyncio.sleep(0)  # the caller is now waiting for the app to end
        finish.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done and task.cancelled(), f"cancel {turns} turns after the app ended was lost"
