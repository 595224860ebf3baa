"""The application spec as frozen records: what the user asked for, after validation.

These records are the single definition of the spec format: `spec/` parses YAML into them
(pydantic validates stdlib dataclasses, so there is no second, parallel schema), the server
stores them, and the agent runs instances from them. Defaults follow Nomad where DESIGN.md is
silent. Every record forbids unknown fields so a typo is an error, never a silent default.

Neighbours: `spec/` (loading and error messages), `model/instance.py` (what is placed),
`scheduler/` (reads `resources`, `ports`, `placement`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

from corral.model.units import Cpu, Duration, Size

__all__ = [
    "NAME_PATTERN", "ApplicationSpec", "HealthSpec", "IsolationSpec", "JobSpec",
    "PlacementSpec", "PortSpec", "Resources", "RestartSpec", "ServiceSpec", "TemplateSpec",
    "UpdateSpec", "job_hash", "service_hash",
]

_FORBID = ConfigDict(extra="forbid")

# DNS-label-like names: they become parts of ids, env var names, cgroup and file names.
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
PORT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,30}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _env_value(value: Any) -> Any:
    # YAML turns `PORT: 80` or `DEBUG: true` into numbers and bools; env values are strings.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


EnvValue = Annotated[str, BeforeValidator(_env_value)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """What one instance may use; the kernel enforces it through cgroups."""

    __pydantic_config__ = _FORBID
    cpu: Annotated[Cpu, Field(ge=0.001, le=1024)] = 0.1
    memory: Annotated[Size, Field(ge=4 * 1024 * 1024)] = 128 * 1024 * 1024
    pids: Annotated[int, Field(ge=8, le=1_000_000)] = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PortSpec:
    """A named port; dynamic (from the node's range) unless `static` pins one."""

    __pydantic_config__ = _FORBID
    name: Annotated[str, Field(pattern=PORT_NAME_PATTERN)]
    static: Annotated[int, Field(ge=1, le=65535)] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSpec:
    """One check: exactly one of `http`, `tcp`, `command`."""

    __pydantic_config__ = _FORBID
    http: str | None = None
    tcp: str | None = None
    command: tuple[str, ...] | None = None
    port: str | None = None
    interval: Duration = 10.0
    timeout: Duration = 2.0
    grace: Duration = 5.0
    failures: Annotated[int, Field(ge=1, le=100)] = 3
    on_unhealthy: Literal["restart", "ignore"] = "restart"


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartSpec:
    """What the agent does when an instance's process ends."""

    __pydantic_config__ = _FORBID
    policy: Literal["always", "on-failure", "never"] = "always"
    backoff: Duration = 1.0
    max_backoff: Duration = 30.0
    # Restarts within `window` after which the instance is left `failed` (Nomad's attempts
    # and interval). The agent keeps counting restarts either way.
    attempts: Annotated[int, Field(ge=0)] = 10
    window: Duration = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateSpec:
    __pydantic_config__ = _FORBID
    max_parallel: Annotated[int, Field(ge=1)] = 1
    max_surge: Annotated[int, Field(ge=0)] = 1
    min_healthy_time: Duration = 2.0
    healthy_deadline: Duration = 60.0
    progress_deadline: Duration = 600.0
    auto_revert: bool = False
    canary: Annotated[int, Field(ge=0)] = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementSpec:
    __pydantic_config__ = _FORBID
    constraints: tuple[str, ...] = ()
    distinct_hosts: bool = False
    spread: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IsolationSpec:
    __pydantic_config__ = _FORBID
    driver: Literal["sandbox", "oci", "process"] | None = None
    network: Literal["host", "isolated"] = "host"
    rootfs: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateSpec:
    __pydantic_config__ = _FORBID
    destination: str
    source: str
    on_change: str = "restart"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A long-running part of an application: `instances` copies kept running."""

    __pydantic_config__ = _FORBID
    command: Annotated[tuple[str, ...], Field(min_length=1)]
    instances: Annotated[int, Field(ge=0, le=100_000)] = 1
    artifact: str | None = None
    env: dict[str, EnvValue] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    ports: tuple[PortSpec, ...] = ()
    health: HealthSpec | None = None
    restart: RestartSpec = field(default_factory=RestartSpec)
    update: UpdateSpec = field(default_factory=UpdateSpec)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    isolation: IsolationSpec = field(default_factory=IsolationSpec)
    depends_on: tuple[str, ...] = ()
    templates: tuple[TemplateSpec, ...] = ()
    stop_signal: str = "SIGTERM"
    stop_timeout: Duration = 5.0
    # How long the agent waits, once an instance is asked to stop (a rollout, a scale-down,
    # a delete), before it sends the stop signal: the catalog drops the instance at once, so
    # load balancers rendering it stop sending to it first (Nomad's shutdown_delay).
    shutdown_delay: Duration = 0.0
    # When the agent has not reached the server for longer than its heartbeat TTL: stop the
    # instance (the server, which marks the node down at the same TTL, has replaced it
    # elsewhere: never two copies for longer than the TTL) or keep it running until the
    # server says otherwise (a server outage then never stops anything).
    on_disconnect: Literal["stop", "keep"] = "stop"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """Runs to completion; optionally on a schedule or after other jobs (Chronos)."""

    __pydantic_config__ = _FORBID
    command: Annotated[tuple[str, ...], Field(min_length=1)]
    artifact: str | None = None
    env: dict[str, EnvValue] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    isolation: IsolationSpec = field(default_factory=IsolationSpec)
    schedule: str | None = None
    time_zone: str = "UTC"
    after: tuple[str, ...] = ()
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    backoff: Duration = 1.0
    timeout: Duration | None = None
    parallelism: Annotated[int, Field(ge=1)] = 1
    completions: Annotated[int, Field(ge=1)] = 1
    concurrency: Literal["allow", "forbid", "replace"] = "forbid"
    starting_deadline: Duration | None = None
    suspend: bool = False
    # Final runs kept per job for `corral jobs runs` (the newest run is always kept).
    history_limit: Annotated[int, Field(ge=1, le=1000)] = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationSpec:
    """One spec file: a name, a namespace, services and jobs."""

    __pydantic_config__ = _FORBID
    name: Name
    namespace: Name = "default"
    services: dict[Name, ServiceSpec] = field(default_factory=dict)
    jobs: dict[Name, JobSpec] = field(default_factory=dict)


def service_hash(spec: ServiceSpec) -> str:
    """A stable digest of what an instance runs: a change of it replaces the instances.

    Left out: `instances` (scaling must not replace running instances), `update` (how a
    change rolls out is no change to what runs, as in Nomad), and every field, at any
    depth, that has its default value, so adding a field with a default to the spec does
    not change the hash of a stored service (which would replace every instance on
    upgrade)."""
    from corral.model.codec import canonical_json  # local: codec is generic over all records

    data = _non_default(dataclasses.replace(spec, instances=0, update=UpdateSpec()))
    return hashlib.sha256(canonical_json(data)).hexdigest()[:16]


def job_hash(spec: JobSpec) -> str:
    """A stable digest of what a job's instance runs, like `service_hash`: what schedules
    and counts its runs (schedule, retries, history_limit...) is left out."""
    from corral.model.codec import canonical_json

    runs = dataclasses.replace(
        spec, schedule=None, time_zone="UTC", after=(), retries=0, backoff=1.0,
        timeout=None, parallelism=1, completions=1, concurrency="forbid",
        starting_deadline=None, suspend=False, history_limit=20)
    return hashlib.sha256(canonical_json(_non_default(runs))).hexdigest()[:16]


def _non_default(record: Any) -> dict[str, Any]:
    from corral.model.codec import to_data

    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value == default:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = _non_default(value)
        else:
            out[f.name] = to_data(value)
    return out
