"""The state store: the `Store` protocol (`base`), its backends (`memory`, `sqlite`) and
`open_store`, which picks a backend from a URL.

Neighbours: only `server/` opens a store; agents and the CLI go through the API. `open_store`
picks the backend from the URL scheme, here in plain sight, never by import side effects.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from corral.store.base import (
    CompactedError,
    Compare,
    CompareTarget,
    Delete,
    EventType,
    KeyValue,
    Op,
    Put,
    Store,
    StoreError,
    TxnResult,
    WatchEvent,
    prefix_end,
)
from corral.store.memory import MemoryStore
from corral.store.sqlite import SqliteStore

__all__ = [
    "CompactedError", "Compare", "CompareTarget", "Delete", "EventType", "KeyValue",
    "MemoryStore", "Op", "Put", "SqliteStore", "Store", "StoreError", "TxnResult",
    "WatchEvent", "open_store", "prefix_end",
]

_SCHEMES = ("memory://", "sqlite:///abs/path.db", "a plain file path (sqlite)")


async def open_store(url: str) -> Store:
    """Open the store `url` names: `memory://`, `sqlite:///abs/path.db`, or a plain path,
    which means sqlite (relative paths are taken from the current directory)."""
    if "://" not in url:
        if not url:
            raise ValueError(f"empty store URL; expected one of: {', '.join(_SCHEMES)}")
        return await SqliteStore.open(Path(url))
    parts = urlsplit(url)
    if parts.scheme == "memory":
        if parts.netloc or parts.path or parts.query:
            raise ValueError(f"store URL {url!r}: memory:// takes no path")
        return MemoryStore()
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"store URL {url!r}: sqlite needs an absolute path, as in "
                             f"sqlite:///var/lib/corral/state.db")
        if parts.query:
            raise ValueError(f"store URL {url!r}: sqlite takes no options")
        return await SqliteStore.open(Path(parts.path))
    raise ValueError(f"store URL {url!r}: unknown scheme {parts.scheme!r}; expected one of: "
                     f"{', '.join(_SCHEMES)}")
