"""`corral agent`: run a node agent in the foreground.

Two ways to reach the server:

- `--join https://HOST:PORT --token ID.SECRET --ca-cert-hash sha256:...` (or `--ca-cert
  FILE`): join once with a join token, then run with the node identity kept in
  `<data-dir>/identity` (later starts need neither token nor pin). See
  `agent/identity.py`.
- `--server URL --token ADMIN_TOKEN [--ca-cert FILE]`: the operator's way, with the admin
  token (no identity of its own: it may act for any node). Kept for `--insecure-http`
  servers and setups that predate joining.
"""

from __future__ import annotations

import asyncio
import logging
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
from corral.agent.identity import (
    JoinError,
    JoinUnreachable,
    NodeIdentity,
    check_ca,
    fetch_pinned_ca,
    join,
    load_identity,
)
from corral.agent.main import AgentOptions, serve_agent
from corral.cli.output import EXIT_FAILED, EXIT_USAGE, die
from corral.logconfig import setup_logging
from corral.model.units import parse_cpu, parse_duration, parse_size
from corral.server.auth import parse_join_token

__all__ = ["agent"]

log = logging.getLogger(__name__)


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            die(f"--label expects key=value, got {v!r}", EXIT_USAGE)
        out[k] = val
    return out


async def _join_once(url: str, token: str, name: str, folder: Path, ca_hash: str | None,
                     ca_cert: Path | None) -> NodeIdentity:
    """Join, waiting for a server that does not answer yet (it may be starting); a refusal
    is final."""
    delay = 0.2
    while True:
        try:
            if ca_cert is not None:
                pem = ca_cert.read_bytes()
                check_ca(pem, ca_hash)
            else:
                pem = await fetch_pinned_ca(url, ca_hash or "")
            return await join(server=url, token=token, name=name, folder=folder, ca_pem=pem)
        except JoinUnreachable as exc:
            log.warning("cannot join yet: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _read_token(token: str | None, token_file: Path | None) -> str:
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            die(f"--token-file: {exc}", EXIT_USAGE)
    return (token or "").strip()


def agent(
    join_url: str = typer.Option(None, "--join", help="Join the cluster at this https:// "
                                 "URL (with a join token the first time)."),
    server: str = typer.Option(None, "--server", help="Server URL, with the admin token "
                               "(no join)."),
    token: str = typer.Option(None, "--token", help="Join token (--join) or admin token "
                              "(--server; default $CORRAL_TOKEN)."),
    token_file: Path = typer.Option(None, "--token-file", help="Read the token from a file."),
    ca_cert_hash: str = typer.Option(None, "--ca-cert-hash", help="sha256:<hex> of the "
                                     "cluster CA's public key (printed by `corral server` "
                                     "and `corral token create`)."),
    ca_cert: Path = typer.Option(None, "--ca-cert", help="The cluster CA's PEM file "
                                 "(instead of --ca-cert-hash; with --server: the CA to "
                                 "verify the server against)."),
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
    log_retention: str = typer.Option("1h", "--log-retention",
                                      help="How long the logs (and task dir) of an ended "
                                           "instance are kept."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run a node agent."""
    setup_logging("agent", log_level)
    if join_url and server:
        die("give --join (join with a join token) or --server (admin token), not both",
            EXIT_USAGE)
    try:
        lo, hi = (int(p) for p in port_range.split("-", 1))
        host_cpu, host_mem = host_capacity()
        offer_cpu = parse_cpu(cpu) if cpu else host_cpu
        offer_mem = parse_size(memory) if memory else host_mem
        artifact_max = parse_size(artifact_max_size)
        retention = parse_duration(log_retention)
    except ValueError as exc:
        die(str(exc), EXIT_USAGE)
    data = data_dir.resolve()
    identity = None
    if join_url:
        try:
            identity = load_identity(data / "identity")
        except JoinError as exc:
            die(str(exc), EXIT_FAILED)
    node_name = name or (identity.name if identity else
                         socket.gethostname().split(".")[0].lower())
    if identity is not None and identity.name != node_name:
        die(f"{data / 'identity'} holds the identity of node {identity.name}, not "
            f"{node_name}: drop --name, or use another --data-dir", EXIT_USAGE)
    if join_url:
        url = join_url.rstrip("/")
        if identity is None:
            if not url.startswith("https://"):
                die("--join needs an https:// URL: the agent must verify the server before "
                    "it sends its join token", EXIT_USAGE)
            secret = _read_token(token, token_file)
            if parse_join_token(secret) is None:
                die("--join needs a join token (<id>.<secret>, from `corral token create` "
                    "or the output of `corral server`) in --token or --token-file",
                    EXIT_USAGE)
            if not ca_cert_hash and ca_cert is None:
                die("--join needs to know the cluster CA before sending the token: pass "
                    "--ca-cert-hash sha256:... (printed by `corral server` and `corral "
                    "token create`) or --ca-cert FILE (the server's <data>/pki/ca.crt)",
                    EXIT_USAGE)
            try:
                identity = asyncio.run(_join_once(url, secret, node_name, data / "identity",
                                                  ca_cert_hash, ca_cert))
            except (JoinError, OSError) as exc:
                die(f"cannot join: {exc}", EXIT_FAILED)
            log.info("joined the cluster as node %s", identity.name)
        server_url, credential, cacert = url, identity.credential, str(identity.ca_path)
    else:
        server_url = (server or os.environ.get("CORRAL_ADDR") or
                      die("--join URL (or --server URL with the admin token) is required",
                          EXIT_USAGE)).rstrip("/")
        credential = _read_token(token or os.environ.get("CORRAL_TOKEN"), token_file)
        if not credential:
            die("--server needs the admin token: --token or --token-file", EXIT_USAGE)
        cacert = str(ca_cert) if ca_cert else os.environ.get("CORRAL_CACERT", "")
    addr = address or detect_address()
    config = AgentConfig(
        name=node_name, address=addr, data_dir=data, cpu=offer_cpu, memory=offer_mem,
        labels=_labels(label), port_range=(lo, hi),
        reserved_ports=tuple(listening_ports(lo, hi)), attributes=fingerprint_attributes(),
        artifact_max_bytes=artifact_max, log_retention=retention)
    asyncio.run(serve_agent(AgentOptions(
        config=config, server=server_url, token=credential, cacert=cacert, identity=identity,
        http_host="127.0.0.1" if addr.startswith("127.") else "0.0.0.0",
        http_port=http_port, cgroup_parent=cgroup_parent,
        stop_instances_on_exit=stop_instances_on_exit, usage_interval=usage_interval)))
