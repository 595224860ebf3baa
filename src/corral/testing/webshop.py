"""Helpers to run `examples/webshop` (haproxy in front of a Python web tier and redis) in
end-to-end tests and benchmarks, and to look inside its haproxy.

- `copy_webshop` copies the example with haproxy's static port replaced, so runs on one
  machine do not fight over port 8080, and writes release files (`RELEASE: vN`);
- `lb_task_dir` finds the lb instance's task dir on a `local_cluster` node, where the
  agent renders `haproxy.cfg` and haproxy binds its admin socket `haproxy.sock`;
- `config_servers` reads the `server` lines of one backend from a rendered config (pure);
- `admin`, `live_servers` and `worker_pid` ask the running haproxy through that socket:
  what the current worker routes to, and its pid, which changes on every reload while the
  master's (the instance's process) stays.

Neighbours: `tests/e2e/test_webshop.py`, `bench/rolling_update.py`, `testing/load.py`
(the traffic), `testing/cluster.py` (the cluster).
"""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

__all__ = ["EXAMPLE", "admin", "config_servers", "copy_webshop", "lb_task_dir",
           "live_servers", "worker_pid"]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "webshop"
_STATIC = "static: 8080"
_RELEASE = "RELEASE: v1"


def copy_webshop(dest: Path, *, port: int, releases: tuple[str, ...] = ("v1", "v2"),
                 instances: int | None = None) -> dict[str, Path]:
    """Copies the example to `dest` with haproxy on `port` (and the web tier at
    `instances`, if given); returns release -> spec file, one per release."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("webshop-v2.yaml"))
    text = (dest / "webshop.yaml").read_text()
    if _STATIC not in text or _RELEASE not in text:
        raise ValueError(f"{EXAMPLE / 'webshop.yaml'} no longer has {_STATIC!r} and "
                         f"{_RELEASE!r}")
    text = text.replace(_STATIC, f"static: {port}")
    if instances is not None:
        text, n = re.subn(r"(\n  web:\n    instances: )\d+", rf"\g<1>{instances}", text)
        if n != 1:
            raise ValueError("cannot find the web service's instances in webshop.yaml")
    files = {}
    for release in releases:
        files[release] = dest / f"webshop-{release}.yaml"
        files[release].write_text(text.replace(_RELEASE, f"RELEASE: {release}"))
    return files


def lb_task_dir(agent_data_dir: Path, instance_id: str) -> Path:
    """The task dir of an instance on the node whose agent keeps its data in
    `agent_data_dir` (`<corral up data dir>/agent`)."""
    return agent_data_dir / "instances" / instance_id / "task"


def config_servers(config: str, backend: str = "web") -> dict[str, str]:
    """server name -> address of the `server` lines in `backend` of a haproxy config."""
    out: dict[str, str] = {}
    section = None
    for line in config.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not line[0].isspace():
            section = words[1] if words[0] == "backend" and len(words) > 1 else None
        elif section == backend and words[0] == "server" and len(words) >= 3:
            out[words[1]] = words[2]
    return out


def admin(sock: Path, command: str, timeout: float = 5.0) -> str:
    """One command on haproxy's admin socket; its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def live_servers(sock: Path, backend: str = "web") -> dict[str, str]:
    """server name -> address:port of `backend` in the worker that answers `sock`."""
    lines = admin(sock, f"show servers state {backend}").splitlines()
    header = next((ln[2:].split() for ln in lines if ln.startswith("# be_id")), None)
    if header is None:
        raise ValueError(f"unexpected answer to 'show servers state': {lines[:3]}")
    name, addr, port = (header.index(k) for k in ("srv_name", "srv_addr", "srv_port"))
    out = {}
    for line in lines:
        words = line.split()
        if words and words[0].isdigit() and len(words) > max(name, addr, port):
            out[words[name]] = f"{words[addr]}:{words[port]}"
    return out


def worker_pid(sock: Path) -> int:
    """The pid of the worker answering `sock`, in haproxy's pid namespace."""
    match = re.search(r"^Pid: (\d+)$", admin(sock, "show info"), re.MULTILINE)
    if match is None:
        raise ValueError("no Pid in haproxy's 'show info'")
    return int(match.group(1))
