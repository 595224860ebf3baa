"""The server's `/metrics`: Prometheus text that `prometheus_client`'s own parser reads,
carrying the series issue 7 asks for, with values that follow what happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from corral.client import ApiError
from corral.server.metrics import ServerMetrics
from corral.store import MemoryStore
from corral.testing.server import ServerHarness, server_harness

NODE = {"name": "n1", "address": "10.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
        "port_range": [20000, 20100], "drivers": {"process": ""}}
SHOP = {"name": "shop", "services": {"web": {
    "instances": 3, "command": ["sleep", "100"], "resources": {"cpu": 0.25,
                                                               "memory": "64MiB"}}}}


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}; raises on anything the parser rejects."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return out


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    metrics = ServerMetrics()
    # The store measured as `corral server` measures its own.
    async with server_harness(tmp_path, store=metrics.measure_store(MemoryStore())) as s:
        s.ctx.metrics = metrics
        await s.ctx.events.start()  # the app's lifespan does it in a real server
        yield s


async def _scrape(srv: ServerHarness) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    resp = await srv.client._http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


async def test_metrics_carry_cluster_state_and_latencies(srv: ServerHarness) -> None:
    from corral.server.app import _measured
    from corral.server.controllers.applications import reconcile_applications
    from corral.server.controllers.scheduling import CONTROLLER as SCHEDULING

    await srv.client.register_node(NODE)
    await srv.client.register_node({**NODE, "name": "n2", "address": "10.0.0.2"})
    await srv.client.cordon_node("n2")
    await srv.client.apply(SHOP)
    await reconcile_applications(srv.ctx)
    before = await _scrape(srv)
    assert before["corral_pending_instances"][()] == 3
    assert before["corral_instances"][(("state", "pending"),)] == 3
    assert before["corral_deployments"][(("status", "running"),)] == 1
    # One scheduling pass, timed as the server's controller loop times it.
    schedule = _measured(srv.ctx, SCHEDULING).reconcile
    await schedule(srv.ctx)
    m = await _scrape(srv)
    assert m["corral_pending_instances"][()] == 0
    assert m["corral_instances"][(("state", "scheduled"),)] == 3
    assert m["corral_instances"][(("state", "lost"),)] == 0
    assert m["corral_nodes"][(("state", "ready"),)] == 1
    assert m["corral_nodes"][(("state", "ineligible"),)] == 1
    assert m["corral_applications"][()] == 1
    assert m["corral_scheduler_placements_total"][()] == 3
    assert m["corral_scheduling_pass_seconds_count"][()] == 1
    assert m["corral_controller_reconcile_seconds_count"][
        (("controller", "scheduling"),)] == 1
    assert m["corral_events_written_total"][(("topic", "instance"),)] >= 6
    assert m["corral_events_written_total"][(("topic", "node"),)] >= 2
    assert m["corral_event_followers"][()] == 0
    assert m["corral_store_revision"][()] > 0
    assert m["corral_store_operation_duration_seconds_count"][(("operation", "txn"),)] >= 1
    apply_route = (("le", "+Inf"), ("method", "POST"), ("route", "/v1/apps"),
                   ("status", "200"))
    assert m["corral_api_request_duration_seconds_bucket"][apply_route] == 1
    # Routes by template, and unknown paths folded into one label.
    for path in ("/v1/instances/nope", "/v1/instances/other", "/random/path"):
        with pytest.raises(ApiError):
            await srv.client.request("GET", path)
    m = await _scrape(srv)
    count = m["corral_api_request_duration_seconds_count"]
    assert count[(("method", "GET"), ("route", "/v1/instances/{instance_id}"),
                  ("status", "404"))] == 2
    assert count[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 1


async def test_metrics_need_the_admin_token(srv: ServerHarness) -> None:
    with pytest.raises(ApiError) as err:
        await srv.anonymous().request("GET", "/metrics")
    assert err.value.status == 401


def test_two_servers_in_one_process_do_not_collide() -> None:
    a, b = ServerMetrics(), ServerMetrics()
    a.scheduling.observe(0.1)
    assert parse(generate_latest(a.registry).decode())[
        "corral_scheduling_pass_seconds_count"][()] == 1
    assert parse(generate_latest(b.registry).decode())[
        "corral_scheduling_pass_seconds_count"][()] == 0


async def test_metrics_of_a_real_server(tmp_path: Path) -> None:
    from tests.server.test_event_stream import serve

    async with serve(tmp_path) as srv, srv.http() as http:
        await srv.write(5)
        resp = await http.get("/metrics")
        assert resp.status_code == 200
        m = parse(resp.text)
        assert m["corral_events_written_total"][(("topic", "instance"),)] == 5
        assert (await httpx.AsyncClient().get(f"{srv.url}/metrics")).status_code == 401
