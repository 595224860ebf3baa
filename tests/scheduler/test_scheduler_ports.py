"""Dynamic and static host ports: unique per node, inside the range, never reserved."""

from __future__ import annotations

import zlib

from corral.model.application import Resources
from corral.model.instance import InstanceState
from corral.scheduler import PlacementRequest, Snapshot, schedule
from corral.scheduler.ports import start_offset
from corral.testing.factories import make_instance, make_node


def req(instance_id: str, *ports: str, static: dict[str, int] | None = None) -> PlacementRequest:
    return PlacementRequest(instance_id=instance_id, app="app", service="web",
                            resources=Resources(cpu=0.001, memory=4 * 1024 * 1024),
                            port_names=ports, static_ports=static or {})


def test_dynamic_ports_are_unique_and_inside_the_range() -> None:
    node = make_node("a", port_range=(30000, 30049), reserved_ports=(30010, 30020))
    existing = (make_instance("x", node="a", ports={"http": 30030}),)
    requests = [req(f"r{n}", "http", "admin") for n in range(23)]
    plan = schedule(Snapshot(nodes=(node,), instances=existing), requests)
    assert plan.failures == ()
    ports = [port for p in plan.placements for port in p.ports.values()]
    assert len(ports) == len(set(ports)) == 46
    assert all(30000 <= port <= 30049 for port in ports)
    assert not {30010, 30020, 30030} & set(ports)
    assert all(list(p.ports) == ["http", "admin"] for p in plan.placements)


def test_range_exhaustion_fails_only_the_requests_that_do_not_fit() -> None:
    node = make_node("a", port_range=(30000, 30004), reserved_ports=(30002,))
    plan = schedule(Snapshot(nodes=(node,), instances=()),
                    [req("r1", "a", "b"), req("r2", "a", "b"), req("r3", "a"), req("r4")])
    # 4 free ports: r1 and r2 take them all; r3 needs one more; r4 needs none.
    assert [p.instance_id for p in plan.placements] == ["r1", "r2", "r4"]
    assert [(f.instance_id, f.dimensions) for f in plan.failures] == [("r3", {"ports": 1})]
    assert sorted(port for p in plan.placements for port in p.ports.values()) == [
        30000, 30001, 30003, 30004]


def test_static_port_inside_the_range_is_not_handed_out_again() -> None:
    node = make_node("a", port_range=(30000, 30001))
    plan = schedule(Snapshot(nodes=(node,), instances=()),
                    [req("r1", "web", "dyn", static={"web": 30000}), req("r2", "x")])
    (first,) = plan.placements
    assert first.ports == {"web": 30000, "dyn": 30001}
    assert [f.dimensions for f in plan.failures] == [{"ports": 1}]


def test_static_port_inside_the_range_counts_against_free_dynamic_ports() -> None:
    # One free port in range, wanted both as the static port and for the dynamic one.
    node = make_node("a", port_range=(30000, 30001), reserved_ports=(30001,))
    plan = schedule(Snapshot(nodes=(node,), instances=()),
                    [req("r1", "web", "dyn", static={"web": 30000})])
    assert [f.dimensions for f in plan.failures] == [{"ports": 1}]


def test_static_ports_outside_the_range_are_allowed_and_listed() -> None:
    node = make_node("a", port_range=(30000, 30009))
    plan = schedule(Snapshot(nodes=(node,), instances=()),
                    [req("r1", "http", static={"http": 80, "metrics": 9100})])
    assert plan.placements[0].ports == {"http": 80, "metrics": 9100}


def test_probe_starts_at_a_stable_hash_of_the_instance_id() -> None:
    assert start_offset("web-1", 100) == zlib.crc32(b"web-1") % 100
    node = make_node("a", port_range=(30000, 39999))
    plan = schedule(Snapshot(nodes=(node,), instances=()), [req("web-1", "http")])
    assert plan.placements[0].ports == {"http": 30000 + zlib.crc32(b"web-1") % 10000}


def test_probe_wraps_around_the_end_of_the_range() -> None:
    size = 10
    instance_id = next(f"i{n}" for n in range(1000) if start_offset(f"i{n}", size) == size - 1)
    node = make_node("a", port_range=(100, 109), reserved_ports=(109,))
    plan = schedule(Snapshot(nodes=(node,), instances=()), [req(instance_id, "a", "b")])
    assert plan.placements[0].ports == {"a": 100, "b": 101}


def test_a_just_freed_port_is_not_the_next_one_handed_out() -> None:
    # The replacement of a stopped instance starts probing elsewhere than its predecessor's
    # port, even though that port is now the lowest free one.
    node = make_node("a", port_range=(30000, 39999))
    stopped = make_instance("old", node="a", ports={"http": 30000}, state=InstanceState.STOPPED)
    plan = schedule(Snapshot(nodes=(node,), instances=(stopped,)), [req("new", "http")])
    assert plan.placements[0].ports["http"] != 30000
    picks = {schedule(Snapshot(nodes=(node,), instances=()), [req(f"r{n}", "http")])
             .placements[0].ports["http"] for n in range(20)}
    assert len(picks) > 10  # spread over the range, not always the lowest


def test_existing_instance_ports_are_skipped() -> None:
    node = make_node("a", port_range=(30000, 30002))
    existing = (make_instance("x", node="a", ports={"a": 30000, "b": 30002}),)
    plan = schedule(Snapshot(nodes=(node,), instances=existing), [req("r1", "http")])
    assert plan.placements[0].ports == {"http": 30001}
