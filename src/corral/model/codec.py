"""JSON encoding of model records, deterministic (sorted keys, no spaces) so that the same
record always gives the same bytes: an unchanged value never causes a write or a restart.

One `TypeAdapter` per record type, cached: building one costs far more than using it.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import TypeAdapter

__all__ = ["dump_json", "from_data", "load_json", "to_data"]

T = TypeVar("T")


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(cls: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def to_data(obj: Any) -> Any:
    """A record as plain JSON-compatible data (dicts, lists, str, numbers)."""
    return _adapter(type(obj)).dump_python(obj, mode="json")


def from_data(cls: type[T], data: Any) -> T:
    """Validate plain data into a record; raises pydantic.ValidationError."""
    result: T = _adapter(cls).validate_python(data)
    return result


def dump_json(obj: Any) -> bytes:
    return json.dumps(to_data(obj), sort_keys=True, separators=(",", ":")).encode()


def load_json(cls: type[T], data: bytes | str) -> T:
    return from_data(cls, json.loads(data))
