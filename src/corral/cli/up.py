"""`corral up [--data-dir D] [--port P] [--detach]`: a single-machine cluster: a server
with the embedded SQLite store and an agent, as two child processes this command
supervises (a child that dies is started again after a backoff, as an init system would).

It writes `CORRAL_ADDR`/`CORRAL_TOKEN` to the user's config (mode 0600) so every other verb
finds the cluster. Ctrl-C (or SIGTERM, or `corral down`) stops the agent, which stops its
instances, then the server. `--detach` runs the supervisor in the background and returns
once the cluster answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import typer

from corral.cli.output import EXIT_FAILED, console, die, err_console, print_json
from corral.cli.server import default_data_dir
from corral.client import ClientConfig, write_config
from corral.server.auth import load_or_create_token

__all__ = ["down", "up"]

STATE_FILE = "up.json"


def _child(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed when it ends
    return subprocess.Popen([sys.executable, "-m", "corral.cli.main", *args], stdout=out,
                            stderr=out, stdin=subprocess.DEVNULL)


def _wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def _wait_node(url: str, token: str, timeout: float) -> bool:
    """Until the agent has registered its node, so the next `apply` can place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/v1/nodes", timeout=1,
                             headers={"authorization": f"Bearer {token}"})
            if resp.status_code == 200 and resp.json():
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    return False


def _write_state(data_dir: Path, state: dict[str, Any]) -> None:
    tmp = data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, data_dir / STATE_FILE)


def up(
    data_dir: Path = typer.Option(None, "--data-dir", help="Cluster state (default: "
                                  "/var/lib/corral as root, else ~/.local/share/corral)."),
    port: int = typer.Option(7070, "--port", help="API port on 127.0.0.1."),
    name: str = typer.Option("local", "--name", help="This node's name."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
    cgroup_parent: str = typer.Option("corral", "--cgroup-parent",
                                      help="Parent cgroup of every instance's group."),
    usage_interval: float = typer.Option(10.0, "--usage-interval",
                                         help="Seconds between the agent's usage reports."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start a single-machine cluster: server + agent + embedded store."""
    data = (data_dir or default_data_dir()).resolve()
    data.mkdir(parents=True, exist_ok=True)
    addr = f"http://127.0.0.1:{port}"
    if _wait_healthy(addr, 0.2):
        die(f"something already answers at {addr}: a cluster is running (`corral down` "
            "stops one started with --detach), or pick another --port", EXIT_FAILED)
    token = load_or_create_token(data / "server")
    config_file = write_config(ClientConfig(addr=addr, token=token))
    if detach:
        args = [sys.executable, "-m", "corral.cli.main", "up", "--data-dir", str(data),
                "--port", str(port), "--name", name, "--cgroup-parent", cgroup_parent,
                "--usage-interval", str(usage_interval)]
        log = open(data / "up.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        if not _wait_healthy(addr, 30) or not _wait_node(addr, token, 30):
            die(f"the cluster did not come up; see {data / 'up.log'} and "
                f"{data / 'logs'}", EXIT_FAILED)
        info = {"addr": addr, "config": str(config_file), "data_dir": str(data), "pid": proc.pid}
        if as_json:
            print_json(info)
        else:
            console.print(f"corral is up at {addr} (pid {proc.pid}); config in {config_file}")
        return
    _supervise(data, addr, port, name, cgroup_parent, usage_interval, config_file, as_json)


def _supervise(data: Path, addr: str, port: int, name: str, cgroup_parent: str,
               usage_interval: float, config_file: Path, as_json: bool) -> None:
    (data / "logs").mkdir(exist_ok=True)
    server_args = ["server", "--data-dir", str(data / "server"), "--port", str(port)]
    agent_args = ["agent", "--server", addr, "--token-file", str(data / "server" /
                                                                 "admin-token"),
                  "--data-dir", str(data / "agent"), "--name", name, "--address",
                  "127.0.0.1", "--stop-instances-on-exit", "--cgroup-parent", cgroup_parent,
                  "--log-level", os.environ.get("CORRAL_AGENT_LOG_LEVEL", "info"),
                  "--usage-interval", str(usage_interval)]
    specs = {"server": server_args, "agent": agent_args}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    backoff = {"server": 0.5, "agent": 0.5}
    stopping = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def start(which: str) -> None:
        procs[which] = _child(specs[which], data / "logs" / f"{which}.log")
        _write_state(data, {"addr": addr, "supervisor": os.getpid(),
                            **{f"{k}_pid": p.pid for k, p in procs.items()}})

    start("server")
    if not _wait_healthy(addr, 30):
        procs["server"].kill()
        die(f"the server did not start; see {data / 'logs' / 'server.log'}", EXIT_FAILED)
    start("agent")
    info = {"addr": addr, "config": str(config_file), "data_dir": str(data),
            "logs": str(data / "logs")}
    if as_json:
        print_json(info)
    else:
        console.print(f"corral is up at {addr}; node {name}; config in {config_file}")
        console.print(f"logs in {data / 'logs'}; Ctrl-C stops the cluster and its instances")
    sys.stdout.flush()
    try:
        while not stopping:
            time.sleep(0.1)
            for which, proc in list(procs.items()):
                if proc.poll() is not None and not stopping:
                    err_console.print(f"{which} exited with {proc.returncode}; restarting in "
                                      f"{backoff[which]:g}s")
                    time.sleep(backoff[which])
                    backoff[which] = min(backoff[which] * 2, 10)
                    start(which)
    finally:
        for which in ("agent", "server"):
            proc = procs[which]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60 if which == "agent" else 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        (data / STATE_FILE).unlink(missing_ok=True)


def down(
    data_dir: Path = typer.Option(None, "--data-dir"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stop a cluster started with `corral up --detach`."""
    data = (data_dir or default_data_dir()).resolve()
    try:
        state = json.loads((data / STATE_FILE).read_text())
    except (OSError, ValueError):
        die(f"no running cluster found in {data}", EXIT_FAILED)
    pid = int(state["supervisor"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        (data / STATE_FILE).unlink(missing_ok=True)
        die(f"cluster supervisor {pid} is not running", EXIT_FAILED)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (data / STATE_FILE).exists():
        time.sleep(0.1)
    if (data / STATE_FILE).exists():
        die(f"cluster supervisor {pid} is still stopping after 90s; see {data / 'up.log'}",
            EXIT_FAILED)
    if as_json:
        print_json({"stopped": True, "pid": pid})
    else:
        console.print("corral is down")
