"""A real `corral up` cluster over HTTPS: the CLI trusts the cluster CA from its config and
nothing else, plain HTTP gets no answer, `corral up`'s own agent joined, and a second
agent joins with a token from `corral token create` (then is revoked), while a revoked
token is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.server.pki import load_or_create_pki
from corral.testing.cluster import LocalCluster, kill_cgroups

pytestmark = pytest.mark.e2e


def test_cli_verifies_the_server_with_the_ca_in_its_config(cluster: LocalCluster,
                                                           tmp_path: Path) -> None:
    config = (cluster.root / "config" / "corral.env").read_text()
    assert f"CORRAL_ADDR={cluster.addr}" in config
    assert f"CORRAL_CACERT={cluster.cacert}" in config
    assert cluster.addr.startswith("https://")
    assert [n["name"] for n in cluster.corral_json("nodes")] == ["local"]
    # another cluster's CA: refused, and the message says what to set
    other = load_or_create_pki(tmp_path / "other", now=0.0 + 1_700_000_000)
    wrong = cluster.corral("nodes", env={"CORRAL_CACERT": str(other.ca_cert_path)})
    assert wrong.returncode == 3 and "CORRAL_CACERT" in wrong.stderr
    # plain HTTP: no answer at all
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{cluster.port}/healthz", timeout=5)
    assert httpx.get(f"{cluster.addr}/healthz", verify=cluster.ssl_context()).json() == \
        {"ok": True}


def test_corral_up_agent_joined_with_its_own_identity(cluster: LocalCluster) -> None:
    identity = cluster.data_dir / "agent" / "identity"
    for secret in ("node.key", "credential.json"):
        assert (identity / secret).stat().st_mode & 0o777 == 0o600
    assert (cluster.data_dir / "server" / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
    node = cluster.corral_json("nodes")[0]
    assert node["agent_url"].startswith("https://127.0.0.1:")
    joined = [e for e in cluster.corral_json("events", "--topic", "node")
              if e["type"] == "joined"]
    assert [e["key"] for e in joined] == ["local"]
    tokens = cluster.corral_json("token", "list")
    assert any(t["description"] == "corral up: node local" for t in tokens)
    # the first join token the server made is on file for scripts on this machine
    first = (cluster.data_dir / "server" / "join-token").read_text().strip()
    assert first.split(".")[0] in {t["id"] for t in tokens}


def _agent(cluster: LocalCluster, root: Path, name: str, *join: str) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "agent.log", "ab")  # noqa: SIM115 - owned by the child
    env = {k: v for k, v in cluster.env.items() if not k.startswith("CORRAL_")}
    return subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "agent", "--join", cluster.addr, *join,
         "--data-dir", str(root / "data"), "--name", name, "--address", "127.0.0.1",
         "--cgroup-parent", f"{cluster.cgroup_parent}-{name}", "--usage-interval", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)


@pytest.fixture
def agents(cluster: LocalCluster) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    yield started
    for proc, parent in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_cgroups(parent)


def test_a_second_agent_joins_with_a_token_and_is_revoked(
        cluster: LocalCluster, tmp_path: Path,
        agents: list[tuple[subprocess.Popen[bytes], str]]) -> None:
    made: dict[str, Any] = cluster.corral_json("token", "create", "--ttl", "10m")
    assert made["ca_cert_hash"].startswith("sha256:")
    assert made["join_command"].startswith(f"corral agent --join {cluster.addr} --token ")
    # a wrong pin: the agent refuses before sending its token
    bad = _agent(cluster, tmp_path / "bad", "n3", "--token", made["token"],
                 "--ca-cert-hash", "sha256:" + "0" * 64)
    agents.append((bad, f"{cluster.cgroup_parent}-n3"))
    assert bad.wait(timeout=60) == 1
    assert "not the pinned" in (tmp_path / "bad" / "agent.log").read_text()
    proc = _agent(cluster, tmp_path / "n2", "n2", "--token", made["token"],
                  "--ca-cert-hash", made["ca_cert_hash"])
    agents.append((proc, f"{cluster.cgroup_parent}-n2"))
    cluster.wait_for(lambda: {n["name"]: n["state"] for n in cluster.corral_json("nodes")}
                     .get("n2") == "ready", 60, "n2 to join")
    # a revoked token refuses the next machine, and nothing about it is recorded
    cluster.corral("token", "revoke", made["id"], check=True)
    late = _agent(cluster, tmp_path / "late", "n4", "--token", made["token"],
                  "--ca-cert-hash", made["ca_cert_hash"])
    agents.append((late, f"{cluster.cgroup_parent}-n4"))
    assert late.wait(timeout=60) == 1
    assert "revoked" in (tmp_path / "late" / "agent.log").read_text()
    assert "n4" not in {n["name"] for n in cluster.corral_json("nodes")}
    # revoking n2: its agent is refused, the node goes down
    cluster.corral("node", "revoke", "n2", check=True)
    cluster.wait_for(lambda: {n["name"]: n["state"] for n in cluster.corral_json("nodes")}
                     ["n2"] == "down", 60, "n2 to be down")
    cluster.wait_for(lambda: "heartbeat refused (401)" in
                     (tmp_path / "n2" / "agent.log").read_text(), 30, "n2 refused")
