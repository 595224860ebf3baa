"""Cross-field checks on an application spec: the rules a per-field schema cannot state.

pydantic has already checked each field on its own (`model/application.py`); this module
checks fields against each other (a health check names a declared port, `depends_on` names a
service and has no cycle, `${PORT_X}` refers to a port, the update deadlines fit together)
and the syntax of the small languages inside strings (signal names, placement constraints,
cron and ISO 8601 schedules). Every problem is reported, each with the path of the field to
fix.

Neighbours: `spec/loader.py` runs `check_spec` after validation and `normalise_spec` once the
spec is clean; `spec/errors.py` defines `FieldError`. The scheduler may reuse `parse_cron`.
Constraints are parsed by `model/constraints.py`, the parser the scheduler applies too.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import zoneinfo
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

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

__all__ = ["CronFields", "check_spec", "normalise_signal", "normalise_spec", "parse_cron",
           "parse_repeating_interval"]


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
    _check_templates(report, (*base, "templates"), service.templates)


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


def _check_templates(report: _Report, loc: Loc, templates: Sequence[TemplateSpec]) -> None:
    seen: dict[str, int] = {}
    for i, template in enumerate(templates):
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
    for cycle in _cycles(graph):
        start, nxt = cycle[0], cycle[1]
        report.add((section, start, field, list(edges[start]).index(nxt)),
                   "dependency cycle: " + " -> ".join(cycle))


def _cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """At least one cycle through every node that lies on one, each written from its
    alphabetically first member and closed (`a -> b -> a`), in a deterministic order.

    A depth-first search reports the cycle closed by each back edge; enumerating every
    elementary cycle would flood the user with variations of the same mistake.
    """
    found: dict[tuple[str, ...], list[str]] = {}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        state[root] = 1
        stack: list[Iterator[str]] = [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):]
                turn = cycle.index(min(cycle))
                cycle = cycle[turn:] + cycle[:turn]
                found.setdefault(tuple(cycle), [*cycle, cycle[0]])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return [found[key] for key in sorted(found)]


# --- schedules ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class CronFields:
    """A 5-field cron expression as the set of values each field allows. Classic cron runs
    when minute, hour and month match and *either* day field matches if both are restricted;
    `days_any` / `weekdays_any` record which were `*`. Sunday is 0."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_any: bool
    weekdays_any: bool


_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_CRON_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS),
)
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}


def _cron_value(text: str, field: str, lo: int, hi: int, names: Mapping[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"{field}: {text!r} is not a number" +
                         (" or a name such as " + next(iter(names)) if names else ""))
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is out of range {lo}-{hi}")
    return value


def _cron_field(text: str, field: str, lo: int, hi: int,
                names: Mapping[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field}: step {step_text!r} must be a whole number above 0")
            step = int(step_text)
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            first = _cron_value(a, field, lo, hi, names)
            last = _cron_value(b, field, lo, hi, names)
            if first > last:
                raise ValueError(f"{field}: range {base!r} goes backwards")
        else:
            first = _cron_value(base, field, lo, hi, names)
            # `5/15` means "from 5, every 15" (Vixie cron and most of its successors).
            last = hi if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(expr: str) -> CronFields:
    """A 5-field cron expression (`*/15 * * * *`, `0 9 * * MON-FRI`) or a macro such as
    `@daily`; raises ValueError saying which field is wrong."""
    text = _MACROS.get(expr.strip().lower(), expr)
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), "
                         f"found {len(parts)}")
    sets = [_cron_field(part, *spec) for part, spec in zip(parts, _CRON_FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
    return CronFields(minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3],
                      weekdays=weekdays, days_any=parts[2] == "*", weekdays_any=parts[4] == "*")


_ISO_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:[.,]\d+)?)S)?)?$")


def parse_repeating_interval(text: str) -> tuple[int | None, datetime.datetime, str]:
    """`R[n]/<start>/<duration>` (ISO 8601, as Chronos uses it) -> (repeats or None for
    unbounded, start, duration text); raises ValueError saying which part is wrong."""
    parts = text.strip().split("/")
    if len(parts) != 3 or not re.fullmatch(r"R\d*", parts[0]):
        raise ValueError("expected R[n]/<start>/<period> such as R/2026-01-01T00:00:00Z/PT1H")
    repeats = int(parts[0][1:]) if len(parts[0]) > 1 else None
    try:
        start = datetime.datetime.fromisoformat(parts[1])
    except ValueError:
        raise ValueError(f"start {parts[1]!r} is not an ISO 8601 date and time such as "
                         "2026-01-01T00:00:00Z") from None
    m = _ISO_DURATION.match(parts[2])
    if m is None:
        raise ValueError(f"period {parts[2]!r} is not an ISO 8601 duration such as PT1H, "
                         "P1D or PT30M")
    if not any(float(g.replace(",", ".")) for g in m.groups() if g):
        raise ValueError(f"period {parts[2]!r} is zero")
    return repeats, start, parts[2]


def _schedule_problem(schedule: str) -> str | None:
    try:
        if schedule.strip().startswith("R"):
            parse_repeating_interval(schedule)
        else:
            parse_cron(schedule)
    except ValueError as exc:
        return f"invalid schedule {schedule!r}: {exc}"
    return None
