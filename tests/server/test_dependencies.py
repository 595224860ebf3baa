"""`depends_on` through the in-process server: a service starts only once its dependencies
are healthy (and says so once), its instances get their dependencies' addresses in
`dependency_env`, it is not stopped when a dependency fails later, and a deleted
application stops its services in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from corral.cli.follow import follow
from corral.server.controllers.applications import reconcile_applications
from corral.testing.server import ServerHarness, server_harness
from tests.server.fakeagent import NODE, app, bring, live, stop_requested, svc
from tests.server.rollouts import deployments


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


async def app_events(srv: ServerHarness, type: str) -> list[dict[str, Any]]:
    return [e for e in await srv.client.events(topic="app") if e["type"] == type]


async def row(srv: ServerHarness, service: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in (await srv.client.get_app("shop"))["services"]
                                    if r["service"] == service]
    [one] = found
    return one


async def test_a_service_starts_once_its_dependency_is_healthy(srv: ServerHarness) -> None:
    await srv.client.apply(app(db=svc(), api=svc(instances=2, deps=["db"])))
    await srv.reconcile()
    assert len(await live(srv, "db")) == 1
    assert await live(srv, "api") == []
    api = await row(srv, "api")
    assert api["waiting_for"] == ["db"]
    assert api["reason"] == "waiting for dependencies: db (0/1 healthy)"
    assert (await row(srv, "db"))["waiting_for"] == []
    # running is not enough for a dependency with a health check
    await bring(srv, "db", "running")
    for _ in range(3):
        await srv.reconcile()
    assert await live(srv, "api") == []
    revision = await srv.ctx.store.revision()
    await srv.reconcile()
    assert await srv.ctx.store.revision() == revision  # waiting writes nothing each pass
    [waiting] = await app_events(srv, "waiting")  # once, not once per pass
    assert waiting["key"] == "default/shop" and waiting["payload"]["service"] == "api"
    assert waiting["payload"]["waiting_for"] == ["db"]
    assert "shop/api waiting for dependencies: db (0/1 healthy)" in waiting["message"]
    [dep] = [d for d in await deployments(srv) if d.service == "api"]
    assert dep.status == "running" and dep.reason == api["reason"]

    [db] = await bring(srv, "db", "healthy")
    await srv.reconcile()
    insts = await live(srv, "api")
    assert [i["slot"] for i in insts] == [0, 1]
    port = db["ports"]["main"]
    for inst in insts:
        assert inst["dependency_env"] == {
            "DB_HOST": "10.0.0.1", "DB_PORT": str(port), "DB_ADDR": f"10.0.0.1:{port}",
            "DB_PORT_MAIN": str(port), "DB_ADDRS": f"10.0.0.1:{port}"}
    assert (await row(srv, "api"))["waiting_for"] == []
    [ready] = await app_events(srv, "dependencies-ready")
    assert ready["payload"] == {"app": "shop", "namespace": "default", "service": "api",
                                "dependencies": ["db"]}
    assert len(await app_events(srv, "waiting")) == 1
    # the database itself knows nothing of its dependents
    assert db["dependency_env"] == {}


async def test_a_started_service_is_not_stopped_or_held_when_its_dependency_fails(
        srv: ServerHarness) -> None:
    await srv.client.apply(app(db=svc(), api=svc(deps=["db"])))
    await srv.reconcile()
    await bring(srv, "db")
    await srv.reconcile()
    [first] = await bring(srv, "api")
    await bring(srv, "db", "unhealthy")
    await srv.reconcile()
    assert [i["id"] for i in await live(srv, "api")] == [first["id"]]
    assert (await row(srv, "api"))["waiting_for"] == []
    # a rolling update of a started service is not gated either
    await srv.client.apply(app(db=svc(), api=svc(deps=["db"], env={"V": "2"})))
    await srv.reconcile()
    versions = sorted(i["version"] for i in await live(srv, "api"))
    assert versions == [1, 2]
    [new] = [i for i in await live(srv, "api") if i["version"] == 2]
    assert new["dependency_env"] == {}  # nothing of db is in service now
    assert len(await app_events(srv, "waiting")) == 1  # at the first start only


async def test_a_chain_starts_in_order(srv: ServerHarness) -> None:
    await srv.client.apply(app(web=svc(deps=["api"]), api=svc(deps=["db"]), db=svc()))
    await srv.reconcile()
    assert [len(await live(srv, s)) for s in ("db", "api", "web")] == [1, 0, 0]
    await bring(srv, "db")
    await srv.reconcile()
    assert [len(await live(srv, s)) for s in ("db", "api", "web")] == [1, 1, 0]
    assert (await row(srv, "web"))["reason"] == "waiting for dependencies: api (0/1 healthy)"
    [api] = await bring(srv, "api")
    await srv.reconcile()
    [web] = await live(srv, "web")
    port = api["ports"]["main"]
    assert web["dependency_env"]["API_ADDR"] == f"10.0.0.1:{port}"
    assert not any(k.startswith("DB_") for k in web["dependency_env"])  # direct ones only
    waits = [e["payload"]["service"] for e in await app_events(srv, "waiting")]
    assert sorted(waits) == ["api", "web"]


async def test_instances_spread_over_their_dependency_by_slot(srv: ServerHarness) -> None:
    await srv.client.apply(app(cache=svc(instances=2, ports=["main", "admin"]),
                               web=svc(instances=3, deps=["cache"])))
    await srv.reconcile()
    await bring(srv, "cache", limit=1)
    await srv.reconcile()
    assert len(await live(srv, "web")) == 0  # one healthy, two wanted
    assert (await row(srv, "web"))["reason"] == \
        "waiting for dependencies: cache (1/2 healthy)"
    await bring(srv, "cache")
    await srv.reconcile()
    caches = sorted(await live(srv, "cache"), key=lambda i: i["ports"]["main"])
    addrs = [f"10.0.0.1:{c['ports']['main']}" for c in caches]
    webs = await live(srv, "web")
    assert [w["dependency_env"]["CACHE_ADDR"] for w in webs] == [addrs[0], addrs[1], addrs[0]]
    env = webs[1]["dependency_env"]
    assert env["CACHE_ADDRS"] == ",".join(sorted(addrs))
    assert env["CACHE_PORT_ADMIN"] == str(caches[1]["ports"]["admin"])
    assert env["CACHE_PORT"] == env["CACHE_PORT_MAIN"] == str(caches[1]["ports"]["main"])


async def test_without_health_check_running_counts_and_without_ports_hosts_only(
        srv: ServerHarness) -> None:
    services = {"work-queue": svc(check=False, ports=()), "web": svc(deps=["work-queue"])}
    await srv.client.apply({"name": "shop", "services": services})
    await srv.reconcile()
    assert await live(srv, "web") == []
    await bring(srv, "work-queue", "running")
    await srv.reconcile()
    [web] = await live(srv, "web")
    assert web["dependency_env"] == {"WORK_QUEUE_HOST": "10.0.0.1",
                                     "WORK_QUEUE_ADDRS": "10.0.0.1"}


async def test_a_dependency_with_no_instances_is_ready(srv: ServerHarness) -> None:
    await srv.client.apply(app(db=svc(instances=0), api=svc(deps=["db"])))
    await srv.reconcile()
    [api] = await live(srv, "api")
    assert api["dependency_env"] == {}
    assert await app_events(srv, "waiting") == []


async def test_progress_deadline_does_not_run_while_waiting(srv: ServerHarness) -> None:
    slow = {"min_healthy_time": "0s", "healthy_deadline": "1h", "progress_deadline": "2h"}
    spec = app(db=svc(update=slow), api=svc(deps=["db"], update={
        "progress_deadline": "1m", "min_healthy_time": "0s"}))
    await srv.client.apply(spec)
    await srv.reconcile()
    for _ in range(5):
        await srv.clock.advance(60)
        await bring(srv, "db", "running")
        # the wake-up asked for is db's healthy_deadline, not api's progress deadline
        wake = await reconcile_applications(srv.ctx)
        assert wake is not None and wake > 600
        await srv.reconcile()
    [dep] = [d for d in await deployments(srv) if d.service == "api"]
    assert dep.status == "running", dep
    assert dep.reason == "waiting for dependencies: db (0/1 healthy)"
    await bring(srv, "db")
    await srv.reconcile()
    [dep] = [d for d in await deployments(srv) if d.service == "api"]
    assert dep.status == "running" and dep.progress_at == srv.clock.now()
    assert dep.reason == "0/1 new instances ready"
    await bring(srv, "api")
    await srv.reconcile()
    [dep] = [d for d in await deployments(srv) if d.service == "api"]
    assert dep.status == "successful", dep


async def test_apply_follows_a_waiting_service_without_failing(srv: ServerHarness) -> None:
    result = await srv.client.apply(app(db=svc(), api=svc(deps=["db"])))
    seen: list[str] = []

    async def play() -> None:
        rounds = 0
        while True:
            await srv.reconcile(rounds=1)
            rows = {r["service"]: r for r in (await srv.client.get_app("shop"))["services"]}
            seen.append(rows["api"]["reason"])
            rounds += 1
            if rounds > 5:  # the database takes a while to become healthy
                await bring(srv, "db")
            await bring(srv, "api")
            await asyncio.sleep(0.005)

    task = asyncio.create_task(play())
    try:
        outcome = await follow(srv.client, "shop", "default", result["deployments"],
                               timeout=30, since=0, show=False, poll=0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert outcome.ok and not outcome.problems, outcome.problems
    assert "waiting for dependencies: db (0/1 healthy)" in seen
    assert [d["status"] for d in outcome.deployments] == ["successful", "successful"]


async def test_delete_stops_dependents_first(srv: ServerHarness) -> None:
    await srv.client.apply(app(web=svc(instances=2, deps=["api"]), api=svc(deps=["db"]),
                               db=svc()))
    for service in ("db", "api", "web"):
        await srv.reconcile()
        await bring(srv, service)
    await srv.reconcile()
    assert [len(await live(srv, s)) for s in ("db", "api", "web")] == [1, 1, 2]

    async def asked() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for i in await srv.client.list_instances(app="shop"):
            out.setdefault(i["service"], set()).add(i["desired"])
        return out

    await srv.client.delete_app("shop")
    await srv.reconcile()
    assert await asked() == {"web": {"stop"}, "api": {"run"}, "db": {"run"}}
    # one web instance stopping still holds api back
    [one, _] = [i for i in await srv.client.list_instances(app="shop", service="web")]
    await srv.client.report_status(one["id"], {"node": one["node"], "state": "stopped"})
    await srv.reconcile()
    assert (await asked())["api"] == {"run"}
    await stop_requested(srv, "web")
    await srv.reconcile()
    assert await asked() == {"api": {"stop"}, "db": {"run"}}
    await stop_requested(srv, "api")
    await srv.reconcile()
    assert await asked() == {"db": {"stop"}}
    await stop_requested(srv, "db")
    await srv.reconcile()
    assert await srv.client.list_apps() == []


async def test_delete_of_services_without_dependents_stops_them_at_once(
        srv: ServerHarness) -> None:
    await srv.client.apply(app(db=svc(), api=svc(deps=["db"]), other=svc()))
    await srv.reconcile()
    await bring(srv, "db")
    await bring(srv, "other")
    await srv.reconcile()
    await bring(srv, "api")
    await srv.client.delete_app("shop")
    await srv.reconcile()
    desired = {i["service"]: i["desired"]
               for i in await srv.client.list_instances(app="shop")}
    assert desired == {"api": "stop", "other": "stop", "db": "run"}
