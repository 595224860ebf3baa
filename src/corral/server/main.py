"""`corral server`: open the store and the cluster CA, build the app, serve HTTPS until
SIGTERM/SIGINT.

At the first start it makes the cluster CA (`server/pki.py`) and one join token, which it
prints (stdout, never the log) with the command an agent joins with, and keeps in
`<data>/join-token` (0600) for `corral up` and scripts on this machine. Later starts print
only the CA's hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
import time

from corral.clock import SystemClock
from corral.model.token import JoinToken, TokenState
from corral.secretfile import write_private
from corral.server import keys
from corral.server.api.tokens import DEFAULT_TTL, create_token
from corral.server.app import create_app
from corral.server.auth import load_or_create_token, parse_join_token
from corral.server.context import ServerConfig, ServerContext
from corral.server.metrics import ServerMetrics
from corral.server.pki import ensure_server_cert, load_or_create_pki, server_sans
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.serving import bind_socket, make_server
from corral.store import open_store

__all__ = ["JOIN_TOKEN_FILE", "join_url", "serve"]

log = logging.getLogger(__name__)

JOIN_TOKEN_FILE = "join-token"


def join_url(config: ServerConfig, port: int) -> str:
    """The URL agents join at: the first `--advertise-address`, else `--host` (for
    0.0.0.0, the first non-loopback address in the certificate)."""
    host = config.advertise_addresses[0] if config.advertise_addresses else config.host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"https://{host}:{port}"
    if ip.is_unspecified:
        for name in server_sans(config.host):
            try:
                candidate = ipaddress.ip_address(name)
            except ValueError:
                continue
            if not candidate.is_loopback and candidate.version == 4:
                ip = candidate
                break
    return f"https://[{ip}]:{port}" if ip.version == 6 else f"https://{ip}:{port}"


async def _announce(ctx: ServerContext, url: str) -> None:
    """Make the first join token if there is none on file (or the store forgot it)."""
    assert ctx.pki is not None
    path = ctx.config.data_dir / JOIN_TOKEN_FILE
    parsed = parse_join_token(path.read_text()) if path.exists() else None
    kept = await ctx.records.get(JoinToken, keys.token(parsed[0])) if parsed else None
    print(f"cluster CA {ctx.pki.ca_cert_path}, hash {ctx.pki.ca_hash}", flush=True)
    if kept is not None:
        if kept.record.state(ctx.clock.now()) != TokenState.VALID:
            print("make a join token for new nodes with `corral token create`", flush=True)
        return
    token, text = await create_token(ctx, ttl=DEFAULT_TTL,
                                     description="made at the server's first start")
    write_private(path, text + "\n")
    until = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(token.expires_at or 0))
    print(f"join token {token.id} (valid until {until}; also in {path}). On each new "
          f"machine:\n  corral agent --join {url} --token {text} "
          f"--ca-cert-hash {ctx.pki.ca_hash}", flush=True)


async def serve(config: ServerConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not config.token:
        config = dataclasses.replace(config, token=load_or_create_token(config.data_dir))
    # Bind before opening the store so a port conflict fails fast with nothing touched.
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    clock = SystemClock()
    pki = load_or_create_pki(config.pki_dir, now=clock.now())
    if not config.insecure_http and ensure_server_cert(
            pki, sans=server_sans(config.host, config.advertise_addresses), now=clock.now()):
        log.info("server certificate issued", extra={"sans": list(server_sans(
            config.host, config.advertise_addresses))})
    store_url = config.store_url or f"sqlite:///{(config.data_dir / 'corral.db').resolve()}"
    metrics = ServerMetrics()
    store = metrics.measure_store(await open_store(store_url))
    ctx = ServerContext(config=config, store=store, records=Records(store, clock),
                        hub=WatchHub(store), clock=clock, pki=pki, metrics=metrics)
    if config.insecure_http:
        log.warning("serving plain HTTP (--insecure-http): tokens cross the network in "
                    "clear, and agents cannot join")
    else:
        await _announce(ctx, join_url(config, port))
    server = make_server(
        create_app(ctx, agent_path=config.agent_path), host=config.host, port=config.port,
        certfile=None if config.insecure_http else pki.server_cert_path,
        keyfile=None if config.insecure_http else pki.server_key_path)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.should_exit = True
        ctx.records.index.release_waiters()  # agents' long polls answer and end now

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("corral server listening on %s://%s:%d",
             "http" if config.insecure_http else "https", config.host, port)
    try:
        await server.serve(sockets=[sock])
    finally:
        await store.close()
        sock.close()
