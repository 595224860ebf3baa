"""A node's watch (`GET /v1/nodes/{name}/instances?watch=true`): on one streamed response,
the answers the node's long polls would get, through the lean agent path and through
FastAPI's route alike; refused before it starts; ended by its time limit, by the server
stopping, and, on a real socket, by the client going away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError, Client, ClientConfig
from corral.clock import SystemClock
from corral.server.api import nodes
from corral.server.app import create_app
from corral.server.context import ServerConfig, ServerContext
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.serving import bind_socket, make_server
from corral.store import MemoryStore
from corral.testing.procs import until
from corral.testing.server import TOKEN, ServerHarness, server_harness

WEB = {"name": "shop", "services": {"web": {
    "instances": 3, "command": ["python3", "app.py", "--port", "${PORT_HTTP}"],
    "resources": {"cpu": 0.25, "memory": "128MiB"}, "ports": [{"name": "http"}]}}}
NODE = {"name": "n1", "address": "10.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
        "port_range": [20000, 20100], "drivers": {"process": ""}}


@pytest.fixture(params=[True, False], ids=["lean", "fastapi"])
async def srv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ServerHarness]:
    async with server_harness(tmp_path, agent_path=request.param) as harness:
        await harness.client.register_node(NODE)
        yield harness


async def test_a_watch_streams_what_each_long_poll_would_answer(srv: ServerHarness) -> None:
    watch = srv.client.watch_node_instances("n1", index=0, wait=30, changes=True)
    try:
        first = await anext(watch)
        assert first["instances"] == [] and first["since"] == 0
        assert first == await srv.client.node_instances("n1", index=0, wait=0, changes=True)

        await srv.client.apply(WEB)
        await srv.reconcile()
        placed = await asyncio.wait_for(anext(watch), 10)
        ids = placed["ids"]
        assert placed["since"] == first["index"] and len(ids) == 3
        assert [i["id"] for i in placed["instances"]] == ids
        assert placed == await srv.client.node_instances(
            "n1", index=first["index"], wait=0, changes=True)

        # (the node's own reports do not wake its watch, as they do not end a long poll:
        # the agent knows them; a change it must act on does)
        await srv.client.scale("shop", service="web", instances=2)
        await srv.reconcile()
        delta = await asyncio.wait_for(anext(watch), 10)
        assert delta["since"] == placed["index"] and delta["ids"] == ids
        assert [i["desired"] for i in delta["instances"]] == ["stop"]
        assert delta == await srv.client.node_instances(
            "n1", index=placed["index"], wait=0, changes=True)
    finally:
        await watch.aclose()


async def test_a_quiet_watch_answers_again_every_wait(srv: ServerHarness) -> None:
    await srv.client.apply(WEB)
    await srv.reconcile()
    watch = srv.client.watch_node_instances("n1", index=0, wait=0.2, changes=True)
    try:
        first = await anext(watch)
        again = [await asyncio.wait_for(anext(watch), 10) for _ in range(2)]
        # nothing changed: the same index, no records, every live id (a keep-alive the
        # agent merges like any answer)
        assert [(a["index"], a["since"], a["instances"], a["ids"]) for a in again] == \
            [(first["index"], first["index"], [], first["ids"])] * 2
    finally:
        await watch.aclose()


async def test_a_watch_ends_after_its_time_and_when_the_server_stops(
        srv: ServerHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "WATCH_SECONDS", 0.3)
    answers = [a async for a in srv.client.watch_node_instances("n1", index=0, wait=0.1)]
    assert 2 <= len(answers) <= 10  # the first, then one a tenth of a second, then the end

    monkeypatch.setattr(nodes, "WATCH_SECONDS", 300.0)
    watch = srv.client.watch_node_instances("n1", index=0, wait=30)
    await anext(watch)
    waiting = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    srv.ctx.records.index.release_waiters()
    # the server is stopping: the waiting answer goes out at once, then the watch ends
    assert (await asyncio.wait_for(waiting, 10))["instances"] == []
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(watch), 10)


async def test_a_watch_is_refused_before_it_starts(srv: ServerHarness) -> None:
    other = await srv.join("n2")
    try:
        with pytest.raises(ApiError) as refused:
            await anext(other.client.watch_node_instances("n1", index=0, wait=1))
        assert refused.value.status == 403
    finally:
        await other.client.close()
    with pytest.raises(ApiError) as invalid:
        await anext(srv.client.watch_node_instances("n1", index=0, wait=301))
    assert invalid.value.status == 422 and "wait" in invalid.value.message
    with pytest.raises(ApiError) as anonymous:
        await anext(srv.client_with("").watch_node_instances("n1", index=0, wait=1))
    assert anonymous.value.status == 401


def _serving_requests() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "RequestResponseCycle.run_asgi"]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "fastapi"])
async def test_a_watch_on_a_socket_stops_on_the_server_when_the_client_goes_away(
        tmp_path: Path, lean: bool) -> None:
    clock = SystemClock()
    store = MemoryStore()
    ctx = ServerContext(config=ServerConfig(data_dir=tmp_path, token=TOKEN,
                                            insecure_http=True),
                        store=store, records=Records(store, clock), hub=WatchHub(store),
                        clock=clock)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(create_app(ctx, controllers=(), agent_path=lean))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    client = Client(ClientConfig(addr=f"http://127.0.0.1:{sock.getsockname()[1]}",
                                 token=TOKEN))
    try:
        await until(lambda: server.started or serving.done())
        await client.register_node(NODE)
        watch = client.watch_node_instances("n1", index=0, wait=30)
        assert (await anext(watch))["instances"] == []
        assert len(_serving_requests()) == 1
        await watch.aclose()  # the connection closes with the response
        await until(lambda: not _serving_requests())
    finally:
        await client.close()
        server.should_exit = True
        await serving
        await store.close()
        sock.close()

