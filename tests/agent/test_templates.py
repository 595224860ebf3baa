"""Tests for corral.agent.templates: what a template sees, deterministic bytes, writes only on
change, path escapes refused, error messages with file and line, and what a change does.

No agent and no server: the renderer is given catalogs as the API answers them (through
`canonical_catalog`, as the agent's watcher does) and a real task dir under tmp_path.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from corral.agent.catalog import canonical_catalog
from corral.agent.templates import (
    ChangeActions,
    NeedCatalog,
    TemplateError,
    TemplateRenderer,
    actions_for,
    read_source,
    write_if_changed,
)
from corral.model.application import TemplateSpec

INSTANCE = {"id": "web-1", "app": "shop", "service": "lb", "namespace": "default",
            "node": "n1", "address": "10.0.0.9", "ports": {"http": 20001}, "version": 3}


def inst(iid: str, address: str, port: int | None, **more: Any) -> dict[str, Any]:
    return {"id": iid, "node": "n1", "address": address, "port": port,
            "ports": {} if port is None else {"main": port}, "version": 1, "slot": 0,
            "state": "running", "health": "none", **more}


def entry(service: str, *instances: dict[str, Any], app: str = "shop",
          namespace: str = "default") -> dict[str, Any]:
    return {"namespace": namespace, "app": app, "service": service, "port_names": ["main"],
            "instances": list(instances)}


def catalog(*entries: dict[str, Any], digest: str = "d1") -> dict[str, Any]:
    return canonical_catalog({"digest": digest, "services": list(entries)})


def renderer(task: Path, *templates: TemplateSpec, env: dict[str, str] | None = None
             ) -> TemplateRenderer:
    return TemplateRenderer(templates=templates, task_dir=task, instance=INSTANCE,
                            env=env or {"GREETING": "hi"})


def tpl(source: str, destination: str = "out.conf", on_change: str = "restart"
        ) -> TemplateSpec:
    return TemplateSpec(source=source, destination=destination, on_change=on_change)


@pytest.fixture
def task(tmp_path: Path) -> Path:
    path = tmp_path / "task"
    path.mkdir()
    return path


UPSTREAMS = """\
{% for i in services.api %}server {{ i.id }} {{ i.address }}:{{ i.port }}
{% endfor %}"""


# --- the context ----------------------------------------------------------------------------

def test_the_context_has_services_service_instance_and_env(task: Path) -> None:
    (task / "all.j2").write_text(
        "own: {{ services | list | join(',') }}\n"
        "api: {% for i in services.api %}{{ i.address }}:{{ i.ports.main }} {% endfor %}\n"
        "db: {{ service('db', app='data') | map(attribute='id') | join(',') }}\n"
        "missing app: {{ service('x', app='nope') | length }}\n"
        "me: {{ instance.id }} {{ instance.app }}/{{ instance.service }} {{ instance.namespace }}"
        " {{ instance.node }} {{ instance.address }} {{ instance.ports.http }}"
        " v{{ instance.version }}\n"
        "env: {{ env.GREETING }}\n")
    cat = catalog(entry("api", inst("a2", "10.0.0.2", 30002), inst("a1", "10.0.0.1", 30001)),
                  entry("lb"),
                  entry("db", inst("d1", "10.0.0.5", 5432), app="data"))
    out = renderer(task, tpl("all.j2")).render_one(tpl("all.j2"), {"default": cat})
    assert out.decode() == (
        "own: api,lb\n"
        "api: 10.0.0.1:30001 10.0.0.2:30002 \n"
        "db: d1\n"
        "missing app: 0\n"
        "me: web-1 shop/lb default n1 10.0.0.9 20001 v3\n"
        "env: hi\n")


def test_service_reads_another_namespace_which_must_be_fetched_first(task: Path) -> None:
    (task / "x.j2").write_text("{{ service('api', app='shop', namespace='other')|length }}")
    r = renderer(task, tpl("x.j2"))
    with pytest.raises(NeedCatalog) as caught:
        r.render({"default": catalog()})
    assert caught.value.namespace == "other"
    assert not (task / "out.conf").exists()  # nothing written by a pass cut short
    other = catalog(entry("api", inst("a1", "10.0.0.1", 1), namespace="other"))
    result = r.render({"default": catalog(), "other": other})
    assert (task / "out.conf").read_text() == "1"
    assert result.namespaces == {"default", "other"}


def test_a_pass_cut_short_by_a_missing_catalog_writes_no_template(task: Path) -> None:
    (task / "a.j2").write_text("a")
    (task / "b.j2").write_text("{{ service('api', namespace='other') }}")
    r = renderer(task, tpl("a.j2", "a"), tpl("b.j2", "b"))
    with pytest.raises(NeedCatalog):
        r.render({"default": catalog()})
    assert not (task / "a").exists()


def test_an_unknown_service_of_the_own_app_is_an_error(task: Path) -> None:
    (task / "x.j2").write_text("line one\n{{ service('apii') }}\n")
    with pytest.raises(TemplateError) as caught:
        renderer(task, tpl("x.j2")).render_one(tpl("x.j2"), {"default": catalog(entry("api"))})
    assert str(caught.value) == ("template x.j2 line 2: service('apii'): app shop has no "
                                 "service 'apii' (it has: api)")


def test_templates_cannot_change_the_shared_catalog(task: Path) -> None:
    (task / "x.j2").write_text("{{ services.api.append(1) }}")
    cat = catalog(entry("api"))
    with pytest.raises(TemplateError, match="unsafe"):
        renderer(task, tpl("x.j2")).render_one(tpl("x.j2"), {"default": cat})
    assert cat["services"][0]["instances"] == []


# --- deterministic bytes, written only on change --------------------------------------------

def test_the_same_catalog_in_another_order_renders_the_same_bytes(task: Path) -> None:
    (task / "up.j2").write_text(
        "{% for name, insts in services.items() %}{{ name }}:"
        "{% for i in insts %} {{ i.id }}{% for k, v in i.ports.items() %} {{ k }}={{ v }}"
        "{% endfor %}{% endfor %}\n{% endfor %}")
    insts = [inst(f"a{n}", f"10.0.0.{n % 3}", 30000 + n,
                  ports={"main": 30000 + n, "admin": 31000 + n, "b": 1}) for n in range(8)]
    entries = [entry("api", *insts), entry("web", *insts[:3]), entry("lb")]
    first = renderer(task, tpl("up.j2")).render_one(
        tpl("up.j2"), {"default": catalog(*entries)})
    rng = random.Random(7)
    for _ in range(5):
        shuffled = [dict(e, instances=[
            dict(i, ports=dict(rng.sample(list(i["ports"].items()), len(i["ports"]))))
            for i in rng.sample(e["instances"], len(e["instances"]))])
            for e in rng.sample(entries, len(entries))]
        shuffled = [{k: e[k] for k in rng.sample(list(e), len(e))} for e in shuffled]
        again = renderer(task, tpl("up.j2")).render_one(
            tpl("up.j2"), {"default": catalog(*shuffled)})
        assert again == first
    # Instances by address, then port, then id; ports by name.
    line = first.decode().splitlines()[0]
    assert [w for w in line.split() if w[0] == "a" and w[1:].isdigit()] == \
        ["a0", "a3", "a6", "a1", "a4", "a7", "a2", "a5"]
    assert line.startswith("api: a0 admin=31000 b=1 main=30000 a3 ")


def test_writes_only_when_the_bytes_change(task: Path) -> None:
    (task / "up.j2").write_text(UPSTREAMS)
    r = renderer(task, tpl("up.j2", "conf/upstreams.conf"))
    one = {"default": catalog(entry("api", inst("a1", "10.0.0.1", 1)))}
    result = r.render(one)
    assert [t.destination for t in result.changed] == ["conf/upstreams.conf"]
    out = task / "conf" / "upstreams.conf"
    assert out.read_text() == "server a1 10.0.0.1:1\n"
    assert out.stat().st_mode & 0o777 == 0o644
    before = out.stat()

    # Another digest (say another app changed) but the same bytes: nothing written.
    same = {"default": catalog(entry("api", inst("a1", "10.0.0.1", 1)), entry("lb"),
                               digest="d2")}
    assert r.render(same).changed == ()
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    two = {"default": catalog(entry("api", inst("a1", "10.0.0.1", 1),
                                    inst("a2", "10.0.0.2", 2)))}
    assert len(r.render(two).changed) == 1
    assert out.read_text() == "server a1 10.0.0.1:1\nserver a2 10.0.0.2:2\n"
    assert out.stat().st_ino != before.st_ino  # replaced by a rename, never half-written
    assert sorted(p.name for p in out.parent.iterdir()) == ["upstreams.conf"]


def test_write_if_changed_rewrites_a_file_changed_on_disk(task: Path) -> None:
    assert write_if_changed(task, "a.conf", b"x\n") is True
    assert write_if_changed(task, "a.conf", b"x\n") is False
    (task / "a.conf").write_text("edited\n")
    assert write_if_changed(task, "a.conf", b"x\n") is True
    assert (task / "a.conf").read_bytes() == b"x\n"


# --- paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "message"), [
    ("/etc/passwd", "must be a relative path"),
    ("~/x.j2", "must be a relative path"),
    ("../x.j2", "must not contain '..'"),
    ("conf/../../x.j2", "must not contain '..'"),
    ("./", "names no file"),
    ("missing.j2", "is not in the artifact"),
    ("conf", "is not a regular file"),
])
def test_bad_sources_are_refused(task: Path, source: str, message: str) -> None:
    (task / "conf").mkdir()
    with pytest.raises(TemplateError, match=message):
        read_source(task, source)


def test_a_source_symlink_may_not_leave_the_artifact(task: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret")
    (task / "evil.j2").symlink_to(tmp_path / "secret")
    (task / "dir").symlink_to(tmp_path)
    (task / "real.j2").write_text("ok")
    (task / "conf").mkdir()
    (task / "conf" / "inside.j2").symlink_to("../real.j2")
    with pytest.raises(TemplateError, match="leads outside the artifact"):
        read_source(task, "evil.j2")
    with pytest.raises(TemplateError, match="leads outside the artifact"):
        read_source(task, "dir/secret")
    assert read_source(task, "conf/inside.j2") == "ok"  # a link that stays inside is fine
    r = renderer(task, tpl("evil.j2"))
    result = r.render({"default": catalog()})
    assert result.changed == () and "leads outside the artifact" in result.errors[0]


def test_an_include_follows_the_same_rules(task: Path, tmp_path: Path) -> None:
    (task / "part.j2").write_text("{{ instance.id }}")
    (task / "main.j2").write_text('[{% include "part.j2" %}]')
    assert renderer(task).render_one(tpl("main.j2"), {"default": catalog()}) == b"[web-1]"
    (task / "bad.j2").write_text('{% include "/etc/passwd" %}')
    with pytest.raises(TemplateError, match="must be a relative path"):
        renderer(task).render_one(tpl("bad.j2"), {"default": catalog()})


def test_a_destination_never_goes_through_a_symlink(task: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (task / "conf").symlink_to(outside)
    with pytest.raises(TemplateError, match="symlink or not a directory"):
        write_if_changed(task, "conf/upstreams.conf", b"x")
    assert list(outside.iterdir()) == []
    # The destination itself a symlink: replaced by the file, the target left alone.
    (outside / "target").write_text("keep")
    (task / "link.conf").symlink_to(outside / "target")
    assert write_if_changed(task, "link.conf", b"new") is True
    assert not (task / "link.conf").is_symlink()
    assert (outside / "target").read_text() == "keep"
    for bad in ("/etc/x", "../x", "a/../../x"):
        with pytest.raises(TemplateError):
            write_if_changed(task, bad, b"x")


# --- errors ---------------------------------------------------------------------------------

def test_an_undefined_variable_names_the_file_and_line(task: Path) -> None:
    (task / "up.j2").write_text("# upstreams\n{% for i in services.api %}\n{{ i.adress }}\n"
                                "{% endfor %}\n")
    cat = {"default": catalog(entry("api", inst("a1", "10.0.0.1", 1)))}
    with pytest.raises(TemplateError) as caught:
        renderer(task).render_one(tpl("up.j2"), cat)
    assert str(caught.value) == "template up.j2 line 3: 'dict object' has no attribute 'adress'"
    (task / "name.j2").write_text("{{ nope }}")
    with pytest.raises(TemplateError, match=r"^template name.j2 line 1: 'nope' is undefined$"):
        renderer(task).render_one(tpl("name.j2"), cat)


def test_a_syntax_error_names_the_file_and_line(task: Path) -> None:
    (task / "part.j2").write_text("ok\n{% if %}\n")
    (task / "main.j2").write_text('{% include "part.j2" %}')
    with pytest.raises(TemplateError) as caught:
        renderer(task).render_one(tpl("part.j2"), {"default": catalog()})
    assert str(caught.value) == ("template part.j2 line 2: Expected an expression, got 'end of "
                                 "statement block'")
    with pytest.raises(TemplateError, match=r"^template part.j2 line 2: "):
        renderer(task).render_one(tpl("main.j2"), {"default": catalog()})


def test_other_errors_name_the_line_too(task: Path) -> None:
    (task / "x.j2").write_text("a\nb\n{{ 1 // 0 }}")
    with pytest.raises(TemplateError, match=r"^template x.j2 line 3: ZeroDivisionError: "):
        renderer(task).render_one(tpl("x.j2"), {"default": catalog()})


def test_one_bad_template_keeps_its_old_file_and_the_others_render(task: Path) -> None:
    (task / "a.j2").write_text("{{ services.api | length }}")
    (task / "b.j2").write_text("b")
    r = renderer(task, tpl("a.j2", "a"), tpl("b.j2", "b"))
    assert len(r.render({"default": catalog(entry("api"))}).changed) == 2
    (task / "a.j2").write_text("{{ services.apii | length }}")
    (task / "b.j2").write_text("b2")
    result = r.render({"default": catalog(entry("api", inst("a1", "10.0.0.1", 1)))})
    assert [t.destination for t in result.changed] == ["b"]
    assert result.errors == ("template a.j2 line 1: 'dict object' has no attribute 'apii'",)
    assert (task / "a").read_text() == "0"


def test_huge_output_is_refused(task: Path) -> None:
    (task / "x.j2").write_text("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}")
    with pytest.raises(TemplateError, match="output larger than"):
        renderer(task).render_one(tpl("x.j2"), {"default": catalog()})


# --- what a change does ---------------------------------------------------------------------

def test_actions_one_restart_at_most_and_signals_once() -> None:
    assert actions_for([tpl("a", "a", "noop")]) == ChangeActions(changed=("a",))
    assert actions_for([tpl("a", "a", "signal:SIGHUP"), tpl("b", "b", "signal:HUP"),
                        tpl("c", "c", "signal:SIGUSR1"), tpl("d", "d", "noop")]) == \
        ChangeActions(changed=("a", "b", "c", "d"), signals=("SIGHUP", "SIGUSR1"))
    assert actions_for([tpl("a", "a", "signal:SIGHUP"), tpl("b", "b", "restart"),
                        tpl("c", "c", "restart")]) == \
        ChangeActions(changed=("a", "b", "c"), restart="b")


def test_files_are_0644_whatever_the_umask(task: Path) -> None:
    old = os.umask(0o077)
    try:
        write_if_changed(task, "deep/er/x.conf", b"x")
    finally:
        os.umask(old)
    assert (task / "deep" / "er" / "x.conf").stat().st_mode & 0o777 == 0o644
