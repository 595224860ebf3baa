"""Errors in a spec file, in the user's words, each pointing at a field and a line.

`SpecError` carries every problem found in one file (a user fixing a file wants the whole
list, not one error per attempt). `translate_validation_error` turns pydantic's errors into
`FieldError`s: it walks the record types of `model/application.py` along each error's
location, so an unknown field can name the valid fields *at that place* and a size limit
can be shown as `4MiB` rather than a byte count.

Neighbours: `spec/loader.py` parses text and supplies line numbers through a `LineLookup`;
`spec/checks.py` adds the cross-field errors; the CLI prints `str(SpecError)` and the API
returns `SpecError.to_dict()`.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import shlex
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BeforeValidator, ValidationError
from pydantic_core import ErrorDetails

from corral.model.application import NAME_PATTERN, PORT_NAME_PATTERN
from corral.model.units import format_size, parse_size

__all__ = [
    "FieldError", "LineLookup", "Loc", "SpecError", "close_match", "format_path", "show_value",
    "translate_validation_error",
]

# A location inside the document: mapping keys are str, list indexes int (pydantic's `loc`).
Loc = tuple[str | int, ...]
LineLookup = Callable[[Loc], int | None]


def format_path(loc: Loc) -> str:
    """`("services", "web", "ports", 0, "name")` -> `services.web.ports[0].name`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldError:
    """One problem: where (`path`, `line`), what (`message`) and, when there is an obvious
    candidate, what the user probably meant (`suggestion`: a field name, a choice, a value).
    The message is complete on its own; `suggestion` is there for tools that offer a fix."""

    path: str
    message: str
    line: int | None = None
    suggestion: str | None = None

    def render(self, filename: str) -> str:
        where = filename if self.line is None else f"{filename}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "line": self.line,
                "suggestion": self.suggestion}


class SpecError(ValueError):
    """A spec file that cannot be applied, with every problem found in it."""

    def __init__(self, filename: str, errors: Sequence[FieldError]) -> None:
        # Both values go to Exception.args so that the error pickles and copies intact.
        super().__init__(filename, list(errors))
        self.filename = filename
        self.errors: list[FieldError] = list(errors)

    def __str__(self) -> str:
        return "\n".join(error.render(self.filename) for error in self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.filename, "errors": [error.to_dict() for error in self.errors]}


def show_value(value: Any) -> str:
    """A value as the user wrote it, short: YAML words for null and booleans, and no dump of
    a whole mapping into a one-line message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime.date):
        return repr(value.isoformat())
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def close_match(word: str, choices: Sequence[str] | set[str] | frozenset[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


# --- the record types along an error location ---------------------------------------------

def _unwrap(tp: Any) -> Any:
    """Strip `Annotated[...]` and `X | None` down to the type that has the fields or items."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _type_at(root: Any, loc: Loc) -> Any | None:
    """The declared type at `loc` below `root`, still `Annotated` (its metadata says which
    unit parser applies), or None when the location leaves the schema."""
    tp = root
    for part in loc:
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            hints = get_type_hints(tp, include_extras=True)
            if part not in hints:
                return None
            tp = hints[part]
        elif origin is dict:
            tp = get_args(tp)[1]
        elif origin is tuple and isinstance(part, int):
            tp = get_args(tp)[0]
        else:
            return None
    return tp


def _field_names(root: Any, loc: Loc) -> list[str]:
    tp = _type_at(root, loc)
    tp = _unwrap(tp) if tp is not None else None
    if tp is None or not dataclasses.is_dataclass(tp):
        return []
    return [f.name for f in dataclasses.fields(tp)]


def _is_size(tp: Any) -> bool:
    if get_origin(tp) is not Annotated:
        return False
    return any(isinstance(m, BeforeValidator) and m.func is parse_size
               for m in tp.__metadata__)


def _literal_choices(tp: Any) -> list[str]:
    tp = _unwrap(tp) if tp is not None else None
    if get_origin(tp) is Literal:
        return [str(arg) for arg in get_args(tp)]
    return []


# --- pydantic error -> FieldError -----------------------------------------------------------

_NAME_RULES = {
    NAME_PATTERN: "must be lowercase letters, digits and '-', starting with a letter "
                  "(at most 63 characters)",
    PORT_NAME_PATTERN: "must be lowercase letters, digits and '_', starting with a letter "
                       "(at most 31 characters)",
}
_KIND_OF_NAME = {"services": "service name", "jobs": "job name"}
_WHOLE_NUMBER = {"int_type", "int_parsing", "int_from_float", "int_parsing_size"}
_NUMBER = {"float_type", "float_parsing"}
_MAPPING = {"dict_type", "dataclass_type", "dataclass_exact_type", "model_type",
            "mapping_type"}
_LIST = {"tuple_type", "list_type", "iterable_type"}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def _flow_list(items: Sequence[str]) -> str:
    # JSON strings are valid YAML flow scalars, so the suggestion can be pasted as it is.
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def _command_hint(text: str) -> tuple[str, str | None]:
    try:
        words = shlex.split(text)
    except ValueError:
        words = []
    shell = _flow_list(["sh", "-c", text])
    if not words:
        return f"write the command as a list, e.g. {shell}", shell
    listed = _flow_list(words)
    return f"write the command as a list: {listed}, or {shell} to run it through a shell", listed


def _translate_one(err: ErrorDetails, root: Any) -> tuple[Loc, str, str | None]:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    got = f"got {show_value(value)}"

    if loc and loc[-1] == "[key]":
        loc = loc[:-1]
        what = _KIND_OF_NAME.get(str(loc[-2])) if len(loc) >= 2 else None
        rule = _NAME_RULES.get(str(ctx.get("pattern")))
        if rule is not None:
            return loc, f"invalid {what or 'name'} {show_value(value)}: {rule}", None
        return loc, f"invalid key {show_value(value)}: {err['msg']}", None

    if kind in {"unexpected_keyword_argument", "extra_forbidden"}:
        name = str(loc[-1])
        valid = _field_names(root, loc[:-1])
        best = close_match(name, valid)
        if best is not None:
            return loc, f"unknown field {name!r} (did you mean {best!r}?)", best
        listing = ", ".join(valid)
        return loc, f"unknown field {name!r}; valid fields here: {listing}", None
    if kind == "missing":
        return loc, "required field missing", None
    if kind == "invalid_key":
        return loc, f"keys must be strings, {got}", None
    if kind in _WHOLE_NUMBER:
        return loc, f"expected a whole number, {got}", None
    if kind in _NUMBER:
        return loc, f"expected a number, {got}", None
    if kind in {"bool_type", "bool_parsing"}:
        return loc, f"expected true or false, {got}", None
    if kind == "string_type":
        if isinstance(value, bool | int | float | datetime.date):
            quoted = json.dumps(show_value(value).strip("'"))
            return loc, f"expected a string, {got}; put it in quotes: {quoted}", quoted
        return loc, f"expected a string, {got}", None
    if kind in _MAPPING:
        return loc, f"expected a mapping of fields (name: value), {got}", None
    if kind in _LIST:
        if isinstance(value, str) and loc and loc[-1] == "command":
            hint, fix = _command_hint(value)
            return loc, f"expected a list, {got}; {hint}", fix
        if isinstance(value, str):
            fix = _flow_list([value])
            return loc, f"expected a list, {got}; write {fix}", fix
        return loc, f"expected a list, {got}", None
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return loc, "must not be empty", None
        return loc, f"needs at least {ctx.get('min_length')} items", None
    if kind == "too_long":
        return loc, f"must have at most {ctx.get('max_length')} items", None
    if kind == "literal_error":
        choices = _literal_choices(_type_at(root, loc))
        if not choices:
            return loc, f"expected one of {ctx.get('expected')}, {got}", None
        best = close_match(str(value), choices) if isinstance(value, str) else None
        tail = f" (did you mean {best!r}?)" if best else ""
        return loc, f"expected one of: {', '.join(choices)}, {got}{tail}", best
    if kind == "string_pattern_mismatch":
        rule = _NAME_RULES.get(str(ctx.get("pattern")), f"must match {ctx.get('pattern')}")
        return loc, f"{rule}, {got}", None
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        limit = ctx.get(key)
        if _is_size(_type_at(root, loc)) and isinstance(limit, int):
            limit = format_size(limit)
        if limit == 0 and kind == "greater_than_equal":
            return loc, f"must not be negative, {got}", None
        return loc, f"must be {words} {limit}, {got}", None
    if kind in {"value_error", "assertion_error"}:
        text = str(ctx.get("error") or err["msg"])
        if "got" not in text:
            text = f"{text}, {got}"
        return loc, text, None
    if kind == "recursion_loop":
        return loc, "the value contains itself (a recursive YAML alias)", None
    # Anything not listed reads acceptably as pydantic words it; keep it, lowercased.
    msg = err["msg"]
    return loc, f"{msg[:1].lower()}{msg[1:]}, {got}", None


def translate_validation_error(exc: ValidationError, *, root: Any,
                               line_of: LineLookup | None = None) -> list[FieldError]:
    """Every error of `exc` (raised validating `root`) as a `FieldError`, once each."""
    out: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    details = exc.errors()
    # pydantic counts a list's length after dropping invalid items, so `[true]` for a list
    # of strings also fails min_length: an echo of the item's error, not a second mistake.
    parents = {tuple(e["loc"][:n]) for e in details for n in range(len(e["loc"]))}
    for err in details:
        if err["type"] == "too_short" and tuple(err["loc"]) in parents:
            continue
        loc, message, suggestion = _translate_one(err, root)
        path = format_path(loc)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        line = line_of(loc) if line_of is not None else None
        out.append(FieldError(path=path, message=message, line=line, suggestion=suggestion))
    return out
