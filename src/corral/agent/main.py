"""`corral agent`: wire the agent together and run it until SIGTERM/SIGINT.

Order matters: stale cgroups from an earlier agent are cleaned before anything starts (no
instance is left running unsupervised), the agent's HTTP endpoint is bound before
registering (its URL is part of the node record), then the loops run.

A joined agent (`identity` set; see `agent/identity.py`) talks to the server with its node
credential over TLS verified against the cluster CA, and serves its own API over HTTPS
with its node certificate. An agent run with the admin token (`--server`, no join) serves
its API over plain HTTP, as before joining existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from dataclasses import dataclass

from corral.agent.agent import Agent, AgentConfig
from corral.agent.api import create_agent_app
from corral.agent.drivers import make_drivers
from corral.agent.identity import NodeIdentity
from corral.agent.metrics import AgentMetrics
from corral.client import Client, ClientConfig
from corral.clock import SystemClock
from corral.serving import bind_socket, make_server

__all__ = ["AgentOptions", "serve_agent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentOptions:
    config: AgentConfig
    server: str
    token: str  # the node credential when joined, else the admin token
    http_host: str
    http_port: int
    cgroup_parent: str
    stop_instances_on_exit: bool
    usage_interval: float = 10.0
    cacert: str = ""  # the CA the server's certificate must chain to ("": system CAs)
    identity: NodeIdentity | None = None


async def serve_agent(opts: AgentOptions) -> None:
    registry = make_drivers(cgroup_parent=opts.cgroup_parent)
    sock = bind_socket(opts.http_host, opts.http_port)
    identity = opts.identity
    scheme = "https" if identity else "http"
    agent_url = f"{scheme}://{opts.config.address}:{sock.getsockname()[1]}"
    config = dataclasses.replace(opts.config, agent_url=agent_url)
    client = Client(ClientConfig(addr=opts.server, token=opts.token, cacert=opts.cacert))
    metrics = AgentMetrics()
    agent = Agent(config=config, client=client, drivers=registry.usable,
                  default_driver=registry.default, driver_status=registry.status,
                  clock=SystemClock(), all_drivers=registry.built,
                  observe_start=metrics.observe_start)
    # Adopt what an earlier agent left running, then kill every other instance group: no
    # instance is ever left running unsupervised.
    recovered = await agent.recover_local()
    stale = await registry.cleanup_stale(keep=recovered)
    log.info("start-up: %d instances adopted, %d stale groups removed", len(recovered),
             len(stale))
    http = make_server(
        create_agent_app(token=identity.agent_token if identity else opts.token,
                         log_dir_of=lambda iid: agent.dirs(iid).logs, control=agent,
                         metrics=lambda: metrics.render(agent)),
        certfile=identity.cert_path if identity else None,
        keyfile=identity.key_path if identity else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for driver, why in sorted(registry.status.items()):
        log.info("driver %s: %s", driver, why or "usable", extra={"driver": driver})
    http_task = asyncio.create_task(http.serve(sockets=[sock]), name="agent-http")
    await agent.register()
    tasks = [asyncio.create_task(c, name=n) for n, c in (
        ("heartbeat", agent.heartbeat_loop()), ("watch", agent.watch_loop()),
        ("gc", agent.gc_loop()), ("usage", agent.usage_loop(opts.usage_interval)),
        ("disconnect", agent.disconnect_loop()))]
    await stop.wait()
    log.info("agent stopping", extra={"stop_instances": opts.stop_instances_on_exit})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await agent.shutdown(stop_instances=opts.stop_instances_on_exit)
    if opts.stop_instances_on_exit and not agent.runners_alive():
        await registry.remove_parent()
    http.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(http_task, 5)
    await client.close()
    sock.close()
