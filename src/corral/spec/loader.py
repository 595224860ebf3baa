"""Load the user's application file (YAML; JSON accepted) into an `ApplicationSpec`.

Three stages, and every problem of every stage is reported at once with a line number:

1. text -> data. YAML is composed into a node tree first, so that each path in the document
   gets the line it was written on (a `path -> line` map) and duplicate keys, which PyYAML
   would silently collapse to the last one, are caught. JSON goes through `json` (exact JSON
   semantics); its lines come from the same YAML composer when it can read the text.
2. data -> records: pydantic validation of `model/application.py`, with the errors put in
   plain words by `spec/errors.py`.
3. records -> cross-field checks (`spec/checks.py`). When stage 2 fails, the services and
   jobs that did validate are still checked, so one run shows both kinds of mistakes.

`validate_spec_data` is stages 2 and 3 alone, for JSON bodies the API server has decoded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.model.application import NAME_PATTERN, ApplicationSpec, JobSpec, ServiceSpec
from corral.model.codec import from_data
from corral.spec.checks import check_spec, normalise_spec
from corral.spec.errors import (
    FieldError,
    LineLookup,
    Loc,
    SpecError,
    format_path,
    show_value,
    translate_validation_error,
)

__all__ = ["load_spec_file", "load_spec_text", "validate_spec_data"]

# Aliases let a tiny file expand into an enormous document (the "billion laughs"); counting
# nodes as the walk expands them bounds the work of every later stage too.
_MAX_NODES = 100_000
_EMPTY = "the file is empty: expected at least 'name: <application name>' with services or jobs"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _SpecYamlLoader(yaml.SafeLoader):
    """SafeLoader resolving plain scalars as YAML 1.2 does for the values a spec holds.

    YAML 1.1 reads `NO`, `off` and `y` as booleans (so `env: {COUNTRY: NO}` would become
    "false") and `2026-01-01` as a date; no spec field wants either, and every boolean field
    still accepts yes/no through pydantic. A bare `=` would resolve to a tag SafeLoader
    cannot construct.
    """


_SpecYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in {_BOOL_TAG, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecYamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _LineMap:
    """`path -> line` for one document; a path that is not in the file (a missing field)
    takes the line of its nearest ancestor that is."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def __call__(self, loc: Loc) -> int | None:
        while True:
            line = self.lines.get(loc)
            if line is not None or not loc:
                return line
            loc = loc[:-1]


class _Walker:
    """Fills a `_LineMap` from a YAML node tree and finds duplicate keys on the way."""

    def __init__(self) -> None:
        self.map = _LineMap()
        self.duplicates: list[FieldError] = []
        self._count = 0
        self._open: set[int] = set()  # mappings and sequences on the current path
        self._reported: set[int] = set()

    def walk(self, node: yaml.Node, loc: Loc, line: int, *, explicit: bool = True) -> None:
        self._count += 1
        if self._count > _MAX_NODES:
            raise _Abort(FieldError(path="", message=f"the document has more than "
                                    f"{_MAX_NODES} values once aliases are expanded"))
        if explicit:
            # Later keys win, as in the constructed dict, so a repeated key's line is the
            # one whose value is validated.
            self.map.lines[loc] = line
        else:
            self.map.lines.setdefault(loc, line)
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return
        if id(node) in self._open:
            raise _Abort(FieldError(path="", line=line, message="a value contains itself "
                                    "through an alias (*name), which a spec cannot use"))
        self._open.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*loc, i), item.start_mark.line + 1, explicit=explicit)
        else:
            self._walk_mapping(node, loc, explicit=explicit)
        self._open.discard(id(node))

    def _walk_mapping(self, node: yaml.MappingNode, loc: Loc, *, explicit: bool) -> None:
        seen: dict[tuple[str, str], int] = {}
        merged: list[yaml.Node] = []
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                merged.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
                continue
            if not isinstance(key, yaml.ScalarNode):
                continue  # the constructor rejects unhashable keys with its own error
            key_line = key.start_mark.line + 1
            ident = (key.tag, key.value)
            if ident in seen and id(key) not in self._reported:
                self._reported.add(id(key))
                self.duplicates.append(FieldError(
                    path=_path_text(loc, key.value), line=key_line,
                    message=f"duplicate key {key.value!r}: it is already set on line "
                            f"{seen[ident]}"))
            seen.setdefault(ident, key_line)
            self.walk(value, (*loc, key.value), key_line, explicit=explicit)
        # `<<: *base` keys only fill in what the mapping does not set itself.
        for base in merged:
            if isinstance(base, yaml.MappingNode):
                self.walk(base, loc, base.start_mark.line + 1, explicit=False)


class _Abort(Exception):
    def __init__(self, error: FieldError) -> None:
        super().__init__(error)
        self.error = error


def _path_text(loc: Loc, key: str) -> str:
    return format_path((*loc, key))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> FieldError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "cannot parse"
        if "another document" in problem:
            problem = "a spec file holds one document, but a second one starts here"
        elif "\\t" in problem or "\t" in problem:
            problem += " (YAML indents with spaces, not tabs)"
        message = f"invalid YAML: {problem} at column {mark.column + 1}"
        start = exc.context_mark
        if exc.context and exc.context.startswith("while") and start is not None:
            message += f" ({exc.context} started on line {start.line + 1})" \
                if start.line != mark.line else f" ({exc.context})"
        return FieldError(path="", line=mark.line + 1, message=message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return FieldError(path="", line=line, message=f"invalid character {exc.character!r} "
                          "(a spec file is plain text)")
    return FieldError(path="", message=f"invalid YAML: {exc}")


def _parse_yaml(text: str, filename: str) -> tuple[Any, _LineMap, list[FieldError]]:
    loader: _SpecYamlLoader | None = None
    try:
        loader = _SpecYamlLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise SpecError(filename, [FieldError(path="", message=_EMPTY)])
        walker = _Walker()
        walker.walk(node, (), node.start_mark.line + 1)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SpecError(filename, [_yaml_problem(exc, text)]) from None
    except _Abort as exc:
        raise SpecError(filename, [exc.error]) from None
    except RecursionError:
        raise SpecError(filename, [FieldError(path="", message="the document is nested too "
                                              "deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, walker.map, walker.duplicates


def _json_lines(text: str) -> _LineMap:
    """Lines for a JSON document, read through the YAML composer (JSON is, nearly, YAML
    flow style). Best effort: a document it cannot read simply has no lines."""
    try:
        loader = _SpecYamlLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
        walker = _Walker()
        if node is not None:
            walker.walk(node, (), node.start_mark.line + 1)
    except (yaml.YAMLError, _Abort, RecursionError):
        return _LineMap()
    return walker.map


def _parse_json(text: str, filename: str) -> tuple[Any, _LineMap, list[FieldError]]:
    # The hook cannot know where a mapping sits, so it keeps each mapping that had repeated
    # keys (keeping it alive keeps its id unique) and a walk of the result finds the paths.
    repeated: dict[int, tuple[dict[str, Any], list[str]]] = {}

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        dups = []
        for key, value in pairs:
            if key in out:
                dups.append(key)
            out[key] = value
        if dups:
            repeated[id(out)] = (out, dups)
        return out

    if not text.strip():
        raise SpecError(filename, [FieldError(path="", message=_EMPTY)])
    try:
        data = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as exc:
        raise SpecError(filename, [FieldError(
            path="", line=exc.lineno, message=f"invalid JSON: {exc.msg} (column {exc.colno})",
        )]) from None
    except RecursionError:
        raise SpecError(filename, [FieldError(path="", message="the document is nested too "
                                              "deeply")]) from None
    lines = _json_lines(text)
    errors: list[FieldError] = []
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack and repeated:
        loc, value = stack.pop()
        if isinstance(value, dict):
            for key in repeated.get(id(value), (None, []))[1]:
                errors.append(FieldError(path=_path_text(loc, key), line=lines((*loc, key)),
                                         message=f"duplicate key {key!r}"))
            stack.extend(((*loc, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
    return data, lines, errors


def _partial_spec(data: dict[Any, Any]) -> tuple[ApplicationSpec, set[str], set[str]]:
    """The services and jobs of `data` that validate on their own, and the names of those
    that do not, so cross-field checks can run on the rest of a file with errors."""
    found: dict[str, dict[str, Any]] = {"services": {}, "jobs": {}}
    broken: dict[str, set[str]] = {"services": set(), "jobs": set()}
    for section, cls in (("services", ServiceSpec), ("jobs", JobSpec)):
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if not isinstance(name, str):
                continue
            try:
                if not re.match(NAME_PATTERN, name):
                    raise ValueError(name)
                found[section][name] = from_data(cls, entry)
            except (ValidationError, ValueError):
                broken[section].add(name)
    spec = ApplicationSpec(name="partial", services=found["services"], jobs=found["jobs"])
    return spec, broken["services"], broken["jobs"]


def _validate(data: Any, filename: str, line_of: LineLookup | None,
              errors: list[FieldError]) -> ApplicationSpec:
    def line(loc: Loc) -> int | None:
        return line_of(loc) if line_of is not None else None

    if data is None:
        raise SpecError(filename, [*errors, FieldError(path="", message=_EMPTY, line=line(()))])
    if not isinstance(data, dict):
        raise SpecError(filename, [*errors, FieldError(
            path="", line=line(()), message="expected a mapping of fields (name, namespace, "
            f"services, jobs) at the top level, got {show_value(data)}")])
    broken_services: set[str] = set()
    broken_jobs: set[str] = set()
    try:
        spec = from_data(ApplicationSpec, data)
    except ValidationError as exc:
        errors = errors + translate_validation_error(exc, root=ApplicationSpec,
                                                     line_of=line_of)
        spec, broken_services, broken_jobs = _partial_spec(data)
    errors = errors + check_spec(spec, line_of=line_of, other_services=broken_services,
                                 other_jobs=broken_jobs)
    if errors:
        # By line, as the user reads the file; errors without a line (stable sort) last.
        errors.sort(key=lambda e: (e.line is None, e.line or 0))
        raise SpecError(filename, errors)
    return normalise_spec(spec)


def validate_spec_data(data: object, *, filename: str = "<input>") -> ApplicationSpec:
    """Already-decoded data (an API request body) -> a checked `ApplicationSpec`; raises
    `SpecError` with every problem found."""
    return _validate(data, filename, None, [])


def load_spec_text(text: str, *, filename: str = "<input>") -> ApplicationSpec:
    """A spec's text -> a checked `ApplicationSpec`. JSON when `filename` ends in `.json`,
    YAML otherwise; raises `SpecError` with every problem found."""
    if filename.lower().endswith(".json"):
        data, lines, errors = _parse_json(text, filename)
    else:
        data, lines, errors = _parse_yaml(text, filename)
    return _validate(data, filename, lines, errors)


def load_spec_file(path: str | Path) -> ApplicationSpec:
    """Read and load a spec file; problems reading it are a `SpecError` too."""
    filename = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(filename, [FieldError(
            path="", message=f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: drop the byte order mark some editors write
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(filename, [FieldError(
            path="", line=line, message="the file is not UTF-8 text")]) from None
    return load_spec_text(text, filename=filename)
