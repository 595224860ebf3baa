"""`corral server [--data-dir D] [--host H] [--port P] [--store URL]`: the API server and
its controllers, in the foreground."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from corral.cli.output import EXIT_USAGE, die
from corral.logconfig import setup_logging
from corral.model.units import parse_size
from corral.server.context import ServerConfig
from corral.server.main import serve

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
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run the API server (and its controllers)."""
    setup_logging("server", log_level)
    try:
        max_bytes = parse_size(artifact_max_size)
    except ValueError as exc:
        die(f"--artifact-max-size: {exc}", EXIT_USAGE)
    config = ServerConfig(data_dir=(data_dir or default_data_dir()).resolve(), host=host,
                          port=port, store_url=store, node_ttl=node_ttl,
                          artifact_max_bytes=max_bytes)
    asyncio.run(serve(config))
