"""`corral up [--data-dir D] [--port P] [--detach]`: a single-machine cluster: a server
with the embedded SQLite store and an agent, as two child processes this command
supervises (a child that dies is started again after a backoff, as an init system would).

It writes `CORRAL_ADDR`/`CORRAL_TOKEN`/`CORRAL_CACERT` to the user's config (mode 0600) so
every other verb finds the cluster and verifies its certificate. The server serves HTTPS on
127.0.0.1; the agent joins it like any other machine would, with a short-lived join token
this command makes (once: later starts reuse the node identity in `<data>/agent/identity`).
Ctrl-C (or SIGTERM, or `corral down`) stops the agent, which stops its
instances, then the server. `--detach` runs the supervisor in the background and returns
once the cluster answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
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
from corral.secretfile import write_private
from corral.server.auth import load_or_create_token

__all__ = ["down", "up"]

STATE_FILE = "up.json"


def _child(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # 0600: the server prints its first join token, and only this user may read it.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = os.fdopen(fd, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "corral.cli.main", *args], stdout=out,
                                stderr=out, stdin=subprocess.DEVNULL)
    finally:
        out.close()  # the child holds its own copy


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _verify(cacert: Path) -> ssl.SSLContext | None:
    """The cluster CA as a client context, once the server has made it."""
    try:
        return ssl.create_default_context(cafile=str(cacert))
    except (OSError, ssl.SSLError):
        return None


def _get(url: str, cacert: Path, token: str = "") -> httpx.Response | None:
    verify = _verify(cacert)
    if verify is None:
        return None
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(url, timeout=1, verify=verify, headers=headers)
    except httpx.HTTPError:
        return None


def _wait_healthy(url: str, cacert: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = _get(f"{url}/healthz", cacert)
        if resp is not None and resp.status_code == 200:
            return True
        time.sleep(0.05)
    return False


def _wait_node(url: str, cacert: Path, token: str, timeout: float) -> bool:
    """Until the agent has registered its node, so the next `apply` can place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = _get(f"{url}/v1/nodes", cacert, token)
        try:
            if resp is not None and resp.status_code == 200 and resp.json():
                return True
        except ValueError:
            pass
        time.sleep(0.05)
    return False


def _join_token_for_agent(data: Path, url: str, cacert: Path, name: str) -> None:
    """A join token for this cluster's own agent, in `<data>/agent-join-token` (0600),
    unless the agent has joined already. Short-lived: it serves one start."""
    if (data / "agent" / "identity" / "credential.json").exists():
        return
    token = load_or_create_token(data / "server")
    verify = _verify(cacert)
    headers = {"authorization": f"Bearer {token}"}
    try:
        # This machine's node, left by a cluster of an earlier version (registered with
        # the admin token, no identity): free its name, which is this agent's to take.
        httpx.delete(f"{url}/v1/nodes/{name}/credential", timeout=10, verify=verify or True,
                     headers=headers)
        resp = httpx.post(f"{url}/v1/tokens", timeout=10, verify=verify or True,
                          headers=headers,
                          json={"ttl": 600, "description": f"corral up: node {name}"})
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        err_console.print(f"cannot make a join token for the agent: {exc}")
        return
    write_private(data / "agent-join-token", resp.json()["token"] + "\n")


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
    addr = f"https://127.0.0.1:{port}"
    if _listening(port):
        die(f"something already listens on port {port}: a cluster is running (`corral down` "
            "stops one started with --detach), or pick another --port", EXIT_FAILED)
    token = load_or_create_token(data / "server")
    cacert = data / "server" / "pki" / "ca.crt"
    config_file = write_config(ClientConfig(addr=addr, token=token, cacert=str(cacert)))
    if detach:
        args = [sys.executable, "-m", "corral.cli.main", "up", "--data-dir", str(data),
                "--port", str(port), "--name", name, "--cgroup-parent", cgroup_parent,
                "--usage-interval", str(usage_interval)]
        log = open(data / "up.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        if not _wait_healthy(addr, cacert, 30) or not _wait_node(addr, cacert, token, 30):
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
    cacert = data / "server" / "pki" / "ca.crt"
    agent_args = ["agent", "--join", addr, "--token-file", str(data / "agent-join-token"),
                  "--ca-cert", str(cacert),
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
        if which == "agent":
            _join_token_for_agent(data, addr, cacert, name)
        procs[which] = _child(specs[which], data / "logs" / f"{which}.log")
        _write_state(data, {"addr": addr, "supervisor": os.getpid(),
                            **{f"{k}_pid": p.pid for k, p in procs.items()}})

    start("server")
    if not _wait_healthy(addr, cacert, 30):
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
