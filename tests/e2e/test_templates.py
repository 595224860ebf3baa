"""Templates and shutdown_delay on a real single-machine cluster, through the real `corral`
command and the real catalog route.

Three services render the same template, listing the instances of a fourth (`api`), each
with another `on_change`; scaling `api` up and down changes their files. `signal:SIGHUP`
reaches the process (which records it) with its pid unchanged, `restart` gives a new pid
without counting a restart, `noop` changes the file only. A service with `shutdown_delay:
1s`, deleted, gets its SIGTERM at least 1 s after the server asked it to stop (compared
through the time the process recorded and the `stop-requested` event's time). A template
error fails the instance with the file and line as its reason. An instance adopted by a
restarted agent renders again and signals only if its file changed meanwhile."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e

ON_CHANGE = {"hup": "signal:SIGHUP", "again": "restart", "quiet": "noop"}
# The recorder for services sent SIGHUP: it starts with SIGHUP ignored until Python has
# installed its handler. Its templates follow the api instances, which turn running as it
# starts; a SIGHUP sent for that change before the handler is in place would kill it (as it
# would any program that handles SIGHUP, under any orchestrator).
RECORDER = """[sh, -c, "trap '' HUP; exec python3 recorder.py"]"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "templates"
    shutil.copytree(Path(__file__).parent / "apps" / "templates", dest)
    return dest


def lb_spec(tmp_path: Path, api: int) -> Path:
    path = tmp_path / f"tpl-{api}.yaml"
    lbs = "".join(f"""
  {name}:
    artifact: ./templates
    command: {RECORDER}
    resources: {{cpu: 0.05, memory: 64MiB}}
    templates:
      - {{source: upstreams.conf.j2, destination: conf/upstreams.conf,
          on_change: "{on_change}"}}
""" for name, on_change in ON_CHANGE.items())
    path.write_text(f"""
name: tpl
services:
  api:
    instances: {api}
    command: [sleep, "100000"]
    resources: {{cpu: 0.05, memory: 32MiB}}
    ports: [{{name: main}}]
{lbs}""")
    return path


def running(cluster: LocalCluster, app: str) -> dict[str, dict[str, Any]]:
    """service -> its one live instance (only services with exactly one)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for inst in cluster.corral_json("ps", app):
        if inst["desired"] == "run":
            out.setdefault(inst["service"], []).append(inst)
    return {s: insts[0] for s, insts in out.items() if len(insts) == 1}


def task_dir(cluster: LocalCluster, inst: dict[str, Any]) -> Path:
    return cluster.data_dir / "agent" / "instances" / inst["id"] / "task"


def servers(cluster: LocalCluster, inst: dict[str, Any]) -> list[str]:
    path = task_dir(cluster, inst) / "conf" / "upstreams.conf"
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith("server ")]


def recorded(cluster: LocalCluster, inst: dict[str, Any], what: str) -> list[float]:
    path = task_dir(cluster, inst) / "signals.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [float(line.split()[1]) for line in lines if line.split()[0] == what]


def events(cluster: LocalCluster, instance_id: str) -> list[dict[str, Any]]:
    return list(cluster.corral_json("events", "--topic", "instance", "--key", instance_id))


def api_addresses(cluster: LocalCluster) -> list[str]:
    return sorted(f"server {i['id']} {i['address']}:{i['ports']['main']}"
                  for i in cluster.corral_json("ps", "tpl")
                  if i["service"] == "api" and i["desired"] == "run"
                  and i["state"] == "running")


def test_templates_follow_the_catalog_with_each_on_change(cluster: LocalCluster,
                                                          tmp_path: Path,
                                                          app_dir: Path) -> None:
    result = cluster.corral("apply", "-f", str(lb_spec(tmp_path, 1)), "--timeout", "60s")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()

    def settled(count: int) -> dict[str, dict[str, Any]] | None:
        now = running(cluster, "tpl")
        if any(now.get(s, {}).get("state") != "running" for s in ON_CHANGE):
            return None
        api = api_addresses(cluster)
        if len(api) != count:
            return None
        files_ok = all(sorted(servers(cluster, now[s])) == api for s in ON_CHANGE)
        return now if files_ok else None

    before = cluster.wait_for(lambda: settled(1), 60, "every file listing the one api")
    for name in ON_CHANGE:  # rendered before the process started: never a bare start
        assert recorded(cluster, before[name], "START"), name
    hups = len(recorded(cluster, before["hup"], "SIGHUP"))
    starts = len(recorded(cluster, before["again"], "START"))

    cluster.corral("apply", "-f", str(lb_spec(tmp_path, 3)), "--timeout", "60s", check=True)
    cluster.wait_for(lambda: settled(3), 60, "every file listing three api instances")

    # signal:SIGHUP: delivered to the same process.
    hup = before["hup"]
    cluster.wait_for(lambda: len(recorded(cluster, hup, "SIGHUP")) > hups, 30,
                     "SIGHUP recorded by the hup instance")
    now = running(cluster, "tpl")
    assert now["hup"]["pid"] == hup["pid"] and now["hup"]["restarts"] == 0
    sent = [e for e in events(cluster, hup["id"]) if "sent SIGHUP" in e["message"]]
    assert sent and "template conf/upstreams.conf changed" in sent[-1]["message"], sent

    # restart: a new process, not counted as a restart, never failed.
    again = before["again"]

    def restarted() -> dict[str, Any] | None:
        inst = running(cluster, "tpl").get("again")
        ok = inst is not None and inst["state"] == "running" and inst["pid"] != again["pid"]
        return inst if ok and len(recorded(cluster, again, "START")) > starts else None

    new = cluster.wait_for(restarted, 30, "the restart instance running a new process")
    assert new["id"] == again["id"] and new["restarts"] == 0
    history = events(cluster, again["id"])
    exits = [e for e in history if e["type"] == "exited"]
    assert any("template conf/upstreams.conf changed" in e["message"] for e in exits), history
    assert not [e for e in history if e["type"] == "failed"], history

    # noop: the file changed (above), the process was left alone.
    quiet = now["quiet"]
    assert quiet["pid"] == before["quiet"]["pid"] and quiet["restarts"] == 0
    assert recorded(cluster, quiet, "SIGHUP") == []
    assert len(recorded(cluster, quiet, "START")) == 1

    # Scaling down: the instances asked to stop leave the files at once.
    cluster.corral("apply", "-f", str(lb_spec(tmp_path, 1)), "--timeout", "60s", check=True)
    cluster.wait_for(lambda: settled(1), 60, "every file back to one api instance")
    cluster.corral("delete", "tpl", check=True)


def test_shutdown_delay_waits_before_the_stop_signal(cluster: LocalCluster, tmp_path: Path,
                                                     app_dir: Path) -> None:
    path = tmp_path / "delay.yaml"
    path.write_text("""
name: tdelay
services:
  slow:
    artifact: ./templates
    command: [python3, recorder.py]
    resources: {cpu: 0.05, memory: 64MiB}
    shutdown_delay: 1s
""")
    cluster.corral("apply", "-f", str(path), "--timeout", "60s", check=True)
    inst = cluster.wait_for(lambda: running(cluster, "tdelay").get("slow"), 30,
                            "the instance running")
    cluster.wait_for(lambda: recorded(cluster, inst, "START"), 30, "the process started")
    cluster.corral("delete", "tdelay", check=True)
    history = events(cluster, inst["id"])
    [asked] = [e for e in history if e["type"] == "stop-requested"]
    [term] = cluster.wait_for(lambda: recorded(cluster, inst, "SIGTERM"), 30,
                              "the SIGTERM recorded")
    assert term - asked["time"] >= 1.0, (term, asked, history)
    stopping = [e for e in history if e["type"] == "stopping"]
    assert stopping and "shutdown_delay" in stopping[0]["message"], history


def test_a_template_error_fails_the_instance_with_file_and_line(cluster: LocalCluster,
                                                                tmp_path: Path,
                                                                app_dir: Path) -> None:
    (app_dir / "bad.j2").write_text("ok\n{{ services.api.nope }}\n")
    path = tmp_path / "bad.yaml"
    path.write_text("""
name: tbad
services:
  api:
    command: [sleep, "100000"]
    resources: {cpu: 0.05, memory: 32MiB}
  lb:
    artifact: ./templates
    command: [python3, recorder.py]
    resources: {cpu: 0.05, memory: 64MiB}
    templates:
      - {source: bad.j2, destination: out.conf}
""")
    cluster.corral("apply", "-f", str(path), "--detach", check=True)

    def failed() -> dict[str, Any] | None:
        inst = running(cluster, "tbad").get("lb")
        return inst if inst is not None and inst["state"] == "failed" else None

    inst = cluster.wait_for(failed, 60, "the lb instance failed")
    assert inst["reason"] == "template bad.j2 line 2: 'list object' has no attribute 'nope'"
    assert not (task_dir(cluster, inst) / "signals.log").exists()  # never started
    cluster.corral("delete", "tbad", check=True)


def test_apply_refuses_a_template_source_missing_from_the_artifact(cluster: LocalCluster,
                                                                   tmp_path: Path,
                                                                   app_dir: Path) -> None:
    path = tmp_path / "missing.yaml"
    path.write_text("""
name: tmissing
services:
  lb:
    artifact: ./templates
    command: [python3, recorder.py]
    templates:
      - {source: nope.j2, destination: out.conf}
""")
    result = cluster.corral("apply", "-f", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "services.lb.templates[0].source: 'nope.j2' is not a file in the artifact " \
           "directory ./templates" in result.stderr


def test_an_adopted_instance_re_renders_and_acts_only_on_changed_bytes(
        fresh_cluster: LocalCluster, tmp_path: Path, app_dir: Path) -> None:
    cluster = fresh_cluster

    def spec(api: int) -> Path:
        path = tmp_path / f"adopt-{api}.yaml"
        path.write_text(f"""
name: tpl
services:
  api:
    instances: {api}
    command: [sleep, "100000"]
    resources: {{cpu: 0.05, memory: 32MiB}}
    ports: [{{name: main}}]
  hup:
    artifact: ./templates
    command: {RECORDER}
    resources: {{cpu: 0.05, memory: 64MiB}}
    templates:
      - {{source: upstreams.conf.j2, destination: conf/upstreams.conf,
          on_change: "signal:SIGHUP"}}
""")
        return path

    def listed(count: int) -> dict[str, Any] | None:
        inst = running(cluster, "tpl").get("hup")
        api = api_addresses(cluster)
        ok = inst is not None and len(api) == count and sorted(servers(cluster, inst)) == api
        return inst if ok else None

    def adoptions(iid: str) -> int:
        return sum(1 for e in events(cluster, iid) if "adopted" in e["message"])

    def kill_agent() -> int:
        pid = int(cluster.state()["agent_pid"])
        os.kill(pid, signal.SIGKILL)
        return pid

    cluster.corral("apply", "-f", str(spec(2)), "--timeout", "60s", check=True)
    inst = cluster.wait_for(lambda: listed(2), 60, "the file listing both api instances")
    hups = len(recorded(cluster, inst, "SIGHUP"))

    # The catalog changes while no agent runs: the adopting agent renders and signals.
    old_agent = kill_agent()
    cluster.corral("apply", "-f", str(spec(1)), "--detach", check=True)
    cluster.wait_for(lambda: cluster.state()["agent_pid"] != old_agent, 30,
                     "the supervisor to restart the agent")
    cluster.wait_for(lambda: adoptions(inst["id"]) == 1, 30, "the hup instance adopted")
    cluster.wait_for(lambda: listed(1), 60, "the file listing the one api instance left")
    cluster.wait_for(lambda: len(recorded(cluster, inst, "SIGHUP")) == hups + 1, 30,
                     "one SIGHUP for the changed file")

    # Nothing changes while no agent runs: adopting renders the same bytes, so no signal;
    # the next change then brings exactly one more.
    old_agent = kill_agent()
    cluster.wait_for(lambda: cluster.state()["agent_pid"] != old_agent, 30,
                     "the supervisor to restart the agent")
    cluster.wait_for(lambda: adoptions(inst["id"]) == 2, 30, "the hup instance adopted again")
    cluster.corral("apply", "-f", str(spec(2)), "--timeout", "60s", check=True)
    cluster.wait_for(lambda: listed(2), 60, "the file listing two api instances again")
    cluster.wait_for(lambda: len(recorded(cluster, inst, "SIGHUP")) >= hups + 2, 30,
                     "the SIGHUP for the scale-up")
    assert len(recorded(cluster, inst, "SIGHUP")) == hups + 2
    now = running(cluster, "tpl")["hup"]
    assert now["pid"] == inst["pid"] and now["restarts"] == 0
    assert len(recorded(cluster, inst, "START")) == 1
