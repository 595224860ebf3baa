"""A tiny HTTP server for end-to-end tests: answers with its instance id and env."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/exit/"):
            os._exit(int(self.path.rsplit("/", 1)[1]))
        body = json.dumps({"instance": os.environ.get("CORRAL_INSTANCE"),
                           "pid": os.getpid(), "greeting": os.environ.get("GREETING"),
                           "task_dir": os.environ.get("CORRAL_TASK_DIR"),
                           "cwd": os.getcwd()}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


port = int(sys.argv[1])
print(f"serving on {port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
