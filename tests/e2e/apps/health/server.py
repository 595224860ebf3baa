"""An HTTP server for the health-check end-to-end tests: `/healthz` answers 200 until
`/sick` is requested, then 500 (until the process restarts: the flag lives in memory)."""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sick = False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global sick
        if self.path == "/sick":
            sick = True
        code = 500 if self.path == "/healthz" and sick else 200
        body = f"{os.getpid()}\n".encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


port = int(sys.argv[1])
print(f"serving on {port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
