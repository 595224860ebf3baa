"""Jobs on a real single-machine cluster, through the real `corral` command: a job that
fails twice then succeeds with `retries: 2` (it counts its attempts in a host directory,
driver `process`), a chain `extract -> transform -> load` passing data through a
redis-server service on a static port, a schedule firing on its own, `corral jobs graph`,
and invalid job specs refused by `corral apply` with nothing applied."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from corral.testing.cluster import LocalCluster, free_port

pytestmark = pytest.mark.e2e


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return path


def runs(cluster: LocalCluster, target: str) -> list[dict[str, Any]]:
    """Oldest first."""
    return list(reversed(cluster.corral_json("jobs", "runs", target)))


def test_a_job_that_fails_twice_succeeds_on_its_third_attempt(cluster: LocalCluster,
                                                              tmp_path: Path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    spec = write(tmp_path, "flaky", f"""
name: flaky
jobs:
  etl:
    command: [sh, -c, 'n=$(( $(cat "$COUNTS/n" 2>/dev/null || echo 0) + 1 )); echo $n > "$COUNTS/n";
               echo "attempt $n run $CORRAL_RUN try $CORRAL_ATTEMPT index $CORRAL_COMPLETION_INDEX";
               [ $n -ge 3 ] || exit 4']
    env: {{COUNTS: "{counts}"}}
    isolation: {{driver: process}}
    resources: {{cpu: 0.05, memory: 32MiB}}
    retries: 2
    backoff: 500ms
""")
    result = cluster.corral("apply", "-f", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    result = cluster.corral("run", "flaky/etl", "--timeout", "90s", "--json")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    answer = json.loads(result.stdout)
    assert [a["attempt"] for a in answer["attempts"]] == [1, 2, 3]

    history = runs(cluster, "flaky/etl")
    assert [(r["number"], r["cause"], r["attempt"], r["state"], r["exit_code"])
            for r in history] == [(1, "manual", 1, "failed", 4), (2, "retry", 2, "failed", 4),
                                  (3, "retry", 3, "succeeded", 0)]
    assert [r["retry_of"] for r in history] == [None, 1, 1]
    assert (counts / "n").read_text().strip() == "3"
    # the second retry started at least backoff * 2 after the second failure
    assert history[2]["started_at"] - history[1]["finished_at"] >= 1.0
    [listed] = cluster.corral_json("jobs", "flaky")
    assert (listed["succeeded"], listed["failed"], listed["active_runs"]) == (1, 2, [])

    last = history[2]["instances"][0]
    logs = cluster.corral("logs", f"flaky/etl/{last}", check=True).stdout
    assert "attempt 3 run 3 try 3 index 0" in logs
    everything = cluster.corral("logs", "flaky/etl", check=True).stdout
    assert "attempt 1 run 1" in everything and "attempt 2 run 2" in everything
    ps = cluster.corral_json("ps", "flaky", "-a")
    assert {(i["service"], i["kind"], i["state"]) for i in ps} == {("etl", "job", "stopped")}
    table = cluster.corral("jobs", "runs", "flaky/etl", check=True).stdout
    assert f"corral logs flaky/etl/ID (e.g. {last})" in table
    cluster.corral("delete", "flaky", check=True)


def test_an_extract_transform_load_chain_runs_in_order_through_redis(
        cluster: LocalCluster, tmp_path: Path) -> None:
    port = free_port()
    cli = "redis-cli -p $REDIS_PORT"
    spec = write(tmp_path, "etl", f"""
name: pipeline
services:
  cache:
    command: [redis-server, --port, "{port}", --save, "", --appendonly, "no",
              --bind, 127.0.0.1]
    resources: {{cpu: 0.2, memory: 128MiB}}
    ports: [{{name: main, static: {port}}}]
    health: {{tcp: main, interval: 300ms, grace: 1s}}
jobs:
  extract:
    command: [sh, -c, '{cli} set raw "apples,pears" && {cli} rpush order extract']
    env: {{REDIS_PORT: "{port}"}}
    resources: {{cpu: 0.05, memory: 32MiB}}
  transform:
    after: [extract]
    command: [sh, -c, 'v=$({cli} get raw) && [ -n "$v" ] &&
              {cli} set upper "$(echo "$v" | tr a-z A-Z)" && {cli} rpush order transform']
    env: {{REDIS_PORT: "{port}"}}
    resources: {{cpu: 0.05, memory: 32MiB}}
  load:
    after: [transform]
    command: [sh, -c, 'v=$({cli} get upper) && [ -n "$v" ] && echo "loaded $v" &&
              {cli} rpush order load']
    env: {{REDIS_PORT: "{port}"}}
    resources: {{cpu: 0.05, memory: 32MiB}}
""")
    result = cluster.corral("apply", "-f", str(spec), "--timeout", "90s")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    result = cluster.corral("run", "pipeline/extract", "--timeout", "60s")
    assert result.returncode == 0, result.stdout + result.stderr

    def loaded() -> list[dict[str, Any]]:
        done = runs(cluster, "pipeline/load")
        return done if done and done[-1]["state"] not in ("pending", "running") else []

    [load] = cluster.wait_for(loaded, timeout=60, what="load to run")
    [extract] = runs(cluster, "pipeline/extract")
    [transform] = runs(cluster, "pipeline/transform")
    assert [r["state"] for r in (extract, transform, load)] == ["succeeded"] * 3
    assert (transform["cause"], load["cause"]) == ("after", "after")
    assert extract["finished_at"] <= transform["started_at"]
    assert transform["finished_at"] <= load["started_at"]
    order = subprocess.run(["redis-cli", "-p", str(port), "lrange", "order", "0", "-1"],
                           capture_output=True, text=True, check=True, timeout=10).stdout
    assert order.split() == ["extract", "transform", "load"]
    logs = cluster.corral("logs", "pipeline/load", check=True).stdout
    assert "loaded APPLES,PEARS" in logs

    graph = cluster.corral("jobs", "graph", "pipeline", check=True).stdout
    assert graph.splitlines() == ["pipeline: 3 jobs in 3 levels", "level 0",
                                  "  extract    manual only", "level 1",
                                  "  transform  after extract", "level 2",
                                  "  load       after transform"]
    dot = cluster.corral("jobs", "graph", "pipeline", "--dot", check=True).stdout
    assert '"extract" -> "transform";' in dot and '"transform" -> "load";' in dot
    status = cluster.corral("status", "pipeline", check=True).stdout
    assert "load (job)" in status and "last run #1 succeeded" in status
    cluster.corral("delete", "pipeline", check=True)
    assert cluster.corral("jobs", "runs", "pipeline/load").returncode == 4


def test_a_job_that_ends_while_its_agent_is_down_is_adopted_and_counted_once(
        fresh_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = fresh_cluster
    gate = tmp_path / "gate"
    gate.mkdir()
    spec = write(tmp_path, "adopt", f"""
name: adopt
jobs:
  wait:
    command: [sh, -c, 'echo x >> "$GATE/starts"; while [ ! -e "$GATE/go" ]; do sleep 0.1; done']
    env: {{GATE: "{gate}"}}
    isolation: {{driver: process}}
    resources: {{cpu: 0.05, memory: 32MiB}}
""")
    cluster.corral("apply", "-f", str(spec), check=True)
    cluster.corral("run", "adopt/wait", "--detach", check=True)
    cluster.wait_for(lambda: runs(cluster, "adopt/wait")[0]["state"] == "running"
                     and (gate / "starts").exists(), 30, "the job to run")
    agent_pid = cluster.state()["agent_pid"]
    os.kill(agent_pid, signal.SIGKILL)
    (gate / "go").touch()  # it ends while no agent watches
    cluster.wait_for(lambda: cluster.state()["agent_pid"] != agent_pid, 30,
                     "the supervisor to restart the agent")
    [run] = cluster.wait_for(lambda: [r for r in runs(cluster, "adopt/wait")
                                      if r["state"] == "succeeded"], 30, "the run to end")
    assert run["exit_code"] == 0
    assert (gate / "starts").read_text() == "x\n"  # not started a second time
    [inst] = cluster.corral_json("ps", "adopt", "-a")
    assert (inst["state"], inst["exit_code"]) == ("stopped", 0)


def test_a_schedule_fires_by_itself(cluster: LocalCluster, tmp_path: Path) -> None:
    # Far enough ahead that `corral apply` has surely stored the job when the first run is
    # due, even on a loaded machine (a start already past is a missed run, not a run).
    start = dt.datetime.fromtimestamp(int(time.time()) + 10, dt.UTC)
    spec = write(tmp_path, "tick", f"""
name: tick
jobs:
  beat:
    schedule: R2/{start.strftime("%Y-%m-%dT%H:%M:%SZ")}/PT2S
    command: [sh, -c, 'echo beat $CORRAL_RUN']
    resources: {{cpu: 0.05, memory: 32MiB}}
""")
    cluster.corral("apply", "-f", str(spec), check=True)

    def two_done() -> list[dict[str, Any]]:
        found = runs(cluster, "tick/beat")
        return found if [r["state"] for r in found] == ["succeeded"] * 2 else []

    found = cluster.wait_for(two_done, timeout=60, what="two scheduled runs")
    assert [r["scheduled_at"] for r in found] == [start.timestamp(), start.timestamp() + 2]
    assert all(r["cause"] == "schedule" for r in found)
    [listed] = cluster.corral_json("jobs", "tick")
    assert listed["next_run"] is None  # R2: used up
    cluster.corral("delete", "tick", check=True)


@pytest.mark.parametrize(("jobs", "words"), [
    ("  etl: {command: [ok], schedule: '61 * * * *'}",
     ["bad.yaml:3: jobs.etl.schedule", "minute: 61 is out of range 0-59"]),
    ("  etl: {command: [ok], schedule: 'R/2026-01-01T00:00:00Z/P1H'}",
     ["bad.yaml:3: jobs.etl.schedule", "period 'P1H' is not an ISO 8601 duration"]),
    ("  etl: {command: [ok], after: [extrct]}\n  extract: {command: [ok]}",
     ["bad.yaml:3: jobs.etl.after[0]", "unknown job 'extrct'", "did you mean 'extract'"]),
    ("  a: {command: [ok], after: [b]}\n  b: {command: [ok], after: [a]}",
     ["bad.yaml:3: jobs.a.after[0]", "dependency cycle: a -> b -> a"]),
])
def test_invalid_jobs_are_refused_by_apply_and_nothing_is_applied(
        cluster: LocalCluster, tmp_path: Path, jobs: str, words: list[str]) -> None:
    spec = write(tmp_path, "bad", f"name: badjobs\njobs:\n{jobs}\n")
    result = cluster.corral("apply", "-f", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert "badjobs" not in {a["name"] for a in cluster.corral_json("status")}
    assert all(j["app"] != "badjobs" for j in cluster.corral_json("jobs"))
