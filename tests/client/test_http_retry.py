"""A request the server dropped without answering (a kept-alive connection it closed as it
was reused) is sent again once, on a fresh connection, when that is safe: GET and PUT
with a body in memory. Against a real socket server that drops the first request of
each test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corral.client import Client, ClientConfig
from corral.client.http import Unreachable


class Dropper:
    """HTTP on a real socket: drops the first `drops` requests unanswered, answers the
    rest `{"ok": true}`; counts what arrived."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.seen: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next((int(line.split(":", 1)[1]) for line in lines
                               if line.lower().startswith("content-length:")), 0)
                chunked = any(line.lower() == "transfer-encoding: chunked" for line in lines)
                if chunked:
                    await reader.readuntil(b"0\r\n\r\n")
                elif length:
                    await reader.readexactly(length)
                self.seen.append(lines[0].split(" ")[0])
                if len(self.seen) <= self.drops:
                    return  # closed without a response
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def dropper() -> AsyncIterator[tuple[Dropper, Client]]:
    server_side = Dropper(drops=1)
    server = await asyncio.start_server(server_side.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(ClientConfig(addr=f"http://127.0.0.1:{port}", token="t"))
    try:
        yield server_side, client
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_dropped_get_or_put_is_sent_again_once(
        dropper: tuple[Dropper, Client]) -> None:
    server_side, client = dropper
    assert await client.request("GET", "/v1/nodes/n1/instances") == {"ok": True}
    assert server_side.seen == ["GET", "GET"]
    server_side.drops, server_side.seen = 1, []
    assert await client.request("PUT", "/v1/nodes/n1/status",
                                json={"reports": []}) == {"ok": True}
    assert server_side.seen == ["PUT", "PUT"]


async def test_dropped_twice_is_unreachable(dropper: tuple[Dropper, Client]) -> None:
    server_side, client = dropper
    server_side.drops = 2
    with pytest.raises(Unreachable):
        await client.request("GET", "/v1/apps")
    assert server_side.seen == ["GET", "GET"]


async def test_a_dropped_post_or_stream_is_not_sent_again(
        dropper: tuple[Dropper, Client]) -> None:
    server_side, client = dropper
    with pytest.raises(Unreachable):
        await client.request("POST", "/v1/apps", json={"spec": {}})
    assert server_side.seen == ["POST"]

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    server_side.drops, server_side.seen = 1, []
    with pytest.raises(Unreachable):
        await client.request("PUT", "/v1/artifacts/x", content=chunks())
    assert server_side.seen == ["PUT"]
