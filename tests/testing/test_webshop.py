"""examples/webshop without a cluster: its two release files, the copies tests and
benchmarks make of it (`corral.testing.webshop`), its haproxy template rendered by the
agent's real renderer and accepted by `haproxy -c`; then the real haproxy and the real web
tier (`web/app.py`): backends added and removed over ten reloads under constant load, each
removed one sent SIGTERM at once, with no failed request and the master never replaced."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.agent.catalog import canonical_catalog
from corral.agent.templates import TemplateRenderer
from corral.model.application import TemplateSpec
from corral.spec.loader import load_spec_file
from corral.testing.cluster import free_port
from corral.testing.load import LoadGenerator, summarize
from corral.testing.webshop import (
    EXAMPLE,
    config_servers,
    copy_webshop,
    live_servers,
    worker_pid,
)

HAPROXY = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin:/bin")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (Debian package)")


def test_the_two_release_files_differ_only_in_release() -> None:
    v1 = load_spec_file(EXAMPLE / "webshop.yaml")
    v2 = load_spec_file(EXAMPLE / "webshop-v2.yaml")
    assert v1.services["web"].env == {"RELEASE": "v1"}
    assert v2.services["web"].env == {"RELEASE": "v2"}
    web = dataclasses.replace(v2.services["web"], env=v1.services["web"].env)
    assert dataclasses.replace(v2, services={**v2.services, "web": web}) == v1
    lb = v1.services["lb"]
    assert [p.static for p in lb.ports] == [8080] and lb.depends_on == ("web",)
    assert lb.update.max_surge == 0  # the static port: stop, then start
    assert lb.templates == (TemplateSpec(source="haproxy.cfg.j2", destination="haproxy.cfg",
                                         on_change="signal:SIGUSR2"),)
    assert v1.services["web"].depends_on == ("cache",)
    assert v1.services["web"].shutdown_delay > 0


def test_copies_get_their_port_instances_and_releases(tmp_path: Path) -> None:
    files = copy_webshop(tmp_path / "shop", port=18123, releases=("v1", "v7"), instances=5)
    assert sorted(files) == ["v1", "v7"]
    assert not (tmp_path / "shop" / "webshop-v2.yaml").exists()
    for release, path in files.items():
        spec = load_spec_file(path)
        assert [p.static for p in spec.services["lb"].ports] == [18123]
        assert spec.services["web"].instances == 5
        assert spec.services["web"].env == {"RELEASE": release}
        assert spec.services["cache"].instances == 1
    assert (tmp_path / "shop" / "web" / "app.py").is_file()


def test_config_servers_reads_one_backend() -> None:
    config = """global
    stats socket unix@haproxy.sock
backend other
    server x 10.0.0.1:1
backend web
    balance roundrobin
    # server commented 1.2.3.4:5
    server a1 127.0.0.1:2001 check
    server b2 127.0.0.1:2002
frontend f
    bind :80
"""
    assert config_servers(config) == {"a1": "127.0.0.1:2001", "b2": "127.0.0.1:2002"}
    assert config_servers(config, "other") == {"x": "10.0.0.1:1"}
    assert config_servers(config, "missing") == {}


# --- the template, rendered by the agent's renderer ------------------------------------------

def web_instance(iid: str, port: int) -> dict[str, Any]:
    return {"id": iid, "node": "local", "address": "127.0.0.1", "port": port,
            "ports": {"http": port}, "version": 1, "slot": 0, "state": "healthy",
            "health": "healthy"}


class Lb:
    """The lb instance's task dir with the example's artifact in it, rendered from a
    catalog of web instances."""

    def __init__(self, task: Path, port: int) -> None:
        shutil.copytree(EXAMPLE / "lb", task)
        self.task = task
        self.port = port
        self.renderer = TemplateRenderer(
            templates=(TemplateSpec(source="haproxy.cfg.j2", destination="haproxy.cfg",
                                    on_change="signal:SIGUSR2"),),
            task_dir=task,
            instance={"id": "lb000001", "app": "webshop", "service": "lb",
                      "namespace": "default", "node": "local", "address": "127.0.0.1",
                      "ports": {"http": port}, "version": 1},
            env={"PORT_HTTP": str(port), "PORT": str(port), "CORRAL_TASK_DIR": str(task)})

    def render(self, webs: dict[str, int]) -> bool:
        entries = [{"namespace": "default", "app": "webshop", "service": "web",
                    "port_names": ["http"],
                    "instances": [web_instance(i, p) for i, p in webs.items()]},
                   {"namespace": "default", "app": "webshop", "service": "lb",
                    "port_names": ["http"], "instances": []}]
        result = self.renderer.render({"default": canonical_catalog(
            {"digest": json.dumps(webs, sort_keys=True), "services": entries})})
        assert not result.errors, result.errors
        return bool(result.changed)

    @property
    def config(self) -> str:
        return (self.task / "haproxy.cfg").read_text()


def test_the_template_lists_the_web_instances(tmp_path: Path) -> None:
    lb = Lb(tmp_path / "task", 18080)
    assert lb.render({"bbbb0002": 20002, "aaaa0001": 20001})
    assert config_servers(lb.config) == {"aaaa0001": "127.0.0.1:20001",
                                         "bbbb0002": "127.0.0.1:20002"}
    assert "bind *:18080" in lb.config and "Instance lb000001 of webshop/lb." in lb.config
    assert not lb.render({"aaaa0001": 20001, "bbbb0002": 20002})  # same bytes: no change
    assert lb.render({})
    assert config_servers(lb.config) == {}


@needs_haproxy
@pytest.mark.parametrize("webs", [{}, {"aaaa0001": 20001, "bbbb0002": 20002}])
def test_haproxy_accepts_the_rendered_config(tmp_path: Path, webs: dict[str, int]) -> None:
    assert HAPROXY is not None
    lb = Lb(tmp_path / "task", free_port())
    lb.render(webs)
    check = subprocess.run([HAPROXY, "-c", "-f", "haproxy.cfg"], cwd=lb.task,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


# --- the real haproxy and web tier, reloaded under load --------------------------------------

class Webs:
    """Real web tier processes (`web/app.py`), each on a free port. The cache is a closed
    port: pages then answer `"visits": null`, which is all this test needs."""

    def __init__(self) -> None:
        self.procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.cache = free_port()

    def start(self, iid: str) -> None:
        port = free_port()
        env = {**os.environ, "RELEASE": "v1", "CORRAL_INSTANCE": iid,
               "CACHE_ADDR": f"127.0.0.1:{self.cache}"}
        proc = subprocess.Popen([sys.executable, str(EXAMPLE / "web" / "app.py"),
                                 "--port", str(port)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        assert b"webshop v1 on port" in proc.stdout.readline()  # listening
        self.procs[iid] = (proc, port)

    def ports(self, ids: list[str]) -> dict[str, int]:
        return {i: self.procs[i][1] for i in ids}

    def stop(self, iid: str) -> int:
        proc, _ = self.procs[iid]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)

    def close(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def webs() -> Iterator[Webs]:
    tier = Webs()
    try:
        yield tier
    finally:
        tier.close()


def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass  # the admin socket between two workers
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@needs_haproxy
def test_haproxy_reloads_under_load_without_a_failed_request(tmp_path: Path,
                                                             webs: Webs) -> None:
    assert HAPROXY is not None
    lb = Lb(tmp_path / "task", free_port())
    sock = lb.task / "haproxy.sock"
    live = [f"web{n:05d}" for n in range(3)]
    for iid in live:
        webs.start(iid)
    lb.render(webs.ports(live))
    haproxy = subprocess.Popen([HAPROXY, "-W", "-db", "-f", "haproxy.cfg"], cwd=lb.task,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: set(live_servers(sock)) == set(live), "haproxy's first worker")
        first_worker = worker_pid(sock)
        reloads = 0
        last = 0.0

        def reload(ids: list[str]) -> None:
            nonlocal reloads, last
            assert lb.render(webs.ports(ids))
            # As the agent does (`on_change: signal:SIGUSR2`), at most once per 0.5 s
            # (its coalescing): haproxy 2.6's master loses a SIGUSR2 that comes within
            # ~50 ms of the previous one, while it is still re-executing itself.
            time.sleep(max(0.0, last + 0.5 - time.monotonic()))
            haproxy.send_signal(signal.SIGUSR2)
            last = time.monotonic()
            reloads += 1
            wait_until(lambda: live_servers(sock) == {
                i: f"127.0.0.1:{p}" for i, p in webs.ports(ids).items()},
                f"a worker routing to {ids}")

        with LoadGenerator(f"http://127.0.0.1:{lb.port}/", workers=4, keepalive=2,
                           interval=0.005, max_duration=120) as load:
            load.wait_for(20)
            for n in range(3, 8):  # start one, add it; remove the oldest, stop it at once
                webs.start(f"web{n:05d}")
                live.append(f"web{n:05d}")
                reload(live)
                gone = live.pop(0)
                reload(live)
                assert webs.stop(gone) == 0  # graceful: its in-flight requests answered
                load.wait_for(20)
        assert haproxy.poll() is None, "the master exited"
        assert worker_pid(sock) != first_worker and reloads == 10
    finally:
        haproxy.send_signal(signal.SIGTERM)
        try:
            _, err = haproxy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            haproxy.kill()
            _, err = haproxy.communicate()
    samples = load.samples()
    summary = summarize(samples)
    assert summary.failed == 0, (summary, err.decode()[-3000:])
    answered = {json.loads(s.body)["instance"] for s in samples}
    assert answered == {f"web{n:05d}" for n in range(8)}, answered
    assert err.decode().count("Reloading HAProxy") == 10
