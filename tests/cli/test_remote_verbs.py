"""The pure parts of `corral ps`, `top`, `kill` and `exec` on the client side: the row a
table shows, the busiest-first order of `top`, the websocket address of `exec`, and the
usage errors the CLI answers without a server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from corral.cli.ps import ROW_COLUMNS, row
from corral.cli.top import by_cpu
from corral.client.remote import exec_url


def inst(iid: str, cpu: float | None, *, app: str = "shop", state: str = "running",
         **extra: Any) -> dict[str, Any]:
    return {"id": iid, "app": app, "service": "web", "version": 2, "node": "n1",
            "address": "10.0.0.1", "ports": {"http": 20001, "admin": 20002}, "pid": 4242,
            "state": state, "health": "healthy", "usage_cpu": cpu,
            "usage_memory": 3 << 20 if cpu is not None else None, "restarts": 1,
            "started_at": 1000.0, "reason": "", **extra}


def test_a_row_shows_ports_cpu_memory_and_uptime_while_running() -> None:
    got = dict(zip(ROW_COLUMNS, row(inst("a", 0.25), now=1090.0), strict=True))
    assert got["PORTS"] == "admin=20002,http=20001"
    assert (got["CPU"], got["MEM"], got["UP"], got["PID"]) == ("25%", "3MiB", "2m", 4242)
    stopped = dict(zip(ROW_COLUMNS, row(inst("b", None, state="stopped"), now=1090.0),
                       strict=True))
    assert (stopped["CPU"], stopped["MEM"], stopped["UP"]) == (None, None, None)


def test_top_puts_the_busiest_first_and_the_unmeasured_last() -> None:
    items = [inst("a", 0.1), inst("b", None), inst("c", 0.9), inst("d", 0.1, app="blog"),
             inst("e", 0.0)]
    assert [i["id"] for i in by_cpu(items)] == ["c", "d", "a", "e", "b"]


def test_exec_reaches_the_servers_websocket_at_its_address() -> None:
    assert exec_url("https://10.0.0.5:7070/", "ab12") == "wss://10.0.0.5:7070/v1/instances/ab12/exec"
    assert exec_url("http://127.0.0.1:1", "x") == "ws://127.0.0.1:1/v1/instances/x/exec"


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.cli.main", *args], text=True,
                          capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "CORRAL_ADDR": "https://127.0.0.1:9",
                               "CORRAL_TOKEN": "t", "CORRAL_CONFIG_DIR": "/nonexistent"})


def test_usage_errors_need_no_server() -> None:
    bad_signal = corral("kill", "shop", "--signal", "SIGNOPE")
    assert bad_signal.returncode == 2 and "unknown signal" in bad_signal.stderr
    bad_interval = corral("top", "--interval", "soon")
    assert bad_interval.returncode == 2 and "--interval" in bad_interval.stderr
    no_server = corral("exec", "abc", "--", "true")
    assert no_server.returncode == 3 and "cannot reach" in no_server.stderr
