"""What every API handler and controller of one server shares: configuration, the typed
store access, the watch hub, the clock, the id source and the cluster CA.

Built once in `server/app.py`; handlers reach it through `request.app.state.ctx`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.clock import Clock
from corral.server.eventfeed import EventFeed
from corral.server.metrics import ServerMetrics
from corral.server.pki import ClusterPki
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.store.base import Store

__all__ = ["InstanceUsage", "ServerConfig", "ServerContext", "heartbeat_ttl", "random_id"]


def random_id() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    data_dir: Path
    store_url: str = ""  # default: sqlite in data_dir
    host: str = "127.0.0.1"
    port: int = 7070
    token: str = ""  # admin token; read from data_dir/admin-token when empty
    # Plain HTTP instead of TLS: only behind a TLS-terminating proxy or on a closed test
    # network. Agents then cannot join (a join needs a server they can authenticate);
    # they run with the admin token (`corral agent --server`).
    insecure_http: bool = False
    advertise_addresses: tuple[str, ...] = ()  # more names/IPs for the server certificate
    node_ttl: float = 10.0  # the least time without heartbeats after which a node is down
    # The TTL grows with the cluster so the server never handles more heartbeats than this
    # per second (Nomad's max_heartbeats_per_second): ttl = max(node_ttl, nodes / rate).
    max_heartbeats_per_second: float = 50.0
    artifact_max_bytes: int = 512 * 1024 * 1024
    terminal_retention: float = 3600.0  # keep stopped/lost instances this long for `ps -a`
    event_retention_count: int = 100_000  # events kept (the newest); 0: no count limit
    event_retention_age: float = 86_400.0  # seconds an event is kept; 0: no age limit
    event_follower_buffer: int = 4096  # events queued per follower before it falls behind
    event_heartbeat: float = 15.0  # seconds of quiet after which a follower gets a keepalive
    deployment_retention: int = 50  # deployments kept per service (newest)
    history_retention: int = 100_000  # store revisions kept for watches to replay
    # The agents' long poll, status batch and heartbeat served by the lean path
    # (`server/api/agent_path.py`); False: by FastAPI like every other request.
    agent_path: bool = True

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceUsage:
    """The latest usage an agent measured for one instance: a gauge kept in memory only
    (like Kubernetes' metrics-server), never in the store."""

    node: str
    cpu: float | None  # cores, averaged since the agent's previous sample
    memory: int  # bytes
    pids: int
    time: float


def heartbeat_ttl(config: ServerConfig, nodes: int) -> float:
    """How long a node may go without a heartbeat before it is down; agents heartbeat three
    times per TTL, so the server sees about `nodes * 3 / ttl` heartbeats per second."""
    return max(config.node_ttl, 3 * nodes / config.max_heartbeats_per_second)


@dataclass(slots=True, kw_only=True)
class ServerContext:
    config: ServerConfig
    store: Store
    records: Records
    hub: WatchHub
    clock: Clock
    new_id: Callable[[], str] = field(default=random_id)
    usage: dict[str, InstanceUsage] = field(default_factory=dict)
    pki: ClusterPki | None = None  # None: joining is off (a harness without a CA)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)  # server/metrics.py
    events: EventFeed = field(init=False)  # the event stream's fan-out (server/eventfeed.py)
    # What a controller remembers between its passes (one entry per controller name), for
    # the ones that skip what has not changed since (`controllers/applications.py`).
    controller_state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = EventFeed(self.store, buffer=self.config.event_follower_buffer)
