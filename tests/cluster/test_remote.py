"""The cluster as one machine (issue 7), across real hosts: 1 server + 3 agents on the
netns harness, one `tick` instance per agent in the `sandbox` driver, and the CLI run from
the client's namespace. `ps` shows every node's instances with pids that are real on
their host (in `/proc`, in the instance's cgroup); `ps --processes` lists an instance's
processes; `exec` runs inside the container (its private `/tmp`), with stdin and the exit
code; `logs` merges the three nodes' lines by time and follows the instances a rolling
restart adds; `kill` reaches a remote instance, which dies of the signal and is restarted
by its policy.

One cluster serves the whole module (starting one costs seconds); tests that change it
(kill, restart) come last and look instances up afresh."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing.hosts import AgentSpec, NetnsCluster
from corral.testing.netns import enter_argv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = "tick"
MARKER = "/tmp/corral-remote-marker"  # written inside each instance: its private /tmp
SPEC = f"""
name: {APP}
services:
  tick:
    instances: 3
    command: [sh, -c, 'echo "$CORRAL_INSTANCE" > {MARKER}; i=0; while :; do
                       echo "out $CORRAL_INSTANCE $i"; echo "err $CORRAL_INSTANCE $i" >&2;
                       i=$((i+1)); sleep 0.3; done']
    resources: {{cpu: 0.1, memory: 64MiB}}
    placement: {{distinct_hosts: true}}
    isolation: {{driver: sandbox}}
    restart: {{policy: always, backoff: 200ms, max_backoff: 2s}}
    update: {{max_parallel: 1, max_surge: 0, min_healthy_time: 500ms}}
"""


@pytest.fixture(scope="module")
def cluster(netns_ok: None, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[NetnsCluster]:
    spec = tmp_path_factory.mktemp("remote") / "tick.yaml"
    spec.write_text(SPEC)
    with NetnsCluster([AgentSpec(labels={"zone": z}, cpu="1") for z in "abc"],
                      node_ttl=3.0) as c:
        c.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
        c.wait_for(lambda: running(c), 60, "3 instances running")
        yield c


def running(cluster: NetnsCluster) -> list[dict[str, Any]] | None:
    insts = [i for i in cluster.corral_json("ps", APP) if i["desired"] == "run"]
    if len(insts) == 3 and all(i["state"] == "running" and i["pid"] for i in insts):
        return sorted(insts, key=lambda i: str(i["node"]))
    return None


def in_cgroup(pid: int, cgroup_parent: str, instance: str) -> bool | None:
    """Whether `pid` (a host pid) is in the instance's cgroup under the agent's parent;
    None once it has ended."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except FileNotFoundError:
        return None
    return any(line.endswith(f"/{cgroup_parent}/{instance}") for line in lines)


def corral_with_input(cluster: NetnsCluster, stdin: str, *args: str
                      ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*enter_argv(cluster.client_netns), cluster.python, "-m",
                           "corral.cli.main", *args], input=stdin, env=cluster.client_env,
                          capture_output=True, text=True, timeout=60)


def test_ps_shows_every_nodes_instances_with_their_real_pids(cluster: NetnsCluster) -> None:
    insts = cluster.wait_for(lambda: running(cluster), 30, "3 running")
    assert [i["node"] for i in insts] == ["host1", "host2", "host3"]
    nodes = cluster.nodes()
    for inst in insts:
        host = cluster.host(inst["node"])
        assert inst["address"] == nodes[inst["node"]]["address"] == host.address
        # The pid as seen on its node: a live process there, in the instance's cgroup.
        assert in_cgroup(inst["pid"], host.cgroup_parent, inst["id"]) is True
    table = cluster.corral("ps", APP, check=True).stdout
    for inst in insts:
        assert inst["id"] in table and str(inst["pid"]) in table
    on_host2 = cluster.corral_json("ps", "--node", "host2")
    assert [i["id"] for i in on_host2] == [insts[1]["id"]]
    assert cluster.corral_json("ps", APP, "--state", "stopped,lost") == []
    bad = cluster.corral("ps", "--state", "sleeping")
    assert bad.returncode == 2 and "unknown state" in bad.stderr


def test_ps_processes_lists_what_runs_in_a_remote_instances_cgroup(
        cluster: NetnsCluster) -> None:
    inst = cluster.wait_for(lambda: running(cluster), 30, "3 running")[2]
    host = cluster.host(inst["node"])
    procs = cluster.corral_json("ps", "--processes", inst["id"])
    pids = [p["pid"] for p in procs]
    assert inst["pid"] in pids
    main = next(p for p in procs if p["pid"] == inst["pid"])
    assert main["command"].endswith("sleep 0.3; done") and main["user"] == "root"
    # Each is in the instance's cgroup, unless it ended meanwhile (a `sleep 0.3`).
    assert {in_cgroup(p["pid"], host.cgroup_parent, inst["id"]) for p in procs} <= {True, None}
    table = cluster.corral("ps", "--processes", inst["id"], check=True).stdout
    assert f"on {inst['node']}" in table and str(inst["pid"]) in table


def test_exec_runs_inside_the_instances_container(cluster: NetnsCluster) -> None:
    inst = cluster.wait_for(lambda: running(cluster), 30, "3 running")[1]
    seen = cluster.corral("exec", inst["id"], "--", "cat", MARKER, check=True)
    assert seen.stdout.strip() == inst["id"]
    assert not Path(MARKER).exists()  # the instance's /tmp, not the host's
    env = cluster.corral("exec", inst["id"], "--", "sh", "-c", "echo $CORRAL_NODE; pwd",
                         check=True).stdout.split()
    assert env == [inst["node"], "/task"]
    piped = corral_with_input(cluster, "hello\nworld\n", "exec", inst["id"], "--", "sh",
                              "-c", "cat; echo to-stderr >&2; exit 7")
    assert (piped.returncode, piped.stdout, piped.stderr) == (7, "hello\nworld\n",
                                                              "to-stderr\n")
    missing = cluster.corral("exec", "nosuch", "--", "true")
    assert missing.returncode == 4 and "no instance" in missing.stderr


def test_logs_of_three_nodes_merge_into_one_ordered_stream(cluster: NetnsCluster) -> None:
    insts = cluster.wait_for(lambda: running(cluster), 30, "3 running")
    lines = [json.loads(x) for x in
             cluster.corral("logs", APP, "--tail", "60", "--json", check=True)
             .stdout.splitlines()]
    assert len(lines) == 60
    assert {x["node"] for x in lines} == {"host1", "host2", "host3"}
    assert {x["instance"] for x in lines} == {i["id"] for i in insts}
    times = [x["time"] for x in lines]
    assert times == sorted(times)
    for x in lines:  # each line is tagged with the instance that wrote it
        assert x["text"].split()[1] == x["instance"]
    errs = [json.loads(x) for x in cluster.corral("logs", APP, "--tail", "9", "--stderr",
                                                  "--json", check=True).stdout.splitlines()]
    assert len(errs) == 9 and {x["stream"] for x in errs} == {"stderr"}
    text = cluster.corral("logs", f"{APP}/tick/{insts[0]['id']}", "--tail", "2",
                          check=True).stdout.splitlines()
    assert len(text) == 2 and all(t.startswith(f"tick/{insts[0]['id']} | ") for t in text)


def test_kill_reaches_a_remote_instance_which_dies_of_the_signal(
        cluster: NetnsCluster) -> None:
    inst = cluster.wait_for(lambda: running(cluster), 30, "3 running")[0]
    done = cluster.corral("kill", inst["id"], "--signal", "USR1")
    assert done.returncode == 0, done.stderr
    assert "delivered" in done.stdout and inst["node"] in done.stdout

    def exited() -> list[dict[str, Any]]:
        events = cluster.corral_json("events", "--topic", "instance", "--key", inst["id"])
        return [e for e in events if e["type"] == "exited"]
    ends = cluster.wait_for(exited, 30, "the killed instance to exit")
    assert "killed by signal 10 (SIGUSR1)" in ends[0]["payload"]["reason"]
    # The desired state did not change: the restart policy started it again.
    after = cluster.wait_for(
        lambda: next((i for i in cluster.corral_json("ps", APP)
                      if i["id"] == inst["id"] and i["restarts"] >= 1
                      and i["state"] == "running"), None), 30, "the restart")
    assert after["desired"] == "run" and after["pid"] != inst["pid"]
    # A service-wide kill reports each instance, and a signal for nothing fails.
    report = json.loads(cluster.corral("kill", f"{APP}/tick", "-s", "CONT", "--json",
                                       check=True).stdout)
    assert sorted(r["node"] for r in report["results"]) == ["host1", "host2", "host3"]
    assert {r["outcome"] for r in report["results"]} == {"delivered"}
    unknown = cluster.corral("kill", "nosuch")
    assert unknown.returncode == 4


def test_logs_follow_picks_up_the_instances_a_rollout_adds(cluster: NetnsCluster) -> None:
    before = {i["id"] for i in cluster.wait_for(lambda: running(cluster), 30, "3 running")}
    follow = subprocess.Popen(
        [*enter_argv(cluster.client_netns), cluster.python, "-m", "corral.cli.main", "logs",
         APP, "-f", "--tail", "0", "--json"], env=cluster.client_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert follow.stdout is not None
        for raw in follow.stdout:
            lines.put(raw)
    threading.Thread(target=read, daemon=True).start()
    seen: set[str] = set()
    try:
        cluster.corral("restart", APP, "--timeout", "90s", check=True)
        after = {i["id"] for i in cluster.wait_for(lambda: running(cluster), 30, "3 again")}
        assert not after & before

        def all_new_seen() -> bool:
            while not lines.empty():
                seen.add(json.loads(lines.get())["instance"])
            return after <= seen
        cluster.wait_for(all_new_seen, 30, "lines of every new instance in the follow")
    finally:
        follow.terminate()
        try:
            follow.wait(timeout=10)
        except subprocess.TimeoutExpired:
            follow.kill()
            follow.wait()
