"""The event stream over real sockets (uvicorn in this process, a real SQLite store):
following in NDJSON and Server-Sent Events, replay from an index across a server restart,
keepalives, and a consumer that stops reading while thousands of events are written."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from corral.clock import SystemClock
from corral.server.app import create_app
from corral.server.context import ServerConfig, ServerContext
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.serving import bind_socket, make_server
from corral.store import open_store

TOKEN = "stream-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class Running:
    ctx: ServerContext
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=AUTH,
                                 timeout=httpx.Timeout(30.0, read=60.0))

    async def write(self, n: int, *, per_txn: int = 1, pad: int = 0) -> list[int]:
        """`n` transactions of `per_txn` events each; their indexes."""
        out = []
        for i in range(n):
            txn = self.ctx.records.txn()
            for j in range(per_txn):
                txn.event("instance", f"i{i}-{j}", "running", f"event {i}.{j}",
                          {"app": "shop" if i % 2 == 0 else "blog", "namespace": "default",
                           "pad": "x" * pad})
            rev = await txn.commit()
            assert rev is not None
            out.append(rev)
        return out


@asynccontextmanager
async def serve(data: Path, **config: Any) -> AsyncIterator[Running]:
    """A real server (plain HTTP, no controllers) over the SQLite file in `data`."""
    cfg = ServerConfig(data_dir=data, token=TOKEN, insecure_http=True, **config)
    store = await open_store(f"sqlite:///{(data / 'corral.db').resolve()}")
    clock = SystemClock()
    ctx = ServerContext(config=cfg, store=store, records=Records(store, clock),
                        hub=WatchHub(store), clock=clock)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(create_app(ctx, controllers=()))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield Running(ctx=ctx, port=sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task
        await store.close()
        sock.close()


async def _follow(http: httpx.AsyncClient, count: int, **params: Any) -> list[dict[str, Any]]:
    """The first `count` messages of a followed NDJSON stream."""
    got: list[dict[str, Any]] = []
    async with http.stream("GET", "/v1/events", params={"follow": "true", **params}) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.strip():
                got.append(json.loads(line))
                if len(got) == count:
                    break
    return got


async def _sse(http: httpx.AsyncClient, count: int, headers: dict[str, str] | None = None,
               **params: Any) -> list[dict[str, str]]:
    """The first `count` SSE messages (comments included, as {"comment": ...})."""
    got: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async with http.stream("GET", "/v1/events", params=params,
                           headers={"accept": "text/event-stream", **(headers or {})}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                got.append({"comment": line[1:].strip()})
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            elif fields:
                got.append(fields)
                fields = {}
            if len(got) >= count:
                break
    return got


async def test_follow_replays_then_streams_live_in_order(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv, srv.http() as http:
        first = await srv.write(10, per_txn=2)
        reader = asyncio.create_task(_follow(http, 28, since=first[3]))
        await asyncio.sleep(0.2)  # usually connected by now; either way nothing is lost
        later = await srv.write(8, per_txn=2)
        got = await reader
        assert [e["index"] for e in got] == [r for r in first[4:] + later for _ in range(2)]
        assert [e["key"] for e in got[:2]] == ["i4-0", "i4-1"]
        # Filtered follow: only shop's events, the backlog limited to the newest 2.
        reader = asyncio.create_task(_follow(http, 4, app="shop", topic="instance", limit=2))
        await asyncio.sleep(0.2)
        more = await srv.write(2, per_txn=2)  # the first is shop's, the second blog's
        shop = await reader
        assert [e["payload"]["app"] for e in shop] == ["shop"] * 4
        assert [e["index"] for e in shop] == [later[6], later[6], more[0], more[0]]


async def test_replay_is_exact_across_a_server_restart(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv, srv.http() as http:
        before = await srv.write(20, per_txn=3)
        all_a = (await http.get("/v1/events")).json()
        seen = await _follow(http, 15, since=before[4])
    async with serve(tmp_path) as srv, srv.http() as http:
        after = await srv.write(5, per_txn=3)
        all_b = (await http.get("/v1/events")).json()
        assert all_b[:len(all_a)] == all_a
        assert [e["index"] for e in all_b] == [r for r in before + after for _ in range(3)]
        # Resume where the first server's follower stopped: exactly the rest.
        assert seen[-1]["index"] == before[9]
        expected = [e for e in all_b if e["index"] > before[9]]
        assert len(expected) == 3 * 10 + 3 * 5
        assert await _follow(http, len(expected), since=before[9]) == expected
        replay = (await http.get("/v1/events", params={"since": before[9]})).json()
        assert replay == [e for e in all_b if e["index"] > before[9]]


async def test_sse_ids_resume_and_keepalive(tmp_path: Path) -> None:
    async with serve(tmp_path, event_heartbeat=0.2) as srv, srv.http() as http:
        revs = await srv.write(4, per_txn=2)
        got = await _sse(http, 9, since=revs[0])
        messages = [m for m in got if "comment" not in m]
        assert [m["event"] for m in messages] == ["instance"] * 6
        # The id is on the last event of each index only: resuming never splits an index.
        assert [m.get("id") for m in messages] == [None, str(revs[1]), None, str(revs[2]),
                                                   None, str(revs[3])]
        assert [json.loads(m["data"])["index"] for m in messages] == \
            [revs[1], revs[1], revs[2], revs[2], revs[3], revs[3]]
        assert {"comment": "keepalive"} in got[6:]
        resumed = await _sse(http, 2, headers={"last-event-id": str(revs[2])}, format="sse")
        assert [json.loads(m["data"])["key"] for m in resumed] == ["i3-0", "i3-1"]


async def test_sse_since_older_than_retention_says_gone(tmp_path: Path) -> None:
    from corral.server.event_retention import prune_events

    async with serve(tmp_path, event_retention_count=4, event_retention_age=0) as srv, \
            srv.http() as http:
        revs = await srv.write(10)
        assert await prune_events(srv.ctx) == 6
        (gone,) = await _sse(http, 1, since=revs[1])
        assert gone["event"] == "gone"
        body = json.loads(gone["data"])
        assert body["pruned_through"] == revs[5] and body["oldest_index"] == revs[6]
        resp = await http.get("/v1/events", params={"since": revs[1], "follow": "true"})
        assert resp.status_code == 410
        assert resp.json()["error"]["details"]["oldest_index"] == revs[6]


def _chunks(data: bytes) -> tuple[bytes, bool]:
    """Decode an HTTP/1.1 chunked body read so far: (payload, finished)."""
    out, pos = b"", 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return out, False
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return out, True
        if len(data) < end + 2 + size + 2:
            return out, False
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


async def test_a_consumer_that_stops_reading_falls_behind_and_resumes(tmp_path: Path) -> None:
    limit = 200
    async with serve(tmp_path, event_follower_buffer=limit) as srv, srv.http() as http:
        start = await srv.write(1)
        # A raw socket with a tiny receive buffer that sends a request and reads nothing.
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(raw, ("127.0.0.1", srv.port))
        await loop.sock_sendall(raw, (
            f"GET /v1/events?follow=true&since={start[0]} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").encode())
        while srv.ctx.events.stats().followers == 0:
            await asyncio.sleep(0.01)
        try:
            written: list[int] = []
            for _ in range(10):  # about 20 MB: far more than every socket buffer holds
                written += await srv.write(500, pad=4000)
                stats = srv.ctx.events.stats()
                assert stats.largest_buffer <= limit
                # The server answers other requests meanwhile.
                assert (await http.get("/v1/status")).status_code == 200
            assert srv.ctx.events.stats().fell_behind == 1
            assert srv.ctx.events.stats().largest_buffer <= limit
            # Now read: the events up to N, then the fell-behind message, then the end.
            data = b""
            while True:
                chunk = await loop.sock_recv(raw, 1 << 16)
                if not chunk:
                    break
                data += chunk
        finally:
            raw.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        payload, finished = _chunks(body)
        assert finished
        lines = [json.loads(line) for line in payload.splitlines() if line.strip()]
        end = lines[-1]
        assert end["type"] == "fell-behind"
        got = [e["index"] for e in lines[:-1]]
        assert got == written[:len(got)]
        assert end["index"] == got[-1]
        assert len(got) < len(written)
        # Resuming from N gives exactly the rest.
        rest = await _follow(http, len(written) - len(got), since=end["index"])
        assert [e["index"] for e in rest] == written[len(got):]
        # Followers that went away are forgotten (once the server saw the disconnect).
        for _ in range(3000):
            if srv.ctx.events.stats().followers == 0:
                break
            await asyncio.sleep(0.01)
        assert srv.ctx.events.stats().followers == 0
