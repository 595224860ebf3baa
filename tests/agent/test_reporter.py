"""agent/reporter.py against the in-process server: a node's reports go in batches, in
order, through the server's state machine; refusals are dropped, an unreachable server
is waited out, and what one instance's runner flushes or drops is its own."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.agent.reporter import NodeReporter
from corral.client import Client, ClientConfig
from corral.model.instance import Instance
from corral.server import keys
from corral.testing.asgi import StreamingASGITransport
from corral.testing.server import TOKEN, ServerHarness, server_harness
from tests.server.rollouts import NODE

pytestmark = pytest.mark.timeout(60)


class CountingTransport(httpx.AsyncBaseTransport):
    """The server's ASGI transport, counting the status batches sent, and failing the
    first `refuse` requests as a network that drops them would (a fault injector in
    front of the real server)."""

    def __init__(self, app: Any, refuse: int = 0) -> None:
        self._inner = StreamingASGITransport(app)
        self.refuse = refuse
        self.batches: list[list[dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refuse > 0:
            self.refuse -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "PUT" and request.url.path.endswith("/status"):
            self.batches.append(json.loads(await request.aread())["reports"])
        return await self._inner.handle_async_request(request)


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[ServerHarness]:
    async with server_harness(tmp_path) as harness:
        yield harness


async def placed(srv: ServerHarness, count: int) -> list[str]:
    """`count` instances of app shop placed on node n1; their ids."""
    await srv.client.register_node(NODE)
    await srv.client.apply({"name": "shop", "services": {"web": {
        "instances": count, "command": ["sleep", "1000"], "ports": [{"name": "http"}]}}})
    await srv.reconcile()
    found = await srv.client.list_instances(app="shop")
    assert [i["state"] for i in found] == ["scheduled"] * count
    return [i["id"] for i in found]


async def states(srv: ServerHarness) -> dict[str, tuple[str, int | None]]:
    """Every instance's state and pid, as stored (stopped ones too)."""
    instances, _ = await srv.ctx.records.scan(Instance, keys.INSTANCES)
    return {i.record.id: (str(i.record.state), i.record.pid) for i in instances}


def reporter_on(transport: CountingTransport) -> tuple[NodeReporter, Client]:
    client = Client(ClientConfig(addr="http://corral", token=TOKEN), transport=transport)
    return NodeReporter(client, NODE["name"]), client


async def test_reports_of_many_instances_go_in_one_request_in_order(
        srv: ServerHarness) -> None:
    ids = await placed(srv, 3)
    transport = CountingTransport(srv.app)
    node, client = reporter_on(transport)
    try:
        for n, iid in enumerate(ids):
            one = node.instance(iid)
            one.report(state="starting", reason="", restarts=0, health="none")
            one.report(state="running", reason="", restarts=0, health="none", pid=100 + n)
        await node.flush()
        assert node.pending() == 0
        assert await states(srv) == {iid: ("running", 100 + n) for n, iid in enumerate(ids)}
        # six reports, queued before the first was sent: one request, in the order made
        assert len(transport.batches) == 1
        assert [(r["id"], r["state"]) for r in transport.batches[0]] == [
            (iid, state) for iid in ids for state in ("starting", "running")]
        assert all("node" not in r for r in transport.batches[0])
    finally:
        await node.close()
        await client.close()


async def test_a_refused_report_is_dropped_and_the_rest_apply(
        srv: ServerHarness, caplog: pytest.LogCaptureFixture) -> None:
    first, second = await placed(srv, 2)
    transport = CountingTransport(srv.app)
    node, client = reporter_on(transport)
    try:
        node.instance(first).report(state="running", pid=7)
        node.instance("no-such-instance").report(state="running", pid=8)
        node.instance(first).report(state="scheduled")  # running -> scheduled: impossible
        node.instance(second).report(state="running", pid=9)
        with caplog.at_level(logging.WARNING, logger="corral.agent.reporter"):
            await node.flush()
        assert await states(srv) == {first: ("running", 7), second: ("running", 9)}
        refused = [r.getMessage() for r in caplog.records]
        assert any("no-such-instance" in m for m in refused)
        assert any(first in m and "scheduled" in m for m in refused)
    finally:
        await node.close()
        await client.close()


async def test_an_unreachable_server_is_waited_out(srv: ServerHarness) -> None:
    (iid,) = await placed(srv, 1)
    transport = CountingTransport(srv.app, refuse=2)
    node, client = reporter_on(transport)
    try:
        node.instance(iid).report(state="running", pid=5)
        await node.flush(iid, timeout=30)
        assert transport.refuse == 0 and len(transport.batches) == 1
        assert await states(srv) == {iid: ("running", 5)}
    finally:
        await node.close()
        await client.close()


async def test_one_instance_flushes_and_drops_only_its_own_reports(
        srv: ServerHarness) -> None:
    kept, dropped = await placed(srv, 2)
    transport = CountingTransport(srv.app, refuse=1_000_000)  # nothing gets through yet
    node, client = reporter_on(transport)
    try:
        node.instance(kept).report(state="running", pid=1)
        node.instance(dropped).report(state="running", pid=2)
        node.instance(dropped).report(state="stopped")
        await node.flush(dropped, timeout=0.3)  # gives up: logged, not raised
        assert (node.pending(kept), node.pending(dropped)) == (1, 2)
        # the first batch (both instances' reports) is in flight, being retried
        await node.instance(dropped).close()
        node.instance(dropped).report(state="running", pid=3)  # queued behind it
        await node.instance(dropped).close()
        assert node.pending(dropped) == 2  # the in-flight reports still count
        transport.refuse = 0
        await node.flush(timeout=30)
        assert node.pending() == 0
        assert await states(srv) == {kept: ("running", 1), dropped: ("stopped", None)}
        assert [r["state"] for b in transport.batches for r in b if r["id"] == dropped] == [
            "running", "stopped"]
    finally:
        await node.close()
        await client.close()
