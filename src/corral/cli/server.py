"""`corral server [--data-dir D] [--host H] [--port P] [--store URL]`: the API server and
its controllers, in the foreground, over HTTPS with a certificate from the cluster CA it
makes at its first start (`server/pki.py`, `server/main.py`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer
import uvloop

from corral.cli.output import EXIT_FAILED, EXIT_USAGE, die
from corral.gc_tuning import tune_for_large_heaps
from corral.logconfig import setup_logging
from corral.model.units import parse_duration, parse_size
from corral.server.context import ServerConfig
from corral.server.main import serve
from corral.server.pki import PkiError

__all__ = ["default_data_dir", "server"]


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/corral")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


def server(
    data_dir: Path = typer.Option(None, "--data-dir", help="State: store, artifacts, token."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7070, "--port"),
    store: str = typer.Option("", "--store", help="memory:// or sqlite:///path (default: "
                                                  "sqlite in the data dir)"),
    node_ttl: float = typer.Option(10.0, "--node-ttl", help="Seconds without heartbeat "
                                                           "before a node is down."),
    artifact_max_size: str = typer.Option("512MiB", "--artifact-max-size",
                                          help="Largest artifact accepted (unpacked)."),
    advertise_address: list[str] = typer.Option(
        [], "--advertise-address", help="Another IP or DNS name clients and agents reach "
        "the server at (repeatable; goes in its certificate, the first one in the join "
        "command printed)."),
    insecure_http: bool = typer.Option(
        False, "--insecure-http", help="Serve plain HTTP: only behind a TLS-terminating "
        "proxy or on a closed test network. Tokens then cross the network in clear and "
        "agents cannot join (they need --server and the admin token)."),
    event_retention_count: int = typer.Option(
        100_000, "--event-retention-count", min=0,
        help="Events kept for replay (the newest); 0: no count limit."),
    event_retention_age: str = typer.Option(
        "24h", "--event-retention-age",
        help="How long an event is kept for replay (e.g. 30m, 24h, 7d); 0: no age limit."),
    agent_path: bool = typer.Option(
        True, "--agent-path/--no-agent-path",
        help="Serve the agents' long polls, status batches and heartbeats on a lean path "
        "in front of the web framework (the same answers; --no-agent-path: through the "
        "framework like every other request, for comparison)."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the API server (and its controllers)."""
    setup_logging("server", log_level)
    try:
        max_bytes = parse_size(artifact_max_size)
    except ValueError as exc:
        die(f"--artifact-max-size: {exc}", EXIT_USAGE)
    try:
        retention_age = 0.0 if event_retention_age.strip() == "0" else \
            parse_duration(event_retention_age)
    except ValueError as exc:
        die(f"--event-retention-age: {exc}", EXIT_USAGE)
    config = ServerConfig(data_dir=(data_dir or default_data_dir()).resolve(), host=host,
                          port=port, store_url=store, node_ttl=node_ttl,
                          artifact_max_bytes=max_bytes, insecure_http=insecure_http,
                          advertise_addresses=tuple(advertise_address),
                          event_retention_count=event_retention_count,
                          event_retention_age=retention_age, agent_path=agent_path)
    try:
        # uvloop (libuv) runs the server's event loop, and uvicorn parses HTTP with
        # httptools when it is installed: the loop and the parser are most of a request's
        # cost when thousands of agents long-poll and report (docs/benchmarks.md, Scale).
        # The collector is tuned for a heap of millions of records (gc_tuning.py).
        tune_for_large_heaps()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config))
    except PkiError as exc:
        die(f"cluster CA: {exc}", EXIT_FAILED)
