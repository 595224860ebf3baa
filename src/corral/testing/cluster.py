"""A real single-machine cluster for end-to-end tests: `corral up` as a child process with
its own data dir, config dir, port and cgroup parent, and a teardown that always leaves
nothing behind (processes, cgroups, dirs), even when a test failed.

The cluster serves HTTPS; everything here verifies its certificate against the cluster CA
(`cacert`, `ssl_context()`), as users' clients do.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.client import Client, ClientConfig

__all__ = ["LocalCluster", "free_port", "kill_cgroups", "local_cluster"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalCluster:
    root: Path
    port: int
    cgroup_parent: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cacert(self) -> Path:
        return self.data_dir / "server" / "pki" / "ca.crt"

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the cluster CA only: for raw httpx calls (`verify=`)."""
        return ssl.create_default_context(cafile=str(self.cacert))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def token(self) -> str:
        return (self.data_dir / "server" / "admin-token").read_text().strip()

    def client(self) -> Client:
        return Client(ClientConfig(addr=self.addr, token=self.token, cacert=str(self.cacert)))

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "up.json").read_text()))

    def corral(self, *args: str, check: bool = False, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `corral` command against this cluster (`env`: extra variables)."""
        result = subprocess.run([sys.executable, "-m", "corral.cli.main", *args],
                                env={**self.env, **(env or {})}, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def corral_json(self, *args: str) -> Any:
        return json.loads(self.corral(*args, "--json", check=True).stdout)

    def api(self, coro_fn: Any) -> Any:
        async def run() -> Any:
            async with self.client() as c:
                return await coro_fn(c)
        return asyncio.run(run())

    def wait_for(self, predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def logs(self) -> str:
        out = []
        for name in ("server", "agent"):
            path = self.data_dir / "logs" / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}.log ---\n" + path.read_text()[-6000:])
        return "\n".join(out)


def _cgroup_dirs(parent: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    found = []
    for base in [root, *root.iterdir()] if root.exists() else []:
        candidate = base / parent
        if candidate.is_dir():
            found.append(candidate)
    return found


def kill_cgroups(parent: str) -> None:
    """Last resort after a failed test: kill and remove every group under `parent`."""
    for d in _cgroup_dirs(parent):
        for procs in d.rglob("cgroup.procs"):
            try:
                for pid in procs.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    time.sleep(0.2)
    for d in _cgroup_dirs(parent):
        for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir():
                with suppress(OSError):
                    sub.rmdir()
        with suppress(OSError):
            d.rmdir()


@contextmanager
def local_cluster(root: Path, *, name: str = "local") -> Iterator[LocalCluster]:
    port = free_port()
    parent = f"corral-test-{os.getpid()}-{port}"
    env = dict(os.environ)
    env.update({"CORRAL_CONFIG_DIR": str(root / "config"), "CORRAL_ADDR": "",
                "CORRAL_TOKEN": "", "CORRAL_LOG_FORMAT": "json"})
    env.pop("CORRAL_ADDR")
    env.pop("CORRAL_TOKEN")
    (root / "data").mkdir(parents=True, exist_ok=True)
    log = open(root / "up.out", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "up", "--data-dir", str(root / "data"),
         "--port", str(port), "--name", name, "--cgroup-parent", parent,
         "--usage-interval", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    cluster = LocalCluster(root=root, port=port, cgroup_parent=parent, proc=proc, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{cluster.addr}/healthz", timeout=1,
                             verify=cluster.ssl_context()).status_code == 200 and \
                        cluster.api(lambda c: c.list_nodes()):
                    break
            except (httpx.HTTPError, OSError, FileNotFoundError, Exception):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("corral up did not start:\n" +
                                   (root / "up.out").read_text() + cluster.logs())
            time.sleep(0.1)
        yield cluster
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        kill_cgroups(parent)
        log.close()
