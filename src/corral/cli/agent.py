"""`corral agent --server URL --token T [--name N] [--label k=v ...]`: run a node agent in
the foreground. (DESIGN.md's `--join` is accepted as another name for `--server`.)"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import typer

from corral.agent.agent import AgentConfig
from corral.agent.fingerprint import (
    detect_address,
    fingerprint_attributes,
    host_capacity,
    listening_ports,
)
from corral.agent.main import AgentOptions, serve_agent
from corral.cli.output import EXIT_USAGE, die
from corral.logconfig import setup_logging
from corral.model.units import parse_cpu, parse_size

__all__ = ["agent"]


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            die(f"--label expects key=value, got {v!r}", EXIT_USAGE)
        out[k] = val
    return out


def agent(
    server: str = typer.Option(None, "--server", "--join", help="Server URL."),
    token: str = typer.Option(None, "--token", envvar="CORRAL_TOKEN", show_envvar=False),
    token_file: Path = typer.Option(None, "--token-file", help="Read the token from a file."),
    data_dir: Path = typer.Option(Path("/var/lib/corral-agent"), "--data-dir"),
    name: str = typer.Option(None, "--name", help="Node name (default: hostname)."),
    address: str = typer.Option(None, "--address", help="IP instances are reached at."),
    label: list[str] = typer.Option([], "--label", help="key=value, repeatable."),
    cpu: str = typer.Option(None, "--cpu", help="Cores to offer (default: all)."),
    memory: str = typer.Option(None, "--memory", help="Memory to offer (default: all)."),
    port_range: str = typer.Option("20000-32000", "--port-range"),
    http_port: int = typer.Option(0, "--http-port", help="Agent API port (0: any free)."),
    cgroup_parent: str = typer.Option("corral", "--cgroup-parent"),
    stop_instances_on_exit: bool = typer.Option(
        False, "--stop-instances-on-exit/--keep-instances",
        help="Stop instances when the agent exits (default: keep them; the next agent "
             "process adopts them)."),
    usage_interval: float = typer.Option(10.0, "--usage-interval",
                                         help="Seconds between usage reports."),
    artifact_max_size: str = typer.Option("512MiB", "--artifact-max-size",
                                          help="Largest artifact or rootfs unpacked here."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run a node agent."""
    setup_logging("agent", log_level)
    if not server:
        server = os.environ.get("CORRAL_ADDR") or die("--server URL is required", EXIT_USAGE)
    if token_file is not None:
        token = token_file.read_text().strip()
    if not token:
        die("--token or --token-file is required", EXIT_USAGE)
    try:
        lo, hi = (int(p) for p in port_range.split("-", 1))
        host_cpu, host_mem = host_capacity()
        offer_cpu = parse_cpu(cpu) if cpu else host_cpu
        offer_mem = parse_size(memory) if memory else host_mem
        artifact_max = parse_size(artifact_max_size)
    except ValueError as exc:
        die(str(exc), EXIT_USAGE)
    addr = address or detect_address()
    config = AgentConfig(
        name=name or socket.gethostname().split(".")[0].lower(), address=addr,
        data_dir=data_dir.resolve(), cpu=offer_cpu, memory=offer_mem, labels=_labels(label),
        port_range=(lo, hi), reserved_ports=tuple(listening_ports(lo, hi)),
        attributes=fingerprint_attributes(), artifact_max_bytes=artifact_max)
    asyncio.run(serve_agent(AgentOptions(
        config=config, server=server.rstrip("/"), token=token,
        http_host="127.0.0.1" if addr.startswith("127.") else "0.0.0.0",
        http_port=http_port, cgroup_parent=cgroup_parent,
        stop_instances_on_exit=stop_instances_on_exit, usage_interval=usage_interval)))
