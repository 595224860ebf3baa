"""The multi-host tests' web app: listens on every address of its host (so other hosts
reach it at the node's address) and says which instance and node answered."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({key: os.environ.get(f"CORRAL_{key.upper()}")
                           for key in ("instance", "node", "host_ip")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        """Quiet: the instance log is for the app's own lines."""


if __name__ == "__main__":
    port = int(sys.argv[1])
    print(f"listening on 0.0.0.0:{port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Answer).serve_forever()
