"""Factories for model records in tests: every field has a sensible default, so a test names
only what it is about (`make_node(cpu=2)`, `make_instance(node="n1", state=RUNNING)`).

Defaults are fixed values, never counters or random ids, so a test that builds the same
records twice gets equal records. Give distinct `name`s and `id`s when a test needs several.
Any other field of the record can be passed as a keyword and goes to the constructor as is.

Neighbours: `model/` (the records), every room's tests.
"""

from __future__ import annotations

import zlib
from typing import Any

from corral.model.application import Resources
from corral.model.instance import Instance, InstanceId, InstanceState
from corral.model.job import FINAL_RUN_STATES, JobRun, JobRunId, JobRunState, RunCause
from corral.model.node import DEFAULT_PORT_RANGE, Node, NodeResources, NodeState

__all__ = ["GiB", "MiB", "make_instance", "make_job_run", "make_node"]

MiB = 1024 * 1024
GiB = 1024 * MiB


def _address_for(name: str) -> str:
    # Distinct nodes get distinct, stable addresses without the test having to choose them.
    digest = zlib.crc32(name.encode())
    return f"10.{(digest >> 16) & 0xFF}.{(digest >> 8) & 0xFF}.{digest & 0xFF or 1}"


def make_node(
    name: str = "node-1",
    *,
    address: str | None = None,  # None: derived from the name
    state: NodeState = NodeState.READY,
    cpu: float = 4.0,  # cores
    memory: int = 8 * GiB,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
    reserved_ports: tuple[int, ...] = (),
    drivers: dict[str, str] | None = None,  # None: {"process": ""}
    default_driver: str = "process",
    labels: dict[str, str] | None = None,
    attributes: dict[str, str] | None = None,  # Node.attributes: os, kernel, arch, ...
    now: float = 0.0,  # registered_at and heartbeat_at
    **fields: Any,
) -> Node:
    return Node(
        name=name,
        address=address if address is not None else _address_for(name),
        state=state,
        capacity=NodeResources(cpu=cpu, memory=memory),
        port_range=port_range,
        reserved_ports=reserved_ports,
        drivers=dict(drivers) if drivers is not None else {"process": ""},
        default_driver=default_driver,
        labels=dict(labels or {}),
        attributes=dict(attributes or {}),
        registered_at=fields.pop("registered_at", now),
        heartbeat_at=fields.pop("heartbeat_at", now),
        **fields,
    )


def make_instance(
    id: str = "inst-1",  # shadows the builtin on purpose: the record field is `id`
    *,
    app: str = "app",
    service: str = "web",
    namespace: str = "default",
    node: str | None = None,
    state: InstanceState | None = None,  # None: scheduled if `node` is set, else pending
    cpu: float = 0.1,  # cores
    memory: int = 128 * MiB,
    ports: dict[str, int] | None = None,
    port_names: tuple[str, ...] | None = None,  # None: the names of `ports`
    static_ports: dict[str, int] | None = None,
    driver: str | None = None,
    version: int = 1,
    spec_hash: str = "0" * 16,
    now: float = 0.0,  # created_at and updated_at
    **fields: Any,
) -> Instance:
    ports = dict(ports or {})
    static_ports = dict(static_ports or {})
    if port_names is None:
        port_names = tuple(dict.fromkeys([*ports, *static_ports]))
    if state is None:
        state = InstanceState.SCHEDULED if node is not None else InstanceState.PENDING
    return Instance(
        id=InstanceId(id),
        namespace=namespace,
        app=app,
        service=service,
        version=version,
        spec_hash=spec_hash,
        resources=fields.pop("resources", None) or Resources(cpu=cpu, memory=memory),
        port_names=port_names,
        static_ports=static_ports,
        driver=driver,
        node=node,
        address=fields.pop("address", None),
        ports=ports,
        state=state,
        created_at=fields.pop("created_at", now),
        updated_at=fields.pop("updated_at", now),
        **fields,
    )


def make_job_run(
    job: str = "report",
    number: int = 1,
    *,
    state: JobRunState = JobRunState.SUCCEEDED,
    scheduled_at: float = 0.0,
    finished_at: float | None = None,  # None: scheduled_at for a final state, else unset
    app: str = "app",
    namespace: str = "default",
    cause: RunCause = RunCause.SCHEDULE,
    **fields: Any,
) -> JobRun:
    """A run of `job`; its id is `<job>-<number>` unless given."""
    if finished_at is None and state in FINAL_RUN_STATES:
        finished_at = scheduled_at
    return JobRun(
        id=JobRunId(fields.pop("id", f"{job}-{number}")),
        namespace=namespace,
        app=app,
        job=job,
        number=number,
        scheduled_at=scheduled_at,
        cause=cause,
        state=state,
        finished_at=finished_at,
        created_at=fields.pop("created_at", scheduled_at),
        updated_at=fields.pop("updated_at", finished_at if finished_at is not None
                              else scheduled_at),
        **fields,
    )
