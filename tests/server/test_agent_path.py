"""The agents' hot requests served by the lean path (`server/api/agent_path.py`) answer
exactly as FastAPI's routes for them do: the same script of requests, good and bad, is run
against two identical servers, one with the lean path and one without, and every status
and body must match."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing.server import TOKEN, ServerHarness, server_harness

WEB = {"name": "shop", "services": {"web": {
    "instances": 3, "command": ["python3", "app.py", "--port", "${PORT_HTTP}"],
    "resources": {"cpu": 0.25, "memory": "128MiB"}, "ports": [{"name": "http"}]}}}


def _node(name: str) -> dict[str, Any]:
    return {"name": name, "address": "10.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
            "port_range": [20000, 20100], "drivers": {"process": ""}}


class Side:
    """One server and the means to send it raw requests as the admin, a node or nobody."""

    def __init__(self, srv: ServerHarness) -> None:
        self.srv = srv
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=srv.app),
                                      base_url="http://corral")
        self.tokens: dict[str, str] = {"admin": TOKEN, "junk": "nope"}
        self.leases: dict[str, int] = {}

    async def send(self, who: str, method: str, path: str, *,
                   params: dict[str, Any] | None = None, content: bytes | None = None,
                   json: Any = None) -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {self.tokens[who]}"} if who in self.tokens \
            else {}
        answer = await self.http.request(method, path, params=params, content=content,
                                         json=json, headers=headers)
        body = answer.json() if answer.content else None
        assert answer.headers.get("content-type", "").startswith("application/json")
        return answer.status_code, body


@pytest.fixture
async def sides(tmp_path: Path) -> AsyncIterator[tuple[Side, Side]]:
    async with AsyncExitStack() as stack:
        made = []
        for lean in (True, False):
            srv = await stack.enter_async_context(
                server_harness(tmp_path / str(lean), agent_path=lean))
            side = Side(srv)
            stack.push_async_callback(side.http.aclose)
            joined = await srv.join("n2")
            side.tokens["n2"] = joined.client.config.token
            await joined.client.close()
            for name in ("n1", "n2"):
                reg = await srv.client.register_node(_node(name))
                side.leases[name] = reg["lease_id"]
            await srv.client.apply(WEB)
            await srv.reconcile()
            made.append(side)
        yield made[0], made[1]


async def _both(sides: tuple[Side, Side], who: str, method: str, path: str,
                **kwargs: Any) -> tuple[int, Any]:
    """Sends the request to both servers; fails unless they answer the same."""
    lean, reference = sides
    answers = []
    for side in (lean, reference):
        sent = dict(kwargs)
        params = kwargs.get("params")
        if params and params.get("lease_id") in side.leases:
            # each server handed out its own (random) lease
            sent["params"] = {**params, "lease_id": side.leases[params["lease_id"]]}
        answers.append(await side.send(who, method, path, **sent))
    assert answers[0] == answers[1], (method, path, kwargs)
    return answers[0]


async def test_long_polls_answer_as_fastapi_does(sides: tuple[Side, Side]) -> None:
    status, whole = await _both(sides, "admin", "GET", "/v1/nodes/n1/instances",
                                params={"index": 0, "wait": 0})
    assert status == 200 and whole["index"] > 0
    placed = {i["id"] for i in whole["instances"]}
    status, delta = await _both(sides, "admin", "GET", "/v1/nodes/n1/instances",
                                params={"index": 2, "wait": 0, "changes": "true"})
    assert status == 200 and delta["since"] == 2 and set(delta["ids"]) == placed
    # the node for itself; a repeated parameter: the last one counts
    status, _ = await _both(sides, "n2", "GET", "/v1/nodes/n2/instances?index=0&index=1&wait=0")
    assert status == 200
    bad = [({"wait": 301}, "wait"), ({"wait": -1}, "wait"), ({"index": "x"}, "index"),
           ({"changes": "perhaps"}, "changes")]
    for params, field in bad:
        status, body = await _both(sides, "admin", "GET", "/v1/nodes/n1/instances",
                                   params=params)
        assert status == 422 and f"{field}: " in body["error"]["message"], body
    assert (await _both(sides, "nobody", "GET", "/v1/nodes/n1/instances"))[0] == 401
    assert (await _both(sides, "junk", "GET", "/v1/nodes/n1/instances"))[0] == 401
    status, body = await _both(sides, "n2", "GET", "/v1/nodes/n1/instances",
                               params={"wait": 0})
    assert status == 403 and "may only act for itself" in body["error"]["message"]
    # a method the route does not take goes on to FastAPI
    assert (await _both(sides, "admin", "POST", "/v1/nodes/n1/instances"))[0] == 405
    assert (await _both(sides, "admin", "GET", "/v1/nodes/n1/heartbeat"))[0] == 405


async def test_heartbeats_answer_as_fastapi_does(sides: tuple[Side, Side]) -> None:
    status, body = await _both(sides, "n2", "PUT", "/v1/nodes/n2/heartbeat",
                               params={"lease_id": "n2"})
    assert status == 200 and body["ok"] is True
    status, body = await _both(sides, "admin", "PUT", "/v1/nodes/n1/heartbeat",
                               params={"lease_id": 12345})
    assert status == 404 and "register again" in body["error"]["message"]
    for params in ({}, {"lease_id": "x"}):
        status, body = await _both(sides, "admin", "PUT", "/v1/nodes/n1/heartbeat",
                                   params=params)
        assert status == 422 and "lease_id: " in body["error"]["message"], body
    status, _ = await _both(sides, "n2", "PUT", "/v1/nodes/n1/heartbeat",
                            params={"lease_id": "n1"})
    assert status == 403


async def test_status_batches_answer_as_fastapi_does(sides: tuple[Side, Side]) -> None:
    _, whole = await _both(sides, "admin", "GET", "/v1/nodes/n1/instances",
                           params={"wait": 0})
    ids = [i["id"] for i in whole["instances"]]
    assert ids
    reports = [{"id": ids[0], "state": "starting"}, {"id": ids[0], "state": "running",
                                                    "pid": 42},
               {"id": "nope", "state": "running"}, {"id": ids[-1], "state": "pending"}]
    status, body = await _both(sides, "admin", "PUT", "/v1/nodes/n1/status",
                               json={"reports": reports})
    assert status == 200 and [r.get("status") for r in body["results"]] == [
        None, None, 404, 409]
    # what the server now holds is the same on both
    status, after = await _both(sides, "admin", "GET", "/v1/nodes/n1/instances",
                                params={"wait": 0})
    assert {i["id"]: i["state"] for i in after["instances"]}[ids[0]] == "running"
    status, body = await _both(sides, "admin", "PUT", "/v1/nodes/n1/status",
                               json={"reports": [{"id": ids[1], "state": "sleeping"}]})
    assert status == 422 and "reports.0.state: " in body["error"]["message"]
    status, body = await _both(sides, "admin", "PUT", "/v1/nodes/n1/status", json={})
    assert status == 422 and "reports: " in body["error"]["message"]
    status, body = await _both(sides, "admin", "PUT", "/v1/nodes/n1/status")
    assert status == 422 and "request: Field required" in body["error"]["message"]
    status, body = await _both(sides, "n2", "PUT", "/v1/nodes/n1/status",
                               json={"reports": []})
    assert status == 403
    # broken JSON: both refuse it (FastAPI's words for it differ from pydantic's)
    for side in sides:
        status, body = await side.send("admin", "PUT", "/v1/nodes/n1/status",
                                       content=b'{"reports": [')
        assert status == 422 and body["error"]["message"].startswith("invalid request")


async def test_the_lean_path_is_timed_under_the_route_templates(
        sides: tuple[Side, Side]) -> None:
    lean, _ = sides
    await lean.send("admin", "GET", "/v1/nodes/n1/instances", params={"wait": 0})
    await lean.send("n2", "PUT", "/v1/nodes/n2/heartbeat", params={"lease_id": "x"})
    text = (await lean.srv.ctx.metrics.render(lean.srv.ctx)).decode()
    assert 'route="/v1/nodes/{name}/instances",status="200"' in text
    assert 'route="/v1/nodes/{name}/heartbeat",status="422"' in text



async def test_the_spec_still_documents_the_agent_routes(sides: tuple[Side, Side]) -> None:
    spec = await sides[0].srv.client.request("GET", "/openapi.json")

    def params(path: str, method: str) -> list[tuple[str, str, bool]]:
        op = spec["paths"][path][method]
        assert op["x-corral-access"] == "node"
        return [(p["name"], p["in"], p.get("required", False)) for p in op["parameters"]]

    assert params("/v1/nodes/{name}/instances", "get") == [
        ("name", "path", True), ("index", "query", False), ("wait", "query", False),
        ("changes", "query", False), ("watch", "query", False)]
    assert params("/v1/nodes/{name}/heartbeat", "put") == [
        ("name", "path", True), ("lease_id", "query", True)]
    assert "requestBody" in spec["paths"]["/v1/nodes/{name}/status"]["put"]
