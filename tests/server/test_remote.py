"""Remote control on the server side: which instances a `corral kill` target names
(`server/remote.py`, pure), the signal and processes routes without a reachable agent,
the log merge order, and the 4xx answers for bad input. Delivery itself, exec and the
processes of a real instance run on real agents in tests/cluster/test_remote.py."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.model.instance import InstanceState
from corral.server.errors import ApiError as ServerError
from corral.server.logs import order_batch
from corral.server.remote import parse_signal_arg, resolve_target
from corral.testing.factories import make_instance
from corral.testing.server import ServerHarness, server_harness

S = InstanceState
WEB = {"name": "shop", "services": {
    "web": {"instances": 2, "command": ["sleep", "1000"],
            "resources": {"cpu": 0.25, "memory": "128MiB"}},
    "worker": {"instances": 1, "command": ["sleep", "1000"],
               "resources": {"cpu": 0.25, "memory": "128MiB"}}}}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


NODE = {"name": "n1", "address": "127.0.0.1", "capacity": {"cpu": 2.0, "memory": 4 << 30},
        "port_range": [20000, 20100], "drivers": {"process": ""},
        "agent_url": f"http://127.0.0.1:{closed_port()}"}


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        yield s


# --- target resolution (pure) ----------------------------------------------------------

INSTANCES = [
    make_instance("a1", app="shop", service="web", node="n1", state=S.RUNNING, slot=0),
    make_instance("a2", app="shop", service="web", node="n2", state=S.HEALTHY, slot=1),
    make_instance("a3", app="shop", service="web", node="n2", state=S.STOPPED, slot=2),
    make_instance("b1", app="shop", service="worker", node="n1", state=S.RUNNING),
    make_instance("c1", app="blog", service="web", node="n1", state=S.RUNNING),
    make_instance("d1", app="shop", service="web", namespace="staging", node="n1",
                  state=S.RUNNING),
    make_instance("blog", app="other", service="web", node="n1", state=S.RUNNING),
]
APPS = {"shop", "blog"}


def ids(target: str, namespace: str = "default") -> list[str]:
    return [i.id for i in resolve_target(target, namespace=namespace, instances=INSTANCES,
                                         apps=APPS)]


def test_an_app_names_its_instances_that_are_not_stopped_in_its_namespace() -> None:
    assert ids("shop") == ["a1", "a2", "b1"]
    assert ids("shop/") == ["a1", "a2", "b1"]
    assert ids("shop", namespace="staging") == ["d1"]
    assert ids("shop/web") == ["a1", "a2"]
    assert ids("shop/worker") == ["b1"]


def test_an_id_names_one_instance_whatever_its_state_or_namespace() -> None:
    assert ids("a3") == ["a3"]  # stopped: the signal answers "not running"
    assert ids("d1") == ["d1"]
    assert ids("shop/web/a3") == ["a3"]


@pytest.mark.parametrize(("target", "status"), [
    ("", 400), ("/", 400), ("a/b/c/d", 400), ("shop//a1", 400), ("shop/web/", 400),
    ("blog", 400),  # both an application and an instance id
    ("nothing", 404), ("shop/db", 404), ("shop/worker/a1", 404), ("nothing/web", 404),
])
def test_bad_targets_are_refused_with_a_reason(target: str, status: int) -> None:
    with pytest.raises(ServerError) as err:
        resolve_target(target, namespace="default", instances=INSTANCES, apps=APPS)
    assert err.value.status == status
    assert err.value.message


def test_an_ambiguous_name_says_how_to_write_each_meaning() -> None:
    with pytest.raises(ServerError) as err:
        ids("blog")
    assert "blog/" in err.value.message and "other/web/blog" in err.value.message
    assert ids("blog/") == ["c1"]


def test_signals_by_name_or_number() -> None:
    assert parse_signal_arg("SIGTERM") == parse_signal_arg("term") == parse_signal_arg(15)
    assert parse_signal_arg("9") == parse_signal_arg("KILL") == 9
    for bad in ("SIGNOPE", "0", "999", "", "-1"):
        with pytest.raises(ServerError) as err:
            parse_signal_arg(bad)
        assert err.value.status == 400


# --- merging logs ------------------------------------------------------------------------

def line(t: float, inst: str, text: str) -> dict[str, Any]:
    return {"time": t, "instance": inst, "text": text}


def test_log_lines_of_several_instances_merge_by_time_keeping_each_ones_order() -> None:
    batch = [line(3.0, "b", "b3"), line(1.0, "a", "a1"), line(2.0, "a", "a2a"),
             line(2.0, "a", "a2b"), line(2.0, "c", "c2"), line(1.5, "b", "b1")]
    assert [x["text"] for x in order_batch(batch)] == ["a1", "b1", "a2a", "a2b", "c2", "b3"]
    assert order_batch([]) == []


# --- the routes ----------------------------------------------------------------------------

async def placed(srv: ServerHarness) -> list[dict[str, Any]]:
    await srv.client.register_node(NODE)
    await srv.client.apply(WEB)
    await srv.reconcile()
    return list(await srv.client.list_instances(app="shop"))


async def test_a_signal_reports_each_instance_that_could_not_be_reached(
        srv: ServerHarness) -> None:
    insts = await placed(srv)
    web = sorted(i["id"] for i in insts if i["service"] == "web")
    await srv.client.report_status(web[0], {"node": "n1", "state": "starting"})
    await srv.client.report_status(web[0], {"node": "n1", "state": "running", "pid": 7})
    answer = await srv.client.signal("shop/web", "hup")
    assert answer["signal"] == "SIGHUP" and answer["number"] == 1
    got = {r["id"]: r for r in answer["results"]}
    assert set(got) == set(web)
    # The node's agent URL answers nothing: unreachable, whatever the recorded state.
    assert {r["outcome"] for r in got.values()} == {"node unreachable"}
    assert all("n1" in r["message"] for r in got.values())
    # The desired state is untouched by a signal.
    assert {i["desired"] for i in await srv.client.list_instances(app="shop")} == {"run"}


async def test_a_stopped_instance_is_not_running(srv: ServerHarness) -> None:
    insts = await placed(srv)
    iid = insts[0]["id"]
    await srv.client.report_status(iid, {"node": "n1", "state": "stopped"})
    answer = await srv.client.signal(iid)
    assert [(r["id"], r["outcome"]) for r in answer["results"]] == [(iid, "not running")]
    assert answer["signal"] == "SIGTERM"
    with pytest.raises(ApiError) as err:
        await srv.client.instance_processes(iid)
    assert err.value.status == 409


async def test_processes_of_an_unreachable_node_are_a_502_not_a_500(
        srv: ServerHarness) -> None:
    insts = await placed(srv)
    with pytest.raises(ApiError) as err:
        await srv.client.instance_processes(insts[0]["id"])
    assert err.value.status == 502 and "n1" in err.value.message
    with pytest.raises(ApiError) as err:
        await srv.client.instance_processes("nope")
    assert err.value.status == 404


async def test_bad_input_gets_a_4xx_with_a_message(srv: ServerHarness) -> None:
    await placed(srv)
    cases = [
        (srv.client.signal("shop", "SIGNOPE"), 400),
        (srv.client.signal("a/b/c/d"), 400),
        (srv.client.signal("nothing"), 404),
        (srv.client.signal("shop/db"), 404),
        (srv.client.list_instances(state="running,bogus"), 400),
        (srv.client.request("POST", "/v1/instances/signal", json={"signal": 1}), 422),
        (srv.client.request("GET", "/v1/apps/shop/logs", params={"stream": "both"}), 400),
    ]
    for call, status in cases:
        with pytest.raises(ApiError) as err:
            await call
        assert err.value.status == status, err.value.message
        assert err.value.message


async def test_states_filter_the_process_table(srv: ServerHarness) -> None:
    insts = await placed(srv)
    first = insts[0]["id"]
    await srv.client.report_status(first, {"node": "n1", "state": "stopped"})
    assert len(await srv.client.list_instances(state="scheduled")) == 2
    stopped = await srv.client.list_instances(state="stopped")  # terminal: named, so shown
    assert [i["id"] for i in stopped] == [first]
    assert len(await srv.client.list_instances(state="Scheduled, stopped")) == 3


async def test_only_the_admin_may_signal_or_list_processes(srv: ServerHarness) -> None:
    insts = await placed(srv)
    node = await srv.join("n2")
    try:
        for call in (node.client.signal("shop"),
                     node.client.instance_processes(insts[0]["id"])):
            with pytest.raises(ApiError) as err:
                await call
            assert err.value.status == 403
    finally:
        await node.client.close()
