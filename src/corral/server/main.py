"""`corral server`: open the store, build the app, serve HTTP until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

from corral.clock import SystemClock
from corral.server.app import create_app
from corral.server.auth import load_or_create_token
from corral.server.context import ServerConfig, ServerContext
from corral.server.records import Records
from corral.server.watchhub import WatchHub
from corral.serving import bind_socket, make_server
from corral.store import open_store

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(config: ServerConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not config.token:
        config = dataclasses.replace(config, token=load_or_create_token(config.data_dir))
    # Bind before opening the store so a port conflict fails fast with nothing touched.
    sock = bind_socket(config.host, config.port)
    store_url = config.store_url or f"sqlite:///{(config.data_dir / 'corral.db').resolve()}"
    store = await open_store(store_url)
    clock = SystemClock()
    ctx = ServerContext(config=config, store=store, records=Records(store, clock),
                        hub=WatchHub(store), clock=clock)
    server = make_server(create_app(ctx), host=config.host, port=config.port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("corral server listening on %s:%d", config.host, sock.getsockname()[1])
    try:
        await server.serve(sockets=[sock])
    finally:
        await store.close()
        sock.close()
