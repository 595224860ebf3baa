"""Placement constraints: `"<attribute> <operator> <value>"`, parsed once, checked per node.

The one definition of the constraint language. `spec/checks.py` validates a spec's
constraints with `parse_constraint` (its error messages are the user's), and the scheduler
filters nodes with `Constraint.matches`. Pure, and placed in `model/` so that the spec room
need not import scheduler internals, nor the scheduler the spec room.

Attributes, as Nomad names them where Corral has the same thing:

| attribute | value |
|---|---|
| `node.name`, `node.address` | the node's name and IP |
| `attr.<key>` | `Node.attributes[key]` (fingerprinted: `os`, `kernel`, `arch`, `hostname`, ...) |
| `label.<key>`, `meta.<key>` | `Node.labels[key]` (`meta` is Nomad's word for labels) |
| any other `<key>` | `Node.labels[key]`, so `zone` is the label set by `--label zone=a` |

`${...}` around the attribute is accepted and ignored (Nomad's interpolation syntax).

Operators: `==`, `!=` (string equality); `<`, `<=`, `>`, `>=` (numeric when both sides are
numbers, else lexical); `in`, `not_in` (a comma-separated list); `regexp` (Python syntax,
matching anywhere, like Go's `MatchString`); `version` (clauses such as `>= 1.2, < 2`, all of
which must hold; see `Version`).

A node without the attribute fails every operator except `!=` and `not_in`, which it
satisfies: "not in zone c" holds for a node with no zone (Nomad's semantics).

Neighbours: `model/node.py` (what is looked up), `spec/checks.py`, `scheduler/feasibility.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from corral.model.node import Node

__all__ = ["Attribute", "Constraint", "Operator", "Version", "parse_attribute", "parse_constraint",
           "parse_version"]


class Operator(StrEnum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "not_in"
    REGEXP = "regexp"
    VERSION = "version"


_NAME = r"[A-Za-z_$][\w.${}/-]*"  # an attribute name, `${...}` included
_SYNTAX = re.compile(
    rf"^\s*(?P<attr>{_NAME})\s*"
    r"(?:(?P<sym>==|!=|<=|>=|<|>)|\s(?P<word>in|not_in|regexp|version)\s)"
    r"\s*(?P<value>\S.*?)\s*$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")

# What a missing attribute satisfies: only the negative operators.
_MISSING_OK = frozenset({Operator.NE, Operator.NOT_IN})


# --- versions -------------------------------------------------------------------------------

_VERSION = re.compile(r"^v?(?P<release>\d+(?:\.\d+)*)(?:-(?P<suffix>[0-9A-Za-z.-]+))?"
                      r"(?:\+[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True, slots=True)
class Version:
    """A dotted version with an optional suffix, ordered as users of the field expect:

        1.2-rc1 < 1.2 == 1.2.0 < 5.15.0-86-generic < 5.15.0-91-generic < 5.15.1

    A suffix that starts with a letter (`-rc1`, `-beta.2`) is a semver pre-release and ranks
    below its release. One that starts with a digit (`-91-generic`, Debian's `-1ubuntu2`) is
    a distribution revision and ranks above it, so `attr.kernel version >= 5.15` holds on
    `5.15.0-91-generic`. Rejected: go-version's rule (Nomad) that a suffixed version never
    satisfies an unsuffixed constraint, which makes every Ubuntu kernel fail `>= 5.15`.
    `+build` metadata is ignored, as semver says.
    """

    release: tuple[int, ...]  # as written: `~> 1.2.0` and `~> 1.2` differ
    rank: int  # 0: pre-release, 1: plain release, 2: revision
    suffix: tuple[tuple[int, int, str], ...]  # identifiers: numbers before words, as semver

    @property
    def key(self) -> tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]:
        release = self.release
        while len(release) > 1 and release[-1] == 0:  # 1.2 == 1.2.0
            release = release[:-1]
        return release, self.rank, self.suffix


def parse_version(text: str) -> Version | None:
    """The version in `text`, or None when it is not one."""
    m = _VERSION.match(text.strip())
    if m is None:
        return None
    suffix = m.group("suffix") or ""
    idents = tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                   for part in re.split(r"[.-]", suffix) if part)
    rank = 1 if not suffix else (2 if suffix[0].isdigit() else 0)
    return Version(release=tuple(int(p) for p in m.group("release").split(".")),
                   rank=rank, suffix=idents)


_CLAUSE = re.compile(r"^\s*(?P<op>~>|==|=|!=|<=|>=|<|>)?\s*(?P<version>\S+)\s*$")
_Clause = tuple[str, Version]


def _pessimistic_bound(version: Version) -> Version:
    """`~> 1.2` allows up to (not including) 2; `~> 1.2.3` up to 1.3 (Terraform, Nomad)."""
    head = version.release[:-1] if len(version.release) > 1 else version.release
    # rank 0 with no suffix: below every pre-release of the bound, so `~> 1.2` rejects 2.0-rc1.
    return Version(release=(*head[:-1], head[-1] + 1), rank=0, suffix=())


def _parse_requirement(text: str) -> tuple[_Clause, ...]:
    clauses: list[_Clause] = []
    for part in text.split(","):
        m = _CLAUSE.match(part)
        version = parse_version(m.group("version")) if m else None
        if m is None or version is None:
            raise ValueError(f"invalid version requirement {text!r}: expected clauses such "
                             "as '>= 1.2, < 2' (operators =, !=, <, <=, >, >=, ~>)")
        op = m.group("op") or "="
        if op == "~>":
            clauses += [(">=", version), ("<", _pessimistic_bound(version))]
        else:
            clauses.append(("=" if op == "==" else op, version))
    return tuple(clauses)


def _holds(op: str, sign: int) -> bool:
    """Whether `op` holds between two values that compare as `sign` (-1, 0, 1)."""
    if op in ("=", "=="):
        return sign == 0
    if op == "!=":
        return sign != 0
    if op == "<":
        return sign < 0
    if op == "<=":
        return sign <= 0
    if op == ">":
        return sign > 0
    return sign >= 0


def _version_ok(version: Version, clauses: tuple[_Clause, ...]) -> bool:
    have = version.key
    return all(_holds(op, (have > bound.key) - (have < bound.key)) for op, bound in clauses)


# --- constraints ----------------------------------------------------------------------------

_ATTRIBUTE = re.compile(rf"^{_NAME}$")


@dataclass(frozen=True, slots=True)
class Attribute:
    """Where a node's value for one attribute name is found, resolved once from the name."""

    name: str  # as written, without `${...}`
    source: str  # "name", "address", "attr" or "label"
    key: str  # in `Node.attributes` or `Node.labels`

    def lookup(self, node: Node) -> str | None:
        """The node's value, or None if it has none."""
        if self.source == "label":
            return node.labels.get(self.key)
        if self.source == "attr":
            return node.attributes.get(self.key)
        return node.name if self.source == "name" else node.address


def parse_attribute(text: str) -> Attribute:
    """The attribute `text` names (`zone`, `label.zone`, `attr.kernel`, `node.name`, ...);
    raises ValueError when it is not an attribute name. Used for `spread` too."""
    name = text.strip()
    if not _ATTRIBUTE.match(name):
        raise ValueError(f"expected an attribute name such as zone, attr.arch or node.name, "
                         f"got {text!r}")
    if name.startswith("${") and name.endswith("}"):
        name = name[2:-1]
    if name in ("node.name", "node.address"):
        return Attribute(name, name[5:], "")
    head, dot, rest = name.partition(".")
    if dot and rest and head == "attr":
        return Attribute(name, "attr", rest)
    if dot and rest and head in ("label", "meta"):
        return Attribute(name, "label", rest)
    return Attribute(name, "label", name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraint:
    """One parsed constraint, with its operand prepared once (list, regex, version clauses)."""

    text: str  # as written, trimmed: how failures name it
    attribute: Attribute
    operator: Operator
    value: str
    values: frozenset[str] = frozenset()  # in, not_in
    pattern: re.Pattern[str] | None = None  # regexp
    clauses: tuple[_Clause, ...] = ()  # version
    number: float | None = None  # the value, when it is a number

    def matches(self, node: Node) -> bool:
        have = self.attribute.lookup(node)
        if have is None:
            return self.operator in _MISSING_OK
        op = self.operator
        if op == Operator.EQ:
            return have == self.value
        if op == Operator.NE:
            return have != self.value
        if op in (Operator.IN, Operator.NOT_IN):
            return (have in self.values) == (op == Operator.IN)
        if op == Operator.REGEXP:
            assert self.pattern is not None
            return self.pattern.search(have) is not None
        if op == Operator.VERSION:
            version = parse_version(have)
            return version is not None and _version_ok(version, self.clauses)
        return _ordered(op, have, self.value, self.number)


def _ordered(op: Operator, have: str, want: str, number: float | None) -> bool:
    if number is not None and _NUMBER.match(have):
        left = float(have)
        return _holds(op, (left > number) - (left < number))
    return _holds(op, (have > want) - (have < want))


def parse_constraint(text: str) -> Constraint:
    """The constraint `text` states; raises ValueError with a message for the user."""
    m = _SYNTAX.match(text)
    if m is None:
        raise ValueError("expected '<attribute> <operator> <value>' such as 'zone != c' "
                         "(operators: ==, !=, <, <=, >, >=, in, not_in, regexp, version), "
                         f"got {text!r}")
    value = m.group("value")
    operator = Operator(m.group("sym") or m.group("word"))
    values: frozenset[str] = frozenset()
    pattern = None
    clauses: tuple[_Clause, ...] = ()
    if operator in (Operator.IN, Operator.NOT_IN):
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            raise ValueError(f"expected a comma-separated list of values, got {value!r}")
        values = frozenset(items)
    elif operator == Operator.REGEXP:
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    elif operator == Operator.VERSION:
        clauses = _parse_requirement(value)
    return Constraint(text=text.strip(), attribute=parse_attribute(m.group("attr")),
                      operator=operator, value=value, values=values, pattern=pattern,
                      clauses=clauses,
                      number=float(value) if _NUMBER.match(value) else None)
