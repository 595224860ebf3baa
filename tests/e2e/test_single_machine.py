"""A real single-machine cluster, driven through the real `corral` command: apply an app,
reach every instance, crash one, scale, delete, and watch failure modes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.client import ApiError
from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e


def write_spec(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body)
    return path


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    """The test web server, copied beside the spec files (artifact paths are relative)."""
    dest = tmp_path / "web"
    shutil.copytree(Path(__file__).parent / "apps" / "web", dest)
    return dest


def web_spec(name: str, web_dir: Path, instances: int, greeting: str = "hi") -> str:
    return f"""
name: {name}
services:
  web:
    instances: {instances}
    artifact: ./{web_dir.name}
    command: [python3, server.py, "${{PORT_HTTP}}"]
    env: {{GREETING: {greeting}}}
    resources: {{cpu: 0.05, memory: 64MiB}}
    ports: [{{name: http}}]
    restart: {{policy: always, backoff: 200ms, max_backoff: 2s}}
"""


def instances(cluster: LocalCluster, app: str, *, all: bool = False) -> list[dict[str, Any]]:
    args = ["ps", app] + (["-a"] if all else [])
    return list(cluster.corral_json(*args))


def running(cluster: LocalCluster, app: str) -> list[dict[str, Any]]:
    return [i for i in instances(cluster, app) if i["state"] == "running"
            and i["desired"] == "run"]


def get(port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json())


def inner_pid(host_pid: int) -> int:
    """The pid a process sees for itself (its innermost pid namespace): the sandbox and
    oci drivers give instances their own pid namespace, `ps` shows host pids."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return host_pid


def group_pids(cluster: LocalCluster, instance_id: str) -> list[int]:
    procs = Path("/sys/fs/cgroup/pids") / cluster.cgroup_parent / instance_id / "cgroup.procs"
    return [int(p) for p in procs.read_text().split()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in \
        Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_apply_reach_every_instance_and_see_its_env(cluster: LocalCluster, tmp_path: Path,
                                                    web_dir: Path) -> None:
    spec = write_spec(tmp_path, "reach", web_spec("reach", web_dir, 3, "bonjour"))
    result = cluster.corral("apply", "-f", str(spec), "--timeout", "60s")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    insts = running(cluster, "reach")
    assert len(insts) == 3
    ports = {i["ports"]["http"] for i in insts}
    assert len(ports) == 3
    for inst in insts:
        answer = cluster.wait_for(lambda i=inst: _try(lambda: get(i["ports"]["http"])), 20,
                                  "the server to listen")
        assert answer["instance"] == inst["id"]
        # `ps` shows the host pid of the command itself, no wrapper in between
        assert answer["pid"] == inner_pid(inst["pid"])
        assert answer["greeting"] == "bonjour"
        assert answer["cwd"] == answer["task_dir"]
        assert inst["address"] == "127.0.0.1" and inst["node"] == "local"
    logs = cluster.corral("logs", "reach", "--tail", "10", check=True).stdout
    assert logs.count("serving on") == 3
    status = cluster.corral_json("status", "reach")
    assert status[0]["services"][0]["running"] == 3


def test_killed_instance_is_restarted_and_an_event_says_so(cluster: LocalCluster,
                                                           tmp_path: Path,
                                                           web_dir: Path) -> None:
    spec = write_spec(tmp_path, "crash", web_spec("crash", web_dir, 1))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    [inst] = running(cluster, "crash")
    os.kill(inst["pid"], signal.SIGKILL)
    restarted = cluster.wait_for(
        lambda: [i for i in running(cluster, "crash") if i["restarts"] == 1], 30,
        "the instance to restart")
    assert restarted[0]["id"] == inst["id"] and restarted[0]["pid"] != inst["pid"]
    # `running` means the process started; it listens a moment later (no health checks yet)
    answer = cluster.wait_for(lambda: _try(lambda: get(restarted[0]["ports"]["http"])), 20,
                              "the restarted server to listen")
    assert answer["pid"] == inner_pid(restarted[0]["pid"])
    events = cluster.corral_json("events", "--topic", "instance", "--key", inst["id"])
    exited = [e for e in events if e["type"] == "exited"]
    assert exited and "signal 9" in exited[0]["message"], events


def test_scale_up_and_down(cluster: LocalCluster, tmp_path: Path, web_dir: Path) -> None:
    spec = write_spec(tmp_path, "scale", web_spec("scale", web_dir, 2))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    first = {i["id"]: i["pid"] for i in running(cluster, "scale")}
    spec.write_text(web_spec("scale", web_dir, 4))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    bigger = {i["id"]: i["pid"] for i in running(cluster, "scale")}
    assert len(bigger) == 4 and all(bigger[k] == v for k, v in first.items())
    spec.write_text(web_spec("scale", web_dir, 1))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    left = running(cluster, "scale")
    assert len(left) == 1
    gone = [pid for iid, pid in bigger.items() if iid != left[0]["id"]]
    cluster.wait_for(lambda: not any(pid_alive(p) for p in gone), 20, "scaled-down exit")


def test_delete_stops_every_process_and_removes_cgroups(cluster: LocalCluster,
                                                        tmp_path: Path,
                                                        web_dir: Path) -> None:
    daemon = tmp_path / "daemon"
    daemon.mkdir()
    # the service double-forks a sleeper that escapes its parent: it must die too
    (daemon / "run.sh").write_text(
        "#!/bin/sh\n(setsid sh -c 'sleep 1000 & echo $! > daemon.pid' &)\n"
        "exec python3 -c 'import time; print(\"up\", flush=True); time.sleep(1000)'\n")
    spec = write_spec(tmp_path, "gone", """
name: gone
services:
  d:
    instances: 2
    artifact: ./daemon
    command: [sh, run.sh]
    resources: {cpu: 0.05, memory: 32MiB}
""")
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    insts = running(cluster, "gone")
    task_dirs = [cluster.data_dir / "agent" / "instances" / i["id"] / "task" for i in insts]
    cluster.wait_for(lambda: all((d / "daemon.pid").exists() for d in task_dirs), 20,
                     "daemons")
    # every process of the instances, the escaped daemons included, by host pid
    pids = [p for i in insts for p in group_pids(cluster, i["id"])]
    assert len(pids) >= 2 * len(insts)
    assert all(pid_alive(p) for p in pids)
    groups = [Path("/sys/fs/cgroup/memory") / cluster.cgroup_parent / i["id"] for i in insts]
    assert all(g.is_dir() for g in groups)
    result = cluster.corral("delete", "gone", "--json", check=True)
    assert json.loads(result.stdout)["status"] == "deleted"
    assert not any(pid_alive(p) for p in pids)
    for ctl in ("memory", "cpu", "pids", "freezer", "unified"):
        for i in insts:
            assert not (Path("/sys/fs/cgroup") / ctl / cluster.cgroup_parent / i["id"]).exists()
    assert cluster.corral("status", "gone").returncode == 4


def test_failing_command_backs_off_and_ends_failed(cluster: LocalCluster,
                                                   tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "bad", """
name: bad
services:
  broken:
    command: [sh, -c, "echo oops >&2; exit 3"]
    resources: {cpu: 0.05, memory: 16MiB}
    restart: {policy: always, backoff: 100ms, max_backoff: 400ms, attempts: 3, window: 60s}
""")
    result = cluster.corral("apply", "-f", str(spec), "--timeout", "60s")
    assert result.returncode == 1
    assert "failed" in result.stderr and "code 3" in result.stderr
    final = cluster.wait_for(
        lambda: [i for i in instances(cluster, "bad") if "gave up" in i["reason"]], 30,
        "the restart limit")
    assert final[0]["state"] == "failed" and final[0]["restarts"] == 3
    assert "exited with code 3" in final[0]["reason"]
    logs = cluster.corral("logs", "bad", check=True).stdout
    assert logs.count("oops") == 4


def test_impossible_request_stays_pending_and_apply_says_why(cluster: LocalCluster,
                                                             tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "huge", """
name: huge
services:
  db:
    command: [sleep, "100"]
    resources: {cpu: 0.1, memory: 100TiB}
""")
    result = cluster.corral("apply", "-f", str(spec), "--timeout", "30s")
    assert result.returncode == 1
    assert "pending" in result.stderr and "memory" in result.stderr
    [inst] = instances(cluster, "huge")
    assert inst["state"] == "pending" and "memory" in inst["reason"]
    cluster.corral("delete", "huge", check=True)


def test_bad_input_gets_clear_errors_and_changes_nothing(cluster: LocalCluster,
                                                         tmp_path: Path) -> None:
    before = cluster.api(lambda c: c.status())["revision"]
    bad_yaml = write_spec(tmp_path, "malformed", "name: x\nservices: [\n")
    r = cluster.corral("apply", "-f", str(bad_yaml))
    assert r.returncode == 2 and "malformed.yaml:3: invalid YAML" in r.stderr
    typo = write_spec(tmp_path, "typo", "name: x\nservces: {}\n")
    r = cluster.corral("apply", "-f", str(typo))
    assert r.returncode == 2 and "did you mean 'services'" in r.stderr
    wrong = write_spec(tmp_path, "wrong", "name: x\nservices:\n  a:\n    command: [x]\n"
                       "    instances: many\n    resources: {memory: -1MiB}\n")
    r = cluster.corral("apply", "-f", str(wrong))
    assert r.returncode == 2 and "instances" in r.stderr and "memory" in r.stderr
    # a tar-slip archive uploaded by hand is refused
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with pytest.raises(ApiError) as err:
        cluster.api(lambda c: c.request("PUT", f"/v1/artifacts/{digest}", content=blob))
    assert err.value.status == 422 and "escape" in err.value.message
    # no token, wrong token
    tls = cluster.ssl_context()
    assert httpx.get(f"{cluster.addr}/v1/apps", verify=tls).status_code == 401
    assert httpx.get(f"{cluster.addr}/v1/apps", verify=tls,
                     headers={"authorization": "Bearer wrong"}).status_code == 401
    assert cluster.api(lambda c: c.status())["revision"] == before


def test_server_crash_loses_nothing_and_instances_keep_running(
        fresh_cluster: LocalCluster, tmp_path: Path, web_dir: Path) -> None:
    cluster = fresh_cluster
    spec = write_spec(tmp_path, "durable", web_spec("durable", web_dir, 2))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    before = {i["id"]: i["pid"] for i in running(cluster, "durable")}
    events_before = cluster.corral_json("events")
    server_pid = cluster.state()["server_pid"]
    os.kill(server_pid, signal.SIGKILL)
    cluster.wait_for(lambda: cluster.state()["server_pid"] != server_pid, 30,
                     "the supervisor to restart the server")
    after = cluster.wait_for(lambda: _try(lambda: {i["id"]: i["pid"]
                                                   for i in running(cluster, "durable")}),
                             30, "the restarted server")
    assert after == before
    assert all(pid_alive(p) for p in before.values())
    events_after = cluster.corral_json("events")
    assert [e["index"] for e in events_after[:len(events_before)]] == \
        [e["index"] for e in events_before]
    # and it keeps working: scale up through the restarted server
    spec.write_text(web_spec("durable", web_dir, 3))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    assert len(running(cluster, "durable")) == 3


def _try(fn: Any) -> Any:
    try:
        return fn()
    except (AssertionError, OSError, ValueError, httpx.HTTPError):
        return None


def test_agent_kill_9_keeps_instances_and_adopts_them(fresh_cluster: LocalCluster,
                                                      tmp_path: Path, web_dir: Path) -> None:
    cluster = fresh_cluster
    spec = write_spec(tmp_path, "adopt", web_spec("adopt", web_dir, 5))
    cluster.corral("apply", "-f", str(spec), "--timeout", "60s", check=True)
    before = {i["id"]: i for i in running(cluster, "adopt")}
    assert len(before) == 5
    agent_pid = cluster.state()["agent_pid"]
    os.kill(agent_pid, signal.SIGKILL)
    # while no agent watches: every instance keeps serving, and one of them exits with 3
    victim = sorted(before)[0]
    for inst in before.values():
        if inst["id"] != victim:
            assert get(inst["ports"]["http"])["pid"] == inner_pid(inst["pid"])
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{before[victim]['ports']['http']}/exit/3", timeout=5)
    cluster.wait_for(lambda: cluster.state()["agent_pid"] != agent_pid, 30,
                     "the supervisor to restart the agent")
    restarted = cluster.wait_for(
        lambda: [i for i in running(cluster, "adopt") if i["id"] == victim
                 and i["restarts"] == 1], 30, "the exited instance to be restarted")
    assert restarted[0]["pid"] != before[victim]["pid"]
    after = {i["id"]: i for i in running(cluster, "adopt")}
    for iid, inst in before.items():
        if iid == victim:
            continue
        assert after[iid]["pid"] == inst["pid"] and after[iid]["restarts"] == 0
        assert get(inst["ports"]["http"])["pid"] == inner_pid(inst["pid"])
    events = cluster.corral_json("events", "--topic", "instance", "--key", victim)
    assert any(e["type"] == "exited" and "code 3" in e["message"] for e in events), events
    adopted = cluster.corral_json("events", "--topic", "instance")
    assert sum(1 for e in adopted if "adopted" in e["message"]) >= 4


def test_cordon_and_uncordon_through_the_cli(cluster: LocalCluster, tmp_path: Path) -> None:
    node = cluster.corral_json("node", "cordon", "local")
    assert node["state"] == "ineligible"
    try:
        spec = write_spec(tmp_path, "fenced", """
name: fenced
services:
  s:
    command: [sleep, "300"]
    resources: {cpu: 0.05, memory: 16MiB}
""")
        r = cluster.corral("apply", "-f", str(spec), "--timeout", "20s")
        assert r.returncode == 1 and "no node is ready" in r.stderr
    finally:
        assert cluster.corral_json("node", "uncordon", "local")["state"] == "ready"
    cluster.wait_for(lambda: running(cluster, "fenced"), 30, "placement after uncordon")
    cluster.corral("delete", "fenced", check=True)
