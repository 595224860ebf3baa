"""An HTTP server for the deployment end-to-end test: `/` answers `$VERSION`, `/healthz`
answers 200, or 500 when `$HEALTHY` is `no` (a release that never becomes healthy)."""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("VERSION", "?")
HEALTHY = os.environ.get("HEALTHY", "yes") != "no"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 500 if self.path == "/healthz" and not HEALTHY else 200
        body = f"{VERSION}\n".encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


port = int(sys.argv[1])
print(f"{VERSION} serving on {port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
