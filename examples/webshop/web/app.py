"""The webshop's web tier: answers `GET /` with its release and a visit counter kept in
redis, found through Corral's discovery (`CACHE_ADDR`, set because the service says
`depends_on: [cache]`). Standard library only: redis is spoken to in a few lines of RESP.

Graceful stop: on SIGTERM the server stops accepting, serves what already waits in its
accept queue, lets every in-flight request finish, then exits 0. Corral sends SIGTERM
only `shutdown_delay` after the instance left the catalog, by which time haproxy has
reloaded without it, so no new request is on its way.

Responses are HTTP/1.0 (one request per connection): a stopping server then never holds
an idle keep-alive connection that a proxy could send a request on just as it closes.
haproxy keeps the client side keep-alive; its own hop to this server is loopback-cheap.
"""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ.get("RELEASE", "dev")
INSTANCE = os.environ.get("CORRAL_INSTANCE", "local")


def redis_incr(key: str) -> int | None:
    """INCR key on the cache; None when it cannot be reached (the page still answers)."""
    host, _, port = os.environ.get("CACHE_ADDR", "127.0.0.1:6379").rpartition(":")
    command = f"*2\r\n$4\r\nINCR\r\n${len(key)}\r\n{key}\r\n".encode()
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(command)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
    except (OSError, ValueError) as e:
        print(f"cache {host}:{port}: {e}", file=sys.stderr, flush=True)
        return None
    return int(reply[1:].strip()) if reply.startswith(b":") else None


class Handler(BaseHTTPRequestHandler):
    server_version = "webshop"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, b"ok\n", "text/plain")
        elif self.path == "/":
            body = {"release": RELEASE, "instance": INSTANCE, "visits": redis_incr("visits")}
            self.reply(200, json.dumps(body).encode() + b"\n", "application/json")
        else:
            self.reply(404, b"not found\n", "text/plain")

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass  # haproxy logs the traffic; a line per request would only fill the node's disk


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for every in-flight request
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        # haproxy's health checks close with a reset once they have the status line.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def drain(self) -> None:
        """Serve the connections already in the accept queue, without waiting for more."""
        self.socket.setblocking(False)
        while True:
            try:
                request, address = self.socket.accept()
            except OSError:
                return
            request.setblocking(True)
            self.process_request(request, address)


def main() -> None:
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 8000
    server = Server(("0.0.0.0", port), Handler)
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"webshop {RELEASE} on port {port} as {INSTANCE}, cache at "
          f"{os.environ.get('CACHE_ADDR')}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.drain()
    server.server_close()  # joins the request threads
    print("stopped: every request answered", flush=True)


if __name__ == "__main__":
    main()
