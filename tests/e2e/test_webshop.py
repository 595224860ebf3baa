"""examples/webshop on a real single-machine cluster (`corral up`, the node's default
driver: `sandbox` as root), under constant HTTP load through its haproxy
(`corral.testing.load`: keep-alive clients and clients opening a connection per request):

- a rolling update of the web tier from v1 to v2 (`corral apply`) fails no request, the
  answers switch from v1 to v2, and haproxy was reloaded (its worker changed), never
  restarted (the instance's process, the master, is the same);
- scaling the web tier 3 -> 5 -> 2 (`corral scale`) re-renders haproxy's config to list
  exactly the healthy web instances each time, the running worker routes to exactly
  those, no request fails, and the master is the same throughout.

Each test gives haproxy a free static port of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing.cluster import LocalCluster, free_port
from corral.testing.load import LoadGenerator, Sample, summarize
from corral.testing.webshop import (
    config_servers,
    copy_webshop,
    lb_task_dir,
    live_servers,
    worker_pid,
)

pytestmark = pytest.mark.e2e


class Shop:
    """The deployed example as the tests see it."""

    def __init__(self, cluster: LocalCluster, files: dict[str, Path], port: int) -> None:
        self.cluster = cluster
        self.files = files
        self.url = f"http://127.0.0.1:{port}/"

    def instances(self, service: str) -> list[dict[str, Any]]:
        return [i for i in self.cluster.corral_json("ps", "webshop")
                if i["service"] == service and i["desired"] == "run"]

    def lb(self) -> dict[str, Any]:
        [lb] = self.instances("lb")
        return lb

    def task_dir(self) -> Path:
        return lb_task_dir(self.cluster.data_dir / "agent", self.lb()["id"])

    def healthy_web(self) -> dict[str, str]:
        """id -> address:port of the web instances in service."""
        return {i["id"]: f"{i['address']}:{i['ports']['http']}"
                for i in self.instances("web") if i["state"] == "healthy"}

    def rendered(self) -> dict[str, str]:
        return config_servers((self.task_dir() / "haproxy.cfg").read_text())

    def routed(self) -> dict[str, str]:
        return live_servers(self.task_dir() / "haproxy.sock")

    def agree(self, web: dict[str, str]) -> bool:
        """The rendered config and the running worker both list exactly `web`."""
        try:
            return self.rendered() == web == self.routed()
        except OSError:  # not rendered yet, or no worker listening yet
            return False

    def diagnostics(self) -> str:
        lb = self.cluster.corral("logs", "webshop/lb", "--tail", "40").stdout
        return f"--- lb logs ---\n{lb}\n{self.cluster.logs()}"


@pytest.fixture
def shop(cluster: LocalCluster, tmp_path: Path) -> Iterator[Shop]:
    port = free_port()
    shop = Shop(cluster, copy_webshop(tmp_path / "webshop", port=port), port)
    try:
        yield shop
    finally:
        cluster.corral("delete", "webshop", "--timeout", "90")


def releases(samples: list[Sample]) -> list[str]:
    return [json.loads(s.body)["release"] for s in samples if s.ok]


def deploy_v1(shop: Shop) -> None:
    first = shop.cluster.corral("apply", "-f", str(shop.files["v1"]), "--timeout", "120s")
    assert first.returncode == 0, first.stdout + first.stderr + shop.diagnostics()
    assert {i["state"] for i in shop.instances("web")} == {"healthy"}
    # The lb's process is haproxy's master, in master-worker mode.
    cmdline = Path(f"/proc/{shop.lb()['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"/haproxy") and cmdline[1] == b"-W", cmdline
    shop.cluster.wait_for(lambda: shop.agree(shop.healthy_web()), 30,
                          "haproxy routing to the three v1 instances")


def test_rolling_update_through_haproxy_fails_no_request(shop: Shop) -> None:
    deploy_v1(shop)
    lb = shop.lb()
    worker = worker_pid(shop.task_dir() / "haproxy.sock")

    with LoadGenerator(shop.url, workers=4, keepalive=2, interval=0.02,
                       max_duration=300) as load:
        load.wait_for(50)
        update = shop.cluster.corral("apply", "-f", str(shop.files["v2"]),
                                     "--timeout", "180s", timeout=240)
        # The last v1 instance left the catalog as the deployment succeeded: haproxy
        # reloads without it within a second (the agent coalesces changes for 0.5 s).
        shop.cluster.wait_for(lambda: len(shop.healthy_web()) == 3 and
                              shop.agree(shop.healthy_web()), 30, "haproxy on v2 only")
        load.wait_for(50)
    samples = load.samples()
    assert update.returncode == 0, update.stdout + update.stderr + shop.diagnostics()
    assert "webshop version 2 is running" in update.stdout, update.stdout

    summary = summarize(samples)
    assert summary.failed == 0, (summary, shop.diagnostics())
    seen = releases(samples)
    assert seen[0] == "v1" and seen[-1] == "v2", seen
    assert set(seen[-20:]) == {"v2"}, seen[-20:]  # requests sent after that reload
    # Rolled one instance at a time: for a while both releases answered, alternately.
    first_v2, last_v1 = seen.index("v2"), len(seen) - 1 - seen[::-1].index("v1")
    assert first_v2 < last_v1, "v1 and v2 never answered side by side"

    after = shop.lb()
    assert (after["id"], after["pid"], after["restarts"]) == (lb["id"], lb["pid"], 0)
    assert worker_pid(shop.task_dir() / "haproxy.sock") != worker  # reloaded
    web = shop.healthy_web()
    assert len(web) == 3 and {i["version"] for i in shop.instances("web")} == {2}
    assert shop.agree(web), (web, shop.rendered(), shop.routed())


def test_scaling_the_web_tier_rewrites_haproxy_without_a_restart(shop: Shop) -> None:
    deploy_v1(shop)
    lb = shop.lb()

    def converged(count: int) -> dict[str, str] | None:
        web = shop.healthy_web()
        ok = len(web) == count == len(shop.instances("web")) and shop.agree(web)
        return web if ok else None

    with LoadGenerator(shop.url, workers=4, keepalive=2, interval=0.02,
                       max_duration=300) as load:
        load.wait_for(30)
        seen: list[dict[str, str]] = []
        for count in (5, 2):
            scaled = shop.cluster.corral("scale", "webshop/web", str(count),
                                         "--timeout", "120s")
            assert scaled.returncode == 0, scaled.stdout + scaled.stderr
            seen.append(shop.cluster.wait_for(
                lambda count=count: converged(count), 60,
                f"haproxy's config and worker listing exactly the {count} healthy web "
                f"instances"))
            load.wait_for(30)
    assert len(seen[0]) == 5 and len(seen[1]) == 2
    assert set(seen[1]) < set(seen[0])  # a scale-down stops instances, it starts none

    summary = summarize(load.samples())
    assert summary.failed == 0, (summary, shop.diagnostics())
    # Every instance that was routed to answered (the round robin reached the new ones).
    answered = {json.loads(s.body)["instance"] for s in load.samples() if s.ok}
    assert set(seen[0]) <= answered, (seen[0], answered)
    after = shop.lb()
    assert (after["id"], after["pid"], after["restarts"]) == (lb["id"], lb["pid"], 0)
