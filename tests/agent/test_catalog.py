"""Tests for corral.agent.catalog and the watch side of corral.agent.templates: one long poll
per namespace however many subscribers, errors kept and retried with backoff, and an
instance's templates re-rendered once per burst of changes, with the catalogs of other
namespaces fetched when a template turns out to read them.

The catalog route is injected: `FakeCatalogs` answers as `GET /v1/services` does (at once
without a digest, else once the digest differs) and counts the calls in flight. Time is a
`FakeClock`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from corral.agent.catalog import CatalogWatcher, canonical_catalog
from corral.agent.templates import ChangeActions, InstanceTemplates, TemplateRenderer
from corral.model.application import TemplateSpec
from corral.testing.clock import FakeClock


class FakeCatalogs:
    def __init__(self) -> None:
        self.services: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[tuple[str, str | None]] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self.fail: Exception | None = None
        self._changed = asyncio.Event()

    def set(self, namespace: str, *entries: dict[str, Any]) -> None:
        self.services[namespace] = list(entries)
        self._changed.set()
        self._changed = asyncio.Event()

    def answer(self, namespace: str) -> dict[str, Any]:
        services = self.services.get(namespace, [])
        digest = hashlib.sha256(json.dumps(services, sort_keys=True).encode()).hexdigest()
        return {"digest": digest, "services": services}

    async def __call__(self, namespace: str, digest: str | None, wait: float | None
                       ) -> Mapping[str, Any]:
        self.calls.append((namespace, digest))
        if self.fail is not None:
            raise self.fail
        self.in_flight[namespace] += 1
        self.most_in_flight[namespace] = max(self.most_in_flight[namespace],
                                             self.in_flight[namespace])
        try:
            while True:
                answer = self.answer(namespace)
                if digest is None or answer["digest"] != digest:
                    return answer
                await self._changed.wait()
        finally:
            self.in_flight[namespace] -= 1


def entry(service: str, *addresses: str, app: str = "shop", namespace: str = "default"
          ) -> dict[str, Any]:
    return {"namespace": namespace, "app": app, "service": service, "port_names": ["main"],
            "instances": [{"id": f"i{n}", "address": a, "port": 20000 + n, "ports": {}}
                          for n, a in enumerate(addresses)]}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_subscribers_of_one_namespace_share_one_long_poll() -> None:
    fake, clock = FakeCatalogs(), FakeClock()
    fake.set("default", entry("api", "10.0.0.1"))
    watcher = CatalogWatcher(fake, clock=clock)
    wakes = [asyncio.Event() for _ in range(20)]
    subs = [watcher.subscribe("default", w) for w in wakes]
    other = watcher.subscribe("other", asyncio.Event())
    await settle()
    assert all(w.is_set() for w in wakes)
    assert (await subs[0].catalog())["services"][0]["instances"][0]["address"] == "10.0.0.1"
    assert watcher.polls == {"default": 20, "other": 1}
    assert fake.most_in_flight == {"default": 1, "other": 1}

    for w in wakes:
        w.clear()
    fake.set("default", entry("api", "10.0.0.1", "10.0.0.2"))
    await settle()
    assert all(w.is_set() for w in wakes)
    assert len(subs[5].latest["services"][0]["instances"]) == 2  # type: ignore[index]
    assert fake.most_in_flight["default"] == 1
    assert next(c for c in fake.calls if c[0] == "default") == ("default", None)

    for sub in subs:
        sub.close()
    await settle()
    assert watcher.polls == {"other": 1}
    assert fake.in_flight["default"] == 0  # the poll was cancelled
    other.close()
    await watcher.close()


async def test_errors_keep_the_last_catalog_and_back_off() -> None:
    fake, clock = FakeCatalogs(), FakeClock()
    fake.fail = RuntimeError("cannot reach the corral server")
    watcher = CatalogWatcher(fake, clock=clock)
    sub = watcher.subscribe("default", asyncio.Event())
    await settle()
    assert sub.latest is None and sub.error == "cannot reach the corral server"
    assert len(fake.calls) == 1
    await clock.advance(0.2)
    assert len(fake.calls) == 2
    await clock.advance(0.3)  # the delay doubled to 0.4 s
    assert len(fake.calls) == 2
    await clock.advance(0.15)
    assert len(fake.calls) == 3
    fake.fail = None
    fake.set("default", entry("api", "10.0.0.1"))
    await clock.advance(0.85)
    await settle()
    assert sub.latest is not None and sub.error == ""
    kept = sub.latest
    fake.fail = RuntimeError("down")
    fake.set("default", entry("api"))  # answers the poll in flight; the next call fails
    await settle()
    assert sub.error == "down"
    assert sub.latest is not kept and sub.latest["services"][0]["instances"] == []
    await clock.advance(10)
    assert sub.latest["services"][0]["instances"] == []  # kept while the server is away
    sub.close()
    await watcher.close()


def test_canonical_catalog_sorts_entries_instances_and_keys() -> None:
    web = entry("web", "10.0.0.2", "10.0.0.1")
    web["instances"][0] = {**web["instances"][0], "ports": {"b": 2, "a": 1}}
    got = canonical_catalog({"digest": "x", "services": [web, entry("api")]})
    assert [e["service"] for e in got["services"]] == ["api", "web"]
    first, second = got["services"][1]["instances"]
    assert [first["address"], second["address"]] == ["10.0.0.1", "10.0.0.2"]
    assert list(second) == ["address", "id", "port", "ports"]
    assert list(second["ports"]) == ["a", "b"]


# --- InstanceTemplates ----------------------------------------------------------------------

INSTANCE = {"id": "lb-1", "app": "shop", "service": "lb", "namespace": "default",
            "node": "n1", "address": "10.0.0.9", "ports": {}, "version": 1}


def templates(task: Path, watcher: CatalogWatcher, clock: FakeClock,
              *specs: TemplateSpec) -> InstanceTemplates:
    renderer = TemplateRenderer(templates=specs, task_dir=task, instance=INSTANCE, env={})
    return InstanceTemplates(renderer=renderer, catalog=watcher, namespace="default",
                             clock=clock, name="lb-1")


@pytest.fixture
def task(tmp_path: Path) -> Path:
    path = tmp_path / "task"
    path.mkdir()
    (path / "up.j2").write_text("{% for i in services.api %}{{ i.address }}\n{% endfor %}")
    return path


async def test_first_render_waits_for_the_catalog_and_says_why(task: Path) -> None:
    fake, clock = FakeCatalogs(), FakeClock()
    fake.fail = RuntimeError("no route")
    watcher = CatalogWatcher(fake, clock=clock)
    its = templates(task, watcher, clock, TemplateSpec(source="up.j2", destination="up"))
    reasons: list[str] = []
    job = asyncio.ensure_future(its.first_render(reasons.append))
    await settle()
    await clock.advance(5.0)
    assert not job.done()
    assert reasons[-1] == ("waiting for the service catalog of namespace default "
                           "(default: no route)")
    fake.fail = None
    fake.set("default", entry("api", "10.0.0.1"))
    await clock.advance(5.0)
    await asyncio.wait_for(job, 5)
    assert (task / "up").read_text() == "10.0.0.1\n"
    its.close()
    await watcher.close()


async def test_changes_within_the_coalesce_window_render_once(task: Path) -> None:
    fake, clock = FakeCatalogs(), FakeClock()
    fake.set("default", entry("api", "10.0.0.1"))
    watcher = CatalogWatcher(fake, clock=clock)
    its = templates(task, watcher, clock,
                    TemplateSpec(source="up.j2", destination="up", on_change="signal:SIGHUP"))
    await asyncio.wait_for(its.first_render(lambda _: None), 5)
    applied: list[ChangeActions] = []
    problems: list[str] = []

    async def apply(actions: ChangeActions) -> None:
        applied.append(actions)

    watch = asyncio.ensure_future(its.watch(apply, problems.append))
    try:
        await settle()
        assert applied == []  # what the first render saw is not a change
        fake.set("default", entry("api", "10.0.0.1", "10.0.0.2"))
        await settle()
        await clock.advance(0.2)
        fake.set("default", entry("api", "10.0.0.1", "10.0.0.2", "10.0.0.3"))
        await settle()
        await clock.advance(0.3)
        for _ in range(50):
            if applied:
                break
            await asyncio.sleep(0.01)  # the render runs in a thread
        assert applied == [ChangeActions(changed=("up",), signals=("SIGHUP",))]
        assert (task / "up").read_text() == "10.0.0.1\n10.0.0.2\n10.0.0.3\n"

        # A broken template keeps the old file and says so; fixed, it says "" again.
        (task / "up.j2").write_text("{{ services.nope }}")
        fake.set("default", entry("api"))
        await settle()
        await clock.advance(0.5)
        for _ in range(50):
            if problems and problems[-1]:
                break
            await asyncio.sleep(0.01)
        assert problems[-1] == "template up.j2 line 1: 'dict object' has no attribute 'nope'"
        assert (task / "up").read_text() == "10.0.0.1\n10.0.0.2\n10.0.0.3\n"
        assert len(applied) == 1
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        its.close()
        await watcher.close()


async def test_a_template_reading_another_namespace_subscribes_to_it(task: Path) -> None:
    fake, clock = FakeCatalogs(), FakeClock()
    fake.set("default", entry("api"))
    fake.set("edge", entry("proxy", "10.1.0.1", app="front", namespace="edge"))
    (task / "x.j2").write_text(
        "{{ service('proxy', app='front', namespace='edge') | map(attribute='address')"
        " | join(',') }}")
    watcher = CatalogWatcher(fake, clock=clock)
    its = templates(task, watcher, clock, TemplateSpec(source="x.j2", destination="x"))
    await asyncio.wait_for(its.first_render(lambda _: None), 5)
    assert (task / "x").read_text() == "10.1.0.1"
    assert watcher.polls == {"default": 1, "edge": 1}
    its.close()
    await settle()
    assert watcher.polls == {}
    await watcher.close()
