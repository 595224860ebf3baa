"""Running an ASGI app inside our own event loop, for the server and the agent alike.

uvicorn's `Server.serve` installs its own signal handlers and re-raises the signal after
shutting down, which would kill the process before the agent or server finished its own
shutdown. `EmbeddedServer` leaves signals to the caller, who sets `should_exit`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Generator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

__all__ = ["EmbeddedServer", "bind_socket", "make_server"]


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _tls_floor(_: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def make_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                certfile: Path | None = None, keyfile: Path | None = None) -> EmbeddedServer:
    """With `certfile`/`keyfile`: HTTPS only (TLS 1.2 or newer); a plain-HTTP request then
    fails its handshake."""
    tls = certfile is not None
    return EmbeddedServer(uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False,
        timeout_graceful_shutdown=2, lifespan="on",
        # `corral exec`'s websockets; the sans-I/O protocol of the `websockets` package
        # (uvicorn's default picks its deprecated legacy one).
        ws="websockets-sansio",
        ssl_certfile=str(certfile) if tls else None,
        ssl_keyfile=str(keyfile or certfile) if tls else None,
        ssl_context_factory=_tls_floor if tls else None))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it from getsockname())."""
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
    # only then, and without it Nagle plus delayed ACKs hold every response body ~40 ms.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock
