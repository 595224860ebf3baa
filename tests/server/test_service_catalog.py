"""The service catalog (`GET /v1/services`) through the in-process server: only instances in
service are listed, a stop request takes one out at once, a deleted application
disappears; the digest watch answers on a change and otherwise after `wait`; nodes may
read it; bad input is a 4xx with a message."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.model.app import Application
from corral.model.application import service_hash
from corral.model.instance import InstanceState
from corral.server.catalog import endpoints
from corral.spec import validate_spec_data
from corral.testing.factories import make_instance
from corral.testing.server import ServerHarness, server_harness
from tests.server.fakeagent import NODE, app, bring, live, svc


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


SHOP = app(web=svc(instances=2, ports=["http", "admin"]), cache=svc(check=False))


async def started(srv: ServerHarness) -> None:
    await srv.client.apply(SHOP)
    await srv.client.apply(app("blog", "team", site=svc(check=False, ports=())))
    await srv.reconcile()


def entry(answer: dict[str, Any], app: str, service: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in answer["services"]
                                   if (s["app"], s["service"]) == (app, service)]
    [one] = found
    return one


async def test_lists_every_service_and_only_instances_in_service(srv: ServerHarness) -> None:
    await started(srv)
    answer = await srv.client.services()
    assert [(s["namespace"], s["app"], s["service"]) for s in answer["services"]] == [
        ("default", "shop", "cache"), ("default", "shop", "web"), ("team", "blog", "site")]
    assert all(s["instances"] == [] for s in answer["services"])  # placed, not started
    assert entry(answer, "shop", "web")["port_names"] == ["http", "admin"]
    assert len(answer["digest"]) == 64 and int(answer["digest"], 16) >= 0

    await bring(srv, "web", "running")  # running is not enough with a health check
    await bring(srv, "cache", "running")  # but is without one
    await bring(srv, "site", "running", app="blog", namespace="team")
    answer = await srv.client.services()
    assert entry(answer, "shop", "web")["instances"] == []
    [cache] = entry(answer, "shop", "cache")["instances"]
    [cache_inst] = await live(srv, "cache")
    assert cache == {"id": cache_inst["id"], "node": "n1", "address": "10.0.0.1",
                     "port": cache_inst["ports"]["main"], "ports": cache_inst["ports"],
                     "version": 1, "slot": 0, "state": "running", "health": "none"}
    [site] = entry(answer, "blog", "site")["instances"]
    assert site["port"] is None and site["ports"] == {}

    webs = await bring(srv, "web", "healthy", limit=1)
    answer = await srv.client.services()
    [web] = entry(answer, "shop", "web")["instances"]
    assert web["id"] == webs[0]["id"] and web["state"] == "healthy"
    assert web["port"] == webs[0]["ports"]["http"]  # the first declared port
    await bring(srv, "web", "healthy")
    listed = entry(await srv.client.services(), "shop", "web")["instances"]
    assert [i["port"] for i in listed] == sorted(i["ports"]["http"] for i in webs)
    await bring(srv, "web", "unhealthy", limit=1)
    assert len(entry(await srv.client.services(), "shop", "web")["instances"]) == 1


async def test_filters_by_namespace_and_app(srv: ServerHarness) -> None:
    await started(srv)
    team = await srv.client.services(namespace="team")
    assert [s["service"] for s in team["services"]] == ["site"]
    shop = await srv.client.services(app="shop")
    assert [s["service"] for s in shop["services"]] == ["cache", "web"]
    assert shop["digest"] != team["digest"] != (await srv.client.services())["digest"]
    assert (await srv.client.services(namespace="nope"))["services"] == []


async def test_a_stop_request_leaves_the_catalog_before_the_stop(srv: ServerHarness) -> None:
    await started(srv)
    await bring(srv, "web")
    assert len(entry(await srv.client.services(), "shop", "web")["instances"]) == 2
    await srv.client.apply(app(web=svc(instances=1, ports=["http", "admin"]),
                               cache=svc(check=False)))
    await srv.reconcile()
    stopping = [i for i in await srv.client.list_instances(app="shop", service="web")
                if i["desired"] == "stop"]
    assert len(stopping) == 1 and stopping[0]["state"] == "healthy"  # still running
    [left] = entry(await srv.client.services(), "shop", "web")["instances"]
    assert left["id"] != stopping[0]["id"]


async def test_a_deleted_application_is_gone_at_once(srv: ServerHarness) -> None:
    await started(srv)
    await bring(srv, "cache", "running")
    await srv.client.delete_app("shop")
    answer = await srv.client.services()
    assert [s["app"] for s in answer["services"]] == ["blog"]
    with pytest.raises(ApiError) as err:
        await srv.client.service("default", "shop", "cache")
    assert err.value.status == 404 and "being deleted" in err.value.message


async def test_one_service_and_its_404s(srv: ServerHarness) -> None:
    await started(srv)
    await bring(srv, "cache", "running")
    one = await srv.client.service("default", "shop", "cache")
    assert one["service"] == "cache" and len(one["instances"]) == 1
    assert one["digest"] != (await srv.client.services())["digest"]
    for args, message in [(("default", "nope", "web"), "no application 'nope'"),
                          (("team", "shop", "web"), "no application 'shop' in namespace"),
                          (("default", "shop", "db"), "has no service 'db'")]:
        with pytest.raises(ApiError) as err:
            await srv.client.service(*args)
        assert err.value.status == 404 and message in err.value.message, err.value.message
    with pytest.raises(ApiError) as err:
        await srv.client.service("default", "Shop!", "web")
    assert err.value.status == 400 and "invalid application name" in err.value.message


async def test_bad_wait_is_refused_with_a_message(srv: ServerHarness) -> None:
    for wait, message in [("soon", "expected a duration"), ("10m", "at most 300s"),
                          ("-1", "expected a duration"), ("nan", "expected a duration"),
                          ("301", "at most 300s")]:
        for call in (srv.client.services(digest="x", wait=wait),
                     srv.client.service("default", "shop", "web", digest="x", wait=wait)):
            with pytest.raises(ApiError) as err:
                await call
            assert err.value.status == 400, (wait, err.value.message)
            assert "wait: " in err.value.message and message in err.value.message


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    # A watch that works never answers here; one that did not wait would be done.
    done, _ = await asyncio.wait({task}, timeout=0.2)
    return not done


async def test_digest_watch_answers_on_a_change(srv: ServerHarness) -> None:
    await started(srv)
    first = await srv.client.services()
    assert (await srv.client.services(digest=first["digest"]))["digest"] == first["digest"]
    watch = asyncio.create_task(srv.client.services(digest=first["digest"], wait="5m"))
    assert await still_waiting(watch)
    # a change that leaves the catalog as it was does not answer
    [inst] = await live(srv, "cache")
    await srv.client.report_status(inst["id"], {"node": "n1", "state": "starting"})
    assert await still_waiting(watch)
    await bring(srv, "cache", "running")
    answer = await asyncio.wait_for(watch, 30)
    assert answer["digest"] != first["digest"]
    assert len(entry(answer, "shop", "cache")["instances"]) == 1
    assert answer == await srv.client.services()


async def test_digest_watch_of_one_service(srv: ServerHarness) -> None:
    await started(srv)
    first = await srv.client.service("default", "shop", "cache")
    watch = asyncio.create_task(srv.client.service("default", "shop", "cache",
                                                   digest=first["digest"], wait="5m"))
    await bring(srv, "web", "healthy")  # another service: no answer
    assert await still_waiting(watch)
    await bring(srv, "cache", "running")
    answer = await asyncio.wait_for(watch, 30)
    assert answer["digest"] != first["digest"] and len(answer["instances"]) == 1


async def test_digest_watch_times_out_with_the_same_answer(srv: ServerHarness) -> None:
    await started(srv)
    first = await srv.client.services()
    again = await srv.client.services(digest=first["digest"], wait="300ms")
    assert again == first
    other = await srv.client.services(digest="not-the-digest", wait="5m")  # differs: at once
    assert other == first


async def test_many_watchers_all_answer_on_one_change(srv: ServerHarness) -> None:
    await started(srv)
    first = await srv.client.services(app="shop")
    watches = [asyncio.create_task(srv.client.services(app="shop", digest=first["digest"],
                                                       wait=120))
               for _ in range(50)]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in watches)
    await bring(srv, "cache", "running")
    answers = await asyncio.wait_for(asyncio.gather(*watches), 60)
    assert len({a["digest"] for a in answers}) == 1 and answers[0] != first


async def test_any_node_may_read_the_catalog(srv: ServerHarness) -> None:
    await started(srv)
    node = await srv.join("n2")
    try:
        assert await node.client.services() == await srv.client.services()
        one = await node.client.service("team", "blog", "site")
        assert one["app"] == "blog"
        with pytest.raises(ApiError) as err:  # the rest stays admin-only
            await node.client.list_apps()
        assert err.value.status == 403
    finally:
        await node.client.close()
    anon = srv.anonymous()
    try:
        with pytest.raises(ApiError) as err:
            await anon.services()
        assert err.value.status == 401
    finally:
        await anon.close()
    spec = await srv.client.request("GET", "/openapi.json")
    for path in ("/v1/services", "/v1/services/{namespace}/{app}/{service}"):
        assert spec["paths"][path]["get"]["x-corral-access"] == "node"


def test_an_older_instance_without_a_check_stays_in_service_while_one_is_rolled_out() -> None:
    spec = validate_spec_data(app(web=svc()), filename="test")
    shop = Application(name="shop", namespace="default", version=2, spec=spec,
                       created_at=0, updated_at=0)
    current = service_hash(spec.services["web"])

    def inst(iid: str, spec_hash: str, health: str, port: int) -> Any:
        return make_instance(iid, app="shop", node="n1", address="10.0.0.1",
                             ports={"main": port}, spec_hash=spec_hash,
                             state=InstanceState.RUNNING, health=health)

    found = endpoints(shop, "web", [
        inst("old", "0" * 16, "none", 20002),  # its agent runs it without checks
        inst("old-checked", "0" * 16, "unknown", 20003),  # with checks, none passed yet
        inst("new", current, "none", 20001),  # the current spec has a check
    ])
    assert [e.id for e in found] == ["old"]
