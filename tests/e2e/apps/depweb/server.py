"""A web instance for the depends_on end-to-end test: on every request it talks to the
redis at `CACHE_ADDR` (from its env: the dependency's address the server put there) with
a few lines of RESP, `PING` then `INCR hits`, and answers with what redis said."""

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def redis(*args: str) -> str:
    host, _, port = os.environ["CACHE_ADDR"].rpartition(":")
    command = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(command.encode())
        return s.recv(256).decode().strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        try:
            answer = {"cache_addr": os.environ.get("CACHE_ADDR"), "ping": redis("PING"),
                      "hits": redis("INCR", "hits"), "addrs": os.environ.get("CACHE_ADDRS")}
            status = 200
        except (KeyError, OSError) as exc:
            answer, status = {"error": repr(exc)}, 500
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


port = int(sys.argv[1])
print(f"serving on {port}, cache at {os.environ.get('CACHE_ADDR')}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
