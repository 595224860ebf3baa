"""The jobs API (`server/api/jobs.py`) and what applications show of jobs: answers and
refusals (404, 409, 422 with messages, 403 for a node), run history order and limits,
`status` rows, and invalid job specs refused whole by `POST /v1/apps`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.client import ApiError
from corral.testing.server import ServerHarness, server_harness
from tests.server.jobagent import NODE, exit_with, job, jobs_app, pass_, start


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


async def refused(coro: Any) -> ApiError:
    with pytest.raises(ApiError) as err:
        await coro
    return err.value


async def test_unknown_names_are_404_and_bad_ones_400(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(), load=job(after=["etl"])))
    err = await refused(srv.client.start_job("nope", "etl"))
    assert (err.status, err.message) == (404, "no application 'nope' in namespace 'default'")
    err = await refused(srv.client.start_job("shop", "report"))
    assert err.status == 404
    assert err.message == "application 'shop' has no job 'report' (its jobs: etl, load)"
    err = await refused(srv.client.job_run("shop", "etl", 7))
    assert err.status == 404 and "has no run #7" in err.message
    err = await refused(srv.client.job_runs("shop", "Bad_Name"))
    assert err.status == 400 and "invalid job name 'Bad_Name'" in err.message
    err = await refused(srv.client.job_runs("shop", "etl", limit=0))
    assert err.status == 422


async def test_runs_newest_first_with_a_limit_and_cancel_only_while_active(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(concurrency="allow")))
    for _ in range(3):
        await srv.client.start_job("shop", "etl")  # forced: runs side by side
    await pass_(srv)
    assert [r["number"] for r in await srv.client.job_runs("shop", "etl")] == [3, 2, 1]
    assert [r["number"] for r in await srv.client.job_runs("shop", "etl", limit=2)] == [3, 2]
    await start(srv)
    await exit_with(srv, "etl", 0, limit=1)
    await pass_(srv)
    first = await srv.client.job_run("shop", "etl", 1)
    assert first["state"] == "succeeded" and first["duration"] == 0.0
    err = await refused(srv.client.cancel_job_run("shop", "etl", 1))
    assert (err.status, err.message) == (409, "shop/etl run #1 has already ended (succeeded)")
    assert (await srv.client.cancel_job_run("shop", "etl", 2))["state"] == "cancelled"


async def test_a_manual_run_ignores_suspend_and_forbid_but_not_a_delete(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(suspend=True, schedule="@hourly")))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    second = await srv.client.start_job("shop", "etl")  # while #1 runs (forbid)
    await pass_(srv)
    assert (await srv.client.job_run("shop", "etl", second["number"]))["state"] == "running"
    [listed] = await srv.client.list_jobs()
    assert listed["suspend"] is True and listed["next_run"] is None
    assert listed["active_runs"] == [1, 2]
    await srv.client.delete_app("shop")
    err = await refused(srv.client.start_job("shop", "etl"))
    assert (err.status, err.message) == (409, "application shop is being deleted")


async def test_status_shows_jobs_apart_from_services(srv: ServerHarness) -> None:
    spec = jobs_app(etl=job())
    spec["services"] = {"web": {"command": ["sleep", "1000"]}}
    await srv.client.apply(spec)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    view = await srv.client.get_app("shop")
    assert [s["service"] for s in view["services"]] == ["web"]
    [row] = view["jobs"]
    assert (row["job"], row["running"], row["last_run"]["number"]) == ("etl", 1, 1)
    [listed] = await srv.client.list_apps()
    assert listed["jobs"][0]["last_run"]["state"] == "running"
    # the application controller leaves the job's instance alone
    await pass_(srv)
    insts = await srv.client.list_instances(service="etl")
    assert [i["desired"] for i in insts] == ["run"]


async def test_jobs_routes_are_for_the_admin_only(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job()))
    node = await srv.join("n2")
    try:
        for call in (node.client.list_jobs(), node.client.start_job("shop", "etl"),
                     node.client.job_runs("shop", "etl")):
            assert (await refused(call)).status == 403
    finally:
        await node.client.close()


@pytest.mark.parametrize(("jobs", "path", "words"), [
    ({"etl": job(schedule="61 * * * *")}, "jobs.etl.schedule", "invalid schedule"),
    ({"etl": job(schedule="R/2026-01-01T00:00:00Z/PT0S")}, "jobs.etl.schedule", "period"),
    ({"etl": job(schedule="R/2026-01-01T00:00:00Z/P1X")}, "jobs.etl.schedule", "period"),
    ({"etl": job(after=["extract"])}, "jobs.etl.after[0]", "unknown job 'extract'"),
    ({"a": job(after=["b"]), "b": job(after=["a"])}, "jobs.a.after[0]",
     "dependency cycle: a -> b -> a"),
])
async def test_invalid_jobs_are_refused_whole(srv: ServerHarness, jobs: dict[str, Any],
                                              path: str, words: str) -> None:
    err = await refused(srv.client.apply(jobs_app(**jobs)))
    assert err.status == 422
    assert path in err.message and words in err.message, err.message
    assert await srv.client.list_apps() == [] and await srv.client.list_jobs() == []
