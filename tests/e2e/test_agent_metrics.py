"""The agent's `/metrics` on a real cluster: scraped over the agent's own HTTPS port with the
token the server presents, read by `prometheus_client`'s parser, its per-instance series
following real processes (cpu and memory from their cgroups, restarts of one that keeps
crashing), its runners by state, and the driver's start latency. And `corral nodes` showing
the node's used/allocated/capacity in the table and `--json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.server.pki import node_dns_name
from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e

SPEC = """\
name: meter
services:
  spin:
    command: [python3, -c, "b = bytearray(40 * 1024 * 1024)\\nwhile True: pass"]
    resources: {cpu: 0.3, memory: 128MiB}
  crash:
    command: [sh, -c, "sleep 0.2; exit 1"]
    resources: {cpu: 0.1, memory: 32MiB}
    restart: {policy: always, backoff: 100ms, max_backoff: 200ms, attempts: 100}
"""

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Samples:
    """sample name -> {sorted labels: value}; raises on anything the parser rejects."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return out


def of(samples: Samples, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for k, v in samples.get(name, {}).items() if want <= set(k)]


def test_agent_metrics_follow_the_instances_it_runs(cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    (tmp_path / "meter.yaml").write_text(SPEC)
    cluster.corral("apply", "-f", str(tmp_path / "meter.yaml"), "--timeout", "60s")
    node = cluster.corral_json("nodes")[0]
    credential = json.loads(
        (cluster.data_dir / "agent" / "identity" / "credential.json").read_text())
    url = f"{node['agent_url']}/metrics"
    assert url.startswith("https://")
    auth = {"authorization": f"Bearer {credential['agent_token']}"}
    # The node certificate names the node, not its address (as the server checks it).
    sni = {"sni_hostname": node_dns_name(node["name"])}

    def get(headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(verify=cluster.ssl_context(), timeout=10) as http:
            return http.get(url, headers=headers, extensions=sni)

    def scrape() -> Samples:
        resp = get(auth)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain")
        return parse(resp.text)

    ids = {i["service"]: i["id"] for i in cluster.corral_json("ps", "meter")}
    spin, crash = ids["spin"], ids["crash"]
    labels = {"namespace": "default", "app": "meter", "service": "spin", "instance": spin}

    def sampled() -> Samples | None:
        s = scrape()
        cores = of(s, "corral_instance_cpu_cores", **labels)
        memory = of(s, "corral_instance_memory_bytes", **labels)
        restarts = of(s, "corral_instance_restarts_total", instance=crash)
        ready = cores and cores[0] > 0.05 and memory and memory[0] > 30 << 20 and \
            restarts and restarts[0] >= 2
        return s if ready else None

    s = cluster.wait_for(sampled, 60, "usage samples and restarts in the agent's metrics")
    assert of(s, "corral_instance_cpu_cores", **labels)[0] < 0.3 * 1.5  # the quota holds
    assert of(s, "corral_instance_cpu_seconds_total", **labels)[0] > 0
    assert of(s, "corral_instance_restarts_total", **labels) == [0]
    assert of(s, "corral_instance_restarts_total", app="meter", service="crash",
              instance=crash)[0] >= 2
    states = {dict(k)["state"]: v for k, v in s["corral_agent_runners"].items()}
    assert states["running"] >= 1 and "lost" in states  # every state, zeros included
    driver = node["default_driver"]
    # One start per process start: the spinner once, the crasher at least three times.
    assert of(s, "corral_agent_driver_start_seconds_count", driver=driver)[0] >= 4
    assert of(s, "corral_agent_driver_start_seconds_bucket", driver=driver, le="+Inf") == \
        of(s, "corral_agent_driver_start_seconds_count", driver=driver)
    assert of(s, "corral_agent_driver_start_seconds_sum", driver=driver)[0] > 0

    # Protected like the agent's other routes; /healthz is not.
    for headers in ({}, {"authorization": "Bearer wrong"}):
        assert get(headers).status_code == 401

    # `corral nodes`: used (the usage samples), allocated (the specs), capacity.
    node = cluster.corral_json("nodes")[0]
    assert node["allocated"]["cpu"] == pytest.approx(0.4)
    assert node["allocated"]["memory"] == 160 << 20
    assert node["used"]["memory"] > 30 << 20 and node["used"]["cpu"] > 0
    table = cluster.corral("nodes", check=True).stdout
    assert "CPU (USED/ALLOC/CAP)" in table and f"/0.4/{node['capacity']['cpu']:g}" in table
    cluster.corral("delete", "meter", check=True)

    def gone() -> Any:
        s = scrape()
        return not of(s, "corral_instance_restarts_total", app="meter")
    cluster.wait_for(gone, 60, "the deleted app's series to leave the agent's metrics")
