"""The constraint language (`model/constraints.py`): each operator, attributes, missing
attributes, versions, and agreement between the spec check and the scheduler's parser."""

from __future__ import annotations

import pytest

from corral.model.application import ApplicationSpec, PlacementSpec, ServiceSpec
from corral.model.constraints import (
    Operator,
    parse_attribute,
    parse_constraint,
    parse_version,
)
from corral.model.node import Node
from corral.spec.checks import check_spec
from corral.testing.factories import make_node


def node(**labels: str) -> Node:
    return make_node("web-7", address="10.0.0.7", labels=labels,
                     attributes={"kernel": "5.15.0-91-generic", "arch": "x86_64", "os": "linux",
                                 "cores": "16"})


def holds(text: str, on: Node | None = None) -> bool:
    return parse_constraint(text).matches(on if on is not None else node(zone="a", rack="r10"))


# --- operators ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("zone == a", True), ("zone == b", False), ("zone==a", True),
    ("zone != a", False), ("zone != c", True),
    ("zone in a, b", True), ("zone in b,c", False), ("zone not_in b, c", True),
    ("zone not_in a", False),
    ("rack regexp ^r1[0-9]$", True), ("rack regexp 1", True), ("rack regexp ^1", False),
    ("node.name regexp ^web-[0-9]+$", True),
    ("attr.cores >= 16", True), ("attr.cores > 16", False), ("attr.cores < 100", True),
    ("attr.cores <= 9", False),
    ("rack < r9", True),  # lexical: "r10" < "r9"
    ("attr.cores < 9z", True),  # one side not a number: lexical, "16" < "9z"
    ("attr.kernel version >= 5.15", True), ("attr.kernel version >= 5.15, < 6", True),
    ("attr.kernel version < 5.15", False), ("attr.kernel version ~> 5.10", True),
    ("attr.kernel version ~> 5.10.0", False),
])
def test_operators(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_numbers_compare_as_numbers_not_strings() -> None:
    # Lexically "9" > "10"; numerically it is not.
    assert holds("cpus > 9", node(cpus="10"))
    assert not holds("cpus < 9", node(cpus="10"))
    assert holds("ratio >= 0.5", node(ratio="0.75"))
    assert holds("ratio < 1e3", node(ratio="999"))


@pytest.mark.parametrize(("text", "expected"), [
    ("zone == a", False), ("zone != a", True), ("zone in a,b", False), ("zone not_in a,b", True),
    ("zone regexp .*", False), ("zone version >= 0", False), ("zone < zzz", False),
    ("zone >= 0", False), ("attr.gpu == yes", False), ("attr.gpu != yes", True),
])
def test_a_missing_attribute_fails_all_but_the_negative_operators(text: str,
                                                                 expected: bool) -> None:
    assert holds(text, node()) is expected


# --- attributes -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "source", "key"), [
    ("zone", "label", "zone"), ("label.zone", "label", "zone"), ("meta.zone", "label", "zone"),
    ("attr.kernel", "attr", "kernel"), ("node.name", "name", ""),
    ("node.address", "address", ""), ("${attr.arch}", "attr", "arch"),
    ("node.class", "label", "node.class"), ("team/owner", "label", "team/owner"),
    ("attr.", "label", "attr."),
])
def test_attribute_names_resolve(text: str, source: str, key: str) -> None:
    attribute = parse_attribute(text)
    assert (attribute.source, attribute.key) == (source, key)


def test_attributes_are_looked_up_on_the_node() -> None:
    n = node(zone="a")
    assert holds("node.name == web-7", n)
    assert holds("node.address == 10.0.0.7", n)
    assert holds("attr.arch == x86_64", n)
    assert holds("${attr.os} == linux", n)
    assert holds("label.zone == a", n) and holds("meta.zone == a", n)
    # A label is not an attribute and the other way round.
    assert not holds("attr.zone == a", n)
    assert not holds("arch == x86_64", n)


@pytest.mark.parametrize("text", ["", "zone name", "1zone", "zone!"])
def test_bad_attribute_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected an attribute name"):
        parse_attribute(text)


# --- versions -------------------------------------------------------------------------------

@pytest.mark.parametrize("ordered", [
    ["1.2-rc1", "1.2", "1.2.1", "1.10"],
    ["1.0-alpha", "1.0-alpha.1", "1.0-alpha.beta", "1.0-beta", "1.0-beta.2", "1.0-beta.11",
     "1.0-rc.1", "1.0"],  # semver's own example
    ["5.15", "5.15.0-86-generic", "5.15.0-91-generic", "5.15.1", "6.1.0-rc3", "6.1"],
    ["v1", "v1.0.1", "2"],
])
def test_versions_sort_as_users_expect(ordered: list[str]) -> None:
    keys = []
    for text in ordered:
        version = parse_version(text)
        assert version is not None, text
        keys.append(version.key)
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_trailing_zeros_and_build_metadata_do_not_matter() -> None:
    versions = [parse_version(t) for t in ("1.2", "1.2.0", "v1.2.0.0", "1.2.0+build.5")]
    assert len({v.key for v in versions if v is not None}) == 1


@pytest.mark.parametrize("text", ["", "abc", "1.", ".1", "1..2", "1.2-", "x1.2"])
def test_not_versions(text: str) -> None:
    assert parse_version(text) is None


@pytest.mark.parametrize(("have", "requirement", "expected"), [
    ("1.2.3", "= 1.2.3", True), ("1.2.3", "1.2.3", True), ("1.2.3", "== 1.2", False),
    ("1.2.3", "!= 1.2.3", False), ("1.2.3", ">= 1.2, < 2", True), ("2.0", ">= 1.2, < 2", False),
    ("2.0-rc1", ">= 1.2, < 2", True),  # a pre-release of 2 is below 2
    ("1.9.9", "~> 1.2", True), ("2.0-rc1", "~> 1.2", False), ("1.3.0", "~> 1.2.0", False),
    ("1.2.7", "~> 1.2.0", True), ("1.1", "~> 1.2", False), ("1.5", "~> 1", True),
    ("2.0", "~> 1", False), ("not-a-version", ">= 0", False),
])
def test_version_requirements(have: str, requirement: str, expected: bool) -> None:
    assert holds(f"v version {requirement}", node(v=have)) is expected


@pytest.mark.parametrize("requirement", [">= banana", ">= 1.2,", "=> 1.2", ">= 1.2 < 2"])
def test_bad_version_requirements_are_refused(requirement: str) -> None:
    with pytest.raises(ValueError, match="invalid version requirement"):
        parse_constraint(f"attr.kernel version {requirement}")


# --- parsing, and agreement with the spec check ---------------------------------------------

def test_parse_prepares_the_operand_once() -> None:
    c = parse_constraint("  rack in r1, r2 ,r3  ")
    assert (c.text, c.attribute.name, c.operator, c.values) == (
        "rack in r1, r2 ,r3", "rack", Operator.IN, frozenset({"r1", "r2", "r3"}))
    assert parse_constraint("x regexp ^a+$").pattern is not None
    assert parse_constraint("x >= 4").number == 4.0
    assert parse_constraint("x >= four").number is None
    assert len(parse_constraint("x version ~> 1.2, != 1.5").clauses) == 3


CONSTRAINTS = [
    "zone != c", "zone == a", "cpu.cores >= 4", "mem<8", "node.class in gpu,cpu",
    "rack not_in r1, r2", "host regexp ^web-[0-9]+$", "kernel version >= 5.10, < 7",
    "${node.datacenter} == dc1", "meta.team/owner == x", "zone", "zone !=", "== c", "zone ~ c",
    "zone in", "zone in a,,b", "host regexp ([", "zone notin a", "zonein a",
    "kernel version banana", "kernel version >= 1,",
]


def spec_with(placement: PlacementSpec) -> ApplicationSpec:
    return ApplicationSpec(name="shop", services={
        "web": ServiceSpec(command=("true",), placement=placement)})


@pytest.mark.parametrize("text", CONSTRAINTS)
def test_the_spec_accepts_exactly_what_the_scheduler_parses(text: str) -> None:
    try:
        parse_constraint(text)
        message = None
    except ValueError as exc:
        message = str(exc)
    errors = check_spec(spec_with(PlacementSpec(constraints=(text,))))
    assert [e.message for e in errors] == ([] if message is None else [message])
    if errors:
        assert errors[0].path == "services.web.placement.constraints[0]"


def test_the_spec_checks_the_spread_attribute() -> None:
    assert check_spec(spec_with(PlacementSpec(spread="zone"))) == []
    assert check_spec(spec_with(PlacementSpec(spread="attr.arch"))) == []
    (error,) = check_spec(spec_with(PlacementSpec(spread="the zone")))
    assert error.path == "services.web.placement.spread"
    assert "expected an attribute name" in error.message
