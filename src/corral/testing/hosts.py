"""`NetnsCluster`: a real Corral cluster of several hosts on one machine, for the multi-host
tests (tests/cluster), benchmarks (bench/) and `corral dev cluster`.

Topology (addresses are only reachable from inside the namespaces, never from the machine's
own network; see `testing/netns.py` for the plumbing):

```
  host0 10.77.1.1   corral server :7070          \
  host1 10.77.1.2   corral agent  (node host1)    |  one bridge in namespace <prefix>-sw
  ...                                             |  (partition = that host's port down)
  hostN 10.77.1.N+1 corral agent  (node hostN)    |
  cl    10.77.200.1 the test's client: CLI and HTTP calls  /
```

Each process runs through `nsenter --net=<namespace>` with its own data dir and log under
one temp dir; each agent has its own cgroup parent, named after the run's prefix, so
cleanup and the start-up sweep of crashed runs find everything by name. The test process
itself reaches the cluster either by running the real `corral` command inside the client
namespace (`corral`, `corral_json`) or through `NamespaceLoop` threads (`api`, `http_get`,
`can_connect`, `call`), which use the typed async client from inside any host.

Cleanup always runs, in `__exit__` (also on a failed assertion, a pytest timeout or
Ctrl-C, which is ignored while it runs): every process of every namespace is killed, then
each agent's runc containers and cgroups are removed, then the namespaces and the temp dir.
A run killed outright leaves its resources behind; the next harness sweeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from corral.agent.cgroups import CgroupRoot, detect
from corral.client import ApiError, Client, ClientConfig, Unreachable
from corral.secretfile import write_private
from corral.server.auth import load_or_create_token
from corral.server.pki import load_or_create_pki
from corral.testing.netns import (
    NamespaceLoop,
    Proc,
    Switch,
    enter_argv,
    kill_netns,
    netns_pids,
    new_prefix,
    proc_argv,
    release,
    remove_agent_state,
    sweep,
)

__all__ = ["AgentSpec", "Host", "NetnsCluster"]

T = TypeVar("T")

SERVER_PORT = 7070
AGENT_HTTP_PORT = 7071
CLIENT = "cl"  # the client namespace's switch label
CLIENT_ADDRESS = "10.77.200.1"
# Errors a poll treats as "not yet": the cluster is still converging or a host is cut off.
_TRANSIENT = (OSError, TimeoutError, httpx.HTTPError, Unreachable, ApiError)


def host_address(index: int) -> str:
    if not 0 <= index < 250:
        raise ValueError(f"host index {index}: 0-249")
    return f"10.77.1.{index + 1}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpec:
    """How one agent host is started: node labels, offered resources, extra flags."""

    labels: dict[str, str] = field(default_factory=dict)
    cpu: str | None = None  # `--cpu`: cores offered (default: the machine's)
    memory: str | None = None  # `--memory`
    args: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class Host:
    index: int
    name: str  # `host<k>`; an agent's node name
    netns: str
    address: str
    data_dir: Path
    log: Path
    agent: AgentSpec | None  # None: host0, the server's
    cgroup_parent: str  # "" for the server's host
    proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return f"h{self.index}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NetnsCluster:
    """A server on host0 and one agent per `AgentSpec` on host1..N (an int `agents` gives
    N agents labelled `zone=a`, `zone=b`, ...). Use as a context manager; see the module
    docstring."""

    def __init__(self, agents: int | Sequence[AgentSpec] = 2, *, node_ttl: float = 3.0,
                 usage_interval: float = 1.0, temp_root: Path | None = None,
                 keep_files: bool = False, python: str = sys.executable,
                 server_args: Sequence[str] = (), log_level: str = "info",
                 start_timeout: float = 60.0) -> None:
        specs = ([AgentSpec(labels={"zone": chr(ord("a") + k % 26)}) for k in range(agents)]
                 if isinstance(agents, int) else list(agents))
        self.prefix = new_prefix()
        self.temp_root = temp_root or Path(tempfile.gettempdir())
        self.root = self.temp_root / self.prefix
        self.node_ttl = node_ttl
        self.usage_interval = usage_interval
        self.keep_files = keep_files
        self.python = python
        self.server_args = tuple(server_args)
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.switch = Switch(self.prefix)
        self.client_netns = f"{self.prefix}-{CLIENT}"
        self.hosts = [
            Host(index=k, name=f"host{k}", netns=f"{self.prefix}-h{k}",
                 address=host_address(k), data_dir=self.root / f"host{k}",
                 log=self.root / "logs" / f"host{k}.log",
                 agent=None if k == 0 else specs[k - 1],
                 cgroup_parent="" if k == 0 else f"{self.prefix}-h{k}")
            for k in range(len(specs) + 1)]
        self._token = ""
        self._ca_hash = ""
        self._loops: dict[str, NamespaceLoop] = {}
        self._closed = False

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        problems = self.close()
        # A leak is a failure of its own, but never hides the error already under way.
        if problems and exc_type is None:
            raise RuntimeError("cluster cleanup left things behind: " + "; ".join(problems))

    def start(self) -> None:
        try:
            sweep(self.temp_root)
            (self.root / "logs").mkdir(parents=True)
            self._token = load_or_create_token(self.server.data_dir)
            # The CA before the server, as the admin token: clients verify from the first
            # request, and agents pin it by hash.
            self._ca_hash = load_or_create_pki(self.server.data_dir / "pki",
                                               now=time.time()).ca_hash
            self._write_client_config()
            self.switch.create()
            for host in self.hosts:
                self.switch.attach(host.label, host.address)
            self.switch.attach(CLIENT, CLIENT_ADDRESS)
            self.start_server()
            for host in self.agents:
                self.start_agent(host.index, wait=False)
            self.wait_nodes_ready(timeout=self.start_timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> list[str]:
        """Tear everything down (idempotent); messages for what could not be removed."""
        if self._closed:
            return []
        self._closed = True
        # Released first: if this teardown is itself cut short (a pytest timeout), the next
        # harness of this process sweeps what is left.
        release(self.prefix)
        problems: list[str] = []
        with _sigint_ignored():
            for loop in self._loops.values():
                loop.close()
            self._loops.clear()
            problems += self.switch.kill_all()
            for host in self.agents:
                problems += remove_agent_state(host.cgroup_parent)
            for host in self.hosts:
                _reap(host)
            problems += self.switch.delete()
            if not self.keep_files:
                shutil.rmtree(self.root, ignore_errors=True)
        return problems

    # --- hosts --------------------------------------------------------------------------

    @property
    def server(self) -> Host:
        return self.hosts[0]

    @property
    def agents(self) -> list[Host]:
        return self.hosts[1:]

    @property
    def server_url(self) -> str:
        return f"https://{self.server.address}:{SERVER_PORT}"

    @property
    def token(self) -> str:
        return self._token

    @property
    def cacert(self) -> Path:
        """The cluster CA every client here verifies the server against."""
        return self.server.data_dir / "pki" / "ca.crt"

    @property
    def ca_hash(self) -> str:
        return self._ca_hash

    @property
    def join_token(self) -> str:
        """The join token the server made at its first start."""
        return (self.server.data_dir / "join-token").read_text().strip()

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of the `corral` command in the client namespace."""
        return {**self._base_env(), "CORRAL_ADDR": self.server_url,
                "CORRAL_TOKEN": self._token, "CORRAL_CACERT": str(self.cacert),
                "CORRAL_CONFIG_DIR": str(self.root / "config")}

    def host(self, which: int | str) -> Host:
        """A host by index or by name (`host2`, which is also its node's name)."""
        for host in self.hosts:
            if which in (host.index, host.name):
                return host
        raise KeyError(f"no host {which!r} (hosts: {[h.name for h in self.hosts]})")

    def start_server(self) -> None:
        host = self.server
        self._spawn(host, ["server", "--host", host.address, "--port", str(SERVER_PORT),
                           "--data-dir", str(host.data_dir), "--node-ttl", f"{self.node_ttl:g}",
                           "--log-level", self.log_level, *self.server_args])
        self.wait_for(lambda: self._alive(host) and self.server_healthy(),
                      self.start_timeout, "the server to answer /healthz")

    def start_agent(self, which: int | str, *, wait: bool = True) -> None:
        host = self.host(which)
        spec = host.agent
        if spec is None:
            raise ValueError(f"{host.name} runs the server, not an agent")
        host.data_dir.mkdir(parents=True, exist_ok=True)
        # Joined once; a restarted agent uses its identity in <data>/agent/identity.
        token_file = host.data_dir / "join-token"
        write_private(token_file, self.join_token + "\n")
        argv = ["agent", "--join", self.server_url, "--token-file", str(token_file),
                "--ca-cert-hash", self._ca_hash,
                "--data-dir", str(host.data_dir / "agent"), "--name", host.name,
                "--address", host.address, "--http-port", str(AGENT_HTTP_PORT),
                "--cgroup-parent", host.cgroup_parent,
                "--usage-interval", f"{self.usage_interval:g}", "--log-level", self.log_level]
        for key, value in sorted(spec.labels.items()):
            argv += ["--label", f"{key}={value}"]
        if spec.cpu is not None:
            argv += ["--cpu", spec.cpu]
        if spec.memory is not None:
            argv += ["--memory", spec.memory]
        self._spawn(host, [*argv, *spec.args])
        if wait:
            self.wait_nodes_ready([host.name], timeout=self.start_timeout)

    def stop_agent(self, which: int | str, *, graceful: bool = True,
                   timeout: float = 30.0) -> None:
        """Stop the agent process (SIGTERM, or SIGKILL if not `graceful`); its instances
        keep running for the next agent to adopt."""
        host = self.host(which)
        if host.agent is None:
            raise ValueError(f"{host.name} runs the server, not an agent")
        _stop(host, graceful=graceful, timeout=timeout)

    def restart_agent(self, which: int | str, *, graceful: bool = True) -> None:
        self.stop_agent(which, graceful=graceful)
        self.start_agent(which)

    def kill_server(self) -> None:
        """`kill -9` the server process only."""
        _stop(self.server, graceful=False)

    def restart_server(self, *, graceful: bool = True) -> None:
        _stop(self.server, graceful=graceful)
        self.start_server()

    def kill(self, which: int | str) -> None:
        """The host dies: every process in its namespace is killed, and its instances with
        them (also those in a network namespace of their own: by cgroup). Its disk (data
        dir) stays; `start_agent` boots it again."""
        host = self.host(which)
        left = kill_netns(host.netns)
        problems = remove_agent_state(host.cgroup_parent) if host.cgroup_parent else []
        _reap(host)
        if left or problems:
            raise RuntimeError(f"{host.name} did not die: left {left}; {problems}")

    def partition(self, which: int | str) -> None:
        """Cut the host off the network (its switch port down): packets to and from it
        are dropped, nothing is refused, as when a cable is pulled."""
        self.switch.set_link(self.host(which).label, up=False)

    def heal(self, which: int | str) -> None:
        self.switch.set_link(self.host(which).label, up=True)

    def processes(self, which: int | str) -> list[Proc]:
        """Every process on the host: in its network namespace, or in its agent's cgroups
        (instances with a network of their own), sorted by pid."""
        host = self.host(which)
        pids = set(netns_pids(host.netns))
        cgroups = detect()
        if host.cgroup_parent and isinstance(cgroups, CgroupRoot):
            for name in cgroups.list_instance_groups(host.cgroup_parent):
                with contextlib.suppress(OSError):
                    pids.update(cgroups.group(host.cgroup_parent, name).pids())
        found = []
        for pid in sorted(pids):
            argv = proc_argv(pid)
            if argv:  # gone meanwhile, or a zombie (no command line)
                found.append(Proc(pid, argv))
        return found

    # --- reaching the cluster from inside -----------------------------------------------

    def run(self, where: int | str | None, argv: Sequence[str], *, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host's namespace (None: the client's)."""
        result = subprocess.run([*enter_argv(self._netns(where)), *argv], env=self.client_env,
                                capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode} inside "
                                 f"{self._netns(where)}:\n{result.stdout}\n{result.stderr}")
        return result

    def corral(self, *args: str, where: int | str | None = None, check: bool = False,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The real `corral` command, from the client namespace unless told otherwise."""
        result = self.run(where, [self.python, "-m", "corral.cli.main", *args],
                          timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}\n{self.logs()}")
        return result

    def corral_json(self, *args: str, where: int | str | None = None) -> Any:
        return json.loads(self.corral(*args, "--json", where=where, check=True).stdout)

    def call(self, coro: Coroutine[Any, Any, T], *, where: int | str | None = None,
             timeout: float = 30.0) -> T:
        """Run a coroutine inside a host's namespace (None: the client's)."""
        netns = self._netns(where)
        loop = self._loops.get(netns)
        if loop is None:
            loop = self._loops[netns] = NamespaceLoop(netns)
        return loop.run(coro, timeout)

    def api(self, fn: Callable[[Client], Awaitable[T]], *, where: int | str | None = None,
            timeout: float = 30.0) -> T:
        """`fn(client)` with a typed client of the server, from inside a namespace."""
        async def go() -> T:
            async with Client(ClientConfig(addr=self.server_url, token=self._token,
                                           cacert=str(self.cacert)),
                              timeout=timeout) as client:
                return await fn(client)
        return self.call(go(), where=where, timeout=timeout + 1)

    def http_get(self, url: str, *, where: int | str | None = None,
                 timeout: float = 5.0) -> httpx.Response:
        """GET `url` from inside a namespace; the response is read in full."""
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(timeout=timeout) as http:
                return await http.get(url)
        return self.call(go(), where=where, timeout=timeout + 1)

    def can_connect(self, address: str, port: int, *, where: int | str | None = None,
                    timeout: float = 1.0) -> bool:
        """Whether a TCP connection to `address:port` opens from inside a namespace."""
        async def go() -> bool:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port),
                                                   timeout)
            except (OSError, TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return self.call(go(), where=where, timeout=timeout + 5)

    def server_healthy(self, *, where: int | str | None = None) -> bool:
        async def go() -> bool:
            async with Client(ClientConfig(addr=self.server_url, token=self._token,
                                           cacert=str(self.cacert)), timeout=2) as client:
                return await client.healthy()
        try:
            return self.call(go(), where=where, timeout=5)
        except TimeoutError:
            return False

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The server's nodes by name."""
        return {n["name"]: n for n in self.api(lambda c: c.list_nodes())}

    def wait_nodes_ready(self, names: Sequence[str] | None = None, *,
                         timeout: float = 60.0) -> None:
        """Until every named agent (default: all) is `ready` at its own address."""
        wanted = [self.host(n) for n in names] if names is not None else self.agents

        def ready() -> bool:
            for host in wanted:
                self._alive(host)
            nodes = self.nodes()
            return all(nodes.get(h.name, {}).get("state") == "ready" and
                       nodes[h.name]["address"] == h.address for h in wanted)
        self.wait_for(ready, timeout, f"nodes {[h.name for h in wanted]} ready")

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60.0,
                 what: str = "condition", interval: float = 0.2) -> T:
        """Poll `predicate` until it returns something true, and return that; transient
        errors (unreachable, timeouts, API errors) count as "not yet". On timeout an
        AssertionError with the last value and the logs' tails."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
                last = value
            except _TRANSIENT as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"last: {last!r}\n{self.logs()}")
            time.sleep(interval)

    def logs(self, tail: int = 3000) -> str:
        out = []
        for host in self.hosts:
            with contextlib.suppress(OSError):
                text = host.log.read_text(errors="replace")
                out.append(f"--- {host.name} ({host.log}) ---\n{text[-tail:]}")
        return "\n".join(out)

    def describe(self) -> dict[str, Any]:
        """Where everything is, for people (`corral dev cluster`) and reports."""
        return {
            "server": self.server_url,
            "client_netns": self.client_netns,
            "config_dir": str(self.root / "config"),
            "root": str(self.root),
            "hosts": [{"name": h.name, "netns": h.netns, "address": h.address,
                       "role": "agent" if h.agent else "server", "log": str(h.log),
                       "labels": dict(h.agent.labels) if h.agent else {},
                       "cgroup_parent": h.cgroup_parent} for h in self.hosts],
        }

    # --- internals ----------------------------------------------------------------------

    def _netns(self, where: int | str | None) -> str:
        if where is None or where == CLIENT:
            return self.client_netns
        return self.host(where).netns

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, host: Host, args: list[str]) -> None:
        if host.proc is not None and host.proc.poll() is None:
            raise RuntimeError(f"{host.name} already runs pid {host.proc.pid}")
        host.log.parent.mkdir(parents=True, exist_ok=True)
        with open(host.log, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
            log.flush()
            # A session of its own: Ctrl-C in a terminal reaches only this process, which
            # then tears the hosts down in order.
            host.proc = subprocess.Popen(
                [*enter_argv(host.netns), self.python, "-m", "corral.cli.main", *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._base_env(), start_new_session=True)

    def _alive(self, host: Host) -> bool:
        """True while `host`'s process runs; raises with its log when it has exited."""
        if host.proc is not None and host.proc.poll() is not None:
            text = host.log.read_text(errors="replace")[-3000:] if host.log.exists() else ""
            raise RuntimeError(f"{host.name}'s process exited {host.proc.returncode}:\n{text}")
        return True

    def _write_client_config(self) -> None:
        """The `CORRAL_CONFIG_DIR` file the CLI reads, for people using the cluster."""
        folder = self.root / "config"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder / "corral.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"CORRAL_ADDR={self.server_url}\nCORRAL_TOKEN={self._token}\n"
                    f"CORRAL_CACERT={self.cacert}\n")


def _stop(host: Host, *, graceful: bool, timeout: float = 30.0) -> None:
    proc = host.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _reap(host: Host) -> None:
    """Collect the exit status of a process already killed (no zombie left behind)."""
    if host.proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            host.proc.wait(timeout=10)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C (main thread only): a second one during teardown would leave half a
    cluster behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
