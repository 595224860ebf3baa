"""Hollow nodes: the pure rules (labels, which reports an answer calls for, the correctness
verdict), then a small fleet against the in-process server, through the real agent
endpoints, with batched and with per-instance status reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from corral.client import ClientConfig
from corral.testing.asgi import StreamingASGITransport
from corral.testing.hollow import (
    FleetSpec,
    Held,
    HollowFleet,
    HollowNode,
    check,
    next_reports,
    node_labels,
    node_name,
    parse_labels,
)
from corral.testing.server import TOKEN, ServerHarness, server_harness

GiB = 1 << 30


def test_labels_are_dealt_round_robin() -> None:
    labels = parse_labels(["zone=a,b,c", "disk=ssd"])
    assert labels == (("disk", ("ssd",)), ("zone", ("a", "b", "c")))
    spec = FleetSpec(count=4, labels=labels, prefix="h")
    assert [node_labels(spec, i)["zone"] for i in range(4)] == ["a", "b", "c", "a"]
    assert node_name(spec, 7) == "h-00007"
    for bad in ("zone", "=a", "zone=", "zone=,"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_labels([bad])


def test_an_answer_calls_for_each_report_once() -> None:
    answer = [
        {"id": "new", "state": "scheduled", "desired": "run"},
        {"id": "half", "state": "starting", "desired": "run"},
        {"id": "up", "state": "running", "desired": "run"},
        {"id": "asked", "state": "running", "desired": "stop"},
        {"id": "gone", "state": "stopped", "desired": "stop"},
        {"id": "sent", "state": "scheduled", "desired": "run"},
    ]
    assert next_reports(answer, {"sent": "running"}) == [
        ("new", ("starting", "running")), ("half", ("running",)), ("asked", ("stopped",))]
    # Once reported, the same (stale) answer calls for nothing more.
    assert next_reports(answer, {"new": "running", "half": "running", "asked": "stopped",
                                 "sent": "running"}) == []


def test_the_verdict_finds_each_kind_of_mistake() -> None:
    a = HollowNode(name="a", labels={})
    b = HollowNode(name="b", labels={})
    a.assigned = {"x": Held(cpu_milli=3000, memory=GiB, ports=(20000,)),
                  "y": Held(cpu_milli=1000, memory=GiB, ports=(20001,))}
    b.assigned = {"z": Held(cpu_milli=100, memory=GiB, ports=(20000,))}
    assert check([a, b], cpu=4, memory=8 * GiB).ok
    b.assigned["x"] = Held(cpu_milli=100, memory=GiB, ports=(20000,))
    b.assigned["w"] = Held(cpu_milli=4000, memory=GiB, ports=(20005,))
    verdict = check([a, b], cpu=4, memory=8 * GiB)
    assert verdict.on_two_nodes == ("x",)
    assert verdict.over_capacity == ("b",)
    assert verdict.duplicate_ports == ("b:20000",)
    assert not verdict.ok and verdict.instances == 4


async def until(predicate: object, what: str) -> None:
    for _ in range(500):  # a hang guard, not a claim about speed
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached: {what}")


@pytest.mark.parametrize("batch", [True, False])
async def test_a_fleet_registers_runs_and_stops_instances(tmp_path: Path, batch: bool) -> None:
    async with server_harness(tmp_path) as srv:
        await fleet_round(srv, batch)


async def fleet_round(srv: ServerHarness, batch: bool) -> None:
    spec = FleetSpec(count=3, labels=(("zone", ("a", "b")),), batch_status=batch,
                     poll_wait=5)
    fleet = HollowFleet(ClientConfig(addr="http://corral", token=TOKEN), spec,
                        transport=StreamingASGITransport(srv.app))
    task = asyncio.create_task(fleet.run())
    try:
        await until(lambda: fleet.stats.registered == 3, "registered")
        nodes = {n["name"]: n for n in await srv.client.list_nodes()}
        assert sorted(nodes) == ["hollow-00000", "hollow-00001", "hollow-00002"]
        assert nodes["hollow-00001"]["labels"] == {"zone": "b"}
        await srv.client.apply({"name": "sim", "services": {"web": {
            "instances": 5, "command": ["sleep", "1"], "ports": [{"name": "http"}],
            "resources": {"cpu": 1, "memory": "1GiB"}}}})
        await srv.reconcile()
        await until(lambda: fleet.stats.running == 5, "all running")
        insts = await srv.client.list_instances(app="sim")
        assert {i["state"] for i in insts} == {"running"}
        assert fleet.verdict().ok and fleet.verdict().instances == 5
        await srv.client.scale("sim", service="web", instances=2)
        await srv.reconcile()
        await until(lambda: fleet.stats.stopped == 3, "three stopped")
        states = sorted(i["state"] for i in await srv.client.list_instances(app="sim",
                                                                            all=True))
        assert states == ["running", "running", "stopped", "stopped", "stopped"]
        assert fleet.stats.errors == 0
        # Every record came at least once assigned and once told to stop (and some back
        # after the fleet's own reports).
        assert fleet.stats.records >= 5 + 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await fleet.close()


class LosesFirstReplies(httpx.AsyncBaseTransport):
    """The server gets each request; the first `count` status batches' answers are lost
    on the way back (a client timeout after the server committed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, count: int) -> None:
        self.inner = inner
        self.count = count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "PUT" and request.url.path.endswith("/status") and self.count:
            self.count -= 1
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


async def test_a_batch_whose_answer_was_lost_is_sent_again_and_counted(
        tmp_path: Path) -> None:
    async with server_harness(tmp_path) as srv:
        spec = FleetSpec(count=1, labels=(), poll_wait=5)
        fleet = HollowFleet(ClientConfig(addr="http://corral", token=TOKEN), spec,
                            transport=LosesFirstReplies(StreamingASGITransport(srv.app), 2))
        task = asyncio.create_task(fleet.run())
        try:
            await until(lambda: fleet.stats.registered == 1, "registered")
            await srv.client.apply({"name": "sim", "services": {"web": {
                "instances": 2, "command": ["sleep", "1"],
                "resources": {"cpu": 0.5, "memory": "1GiB"}}}})
            await srv.reconcile()
            # Committed the first time: the server has nothing new to tell the node, so
            # only sending the batch again lets the fleet know they run.
            await until(lambda: fleet.stats.running == 2, "both counted running")
            assert {i["state"] for i in await srv.client.list_instances(app="sim")} == \
                {"running"}
            assert fleet.stats.errors == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fleet.close()
