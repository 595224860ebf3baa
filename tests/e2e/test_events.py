"""The event stream on a real cluster, seen the way a user watches a rollout:
`corral events -f --topic instance --app shop` narrates every step of one instance's
installation (scheduled on its node, fetching the artifact, fetched or already cached,
starting, running, healthy) and how others end (exited with code 3, oom-killed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e

WEB = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok\\n")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT_HTTP"])), H).serve_forever()
"""

SPEC = """\
name: shop
services:
  web:
    instances: 2
    artifact: ./web
    command: [python3, app.py]
    resources: {cpu: 0.1, memory: 64MiB}
    ports: [{name: http}]
    health: {http: /, port: http, interval: 500ms, grace: 5s}
  crash:
    command: [sh, -c, "sleep 0.5; exit 3"]
    resources: {cpu: 0.1, memory: 32MiB}
    restart: {policy: never}
  hog:
    command: [python3, -c, "b = bytearray(200 * 1024 * 1024); import time; time.sleep(60)"]
    resources: {cpu: 0.1, memory: 48MiB}
    restart: {policy: never}
"""


def _follow(cluster: LocalCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "corral.cli.main", "events", "-f", *args],
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def test_a_rollout_narrated_step_by_step(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "app.py").write_text(WEB)
    (tmp_path / "shop.yaml").write_text(SPEC)
    start = int(cluster.corral_json("events", "--limit", "1")[-1]["index"]) \
        if cluster.corral_json("events", "--limit", "1") else 0
    as_json = _follow(cluster, "--topic", "instance", "--app", "shop", "--json",
                      "--since", str(start))
    as_text = _follow(cluster, "--topic", "instance", "--app", "shop", "--since", str(start))
    try:
        cluster.corral("apply", "-f", str(tmp_path / "shop.yaml"), "--timeout", "60s")

        def settled() -> list[dict[str, Any]]:
            events = cluster.corral_json("events", "--topic", "instance", "--app", "shop",
                                         "--since", str(start))
            ended = {e["payload"].get("service") for e in events if e["type"] == "failed"}
            healthy = {e["key"] for e in events if e["type"] == "healthy"}
            return events if ended == {"crash", "hog"} and len(healthy) == 2 else []

        cluster.wait_for(settled, 90, "web healthy, crash and hog failed")
    finally:
        out, err = _stop(as_json)
        text, text_err = _stop(as_text)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events, err
    assert all(e["topic"] == "instance" and e["payload"]["app"] == "shop" for e in events)
    assert [e["index"] for e in events] == sorted(e["index"] for e in events)
    web = [e for e in events if e["payload"].get("service") == "web"]
    one = web[0]["key"]
    steps = [e for e in web if e["key"] == one]
    types = [e["type"] for e in steps]
    for step in ("pending", "scheduled", "fetching", "starting", "running", "healthy"):
        assert step in types, (step, types)
    assert types.index("scheduled") < types.index("fetching") < types.index("starting") < \
        types.index("running") < types.index("healthy")
    message = {e["type"]: e["message"] for e in steps}
    assert "scheduled on local" in message["scheduled"]
    assert "fetching artifact sha256:" in message["fetching"]
    # One web instance downloaded the artifact, the other found it in the node's cache.
    starts = sorted(e["message"] for e in web if e["type"] == "starting")
    assert len(starts) == 2
    assert any("fetched (" in m for m in starts), starts
    assert any("already cached on this node" in m for m in starts), starts
    ends = {e["payload"]["service"]: e["message"] for e in events if e["type"] == "exited"}
    assert "exited with code 3" in ends["crash"]
    assert "oom-killed" in ends["hog"]
    # The line output reads as a narrative: one line per event with its subject.
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["INDEX", "TIME", "TOPIC", "TYPE", "SUBJECT", "MESSAGE"], \
        text_err
    assert any(f"shop/web/{one}" in line and "healthy" in line for line in lines), text
    cluster.corral("delete", "shop", check=True)
