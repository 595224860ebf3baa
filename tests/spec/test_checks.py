"""Cross-field checks: each rule on its own, on records built in the test, so a failure
names the rule that broke."""

from __future__ import annotations

from typing import Any

import pytest

from corral.model.application import ApplicationSpec
from corral.model.codec import from_data
from corral.spec import check_spec, normalise_spec, parse_cron
from corral.spec.checks import normalise_signal
from corral.spec.errors import Loc

DIGEST = "sha256:" + "ab" * 32


def app(services: dict[str, Any] | None = None, jobs: dict[str, Any] | None = None
        ) -> ApplicationSpec:
    return from_data(ApplicationSpec, {"name": "app", "services": services or {},
                                       "jobs": jobs or {}})


def svc(**fields: Any) -> dict[str, Any]:
    return {"command": ["run"], **fields}


def job(**fields: Any) -> dict[str, Any]:
    return {"command": ["run"], **fields}


def problems(spec: ApplicationSpec) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in check_spec(spec)]


def paths(spec: ApplicationSpec) -> list[str]:
    return [e.path for e in check_spec(spec)]


def test_a_clean_spec_has_no_problems() -> None:
    spec = app({"web": svc(ports=[{"name": "http"}], health={"http": "/"},
                           command=["run", "${PORT_HTTP}", "${PORT}"], depends_on=["db"]),
                "db": svc(ports=[{"name": "main", "static": 5432}], health={"tcp": "main"})},
               {"a": job(), "b": job(after=["a"]), "c": job(schedule="@daily")})
    assert check_spec(spec) == []


# --- ports and health -----------------------------------------------------------------------

def test_port_names_and_static_ports_are_unique_within_a_service() -> None:
    spec = app({"web": svc(ports=[{"name": "a", "static": 80}, {"name": "a"},
                                  {"name": "b", "static": 80}])})
    assert paths(spec) == ["services.web.ports[1].name", "services.web.ports[2].static"]


def test_the_same_static_port_in_two_services_is_allowed() -> None:
    spec = app({"a": svc(ports=[{"name": "p", "static": 80}]),
                "b": svc(ports=[{"name": "p", "static": 80}])})
    assert check_spec(spec) == []


@pytest.mark.parametrize(("health", "ports", "expected"), [
    ({"http": "/h"}, [{"name": "http"}], []),
    ({"http": "/h", "port": "admin"}, [{"name": "http"}, {"name": "admin"}], []),
    ({"tcp": "http"}, [{"name": "http"}], []),
    ({"command": ["check"]}, [], []),
    ({}, [], ["services.web.health"]),
    ({"http": "/h", "command": ["x"]}, [{"name": "http"}], ["services.web.health"]),
    ({"http": "/h"}, [], ["services.web.health.http"]),
    ({"http": "h"}, [{"name": "http"}], ["services.web.health.http"]),
    ({"http": "/h", "port": "nope"}, [{"name": "http"}], ["services.web.health.port"]),
    ({"tcp": "nope"}, [{"name": "http"}], ["services.web.health.tcp"]),
    ({"command": []}, [], ["services.web.health.command"]),
])
def test_health_checks(health: dict[str, Any], ports: list[dict[str, Any]],
                       expected: list[str]) -> None:
    assert paths(app({"web": svc(health=health, ports=ports)})) == expected


def test_health_with_two_kinds_names_them() -> None:
    spec = app({"web": svc(health={"http": "/", "tcp": "p"}, ports=[{"name": "p"}])})
    assert problems(spec) == [("services.web.health",
                               "set exactly one of http, tcp, command (found http and tcp)")]


# --- dependencies ---------------------------------------------------------------------------

def test_two_service_cycle_is_named() -> None:
    spec = app({"web": svc(depends_on=["api"]), "api": svc(depends_on=["web"])})
    assert problems(spec) == [("services.api.depends_on[0]",
                               "dependency cycle: api -> web -> api")]


def test_every_separate_cycle_is_reported_once() -> None:
    spec = app({"a": svc(depends_on=["b"]), "b": svc(depends_on=["c"]),
                "c": svc(depends_on=["a"]), "x": svc(depends_on=["y"]),
                "y": svc(depends_on=["x"]), "z": svc(depends_on=["a"])})
    messages = [m for _, m in problems(spec)]
    assert messages == ["dependency cycle: a -> b -> c -> a", "dependency cycle: x -> y -> x"]


def test_a_diamond_is_not_a_cycle() -> None:
    spec = app({"top": svc(depends_on=["l", "r"]), "l": svc(depends_on=["base"]),
                "r": svc(depends_on=["base"]), "base": svc()})
    assert check_spec(spec) == []


def test_long_chain_does_not_hit_the_recursion_limit() -> None:
    names = [f"s{i}" for i in range(3000)]
    services = {n: svc(depends_on=[names[i + 1]] if i + 1 < len(names) else [])
                for i, n in enumerate(names)}
    assert check_spec(app(services)) == []
    services["s2999"] = svc(depends_on=["s0"])
    assert len(check_spec(app(services))) == 1


def test_unknown_and_self_dependencies() -> None:
    spec = app({"web": svc(depends_on=["web", "dbb", "report"]), "db": svc()},
               {"report": job()})
    assert problems(spec) == [
        ("services.web.depends_on[0]", "a service cannot depend on itself"),
        ("services.web.depends_on[1]", "unknown service 'dbb' (did you mean 'db'?)"),
        ("services.web.depends_on[2]", "'report' is not a service; depends_on names services "
                                       "of this application"),
    ]


def test_job_after_checks() -> None:
    spec = app({"web": svc()}, {"a": job(after=["b"]), "b": job(after=["a", "web", "zzz"])})
    assert paths(spec) == ["jobs.b.after[1]", "jobs.b.after[2]", "jobs.a.after[0]"]
    assert "dependency cycle: a -> b -> a" in problems(spec)[2][1]


def test_names_declared_elsewhere_are_not_unknown() -> None:
    spec = app({"web": svc(depends_on=["broken"])}, {"j": job(after=["broken-job"])})
    assert check_spec(spec, other_services={"broken"}, other_jobs={"broken-job"}) == []
    assert len(check_spec(spec)) == 2


def test_a_name_cannot_be_both_a_service_and_a_job() -> None:
    spec = app({"web": svc()}, {"web": job()})
    assert paths(spec) == ["jobs.web"]


# --- ${PORT_X} references and env -----------------------------------------------------------

def test_port_references() -> None:
    spec = app({"web": svc(
        ports=[{"name": "http"}, {"name": "admin_ui"}],
        command=["a", "${PORT_HTTP}", "${PORT_ADMIN_UI}", "${PORT}", "${HOME}", "${PORTAL}",
                 "$PORT_NOPE", "${PORT_NOPE}", "${PORT_http}"],
        env={"X": "${PORT_ADMINUI}"},
        health={"command": ["check", "${PORT_GONE}"]})})
    assert [(e.path, e.suggestion) for e in check_spec(spec)] == [
        ("services.web.command[7]", None),
        ("services.web.command[8]", "${PORT_HTTP}"),
        ("services.web.env.X", "${PORT_ADMIN_UI}"),
        ("services.web.health.command[1]", None),
    ]


def test_port_references_without_ports() -> None:
    spec = app({"web": svc(command=["a", "${PORT}"])}, {"j": job(env={"P": "${PORT_X}"})})
    assert problems(spec) == [
        ("services.web.command[1]", "${PORT} refers to a port, but this service declares no "
                                    "ports"),
        ("jobs.j.env.P", "${PORT_X} refers to a port, but a job has no ports"),
    ]


@pytest.mark.parametrize(("name", "ok"), [
    ("A", True), ("_A1", True), ("lower_case", True), ("CORRAL", True), ("PORT_OTHER", True),
    ("1A", False), ("A-B", False), ("A B", False), ("", False), ("CORRAL_APP", False),
    ("CORRAL_ANYTHING", False), ("PORT", False), ("PORT_HTTP", False),
])
def test_env_names(name: str, ok: bool) -> None:
    spec = app({"web": svc(env={name: "v"}, ports=[{"name": "http"}])})
    assert (check_spec(spec) == []) is ok


# --- signals, artifacts, isolation, templates, constraints ----------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("SIGTERM", "SIGTERM"), ("TERM", "SIGTERM"), ("term", "SIGTERM"), ("sighup", "SIGHUP"),
    (" INT ", "SIGINT"), ("USR1", "SIGUSR1"), ("SIGFOO", ""), ("15", ""), ("", ""),
    ("SIGSIGTERM", ""),
])
def test_normalise_signal(given: str, expected: str) -> None:
    assert normalise_signal(given) == expected


def test_stop_signal_must_be_a_signal() -> None:
    spec = app({"web": svc(stop_signal="SIGTREM")})
    errors = check_spec(spec)
    assert [(e.path, e.suggestion) for e in errors] == [("services.web.stop_signal", "SIGTERM")]


def test_normalise_spec_uses_sig_names_everywhere() -> None:
    spec = app({"web": svc(stop_signal="hup", templates=[
        {"destination": "a", "source": "a", "on_change": "signal:usr1"},
        {"destination": "b", "source": "b", "on_change": "restart"}])})
    web = normalise_spec(spec).services["web"]
    assert web.stop_signal == "SIGHUP"
    assert [t.on_change for t in web.templates] == ["signal:SIGUSR1", "restart"]


@pytest.mark.parametrize(("artifact", "ok"), [
    ("./web", True), ("web", True), ("../shared/web", True), ("dist/app.tar.gz", True),
    (DIGEST, True), ("/srv/web", False), ("~/web", False), ("", False), (" ", False),
    ("https://example.com/app.tgz", False), ("sha256:abc", False),
    ("sha256:" + "AB" * 32, False), (DIGEST + "0", False),
])
def test_artifact(artifact: str, ok: bool) -> None:
    assert (check_spec(app({"w": svc(artifact=artifact)})) == []) is ok
    assert (check_spec(app(jobs={"j": job(artifact=artifact)})) == []) is ok


@pytest.mark.parametrize(("driver", "ok"), [("oci", True), ("sandbox", False),
                                            ("process", False), (None, False)])
def test_rootfs_only_with_oci(driver: str | None, ok: bool) -> None:
    isolation = {"driver": driver, "rootfs": "./rootfs"}
    assert (check_spec(app({"w": svc(isolation=isolation)})) == []) is ok
    assert (check_spec(app(jobs={"j": job(isolation=isolation)})) == []) is ok


@pytest.mark.parametrize(("on_change", "ok"), [
    ("restart", True), ("noop", True), ("signal:SIGHUP", True), ("signal:hup", True),
    ("signal:", False), ("signal:NOPE", False), ("reload", False), ("Restart", False),
])
def test_template_on_change(on_change: str, ok: bool) -> None:
    spec = app({"w": svc(artifact="./w", templates=[{"destination": "a", "source": "a.j2",
                                                     "on_change": on_change}])})
    assert (check_spec(spec) == []) is ok


@pytest.mark.parametrize(("destination", "ok"), [
    ("a.conf", True), ("conf/a.conf", True), ("./a", True), ("/etc/a", False),
    ("../a", False), ("conf/../../a", False), ("", False),
])
def test_template_destination(destination: str, ok: bool) -> None:
    spec = app({"w": svc(artifact="./w", templates=[{"destination": destination,
                                                     "source": "t.j2"}])})
    assert (check_spec(spec) == []) is ok


@pytest.mark.parametrize(("source", "ok"), [
    ("a.j2", True), ("conf/a.j2", True), ("./a.j2", True), ("/etc/a.j2", False),
    ("~/a.j2", False), ("../a.j2", False), ("conf/../../a.j2", False), ("", False),
    (" ", False),
])
def test_template_source_is_inside_the_artifact(source: str, ok: bool) -> None:
    spec = app({"w": svc(artifact="./w", templates=[{"destination": "out", "source": source}])})
    assert (check_spec(spec) == []) is ok
    if not ok:
        assert paths(spec) == ["services.w.templates[0].source"]


def test_templates_need_an_artifact() -> None:
    spec = app({"w": svc(templates=[{"destination": "out", "source": "a.j2"}])})
    [(path, message)] = problems(spec)
    assert path == "services.w.templates[0].source"
    assert "read from the service's artifact, and this service has none" in message


def test_a_template_must_not_overwrite_its_source() -> None:
    spec = app({"w": svc(artifact=DIGEST, templates=[
        {"destination": "./conf/a", "source": "conf/a"}])})
    assert problems(spec) == [("services.w.templates[0].destination", "the destination would "
                               "overwrite the template's own source 'conf/a'")]


@pytest.mark.parametrize(("constraint", "ok"), [
    ("zone != c", True), ("zone == a", True), ("cpu.cores >= 4", True), ("mem<8", True),
    ("node.class in gpu,cpu", True), ("rack not_in r1, r2", True),
    ("host regexp ^web-[0-9]+$", True), ("kernel version >= 5.10, < 7", True),
    ("${node.datacenter} == dc1", True), ("meta.team/owner == x", True),
    ("zone", False), ("zone !=", False), ("== c", False), ("zone ~ c", False),
    ("zone in", False), ("zone in a,,b", False), ("host regexp ([", False),
    ("zone notin a", False), ("zonein a", False),
])
def test_placement_constraints(constraint: str, ok: bool) -> None:
    spec = app({"w": svc(placement={"constraints": [constraint]})})
    assert (check_spec(spec) == []) is ok


def test_restart_backoff_must_not_exceed_max_backoff() -> None:
    assert paths(app({"w": svc(restart={"backoff": "1m", "max_backoff": "30s"})})) == [
        "services.w.restart.backoff"]
    assert check_spec(app({"w": svc(restart={"backoff": "30s", "max_backoff": "30s"})})) == []


# --- schedules ------------------------------------------------------------------------------

def test_parse_cron_fields() -> None:
    cron = parse_cron("*/15 9-17 1,15 JAN-mar mon-FRI")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == set(range(9, 18))
    assert cron.days == {1, 15}
    assert cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert (cron.days_any, cron.weekdays_any) == (False, False)


@pytest.mark.parametrize(("expr", "field", "values"), [
    ("5/20 * * * *", "minutes", {5, 25, 45}),
    ("0 0 * * 7", "weekdays", {0}),
    ("0 0 * * 0,7", "weekdays", {0}),
    ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
    ("1-10/3 * * * *", "minutes", {1, 4, 7, 10}),
    ("* * * * *", "hours", set(range(24))),
    ("0 0 31 * *", "days", {31}),
    ("@daily", "hours", {0}),
    ("@HOURLY", "minutes", {0}),
    ("@weekly", "weekdays", {0}),
])
def test_parse_cron_values(expr: str, field: str, values: set[int]) -> None:
    assert getattr(parse_cron(expr), field) == values


@pytest.mark.parametrize(("expr", "fragment"), [
    ("* * * *", "expected 5 fields"), ("* * * * * *", "found 6"),
    ("60 * * * *", "minute: 60 is out of range 0-59"), ("* 24 * * *", "hour: 24"),
    ("* * 0 * *", "day of month: 0 is out of range 1-31"), ("* * * 13 *", "month: 13"),
    ("* * * * 8", "day of week: 8"), ("*/0 * * * *", "step '0'"), ("*/x * * * *", "step 'x'"),
    ("5-1 * * * *", "goes backwards"), ("MON * * * *", "minute: 'MON' is not a number"),
    ("* * * FOO *", "month: 'FOO'"), ("1,,2 * * * *", "''"), ("-1 * * * *", "minute"),
    ("@reboot", "expected 5 fields"), ("", "expected 5 fields"),
])
def test_parse_cron_errors(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cron(expr)
    assert fragment in str(info.value)


def test_schedule_errors_point_at_the_job() -> None:
    spec = app(jobs={"a": job(schedule="0 0 * * *"), "b": job(schedule="nope"),
                     "c": job(schedule="R/2026-01-01T00:00:00Z/PT1H"),
                     "d": job(schedule="R/2026-01-01T00:00:00Z/soon")})
    assert paths(spec) == ["jobs.b.schedule", "jobs.d.schedule"]


def test_a_job_has_a_schedule_or_parents_not_both() -> None:
    spec = app(jobs={"a": job(), "b": job(after=["a"], schedule="@daily")})
    assert paths(spec) == ["jobs.b.after"]


@pytest.mark.parametrize(("zone", "ok"), [
    ("UTC", True), ("Europe/Paris", True), ("America/New_York", True),
    ("Mars/Olympus", False), ("../etc/passwd", False), ("", False), ("Europe", False),
])
def test_time_zone(zone: str, ok: bool) -> None:
    assert (check_spec(app(jobs={"j": job(time_zone=zone)})) == []) is ok


def test_time_zone_suggestion() -> None:
    errors = check_spec(app(jobs={"j": job(time_zone="Europe/Pariss")}))
    assert [(e.path, e.suggestion) for e in errors] == [("jobs.j.time_zone", "Europe/Paris")]


def test_line_lookup_is_used_for_every_error() -> None:
    seen: list[Loc] = []

    def line_of(loc: Loc) -> int:
        seen.append(loc)
        return 42

    spec = app({"web": svc(depends_on=["web"], stop_signal="nope")})
    errors = check_spec(spec, line_of=line_of)
    assert [e.line for e in errors] == [42, 42]
    assert sorted(seen, key=str) == [("services", "web", "depends_on", 0),
                                     ("services", "web", "stop_signal")]


def test_rootfs_must_be_a_relative_path_or_a_digest() -> None:
    from corral.spec import SpecError, load_spec_text

    text = ("name: x\nservices:\n  a:\n    command: [sh]\n"
            "    isolation: {driver: oci, rootfs: /srv/rootfs.tar}\n")
    try:
        load_spec_text(text)
    except SpecError as exc:
        [err] = exc.errors
        assert err.path == "services.a.isolation.rootfs" and "./rootfs.tar" in err.message
    else:
        raise AssertionError("an absolute rootfs path was accepted")
    ok = text.replace("/srv/rootfs.tar", "./rootfs.tar")
    assert load_spec_text(ok).services["a"].isolation.rootfs == "./rootfs.tar"


def test_isolated_network_needs_a_driver_that_can_isolate() -> None:
    from corral.spec import SpecError, load_spec_text

    text = ("name: x\nservices:\n  a:\n    command: [sh]\n"
            "    isolation: {driver: process, network: isolated}\n")
    try:
        load_spec_text(text)
    except SpecError as exc:
        [err] = exc.errors
        assert err.path == "services.a.isolation.network" and "sandbox or oci" in err.message
    else:
        raise AssertionError("process + isolated network was accepted")
    assert load_spec_text(text.replace("process", "sandbox"))


def test_update_deadlines_must_fit_together() -> None:
    assert problems(app({"web": svc(update={"min_healthy_time": "10s",
                                            "healthy_deadline": "10s"})})) == [
        ("services.web.update.min_healthy_time",
         "min_healthy_time (10s) must be shorter than healthy_deadline (10s)")]
    assert problems(app({"web": svc(update={"healthy_deadline": "5m",
                                            "progress_deadline": "1m"})})) == [
        ("services.web.update.healthy_deadline",
         "healthy_deadline (300s) is longer than progress_deadline (60s)")]
    assert problems(app({"web": svc(update={"min_healthy_time": "0s",
                                            "healthy_deadline": "1s",
                                            "progress_deadline": "1s"})})) == []
