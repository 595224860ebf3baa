"""`build_env`: an instance's dependency addresses come below the spec's `env` (which may
override them) and below the ports and `CORRAL_*` variables."""

from __future__ import annotations

from pathlib import Path

from corral.agent.runner import build_env, job_service_spec
from corral.model.application import JobSpec, ServiceSpec
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


def test_a_job_instance_runs_its_job_spec_never_restarted_with_its_run_in_env() -> None:
    job = JobSpec(command=("etl", "--full"), env={"MODE": "x", "CORRAL_RUN": "no"},
                  artifact="sha256:" + "0" * 64, retries=3, timeout=30.0)
    spec = job_service_spec(job)
    assert spec.command == ("etl", "--full") and spec.artifact == job.artifact
    assert spec.restart.policy == "never" and spec.health is None and spec.ports == ()
    assert spec.resources == job.resources and spec.isolation == job.isolation
    inst = make_instance("i1", service="etl", node="n1", kind="job", run=4, attempt=2, slot=1)
    env = build_env(inst, spec, node="n1", host_ip="10.0.0.1", task_dir=Path("/t"))
    assert (env["CORRAL_JOB"], env["CORRAL_RUN"], env["CORRAL_ATTEMPT"],
            env["CORRAL_COMPLETION_INDEX"], env["CORRAL_SERVICE"]) == ("etl", "4", "2", "1",
                                                                       "etl")
    assert env["MODE"] == "x"
    service_env = build_env(make_instance("i2", node="n1"), ServiceSpec(command=("a",)),
                            node="n1", host_ip="10.0.0.1", task_dir=Path("/t"))
    assert "CORRAL_JOB" not in service_env
