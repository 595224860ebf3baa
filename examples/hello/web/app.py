"""The hello example's web tier: answers every request with a greeting, the instance that
served it and a visit counter kept in redis (spoken to with a few lines of RESP, so the
example needs nothing beyond the Python standard library)."""

import argparse
import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def redis_incr(key: str) -> int | None:
    port = int(os.environ.get("REDIS_PORT", "6379"))
    host = os.environ.get("CORRAL_HOST_IP", "127.0.0.1")
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(f"*2\r\n$4\r\nINCR\r\n${len(key)}\r\n{key}\r\n".encode())
            reply = s.recv(64).decode()
    except OSError:
        return None
    return int(reply[1:].strip()) if reply.startswith(":") else None


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            body = json.dumps({
                "greeting": os.environ.get("GREETING", "hi"),
                "instance": os.environ.get("CORRAL_INSTANCE"),
                "node": os.environ.get("CORRAL_NODE"),
                "visits": redis_incr("visits"),
            }).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {fmt % args}\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    print(f"listening on port {args.port} as {os.environ.get('CORRAL_INSTANCE')}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
