"""`service_hash`: what decides that a service's instances must be replaced."""

from __future__ import annotations

import dataclasses

from corral.model.application import RestartSpec, ServiceSpec, UpdateSpec, service_hash


def test_service_hash_follows_what_runs_not_how_it_rolls_out() -> None:
    base = ServiceSpec(command=("sleep", "1"))
    same = [
        dataclasses.replace(base, instances=7),
        dataclasses.replace(base, update=UpdateSpec(max_parallel=3, canary=1)),
        # A field given its default value is no change.
        dataclasses.replace(base, restart=RestartSpec()),
    ]
    assert {service_hash(s) for s in same} == {service_hash(base)}
    changed = [
        dataclasses.replace(base, command=("sleep", "2")),
        dataclasses.replace(base, env={"A": "1"}),
        dataclasses.replace(base, restart=RestartSpec(policy="never")),
    ]
    hashes = {service_hash(s) for s in changed}
    assert len(hashes) == len(changed) and service_hash(base) not in hashes
