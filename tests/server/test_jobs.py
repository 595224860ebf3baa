"""The job controller through the in-process server, a fake clock and a fake agent
(`tests/server/jobagent.py`): scheduled runs and their instances, starting deadlines,
concurrency, retries with backoff, timeouts, parallelism and completions, `after` chains,
a server restart over the same SQLite store, application delete, job removal and history
pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.model.job import JobRun, JobState
from corral.server import keys
from corral.server.controllers.jobs import reconcile_jobs
from corral.store import SqliteStore
from corral.testing.clock import FakeClock
from corral.testing.server import ServerHarness, server_harness
from tests.server.jobagent import (
    NODE,
    exit_with,
    job,
    job_instances,
    jobs_app,
    pass_,
    runs,
    start,
    stop_requested,
)

T0 = 1_700_000_000.0  # the FakeClock's start: 2023-11-14 22:13:20 UTC
FIRE = T0 + 100  # "*/5 * * * *" fires at 22:15:00, then every 300 s


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


def states(items: list[dict[str, Any]]) -> list[str]:
    return [r["state"] for r in items]


async def job_events(srv: ServerHarness, job: str | None = None) -> list[tuple[str, int]]:
    found = await srv.client.events(topic="job")
    return [(e["type"], e["payload"].get("run", 0)) for e in found
            if job is None or e["payload"].get("job") == job]


# --- schedules ------------------------------------------------------------------------------

async def test_a_scheduled_job_runs_at_its_times_in_instances_of_kind_job(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(report=job(schedule="*/5 * * * *",
                                               env={"MODE": "full"})))
    await pass_(srv)
    assert await runs(srv, "report") == []
    [listed] = await srv.client.list_jobs()
    assert listed["next_run"] == FIRE and listed["last_run"] is None

    await pass_(srv, 99)
    assert await runs(srv, "report") == []  # one second early
    await pass_(srv, 1)
    [run] = await runs(srv, "report")
    assert (run["number"], run["cause"], run["scheduled_at"], run["attempt"]) == \
        (1, "schedule", FIRE, 1)
    [inst] = await job_instances(srv, "report")
    assert (inst["kind"], inst["service"], inst["run"], inst["slot"], inst["attempt"]) == \
        ("job", "report", 1, 0, 1)
    assert inst["node"] == "n1" and inst["state"] == "scheduled"  # placed like a service
    assert inst["ports"] == {} and inst["version"] == 1
    assert run["state"] == "running" and run["instances"] == [inst["id"]]

    await start(srv)
    await exit_with(srv, "report", 0)
    await pass_(srv)
    [run] = await runs(srv, "report")
    assert (run["state"], run["exit_code"], run["completed"]) == ("succeeded", 0,
                                                                   [inst["id"]])
    [inst] = await job_instances(srv, "report")
    assert (inst["state"], inst["desired"], inst["exit_code"]) == ("stopped", "stop", 0)
    assert (await srv.client.get_app("shop"))["services"] == []  # no phantom service

    await pass_(srv, 300)
    assert [(r["number"], r["scheduled_at"]) for r in await runs(srv, "report")] == \
        [(1, FIRE), (2, FIRE + 300)]
    [listed] = await srv.client.list_jobs(app="shop")
    assert listed["succeeded"] == 1 and listed["active_runs"] == [2]
    assert listed["last_run"]["number"] == 2 and listed["next_run"] == FIRE + 600
    assert await job_events(srv) == [("run-created", 1), ("started", 1), ("succeeded", 1),
                                     ("run-created", 2), ("started", 2)]


async def test_after_downtime_only_the_latest_time_starts_and_the_rest_are_missed(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(report=job(schedule="*/5 * * * *")))
    await pass_(srv)
    await pass_(srv, 100 + 3 * 300)  # four fire times passed unseen
    assert [(r["number"], r["state"], r["scheduled_at"]) for r in await runs(srv, "report")] \
        == [(1, "missed", FIRE), (2, "missed", FIRE + 300), (3, "missed", FIRE + 600),
            (4, "running", FIRE + 900)]
    [listed] = await srv.client.list_jobs()
    assert listed["missed"] == 3


async def test_a_run_not_placed_within_its_starting_deadline_is_missed(
        srv: ServerHarness) -> None:
    # More memory than the node has: the instance stays pending.
    big = job(schedule="*/5 * * * *", starting_deadline="60s",
              resources={"cpu": 0.1, "memory": "64GiB"})
    await srv.client.apply(jobs_app(report=big))
    await pass_(srv)
    await pass_(srv, 100)
    [run] = await runs(srv, "report")
    [inst] = await job_instances(srv, "report")
    assert run["state"] == "pending" and inst["state"] == "pending"
    await pass_(srv, 60)
    assert (await runs(srv, "report"))[0]["state"] == "pending"  # not beyond it yet
    await pass_(srv, 1)
    [run] = await runs(srv, "report")
    assert run["state"] == "missed"
    assert run["reason"] == "not started within starting_deadline (60s) of its time"
    [inst] = await job_instances(srv, "report")
    assert (inst["state"], inst["desired"]) == ("stopped", "stop")
    assert (await srv.client.list_jobs())[0]["missed"] == 1


# --- concurrency ----------------------------------------------------------------------------

async def two_fire_times(srv: ServerHarness, concurrency: str) -> list[dict[str, Any]]:
    await srv.client.apply(jobs_app(report=job(schedule="*/5 * * * *",
                                               concurrency=concurrency)))
    await pass_(srv)
    await pass_(srv, 100)
    await start(srv)
    await pass_(srv, 300)  # run 1 still running at the next time
    return await runs(srv, "report")


async def test_forbid_records_the_next_time_skipped(srv: ServerHarness) -> None:
    assert [(r["number"], r["state"]) for r in await two_fire_times(srv, "forbid")] == \
        [(1, "running"), (2, "skipped")]
    assert len(await job_instances(srv, "report", all=False)) == 1
    assert (await srv.client.list_jobs())[0]["skipped"] == 1


async def test_replace_cancels_the_active_run_and_stops_its_instance(
        srv: ServerHarness) -> None:
    found = await two_fire_times(srv, "replace")
    assert [(r["number"], r["state"]) for r in found] == [(1, "cancelled"), (2, "running")]
    assert found[0]["reason"] == "replaced by run #2 (concurrency: replace)"
    first, second = await job_instances(srv, "report")
    assert (first["run"], first["desired"], first["state"]) == (1, "stop", "running")
    assert "replaced by run #2" in first["reason"]
    assert (second["run"], second["desired"]) == (2, "run")


async def test_allow_runs_side_by_side(srv: ServerHarness) -> None:
    found = await two_fire_times(srv, "allow")
    assert [(r["number"], r["state"]) for r in found] == [(1, "running"), (2, "running")]
    assert [i["run"] for i in await job_instances(srv, "report", all=False)] == [1, 2]


# --- retries, timeouts, completions ---------------------------------------------------------

async def test_retries_with_backoff_end_succeeded_after_two_failures(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(retries=2, backoff="10s")))
    await pass_(srv)
    started = await srv.client.start_job("shop", "etl")
    assert (started["number"], started["cause"], started["state"]) == (1, "manual", "pending")
    await pass_(srv)
    await start(srv)
    await exit_with(srv, "etl", 3)
    await pass_(srv)
    first, second = await runs(srv, "etl")
    assert (first["state"], first["exit_code"]) == ("failed", 3)
    assert "exited with code 3" in first["reason"]
    assert (second["cause"], second["attempt"], second["retry_of"], second["state"]) == \
        ("retry", 2, 1, "pending")
    assert second["scheduled_at"] == srv.clock.now() + 10  # backoff * 2^0
    assert second["instances"] == []
    await pass_(srv, 9)
    assert (await runs(srv, "etl"))[1]["instances"] == []  # still backing off
    await pass_(srv, 1)
    await start(srv)
    await exit_with(srv, "etl", 1)
    await pass_(srv)
    third = (await runs(srv, "etl"))[2]
    assert (third["attempt"], third["retry_of"]) == (3, 1)
    assert third["scheduled_at"] == srv.clock.now() + 20  # backoff * 2^1
    await pass_(srv, 20)
    [inst] = await job_instances(srv, "etl", all=False)
    assert (inst["run"], inst["attempt"]) == (3, 3)
    await start(srv)
    await exit_with(srv, "etl", 0)
    await pass_(srv)
    found = await runs(srv, "etl")
    assert states(found) == ["failed", "failed", "succeeded"]
    [listed] = await srv.client.list_jobs()
    assert (listed["succeeded"], listed["failed"]) == (1, 2)
    assert ("retrying", 1) in await job_events(srv) and ("retrying", 2) in \
        await job_events(srv)


async def test_exhausted_retries_end_failed(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(retries=1, backoff="0s")))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    for _ in range(2):
        await pass_(srv)
        await start(srv)
        await exit_with(srv, "etl", 1)
    await pass_(srv)
    await pass_(srv, 60)
    found = await runs(srv, "etl")
    assert states(found) == ["failed", "failed"] and found[1]["attempt"] == 2
    assert (await srv.client.list_jobs())[0]["active_runs"] == []


async def test_a_run_beyond_its_timeout_fails_and_its_instance_is_stopped(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(slow=job(timeout="30s")))
    await pass_(srv)
    await srv.client.start_job("shop", "slow")
    await pass_(srv)
    await start(srv)
    await pass_(srv, 29)
    assert (await runs(srv, "slow"))[0]["state"] == "running"
    await pass_(srv, 1)
    [run] = await runs(srv, "slow")
    assert (run["state"], run["reason"], run["exit_code"]) == \
        ("failed", "timed out after 30s", None)
    [inst] = await job_instances(srv, "slow")
    assert inst["desired"] == "stop" and "timed out after 30s" in inst["reason"]
    await stop_requested(srv)
    await pass_(srv)
    assert (await runs(srv, "slow"))[0]["state"] == "failed"  # the stop changes nothing


async def test_parallelism_and_completions(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(batch=job(parallelism=2, completions=3)))
    await pass_(srv)
    await srv.client.start_job("shop", "batch")
    await pass_(srv)
    assert [i["slot"] for i in await job_instances(srv, "batch", all=False)] == [0, 1]
    await start(srv)
    await exit_with(srv, "batch", 0, limit=1)
    await pass_(srv)
    live = await job_instances(srv, "batch", all=False)
    assert [(i["slot"], i["state"]) for i in live] == [(1, "running"), (2, "scheduled")]
    await start(srv)
    await exit_with(srv, "batch", 0)
    await pass_(srv)
    [run] = await runs(srv, "batch")
    assert run["state"] == "succeeded" and len(run["completed"]) == 3
    assert sorted(i["slot"] for i in await job_instances(srv, "batch")) == [0, 1, 2]


async def test_one_failed_completion_fails_the_run_and_stops_the_others(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(batch=job(parallelism=2, completions=2)))
    await pass_(srv)
    await srv.client.start_job("shop", "batch")
    await pass_(srv)
    await start(srv)
    await exit_with(srv, "batch", 2, limit=1)
    await pass_(srv)
    [run] = await runs(srv, "batch")
    assert (run["state"], run["exit_code"]) == ("failed", 2)
    other = [i for i in await job_instances(srv, "batch") if i["state"] == "running"]
    assert [i["desired"] for i in other] == ["stop"]


async def test_a_lost_node_fails_the_run(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job()))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    await srv.clock.advance(120)  # no heartbeat: the node goes down
    await srv.reconcile()
    [run] = await runs(srv, "etl")
    assert run["state"] == "failed" and "lost" in run["reason"]


# --- after ----------------------------------------------------------------------------------

CHAIN = {"extract": job(), "transform": job(after=["extract"]),
         "load": job(after=["transform"])}


async def test_an_after_chain_runs_in_order(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(**CHAIN))
    await pass_(srv)
    await srv.client.start_job("shop", "extract")
    for name in ("extract", "transform", "load"):
        await pass_(srv)
        live = await job_instances(srv, all=False)
        assert [i["service"] for i in live] == [name]  # only the next one runs
        await start(srv)
        await srv.clock.advance(5)
        await exit_with(srv, name, 0)
    await pass_(srv)
    for name in ("extract", "transform", "load"):
        [run] = await runs(srv, name)
        assert run["state"] == "succeeded"
    assert [r["cause"] for r in await runs(srv, "load")] == ["after"]
    created = [e["message"] for e in await srv.client.events(topic="job")
               if e["type"] == "run-created"]
    assert created == ["shop/extract run #1 created (manual): started by request (corral run)",
                       "shop/transform run #1 created (after): after extract #1 succeeded",
                       "shop/load run #1 created (after): after transform #1 succeeded"]
    await pass_(srv, 60)
    assert len(await runs(srv, "transform")) == 1  # no second trigger


async def test_a_failed_parent_does_not_trigger_its_child(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(**CHAIN))
    await pass_(srv)
    await srv.client.start_job("shop", "extract")
    await pass_(srv)
    await start(srv)
    await exit_with(srv, "extract", 1)
    await pass_(srv)
    await pass_(srv, 60)
    assert states(await runs(srv, "extract")) == ["failed"]
    assert await runs(srv, "transform") == [] and await runs(srv, "load") == []
    # a later success of the parent triggers the chain again
    await srv.client.start_job("shop", "extract")
    await pass_(srv)
    await start(srv)
    await exit_with(srv, "extract", 0)
    await pass_(srv)
    assert states(await runs(srv, "transform")) == ["running"]


# --- restart, delete, removal, history ------------------------------------------------------

async def test_a_server_restart_neither_loses_nor_duplicates_a_scheduled_run(
        tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    clock = FakeClock()
    spec = jobs_app(report=job(schedule="*/5 * * * *"))
    async with server_harness(tmp_path / "a", store=await SqliteStore.open(db),
                              clock=clock) as srv:
        await srv.client.register_node(NODE)
        await srv.client.apply(spec)
        await pass_(srv)
        await pass_(srv, 100)
        assert [r["number"] for r in await runs(srv, "report")] == [1]
        await start(srv)
        await exit_with(srv, "report", 0)
    # the same time again (a restart within the second), then the next time passes while
    # the server is down
    for advance, expected in ((0, [1]), (310, [1, 2])):
        await clock.advance(advance)
        async with server_harness(tmp_path / "b", store=await SqliteStore.open(db),
                                  clock=clock) as srv:
            await pass_(srv)
            await pass_(srv)
            found = await runs(srv, "report")
            assert [r["number"] for r in found] == expected
            assert [r["state"] for r in found][-1] in ("succeeded", "running")
            assert len({i["run"] for i in await job_instances(srv, "report")}) == \
                len(expected)
            assert found[-1]["scheduled_at"] == FIRE + 300 * (len(expected) - 1)


async def test_deleting_the_application_cancels_runs_and_removes_job_records(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(), idle=job(schedule="@daily")))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    await srv.client.delete_app("shop")
    await pass_(srv)
    [run] = await runs(srv, "etl")
    assert (run["state"], run["reason"]) == ("cancelled", "application deleted")
    [inst] = await job_instances(srv, "etl")
    assert inst["desired"] == "stop"
    await stop_requested(srv)
    await pass_(srv)
    assert await srv.client.list_apps() == []
    assert (await srv.ctx.records.scan(JobState, keys.JOBS))[0] == []
    assert (await srv.ctx.records.scan(JobRun, keys.JOB_RUNS))[0] == []


async def test_a_job_removed_from_the_spec_is_cancelled_then_forgotten(
        srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(), keep=job()))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    await srv.client.apply(jobs_app(keep=job()))
    await pass_(srv)
    items, _ = await srv.ctx.records.scan(JobRun, keys.job_runs("default", "shop", "etl"))
    assert [(i.record.state, i.record.reason) for i in items] == \
        [("cancelled", "job removed from the application")]
    await stop_requested(srv)
    await pass_(srv)
    assert (await srv.ctx.records.scan(JobRun, keys.job_runs("default", "shop", "etl")))[0] \
        == []
    assert [s.record.job for s in (await srv.ctx.records.scan(JobState, keys.JOBS))[0]] == \
        ["keep"]
    assert ("removed", 0) in await job_events(srv, "etl")


async def test_history_keeps_the_newest_final_runs(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job(history_limit=2)))
    await pass_(srv)
    for _ in range(4):
        await srv.client.start_job("shop", "etl")
        await pass_(srv)
        await start(srv)
        await exit_with(srv, "etl", 0)
        await pass_(srv)
    assert [r["number"] for r in await runs(srv, "etl")] == [3, 4]
    assert (await srv.client.list_jobs())[0]["succeeded"] == 4


async def test_cancel_through_the_api_stops_the_run(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(etl=job()))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    cancelled = await srv.client.cancel_job_run("shop", "etl", 1)
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", "cancelled by request")
    await pass_(srv)
    [inst] = await job_instances(srv, "etl")
    assert inst["desired"] == "stop"
    assert (await srv.client.job_run("shop", "etl", 1))["state"] == "cancelled"


async def test_an_idle_pass_writes_nothing(srv: ServerHarness) -> None:
    await srv.client.apply(jobs_app(report=job(schedule="*/5 * * * *"), etl=job(),
                                    load=job(after=["etl"])))
    await pass_(srv)
    await srv.client.start_job("shop", "etl")
    await pass_(srv)
    await start(srv)
    await exit_with(srv, "etl", 0)
    await pass_(srv)
    await pass_(srv)
    revision = await srv.ctx.store.revision()
    assert await reconcile_jobs(srv.ctx) == FIRE - srv.clock.now()
    assert await srv.ctx.store.revision() == revision
