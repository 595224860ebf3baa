"""Loading spec files: good files load to the expected records; bad files fail with every
error, each at the right path and line, in words a user can act on."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest

from corral.model.application import ApplicationSpec
from corral.spec import FieldError, SpecError, load_spec_file, load_spec_text, validate_spec_data

FILES = Path(__file__).parent / "files"
MiB = 1024 * 1024


def errors_of(name: str) -> list[FieldError]:
    with pytest.raises(SpecError) as info:
        load_spec_file(FILES / name)
    assert info.value.filename == str(FILES / name)
    return info.value.errors


def text_errors(text: str, filename: str = "app.yaml") -> list[FieldError]:
    with pytest.raises(SpecError) as info:
        load_spec_text(text, filename=filename)
    return info.value.errors


# --- good files -----------------------------------------------------------------------------

def test_design_example_loads_cleanly() -> None:
    spec = load_spec_file(FILES / "design_example.yaml")
    assert spec.name == "shop"
    assert spec.namespace == "default"
    web = spec.services["web"]
    assert web.instances == 3
    assert web.command == ("python3", "app.py", "--port", "${PORT_HTTP}")
    assert web.resources.cpu == 0.25
    assert web.resources.memory == 128 * MiB
    assert [p.name for p in web.ports] == ["http"]
    assert web.health is not None
    assert (web.health.http, web.health.port, web.health.interval) == ("/healthz", "http", 2.0)
    assert web.update.auto_revert is True
    assert web.placement.constraints == ("zone != c",)
    assert web.depends_on == ("cache",)
    assert web.templates[0].on_change == "restart"
    assert spec.services["cache"].command[-1] == ""
    assert spec.jobs["report"].schedule == "*/15 * * * *"
    assert spec.jobs["publish"].after == ("report",)


def test_full_example_loads_with_yaml_12_scalars_and_merge_keys() -> None:
    spec = load_spec_file(FILES / "good_full.yaml")
    web = spec.services["web"]
    # YAML 1.1 would have turned NO into false and the date into a date object.
    assert web.env == {"GREETING": "hello", "COUNTRY": "NO", "WORKERS": "4", "DEBUG": "true",
                       "RELEASED": "2026-01-01", "_PRIVATE": "x"}
    assert web.resources.cpu == 0.25
    assert web.resources.memory == 1536 * MiB
    assert web.restart.max_backoff == 90.0
    assert web.update.auto_revert is True
    assert web.shutdown_delay == 1.5
    assert spec.services["cache"].shutdown_delay == 0.0
    canary = spec.services["web-canary"]
    assert canary.instances == 1
    assert canary.depends_on == ("web", "cache")
    assert canary.ports == web.ports
    assert spec.jobs["report"].command == ("python3", "report.py", "=")
    assert spec.jobs["report"].history_limit == 5 and spec.jobs["hourly"].history_limit == 20
    assert spec.jobs["publish"].after == ("report", "weekly")


def test_loading_normalises_signal_names() -> None:
    spec = load_spec_file(FILES / "good_full.yaml")
    web = spec.services["web"]
    assert web.stop_signal == "SIGINT"
    assert web.templates[0].on_change == "signal:SIGHUP"
    assert web.templates[1].on_change == "noop"
    assert spec.services["cache"].stop_signal == "SIGTERM"


def test_minimal_file_gets_defaults() -> None:
    spec = load_spec_file(FILES / "good_minimal.yaml")
    assert spec == ApplicationSpec(name="tiny")


def test_json_file_loads_like_the_same_yaml() -> None:
    from_json = load_spec_file(FILES / "good.json")
    from_yaml = load_spec_text(
        "name: api\n"
        "services:\n"
        "  web:\n"
        "    command: [python3, -m, http.server, '${PORT_HTTP}']\n"
        "    ports: [{name: http}]\n"
        "    resources: {memory: 64MiB, cpu: 0.5}\n"
        "    health: {http: /, interval: 2500ms}\n"
        "jobs:\n"
        "  once: {command: [echo, hi]}\n")
    assert from_json == from_yaml
    assert from_json.services["web"].resources.memory == 64 * MiB


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "app.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"name": "bom"}')
    assert load_spec_file(path).name == "bom"


def test_validate_spec_data_accepts_decoded_json() -> None:
    data = json.loads((FILES / "good.json").read_text())
    assert validate_spec_data(data) == load_spec_file(FILES / "good.json")


# --- bad files: every error, its path and its line ------------------------------------------

# file -> every expected error in order: (line, path, a fragment of the message)
BAD_FILES: dict[str, list[tuple[int | None, str, str]]] = {
    "bad_syntax.yaml": [
        (5, "", "invalid YAML: expected ',' or ']', but got ':' at column 14 (while parsing "
                "a flow sequence started on line 4)")],
    "bad_tabs.yaml": [(3, "", "not tabs")],
    "bad_top_list.yaml": [(1, "", "expected a mapping of fields (name, namespace, services, "
                                  "jobs) at the top level, got a list")],
    "bad_top_scalar.yaml": [(1, "", "at the top level, got 'just some words'")],
    "bad_empty.yaml": [(None, "", "the file is empty")],
    "bad_comments_only.yaml": [(None, "", "the file is empty")],
    "bad_two_documents.yaml": [(2, "", "one document")],
    "bad_unknown_fields.yaml": [
        (2, "namespce", "unknown field 'namespce' (did you mean 'namespace'?)"),
        (6, "services.web.instance", "unknown field 'instance' (did you mean 'instances'?)"),
        (8, "services.web.resources.memroy", "(did you mean 'memory'?)"),
        (11, "services.web.ports[0].sttic", "(did you mean 'static'?)"),
        (14, "services.web.health.intervl", "(did you mean 'interval'?)"),
        (15, "services.web.restart.polcy", "(did you mean 'policy'?)"),
        (16, "services.web.zzz", "unknown field 'zzz'; valid fields here: command, instances,"),
        (20, "jobs.nightly.scedule", "(did you mean 'schedule'?)"),
    ],
    "bad_types.yaml": [
        (4, "services.web.command", "expected a list, got 'python3 app.py --port 8080'; write "
                                    'the command as a list: ["python3", "app.py", "--port", '
                                    '"8080"], or ["sh", "-c", "python3 app.py --port 8080"]'),
        (5, "services.web.instances", "expected a whole number, got 'three'"),
        (7, "services.web.resources.cpu", "expected cpu cores such as 0.25 or 2, got 'lots'"),
        (8, "services.web.resources.pids", "expected a whole number, got 1.5"),
        (11, "services.web.ports[0].static", "expected a whole number, got 'eighty'"),
        (12, "services.web.update.auto_revert", "expected true or false, got 'maybe'"),
        (13, "services.web.env.LIST", "expected a string, got a list"),
        (14, "services.web.health", "expected a mapping of fields (name: value), got 3"),
        (16, "services.worker.command[1]", 'expected a string, got 10; put it in quotes: "10"'),
        (17, "services.worker.depends_on", """expected a list, got 'cache'; write ["cache"]"""),
        (18, "services.cache", "expected a mapping of fields (name: value), got a list"),
        (19, "jobs", "expected a mapping of fields (name: value), got a list"),
    ],
    "bad_negative.yaml": [
        (5, "services.web.instances", "must not be negative, got -2"),
        (7, "services.web.resources.cpu", "cpu cannot be negative, got -0.5"),
        (8, "services.web.resources.memory", "a size cannot be negative, got '-64MiB'"),
        (9, "services.web.resources.pids", "must be at least 8, got -1"),
        (10, "services.web.health.interval", "a duration cannot be negative, got '-2s'"),
    ],
    "bad_missing_command.yaml": [
        (3, "services.web.command", "required field missing"),
        (6, "services.api.command", "must not be empty"),
        (8, "jobs.report.command", "required field missing"),
    ],
    "bad_units.yaml": [
        (6, "services.web.resources.memory", "expected a size such as 128MiB or 1GiB, got "
                                             "'12 parsecs'"),
        (7, "services.web.resources.cpu", "got '2 cores'"),
        (8, "services.web.restart.backoff", "expected a duration such as 500ms, 2s or 5m, got "
                                            "'2 weeks'"),
        (8, "services.web.restart.max_backoff", "got '5x'"),
        (9, "services.web.stop_timeout", "got inf"),
        (10, "services.web.shutdown_delay", "got 'soon'"),
        (13, "services.small.resources.cpu", "must be at least 0.001, got 0"),
        (13, "services.small.resources.memory", "must be at least 4MiB, got '1MiB'"),
    ],
    "bad_names.yaml": [
        (1, "name", "must be lowercase letters, digits and '-', starting with a letter (at most "
                    "63 characters), got 'My_Shop'"),
        (2, "namespace", "got '9lives'"),
        (4, "services.Web", "invalid service name 'Web': must be lowercase letters"),
        (8, "services.api.ports[0].name", "lowercase letters, digits and '_'"),
        (8, "services.api.ports[1].name", "got 'admin-port'"),
        (9, "services.api.restart.policy", "expected one of: always, on-failure, never, got "
                                           "'sometimes'"),
        (11, "services.api.isolation.driver", "expected one of: sandbox, oci, process"),
        (11, "services.api.isolation.network", "expected one of: host, isolated, got 'bridge'"),
    ],
    "bad_port_refs.yaml": [
        (4, "services.web.command[4]", "${PORT_METRICS} refers to no declared port (declared: "
                                       "${PORT_HTTP}, ${PORT_ADMIN})"),
        (4, "services.web.command[5]", "(did you mean ${PORT_HTTP}?)"),
        (6, "services.web.env.ADMIN", "${PORT_ADMN} refers to no declared port"),
        (10, "services.plain.command[1]", "this service declares no ports"),
        (13, "jobs.once.command[1]", "${PORT_HTTP} refers to a port, but a job has no ports"),
    ],
    "bad_cycles.yaml": [
        (8, "services.api.depends_on[1]", "unknown service 'ap' (did you mean 'api'?)"),
        (8, "services.api.depends_on[0]", "dependency cycle: api -> db -> web -> api"),
        (14, "services.solo.depends_on[0]", "a service cannot depend on itself"),
        (14, "services.solo.depends_on[1]", "'build' is not a service"),
        (18, "jobs.build.after[0]", "dependency cycle: build -> test -> build"),
    ],
    "bad_duplicate_keys.yaml": [
        (9, "services.web.env.A", "duplicate key 'A': it is already set on line 7"),
        (10, "services.web.instances", "duplicate key 'instances': it is already set on line 5"),
        (11, "services.web", "duplicate key 'web': it is already set on line 3"),
    ],
    "bad_health.yaml": [
        (5, "services.none.health", "set exactly one of http, tcp, command (found none)"),
        (9, "services.both.health", "(found http and tcp)"),
        (13, "services.badport.health.port", "'admn' is not a port of this service (declared "
                                             "ports: http, admin) (did you mean 'admin'?)"),
        (13, "services.badport.health.http", "expected a path such as /healthz, got 'healthz'"),
        (16, "services.noport.health.http", "an http check needs a port"),
        (20, "services.tcp.health.tcp", "(did you mean 'main'?)"),
        (23, "services.dupes.ports[1].name", "port name 'http' is already used by ports[0]"),
        (23, "services.dupes.ports[2].static", "static port 8080 is already used by ports[0]"),
    ],
    "bad_misc.yaml": [
        (5, "services.web.artifact", "expected a path relative to the spec file"),
        (6, "services.web.stop_signal", "unknown signal 'TERMINATE'"),
        (8, "services.web.env.1BAD", "invalid variable name '1BAD'"),
        (9, "services.web.env.CORRAL_NODE", "reserved"),
        (12, "services.web.placement.constraints[0]", "expected '<attribute> <operator> <value>'"),
        (12, "services.web.placement.constraints[1]", "got 'zone ~= a'"),
        (12, "services.web.placement.constraints[2]", "invalid regular expression '(['"),
        (12, "services.web.placement.constraints[3]", "comma-separated"),
        (13, "services.web.isolation.rootfs", "rootfs needs driver: oci"),
        (15, "services.web.templates[0].source", "got '/etc/a.j2'"),
        (15, "services.web.templates[0].destination", "got '../../etc/passwd'"),
        (16, "services.web.templates[1].on_change", "expected restart, noop or signal:<NAME>"),
        (17, "services.web.templates[2].on_change", "(did you mean 'SIGHUP'?)"),
        (17, "services.web.templates[2].destination", "already written by templates[1]"),
        (18, "services.web.restart.backoff", "backoff (60s) is longer than max_backoff (30s)"),
        (21, "services.digest.artifact", "got 'sha256:abc'"),
        (23, "jobs.web", "'web' is also the name of a service"),
        (28, "jobs.nightly.time_zone", "(did you mean 'Europe/Paris'?)"),
        (29, "jobs.nightly.after", "either on a schedule or after other jobs"),
    ],
    "bad_schedules.yaml": [
        (3, "jobs.a.schedule", "minute: 61 is out of range 0-59"),
        (4, "jobs.b.schedule", "expected 5 fields"),
        (5, "jobs.c.schedule", "range 'FRI-MON' goes backwards"),
        (6, "jobs.d.schedule", "step '0' must be a whole number above 0"),
        (7, "jobs.e.schedule", "month: 'FOO' is not a number"),
        (8, "jobs.f.schedule", "start 'yesterday' is not an ISO 8601 date"),
        (9, "jobs.g.schedule", "period '1H' is not an ISO 8601 duration"),
        (10, "jobs.h.schedule", "period 'PT0S' is zero"),
        (11, "jobs.i.schedule", "expected R[n]/<start>/<period>"),
    ],
    "bad_many.yaml": [
        (3, "servces", "unknown field 'servces' (did you mean 'services'?)"),
        (9, "services.web.resources.memory", "got 'lots'"),
        (12, "services.api.depends_on[0]", "unknown service 'wbe' (did you mean 'web'?)"),
        (13, "services.api.health.tcp", "'http' is not a port of this service"),
        (17, "jobs.report.schedule", "hour: 25 is out of range 0-23"),
    ],
    "bad_syntax.json": [
        (4, "", "invalid JSON: Expecting property name enclosed in double quotes (column 32)")],
    "bad_fields.json": [
        (6, "services.web.instances", "expected a whole number, got '3x'"),
        (7, "services.web.resources.memroy", "(did you mean 'memory'?)"),
        (10, "name", "duplicate key 'name'"),
    ],
}


def test_every_bad_file_is_covered() -> None:
    on_disk = {p.name for p in FILES.iterdir() if p.name.startswith("bad_")}
    assert on_disk == set(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_reports_every_error_at_its_line(name: str) -> None:
    errors = errors_of(name)
    expected = BAD_FILES[name]
    assert [(e.line, e.path) for e in errors] == [(line, path) for line, path, _ in expected]
    for error, (_, _, fragment) in zip(errors, expected, strict=True):
        assert fragment in error.message, (error, fragment)


def test_render_is_file_line_path_message() -> None:
    text = "\n" * 11 + "name: shop\nservices: {web: {command: [x], resources: {memory: lots}}}\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, filename="app.yaml")
    assert str(info.value) == ("app.yaml:13: services.web.resources.memory: expected a size "
                               "such as 128MiB or 1GiB, got 'lots'")


def test_render_puts_one_error_per_line() -> None:
    with pytest.raises(SpecError) as info:
        load_spec_file(FILES / "bad_many.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert lines[0] == (f"{FILES / 'bad_many.yaml'}:3: servces: unknown field 'servces' "
                        "(did you mean 'services'?)")
    assert all(line.startswith(str(FILES / "bad_many.yaml") + ":") for line in lines)


def test_error_without_line_or_path_renders_without_them() -> None:
    error = FieldError(path="", message="the file is empty")
    assert error.render("app.yaml") == "app.yaml: the file is empty"
    assert FieldError(path="name", message="m").render("f") == "f: name: m"


def test_unknown_field_carries_the_suggestion() -> None:
    errors = text_errors("name: shop\nservces: {}\n")
    assert errors == [FieldError(path="servces", line=2, suggestion="services",
                                 message="unknown field 'servces' (did you mean 'services'?)")]


def test_suggestions_for_choices_ports_and_quoting() -> None:
    errors = text_errors(
        "name: shop\n"
        "services:\n"
        "  web:\n"
        "    command: [sleep, 5]\n"
        "    restart: {policy: alway}\n"
        "    ports: [{name: http}]\n"
        "    health: {tcp: htp}\n")
    assert [(e.path, e.suggestion) for e in errors] == [
        ("services.web.command[1]", '"5"'),
        ("services.web.restart.policy", "always"),
    ]
    errors = text_errors("name: shop\nservices:\n  web:\n    command: [x]\n    ports: "
                         "[{name: http}]\n    health: {tcp: htp}\n")
    assert [(e.path, e.line, e.suggestion) for e in errors] == [
        ("services.web.health.tcp", 6, "http")]


def test_to_dict_is_json_ready() -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text("name: shop\nservces: {}\n", filename="app.yaml")
    data = info.value.to_dict()
    assert json.loads(json.dumps(data)) == {
        "file": "app.yaml",
        "errors": [{"path": "servces", "line": 2, "suggestion": "services",
                    "message": "unknown field 'servces' (did you mean 'services'?)"}],
    }


def test_spec_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ValueError) as info:
        load_spec_file(FILES / "bad_many.yaml")
    assert isinstance(info.value, SpecError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.errors == info.value.errors
    assert str(copy) == str(info.value)


# --- several errors at once -----------------------------------------------------------------

def test_field_and_cross_field_errors_are_reported_together() -> None:
    errors = text_errors(
        "name: shop\n"
        "services:\n"
        "  web:\n"
        "    command: [x]\n"
        "    instances: many\n"
        "  api:\n"
        "    command: [x]\n"
        "    depends_on: [web, nope]\n")
    # `web` is broken but declared: depending on it is fine; `nope` is not declared.
    assert [(e.line, e.path) for e in errors] == [
        (5, "services.web.instances"), (8, "services.api.depends_on[1]")]


def test_duplicate_keys_are_reported_with_validation_errors() -> None:
    errors = text_errors("name: shop\nname: shop\nservices: {web: {command: [x], cpu: 1}}\n")
    assert [(e.line, e.path) for e in errors] == [(2, "name"), (3, "services.web.cpu")]


def test_key_overriding_a_merged_key_is_not_a_duplicate() -> None:
    spec = load_spec_text(
        "name: shop\n"
        "services:\n"
        "  web: &base\n"
        "    command: [x]\n"
        "    instances: 2\n"
        "  api:\n"
        "    <<: *base\n"
        "    instances: 5\n")
    assert spec.services["api"].instances == 5
    assert spec.services["api"].command == ("x",)


def test_error_inside_merged_mapping_points_at_the_override() -> None:
    errors = text_errors(
        "name: shop\n"
        "services:\n"
        "  web: &base\n"
        "    command: [x]\n"
        "  api:\n"
        "    <<: *base\n"
        "    instances: -1\n")
    assert [(e.line, e.path) for e in errors] == [(7, "services.api.instances")]


def test_invalid_item_of_a_required_list_is_one_error_not_two() -> None:
    errors = text_errors("name: a\njobs:\n  j:\n    command: [true]\n")
    assert [(e.path, e.message) for e in errors] == [
        ("jobs.j.command[0]", 'expected a string, got true; put it in quotes: "true"')]


def test_errors_are_sorted_by_line() -> None:
    errors = errors_of("bad_many.yaml")
    lines = [e.line for e in errors]
    assert lines == sorted(line for line in lines if line is not None)


# --- YAML and JSON corner cases ------------------------------------------------------------

def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    started = time.monotonic()
    errors = text_errors("\n".join(lines) + "\nname: a\n")
    assert time.monotonic() - started < 5
    assert len(errors) == 1
    assert "once aliases are expanded" in errors[0].message


def test_recursive_alias_is_refused() -> None:
    errors = text_errors("name: a\nservices: &s {web: *s}\n")
    assert len(errors) == 1
    assert "contains itself" in errors[0].message


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert "nested too deeply" in text_errors("[" * 5000)[0].message
    assert "nested too deeply" in text_errors("[" * 5000, filename="x.json")[0].message


def test_unhashable_key_and_undefined_alias() -> None:
    errors = text_errors("name: a\n? [1]\n: x\n")
    assert (errors[0].line, errors[0].path) == (2, "")
    assert "unhashable key" in errors[0].message
    errors = text_errors("name: a\nx: *nope\n")
    assert (errors[0].line, "undefined alias" in errors[0].message) == (2, True)


def test_control_character_reports_its_line() -> None:
    errors = text_errors("name: a\nservices:\n  web: \x07\n")
    assert [(e.line, e.path) for e in errors] == [(3, "")]
    assert "invalid character" in errors[0].message


def test_json_duplicate_keys_in_nested_objects() -> None:
    text = '{"name": "a", "services": {"w": {"command": ["x"], "env": {"A": "1", "A": "2"}}}}'
    errors = text_errors(text, filename="app.json")
    assert [(e.line, e.path) for e in errors] == [(1, "services.w.env.A")]


def test_json_yaml_cannot_read_still_reports_errors_without_lines() -> None:
    # Tabs: valid JSON, but PyYAML refuses them, so there are no lines; errors still come.
    text = '{\n\t"name": "a",\n\t"jobs": 3\n}'
    errors = text_errors(text, filename="app.json")
    assert [(e.line, e.path) for e in errors] == [(None, "jobs")]


def test_json_that_is_empty_or_not_an_object() -> None:
    assert "the file is empty" in text_errors("  \n", filename="a.json")[0].message
    assert text_errors("null", filename="a.json")[0].message.startswith("the file is empty")
    assert "got 3" in text_errors("3", filename="a.json")[0].message


# --- files and data -------------------------------------------------------------------------

def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec_file(tmp_path / "nope.yaml")
    assert [e.message for e in info.value.errors] == [
        "cannot read the file: No such file or directory"]


def test_file_that_is_not_utf8_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_bytes(b"name: a\nservices:\n  web: {command: [\xff]}\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert [(e.line, e.message) for e in info.value.errors] == [
        (3, "the file is not UTF-8 text")]


def test_validate_spec_data_reports_errors_without_lines() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec_data({"name": "a", "servces": {}, "services": {"w": {"command": []}}},
                           filename="request body")
    assert info.value.filename == "request body"
    assert [(e.line, e.path) for e in info.value.errors] == [
        (None, "services.w.command"), (None, "servces")]


@pytest.mark.parametrize("data", [None, [], "name: a", 3])
def test_validate_spec_data_refuses_non_mappings(data: object) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec_data(data)
    assert len(info.value.errors) == 1
    assert info.value.errors[0].path == ""
