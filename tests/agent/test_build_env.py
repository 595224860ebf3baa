"""`build_env`: an instance's dependency addresses come below the spec's `env` (which may
override them) and below the ports and `CORRAL_*` variables."""

from __future__ import annotations

from pathlib import Path

from corral.agent.runner import build_env
from corral.model.application import ServiceSpec
from corral.testing.factories import make_instance


def test_dependency_env_sits_below_the_spec_env_and_corral_variables() -> None:
    inst = make_instance("i1", node="n1", ports={"http": 20001}, dependency_env={
        "CACHE_ADDR": "10.0.0.2:20005", "CACHE_HOST": "10.0.0.2", "PORT": "1",
        "CORRAL_APP": "not this"})
    spec = ServiceSpec(command=("app",), env={"CACHE_HOST": "127.0.0.1"})
    env = build_env(inst, spec, node="n1", host_ip="10.0.0.1", task_dir=Path("/t"))
    assert env["CACHE_ADDR"] == "10.0.0.2:20005"
    assert env["CACHE_HOST"] == "127.0.0.1"  # the user's own value wins
    assert env["PORT"] == "20001" and env["CORRAL_APP"] == "app"


def test_no_dependencies_add_nothing() -> None:
    inst = make_instance("i1", node="n1")
    spec = ServiceSpec(command=("app",))
    env = build_env(inst, spec, node="n1", host_ip="10.0.0.1", task_dir=Path("/t"))
    assert not any(k.endswith(("_ADDR", "_HOST", "_ADDRS")) for k in env)
