"""Cross-field checks on an application spec: the rules a per-field schema cannot state.

pydantic has already checked each field on its own (`model/application.py`); this module
checks fields against each other (a health check names a declared port, `depends_on` names a
service and has no cycle, `${PORT_X}` refers to a port, the update deadlines fit together)
and the syntax of the small languages inside strings (signal names, placement constraints,
cron and ISO 8601 schedules). Every problem is reported, each with the path of the field to
fix.

Neighbours: `spec/loader.py` runs `check_spec` after validation and `normalise_spec` once the
spec is clean; `spec/errors.py` defines `FieldError`. Schedules are parsed by
`jobs/schedule.py` and dependency cycles found by `jobs/dag.py`, the code that runs them.
Constraints are parsed by `model/constraints.py`, the parser the scheduler applies too.
"""

from __future__ import annotations

import dataclasses
import re
import zoneinfo
from collections.abc import Collection, Mapping, Sequence

from corral.jobs.dag import find_cycles
from corral.jobs.schedule import CronFields, parse_cron, parse_schedule
from corral.model.application import (
    ApplicationSpec,
    HealthSpec,
    IsolationSpec,
    JobSpec,
    PortSpec,
    ServiceSpec,
    TemplateSpec,
)
from corral.model.constraints import parse_attribute, parse_constraint
from corral.spec.errors import FieldError, LineLookup, Loc, close_match, format_path

# CronFields and parse_cron live in jobs/schedule.py, re-exported for `corral.spec` users.
__all__ = ["CronFields", "check_spec", "normalise_signal", "normalise_spec", "parse_cron"]


class _Report:
    """Collects errors; the line comes from the loader's map when there is one."""

    def __init__(self, line_of: LineLookup | None) -> None:
        self.errors: list[FieldError] = []
        self._line_of = line_of

    def add(self, loc: Loc, message: str, suggestion: str | None = None) -> None:
        line = self._line_of(loc) if self._line_of is not None else None
        self.errors.append(FieldError(path=format_path(loc), message=message, line=line,
                                      suggestion=suggestion))


def check_spec(spec: ApplicationSpec, *, line_of: LineLookup | None = None,
               other_services: Collection[str] = (),
               other_jobs: Collection[str] = ()) -> list[FieldError]:
    """Every cross-field problem in `spec`.

    `other_services` and `other_jobs` name entries of the file that failed validation and so
    are missing from `spec`: references to them are not reported as unknown, which would only
    repeat the real error in a confusing form.
    """
    report = _Report(line_of)
    service_names = set(spec.services) | set(other_services)
    job_names = set(spec.jobs) | set(other_jobs)
    for name in sorted(service_names & job_names):
        report.add(("jobs", name), f"{name!r} is also the name of a service; services and "
                   "jobs share one set of names")
    for name, service in spec.services.items():
        _check_service(report, ("services", name), service)
    for name, job in spec.jobs.items():
        _check_job(report, ("jobs", name), job)
    _check_graph(report, "services", "depends_on",
                 {name: s.depends_on for name, s in spec.services.items()},
                 service_names, job_names, "service")
    _check_graph(report, "jobs", "after", {name: j.after for name, j in spec.jobs.items()},
                 job_names, service_names, "job")
    return report.errors


def normalise_spec(spec: ApplicationSpec) -> ApplicationSpec:
    """The same spec with signal names in one form (`SIGHUP`), so that `HUP` and `SIGHUP`
    do not hash differently and restart instances. Call only on a spec without errors."""
    services = {}
    for name, service in spec.services.items():
        templates = tuple(
            dataclasses.replace(t, on_change="signal:" + normalise_signal(t.on_change[7:]))
            if t.on_change.startswith("signal:") else t
            for t in service.templates)
        services[name] = dataclasses.replace(
            service, stop_signal=normalise_signal(service.stop_signal), templates=templates)
    return dataclasses.replace(spec, services=services)


# --- services and jobs ----------------------------------------------------------------------

def _check_service(report: _Report, base: Loc, service: ServiceSpec) -> None:
    _check_ports(report, base, service.ports)
    if service.health is not None:
        _check_health(report, (*base, "health"), service.health, service.ports)
    restart = service.restart
    if restart.backoff > restart.max_backoff:
        report.add((*base, "restart", "backoff"),
                   f"backoff ({restart.backoff:g}s) is longer than max_backoff "
                   f"({restart.max_backoff:g}s)")
    update = service.update
    # An instance must be able to be ready before its deadline, and the deadline must fit
    # in the progress deadline, or every rollout would fail (Nomad refuses the same).
    if update.min_healthy_time >= update.healthy_deadline:
        report.add((*base, "update", "min_healthy_time"),
                   f"min_healthy_time ({update.min_healthy_time:g}s) must be shorter than "
                   f"healthy_deadline ({update.healthy_deadline:g}s)")
    if update.healthy_deadline > update.progress_deadline:
        report.add((*base, "update", "healthy_deadline"),
                   f"healthy_deadline ({update.healthy_deadline:g}s) is longer than "
                   f"progress_deadline ({update.progress_deadline:g}s)")
    _check_env(report, base, service.env, service.ports)
    _check_port_refs(report, base, service)
    if normalise_signal(service.stop_signal) == "":
        report.add((*base, "stop_signal"), *_bad_signal(service.stop_signal))
    _check_artifact(report, base, service.artifact)
    _check_isolation(report, (*base, "isolation"), service.isolation)
    for i, constraint in enumerate(service.placement.constraints):
        problem = _constraint_problem(constraint)
        if problem:
            report.add((*base, "placement", "constraints", i), problem)
    if service.placement.spread is not None:
        try:
            parse_attribute(service.placement.spread)
        except ValueError as exc:
            report.add((*base, "placement", "spread"), str(exc))
    _check_templates(report, (*base, "templates"), service.templates, service.artifact)


def _check_job(report: _Report, base: Loc, job: JobSpec) -> None:
    _check_env(report, base, job.env, ())
    _check_port_refs(report, base, job)
    _check_artifact(report, base, job.artifact)
    _check_isolation(report, (*base, "isolation"), job.isolation)
    if job.schedule is not None:
        problem = _schedule_problem(job.schedule)
        if problem:
            report.add((*base, "schedule"), problem)
        if job.after:
            report.add((*base, "after"), "a job runs either on a schedule or after other "
                       "jobs, not both: remove schedule or after")
    if job.time_zone != "UTC":
        try:
            zoneinfo.ZoneInfo(job.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            best = close_match(job.time_zone, zoneinfo.available_timezones())
            tail = f" (did you mean {best!r}?)" if best else ""
            report.add((*base, "time_zone"), f"unknown time zone {job.time_zone!r}; expected a "
                       f"zoneinfo name such as UTC or Europe/Paris{tail}", best)


def _check_ports(report: _Report, base: Loc, ports: Sequence[PortSpec]) -> None:
    names: dict[str, int] = {}
    statics: dict[int, int] = {}
    for i, port in enumerate(ports):
        if port.name in names:
            report.add((*base, "ports", i, "name"), f"port name {port.name!r} is already used "
                       f"by ports[{names[port.name]}]")
        names.setdefault(port.name, i)
        if port.static is None:
            continue
        # Across services the same static port is allowed: the scheduler puts the services
        # on different nodes. Within one service, one instance would need it twice.
        if port.static in statics:
            report.add((*base, "ports", i, "static"), f"static port {port.static} is already "
                       f"used by ports[{statics[port.static]}]")
        statics.setdefault(port.static, i)


def _check_health(report: _Report, loc: Loc, health: HealthSpec,
                  ports: Sequence[PortSpec]) -> None:
    kinds = [k for k, v in (("http", health.http), ("tcp", health.tcp),
                            ("command", health.command)) if v is not None]
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else "none"
        report.add(loc, f"set exactly one of http, tcp, command (found {found})")
    port_names = [p.name for p in ports]
    for key, value in (("tcp", health.tcp), ("port", health.port)):
        if value is not None and value not in port_names:
            best = close_match(value, port_names)
            declared = ", ".join(port_names) if port_names else "none"
            tail = f" (did you mean {best!r}?)" if best else ""
            report.add((*loc, key), f"{value!r} is not a port of this service (declared ports: "
                       f"{declared}){tail}", best)
    if health.http is not None:
        if not health.http.startswith("/"):
            report.add((*loc, "http"), f"expected a path such as /healthz, got {health.http!r}",
                       "/" + health.http)
        if health.port is None and not port_names:
            report.add((*loc, "http"), "an http check needs a port: declare one under ports "
                       "(the first is used) or set health.port")
    if health.command is not None and not health.command:
        report.add((*loc, "command"), "must not be empty")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_env(report: _Report, base: Loc, env: Mapping[str, str],
               ports: Sequence[PortSpec]) -> None:
    port_vars = {f"PORT_{p.name.upper()}" for p in ports} | ({"PORT"} if ports else set())
    for key in env:
        loc = (*base, "env", key)
        if not _ENV_NAME.match(key):
            report.add(loc, f"invalid variable name {key!r}: use letters, digits and '_', "
                       "not starting with a digit")
        elif key.startswith("CORRAL_"):
            report.add(loc, f"{key!r}: names starting with CORRAL_ are reserved for corral")
        elif key in port_vars:
            # The agent sets these in every instance; a user value would be overridden.
            report.add(loc, f"{key!r} is set by corral to the instance's port; pick another "
                       "name")


_REF = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def _check_port_refs(report: _Report, base: Loc, spec: ServiceSpec | JobSpec) -> None:
    ports = spec.ports if isinstance(spec, ServiceSpec) else ()
    places: list[tuple[Loc, str]] = [((*base, "command", i), arg)
                                     for i, arg in enumerate(spec.command)]
    places += [((*base, "env", key), value) for key, value in spec.env.items()]
    if isinstance(spec, ServiceSpec) and spec.health and spec.health.command:
        places += [((*base, "health", "command", i), arg)
                   for i, arg in enumerate(spec.health.command)]
    known = [f"PORT_{p.name.upper()}" for p in ports]
    for loc, text in places:
        for ref in _REF.findall(text):
            if ref != "PORT" and not ref.startswith("PORT_"):
                continue
            if not ports:
                what = "a job has no ports" if isinstance(spec, JobSpec) else \
                    "this service declares no ports"
                report.add(loc, f"${{{ref}}} refers to a port, but {what}")
            elif ref != "PORT" and ref not in known:
                # Match on the port part only: every candidate shares the PORT_ prefix.
                upper = {k.removeprefix("PORT_"): k for k in known}
                near = ref[5:].upper() if ref[5:].upper() in upper else \
                    close_match(ref[5:].upper(), list(upper))
                best = upper[near] if near else None
                tail = f" (did you mean ${{{best}}}?)" if best else ""
                report.add(loc, f"${{{ref}}} refers to no declared port (declared: "
                           f"{', '.join('${' + k + '}' for k in known)}){tail}",
                           f"${{{best}}}" if best else None)


# --- signals, artifacts, isolation, templates -----------------------------------------------

# Linux signal names, fixed here rather than read from the `signal` module so that a spec's
# validity does not depend on the OS the CLI happens to run on.
_SIGNALS = frozenset(
    ["HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
     "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
     "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS"])


def normalise_signal(name: str) -> str:
    """`term`, `TERM` or `SIGTERM` -> `SIGTERM`; "" when it is not a signal name."""
    bare = name.strip().upper().removeprefix("SIG")
    return f"SIG{bare}" if bare in _SIGNALS else ""


def _bad_signal(name: str) -> tuple[str, str | None]:
    best = close_match(name.strip().upper(), [f"SIG{s}" for s in _SIGNALS])
    tail = f" (did you mean {best!r}?)" if best else ""
    return f"unknown signal {name!r}; expected a name such as SIGTERM or SIGINT{tail}", best


_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _check_artifact(report: _Report, base: Loc, artifact: str | None,
                    field: str = "artifact", example: str = "./web") -> None:
    if artifact is None:
        return
    expected = f"expected a path relative to the spec file (such as {example}) or a " \
               "digest sha256:<64 lowercase hex digits>"
    if artifact.startswith("sha256:"):
        if not _DIGEST.match(artifact):
            report.add((*base, field), f"{expected}, got {artifact!r}")
    elif not artifact.strip() or artifact.startswith(("/", "~")) or "://" in artifact:
        report.add((*base, field), f"{expected}, got {artifact!r}")


def _check_isolation(report: _Report, loc: Loc, isolation: IsolationSpec) -> None:
    if isolation.rootfs is not None and isolation.driver != "oci":
        report.add((*loc, "rootfs"), "rootfs needs driver: oci (the other drivers run on the "
                   "host's file system)")
    _check_artifact(report, loc, isolation.rootfs, "rootfs", "./rootfs.tar")
    if isolation.network == "isolated" and isolation.driver == "process":
        report.add((*loc, "network"), "network: isolated needs driver sandbox or oci (the "
                   "process driver shares the host's network)")


def _check_templates(report: _Report, loc: Loc, templates: Sequence[TemplateSpec],
                     artifact: str | None) -> None:
    seen: dict[str, int] = {}
    for i, template in enumerate(templates):
        # The source is read from the artifact (the agent checks again, symlinks included).
        source = template.source
        if not source.strip() or source.startswith(("/", "~")) or ".." in source.split("/"):
            report.add((*loc, i, "source"), "expected a path inside the artifact (relative, "
                       f"without '..'), got {source!r}")
        elif artifact is None:
            report.add((*loc, i, "source"), "a template's source is read from the service's "
                       "artifact, and this service has none: add an artifact directory "
                       "holding it")
        elif _same_path(source, template.destination):
            report.add((*loc, i, "destination"), "the destination would overwrite the "
                       f"template's own source {source!r}")
        on_change = template.on_change
        if on_change.startswith("signal:"):
            if not normalise_signal(on_change[7:]):
                message, best = _bad_signal(on_change[7:])
                report.add((*loc, i, "on_change"), message,
                           f"signal:{best}" if best else None)
        elif on_change not in ("restart", "noop"):
            report.add((*loc, i, "on_change"), "expected restart, noop or signal:<NAME> "
                       f"(such as signal:SIGHUP), got {on_change!r}")
        dest = template.destination
        # The destination lives in the instance's task dir; it must not point outside it.
        if not dest.strip() or dest.startswith(("/", "~")) or ".." in dest.split("/"):
            report.add((*loc, i, "destination"), "expected a path inside the task directory "
                       f"(relative, without '..'), got {dest!r}")
        elif dest in seen:
            report.add((*loc, i, "destination"), f"{dest!r} is already written by "
                       f"templates[{seen[dest]}]")
        seen.setdefault(dest, i)


def _same_path(a: str, b: str) -> bool:
    return [p for p in a.split("/") if p not in ("", ".")] == \
        [p for p in b.split("/") if p not in ("", ".")]


# --- placement constraints ------------------------------------------------------------------

def _constraint_problem(text: str) -> str | None:
    # The scheduler parses with the same function, so what passes here is what it applies.
    try:
        parse_constraint(text)
    except ValueError as exc:
        return str(exc)
    return None


# --- dependency graphs ----------------------------------------------------------------------

def _check_graph(report: _Report, section: str, field: str,
                 edges: Mapping[str, Sequence[str]], names: Collection[str],
                 other_kind_names: Collection[str], kind: str) -> None:
    for name, deps in edges.items():
        for i, dep in enumerate(deps):
            loc = (section, name, field, i)
            if dep == name:
                report.add(loc, f"a {kind} cannot depend on itself")
            elif dep not in names:
                best = close_match(dep, list(names))
                if dep in other_kind_names:
                    why = f"{dep!r} is not a {kind}; {field} names {kind}s of this application"
                else:
                    why = f"unknown {kind} {dep!r}"
                tail = f" (did you mean {best!r}?)" if best else ""
                report.add(loc, why + tail, best)
    graph = {name: [d for d in deps if d in edges and d != name] for name, deps in edges.items()}
    for cycle in find_cycles(graph):
        start, nxt = cycle[0], cycle[1]
        report.add((section, start, field, list(edges[start]).index(nxt)),
                   "dependency cycle: " + " -> ".join(cycle))


# --- schedules ------------------------------------------------------------------------------

def _schedule_problem(schedule: str) -> str | None:
    # The parser the cron controller runs (jobs/schedule.py): what passes here is what runs.
    # Syntax only: the time zone is checked on its own field.
    try:
        parse_schedule(schedule)
    except ValueError as exc:
        return f"invalid schedule {schedule!r}: {exc}"
    return None
