"""Typed reads and writes of model records over the `Store`, with events in the same
transaction as the change they describe.

Only the API server and its controllers use this (the Kubernetes rule: one writer of the
store). Writes are compare-and-swap on the record's `mod_revision`, so two writers that
read the same version cannot both win; the loser re-reads and reconciles again.

Instances and nodes are read from the server's in-memory index (`server/index.py`), which
is exactly the store at its current revision: the same answers as a range, without
decoding every record on every read. Everything else is read from the store.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from corral.clock import Clock
from corral.model.codec import dump_json, load_json, to_data
from corral.model.event import Event
from corral.model.instance import Instance
from corral.model.node import Node
from corral.server import keys
from corral.server.index import StateIndex, Versioned
from corral.store.base import Compare, CompareTarget, Delete, KeyValue, Op, Put, Store

__all__ = ["Records", "Txn", "Versioned"]

T = TypeVar("T")


@dataclass(slots=True)
class Txn:
    """Collects compares, writes and events; `commit` applies all or nothing."""

    records: Records
    compares: list[Compare] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def put(self, key: str, record: object, *, expect: int | None = None) -> Txn:
        """`expect`: the mod_revision the key must still have (0: must not exist)."""
        if expect is not None:
            self.compares.append(Compare(key=key, target=CompareTarget.MOD, op="==",
                                         value=expect))
        value = dump_json(record)
        self.records.index.hint(key, value, record)
        self.ops.append(Put(key=key, value=value))
        return self

    def put_raw(self, key: str, value: bytes, *, lease: int = 0) -> Txn:
        self.ops.append(Put(key=key, value=value, lease=lease))
        return self

    def delete(self, key: str, *, expect: int | None = None, prefix: bool = False) -> Txn:
        if expect is not None:
            self.compares.append(Compare(key=key, target=CompareTarget.MOD, op="==",
                                         value=expect))
        self.ops.append(Delete(key=key, prefix=prefix))
        return self

    def event(self, topic: str, key: str, type: str, message: str = "",
              payload: Mapping[str, Any] | object | None = None) -> Txn:
        data: dict[str, Any]
        if payload is None:
            data = {}
        elif isinstance(payload, Mapping):
            data = dict(payload)
        else:
            data = to_data(payload)
        self.events.append(Event(topic=topic, key=key, type=type, time=self.records.clock.now(),
                                 message=message, payload=data))
        return self

    def merge(self, other: Txn) -> Txn:
        """Adds `other`'s compares, writes and events after this one's."""
        self.compares += other.compares
        self.ops += other.ops
        self.events += other.events
        return self

    async def commit(self) -> int | None:
        """The new revision, or None if a compare failed (someone else wrote first)."""
        ops = list(self.ops)
        for ev in self.events:
            ops.append(Put(key=self.records.next_event_key(ev.time), value=dump_json(ev)))
        if not ops:
            return await self.records.store.revision()
        try:
            result = await self.records.store.txn(self.compares, ops)
        finally:
            self.records.index.drop_hints([op.key for op in self.ops if isinstance(op, Put)])
        return result.revision if result.succeeded else None


class Records:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._seq = itertools.count()
        self.index = StateIndex.of(store)

    def next_event_key(self, time: float) -> str:
        return keys.event(int(time * 1e9), next(self._seq) % 100_000_000)

    def txn(self) -> Txn:
        return Txn(self)

    async def get(self, cls: type[T], key: str) -> Versioned[T] | None:
        table = self._table(cls, key)
        if table is not None:
            await self.index.ready()
            found: Versioned[T] | None = table.items.get(key)
            return found
        kv = await self.store.get(key)
        return None if kv is None else Versioned(load_json(cls, kv.value), kv.mod_revision)

    async def scan(self, cls: type[T], prefix: str) -> tuple[list[Versioned[T]], int]:
        if prefix in (keys.INSTANCES, keys.NODES) and self._table(cls, prefix) is not None:
            await self.index.ready()
            table = self._table(cls, prefix)
            assert table is not None
            return table.ordered(), self.index.revision
        kvs, revision = await self.store.range(prefix)
        return [Versioned(load_json(cls, kv.value), kv.mod_revision) for kv in kvs], revision

    def _table(self, cls: type[T], key: str) -> Any:
        """The index's table that holds `key` as a `cls`, if it has one."""
        if cls is Instance and key.startswith(keys.INSTANCES):
            return self.index.instances
        if cls is Node and key.startswith(keys.NODES):
            return self.index.nodes
        return None

    async def events_since(self, index: int, *, limit: int = 0) -> tuple[list[Event], int]:
        kvs, revision = await self.store.range(keys.EVENTS)
        events = [event_from_kv(kv) for kv in kvs if kv.create_revision > index]
        events.sort(key=lambda e: (e.index, e.time))
        if limit:
            events = events[-limit:]
        return events, revision


def event_from_kv(kv: KeyValue) -> Event:
    return dataclasses.replace(load_json(Event, kv.value), index=kv.create_revision)
