"""Health checks on a real single-machine cluster, through the real `corral` command: an
http check makes an instance `healthy`, a failing one restarts it (an event says it was
unhealthy); a tcp check; a command check run inside the sandbox with `on_unhealthy:
ignore`, which reports without restarting and recovers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "health"
    shutil.copytree(Path(__file__).parent / "apps" / "health", dest)
    return dest


def spec(tmp_path: Path, name: str, health: str, *, app_dir: Path) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
services:
  web:
    artifact: ./{app_dir.name}
    command: [python3, server.py, "${{PORT_HTTP}}"]
    resources: {{cpu: 0.05, memory: 64MiB}}
    ports: [{{name: http}}]
    health: {health}
    restart: {{policy: always, backoff: 200ms, max_backoff: 2s}}
""")
    return path


def the_instance(cluster: LocalCluster, app: str) -> dict[str, Any] | None:
    insts = [i for i in cluster.corral_json("ps", app) if i["desired"] == "run"]
    return insts[0] if len(insts) == 1 else None


def healthy(cluster: LocalCluster, app: str, restarts: int = 0) -> dict[str, Any] | None:
    inst = the_instance(cluster, app)
    if inst is None or inst["restarts"] != restarts:
        return None
    return inst if inst["state"] == "healthy" and inst["health"] == "healthy" else None


def events(cluster: LocalCluster, instance_id: str) -> list[dict[str, Any]]:
    return list(cluster.corral_json("events", "--topic", "instance", "--key", instance_id))


def test_http_check_healthy_then_unhealthy_restarts(cluster: LocalCluster, tmp_path: Path,
                                                    app_dir: Path) -> None:
    path = spec(tmp_path, "hhttp", "{http: /healthz, interval: 300ms, timeout: 1s, "
                "grace: 2s, failures: 3}", app_dir=app_dir)
    result = cluster.corral("apply", "-f", str(path), "--timeout", "60s")
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    inst = cluster.wait_for(lambda: healthy(cluster, "hhttp"), 30, "the instance healthy")
    table = cluster.corral("ps", "hhttp", check=True).stdout
    assert "healthy" in table, table

    httpx.get(f"http://127.0.0.1:{inst['ports']['http']}/sick", timeout=5)
    again = cluster.wait_for(lambda: healthy(cluster, "hhttp", restarts=1), 30,
                             "the unhealthy instance restarted and healthy again")
    assert again["id"] == inst["id"] and again["pid"] != inst["pid"]
    history = events(cluster, inst["id"])
    types = [e["type"] for e in history]
    assert "healthy" in types and "unhealthy" in types, history
    [sick] = [e for e in history if e["type"] == "unhealthy"]
    assert "http /healthz: 500" in sick["message"], sick
    exited = [e for e in history if e["type"] == "exited" and "unhealthy" in e["message"]]
    assert exited, history
    cluster.corral("delete", "hhttp", check=True)


def test_tcp_check(cluster: LocalCluster, tmp_path: Path, app_dir: Path) -> None:
    path = spec(tmp_path, "htcp", "{tcp: http, interval: 300ms, grace: 2s}",
                app_dir=app_dir)
    cluster.corral("apply", "-f", str(path), "--timeout", "60s", check=True)
    inst = cluster.wait_for(lambda: healthy(cluster, "htcp"), 30, "the instance healthy")
    [event] = [e for e in events(cluster, inst["id"]) if e["type"] == "healthy"]
    assert "tcp http: connected" in event["message"], event
    cluster.corral("delete", "htcp", check=True)


def test_command_check_inside_the_instance_with_ignore(cluster: LocalCluster,
                                                       tmp_path: Path,
                                                       app_dir: Path) -> None:
    # Run inside the instance: its cwd (the task dir) and its env.
    path = spec(tmp_path, "hcmd", '{command: [sh, -c, "test ! -e sick && test -n \\"$PORT\\""], '
                "interval: 300ms, grace: 2s, failures: 2, on_unhealthy: ignore}",
                app_dir=app_dir)
    cluster.corral("apply", "-f", str(path), "--timeout", "60s", check=True)
    inst = cluster.wait_for(lambda: healthy(cluster, "hcmd"), 30, "the instance healthy")
    task_dir = cluster.data_dir / "agent" / "instances" / inst["id"] / "task"
    (task_dir / "sick").touch()

    def unhealthy() -> dict[str, Any] | None:
        now = the_instance(cluster, "hcmd")
        return now if now is not None and now["state"] == "unhealthy" else None

    sick = cluster.wait_for(unhealthy, 30, "the instance unhealthy")
    assert sick["health"] == "unhealthy" and sick["pid"] == inst["pid"]
    assert sick["restarts"] == 0  # ignore: reported, not restarted
    (task_dir / "sick").unlink()
    back = cluster.wait_for(lambda: healthy(cluster, "hcmd"), 30, "the instance healthy again")
    assert back["pid"] == inst["pid"]
    cluster.corral("delete", "hcmd", check=True)
