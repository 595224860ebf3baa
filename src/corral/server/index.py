"""The server's in-memory index of instances and nodes: every record decoded once, when it
is written, instead of on every read (Kubernetes' watch cache, Nomad's in-memory state).

Without it every controller pass, every long poll and every status report read and decoded
every instance record from the store: with N agents long-polling, one instance change cost
N full scans. With it:

- `Records.scan` and `Records.get` of `/instances/` and `/nodes/` answer from memory, in
  key order, as fresh as the store (see below);
- instances are also indexed by node, so a node's long poll costs its own instances only,
  and it is woken only when one of *its* instances changed in a way its agent must learn
  (`wait_node`; not by the agent's own status reports coming back), never by the
  cluster's other changes;
- the live nodes (`/nodes-alive/`) are counted, so the heartbeat TTL costs nothing;
- what the instances hold per node (`usage`, exactly `scheduler.node_usage` over the
  records) and which instances wait for placement (`pending`) are kept as records change,
  so a scheduling pass and the plan applier cost O(nodes + pending), not O(instances);
- so are the instances per application (`of_app`, with the revision of the last change to
  one of them, `app_revision`), the job instances per application (`jobs_of_app`), the
  ones migrating off a draining node (`migrating`), the ended ones (`ended`) and, per
  service, how many count for its placement rules on each node (`placed`): the
  controllers then cost what changed, not a pass over a million instances (the applications
  controller reconciles only applications whose instances, deployments or record changed;
  drain, gc and jobs look only at the few instances that concern them).

Freshness: the index is fed by `Store.subscribe`, which hands it each commit's events on
the event loop before the writing call returns. So a read after a write sees the write,
and a reader never sees half a transaction: the index is exactly the store at
`revision`. It loads itself (one range per prefix) on first use; commits that arrive while
it loads are kept and applied after, skipping what the ranges already contained.

Decoding: a write made through `Records.Txn` hands its record over with the encoded bytes
(`hint`), so a record written by this server is never decoded again; other writes are
decoded from the event. Records are shared, never copied: they are frozen (STYLE.md 3).

Memory: one decoded `Instance` is about 1.4 KB; strings repeated across instances (app,
service, namespace, node, address, spec hash, reason) are interned so a million instances
share one copy of each.

One index per store object (`StateIndex.of(store)`): `Records` and the API share it
without the server's wiring having to pass it around.

Neighbours: `store/` (subscribe), `server/records.py` (reads through it), `api/nodes.py`
(long polls, TTL), `controllers/` (through `Records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from corral.model.codec import load_json
from corral.model.instance import TERMINAL_STATES, DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.scheduler.colocation import ServiceKey, counts_for_placement
from corral.scheduler.snapshot import NodeUsage, holds_resources, millicores
from corral.server import keys
from corral.store.base import EventType, Store, WatchEvent

__all__ = ["IdsInUse", "StateIndex", "Versioned"]

T = TypeVar("T")
AppKey = tuple[str, str]  # namespace, application


@dataclasses.dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    record: T
    mod_revision: int


_INTERNED = ("namespace", "app", "service", "spec_hash", "node", "address", "reason",
             "kind")


def _intern(inst: Instance) -> Instance:
    """The same record with its repeated strings shared (frozen: set through object)."""
    for name in _INTERNED:
        value = getattr(inst, name)
        if isinstance(value, str):
            object.__setattr__(inst, name, sys.intern(value))
    return inst


class _Held:
    """What the instances on one node hold; `usage()` is cached until the next change."""

    __slots__ = ("cpu", "instances", "memory", "ports", "usage")

    def __init__(self) -> None:
        self.cpu = self.memory = self.instances = 0
        self.ports: Counter[int] = Counter()
        self.usage: NodeUsage | None = None

    def add(self, inst: Instance, sign: int) -> None:
        self.cpu += sign * millicores(inst.resources.cpu)
        self.memory += sign * inst.resources.memory
        self.instances += sign
        # As `scheduler/snapshot.py` counts them: dynamic and static ports alike.
        for port in (*inst.ports.values(), *inst.static_ports.values()):
            self.ports[port] += sign
            if self.ports[port] <= 0:
                del self.ports[port]
        self.usage = None

    def current(self) -> NodeUsage:
        if self.usage is None:
            self.usage = NodeUsage(cpu_milli=self.cpu, memory=self.memory,
                                   ports=tuple(sorted(self.ports)), instances=self.instances)
        return self.usage


# What a node's agent writes about its instances in its status reports
# (`server/status_reports.next_record`). A change to these alone tells the agent nothing
# it does not know: its long poll is not woken for it (it was, and at scale half of all
# answers were the node's own reports coming back). Every other field is an instruction
# (assigned, stopped, moved, changed), and `lost` is the server's own verdict.
_REPORTED = frozenset({"state", "reason", "pid", "exit_code", "restarts", "health",
                       "started_at", "healthy_at", "updated_at"})
_INSTRUCTED = tuple(f.name for f in dataclasses.fields(Instance) if f.name not in _REPORTED)


def _tells_the_agent(old: Instance | None, new: Instance | None) -> bool:
    if old is None or new is None:
        return True
    if new.state == InstanceState.LOST and old.state != InstanceState.LOST:
        return True
    return any(getattr(old, name) != getattr(new, name) for name in _INSTRUCTED)


def _pending(inst: Instance) -> bool:
    return (inst.node is None and inst.state == InstanceState.PENDING
            and inst.desired == DesiredState.RUN)


class _Table(Generic[T]):
    """Records of one prefix by key, and their keys in order, sorted lazily: a read after
    k insertions sorts k keys and merges (timsort), never the whole table again."""

    def __init__(self) -> None:
        self.items: dict[str, Versioned[T]] = {}
        self._sorted: list[str] = []
        self._added: set[str] = set()
        self._removed: set[str] = set()

    def put(self, key: str, item: Versioned[T]) -> Versioned[T] | None:
        old = self.items.get(key)
        self.items[key] = item
        if old is None:
            self._added.add(key)
        return old

    def pop(self, key: str) -> Versioned[T] | None:
        old = self.items.pop(key, None)
        if old is not None:
            if key in self._added:
                self._added.discard(key)
            else:
                self._removed.add(key)
        return old

    def ordered(self) -> list[Versioned[T]]:
        if self._removed:
            removed = self._removed
            self._sorted = [k for k in self._sorted if k not in removed]
            self._removed = set()
        if self._added:
            self._sorted.extend(sorted(self._added))
            self._sorted.sort()
            self._added = set()
        items = self.items
        return [items[k] for k in self._sorted]


class IdsInUse:
    """The instance ids taken: the index's, and those a controller's pass handed out and
    has not committed yet (a new id must be neither)."""

    def __init__(self, index: StateIndex) -> None:
        self._index = index
        self._new: set[str] = set()

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._new or (
            isinstance(instance_id, str) and self._index.in_use(instance_id))

    def add(self, instance_id: str) -> None:
        self._new.add(instance_id)


_INDEXES: weakref.WeakKeyDictionary[Any, StateIndex] = weakref.WeakKeyDictionary()


class StateIndex:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.revision = 0
        self.instances: _Table[Instance] = _Table()
        self.nodes: _Table[Node] = _Table()
        self.alive: dict[str, bytes] = {}  # node name -> its /nodes-alive/ value (lease id)
        # names of nodes with a record but no live lease (the node controller's work), and
        # of draining nodes (the drain controller's): neither reads every node per pass
        self.unalive: set[str] = set()
        self.draining: set[str] = set()
        # node name -> instance id -> record: what each node's long poll answers.
        self._by_node: dict[str, dict[str, Versioned[Instance]]] = {}
        self._held: dict[str, _Held] = {}
        # ids of the instances waiting for placement, in the order they arrived
        self.pending: dict[str, None] = {}
        # node name -> revision of the last change to an instance on it.
        self._node_revision: dict[str, int] = {}
        # (namespace, app) -> instance id -> record; and the revision of the last change.
        self._by_app: dict[AppKey, dict[str, Versioned[Instance]]] = {}
        self._app_revision: dict[AppKey, int] = {}
        self._jobs: dict[AppKey, dict[str, Versioned[Instance]]] = {}
        self.migrating: dict[str, None] = {}  # ids with `migrate` set
        self.ended: dict[str, None] = {}  # ids in a terminal state
        # service -> node -> instances there that count for placement rules
        # (`scheduler.colocation.counts_for_placement`)
        self._placed: dict[ServiceKey, Counter[str]] = {}
        self._node_waiters: dict[str, asyncio.Event] = {}
        self._hints: dict[str, tuple[bytes, object]] = {}
        self._loaded = False
        self._closing = False
        self._loading: asyncio.Lock | None = None
        # Commits seen while loading, applied once loaded. Before anyone asked for the
        # index (None and not loaded) commits are ignored: the load will read them.
        self._buffer: list[Sequence[WatchEvent]] | None = None
        self._unsubscribe: Callable[[], None] = store.subscribe(self._on_commit)

    @classmethod
    def of(cls, store: Store) -> StateIndex:
        index = _INDEXES.get(store)
        if index is None:
            index = _INDEXES[store] = cls(store)
        return index

    # reads

    async def ready(self) -> None:
        """Load from the store once; every read method needs this first."""
        if self._loaded:
            return
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            if self._loaded:
                return
            await self._load()

    async def _load(self) -> None:
        self._buffer = []
        try:
            await self._load_ranges()
        except BaseException:
            self._buffer = None
            raise

    async def _load_ranges(self) -> None:
        instances, inst_rev = await self._store.range(keys.INSTANCES)
        nodes, node_rev = await self._store.range(keys.NODES)
        alive, alive_rev = await self._store.range(keys.NODES_ALIVE)
        for kv in instances:
            self._put_instance(kv.key, kv.value, kv.mod_revision, inst_rev)
        for kv in nodes:
            self._put_node(kv.key, Versioned(load_json(Node, kv.value), kv.mod_revision))
        self.alive = {kv.key.removeprefix(keys.NODES_ALIVE): kv.value for kv in alive}
        self.unalive = {v.record.name for v in self.nodes.items.values()} - set(self.alive)
        self.revision = max(inst_rev, node_rev, alive_rev)
        buffered, self._buffer = self._buffer or [], None
        self._loaded = True
        loaded_at = {keys.INSTANCES: inst_rev, keys.NODES: node_rev,
                     keys.NODES_ALIVE: alive_rev}
        for events in buffered:
            self._apply(events, loaded_at)

    def instance(self, instance_id: str) -> Versioned[Instance] | None:
        return self.instances.items.get(keys.instance(instance_id))

    def node(self, name: str) -> Versioned[Node] | None:
        return self.nodes.items.get(keys.node(name))

    def usage(self) -> dict[str, NodeUsage]:
        """Allocated resources per node name, as `scheduler.node_usage` would compute them
        from every record (nodes without instances are absent)."""
        return {name: held.current() for name, held in self._held.items() if held.instances}

    def of_app(self, namespace: str, app: str) -> list[Versioned[Instance]]:
        """The instances of an application (every kind and state), sorted by id."""
        found = self._by_app.get((namespace, app), {})
        return [found[i] for i in sorted(found)]

    def jobs_of_app(self, namespace: str, app: str) -> list[Versioned[Instance]]:
        """The job instances of an application, sorted by id."""
        found = self._jobs.get((namespace, app), {})
        return [found[i] for i in sorted(found)]

    def apps(self) -> list[AppKey]:
        """Every (namespace, application) that has instances, sorted."""
        return sorted(self._by_app)

    def app_revision(self, namespace: str, app: str) -> int:
        """The revision of the last change to an instance of the application (0: none
        since the index loaded)."""
        return self._app_revision.get((namespace, app), 0)

    def placed(self, keys_: set[ServiceKey]) -> dict[ServiceKey, dict[str, int]]:
        """For each service: node -> its instances there that count for placement rules,
        as `Colocation` would count them from every record (copies: the caller may change
        them)."""
        return {key: dict(self._placed[key]) for key in keys_ if key in self._placed}

    def in_use(self, instance_id: str) -> bool:
        return keys.instance(instance_id) in self.instances.items

    def on_node(self, name: str) -> list[Versioned[Instance]]:
        """The instances assigned to `name`, terminal ones included, sorted by id."""
        found = self._by_node.get(name, {})
        return [found[i] for i in sorted(found)]

    async def wait_node(self, name: str, index: int, timeout: float) -> int:
        """Return once an instance assigned to (or taken from) `name` changed after revision
        `index`, or after `timeout` seconds; returns the index to wait from next."""
        if self._node_revision.get(name, 0) <= index and not self._closing:
            event = self._node_waiters.get(name)
            if event is None:
                event = self._node_waiters[name] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return max(self.revision, index)

    @property
    def closing(self) -> bool:
        """The server is stopping: long polls answer at once, watches end."""
        return self._closing

    def release_waiters(self) -> None:
        """The server is stopping: every long poll answers now, and new ones at once, so
        they end before the HTTP server's graceful-shutdown timeout rather than being
        cancelled by it (one traceback per connected agent)."""
        self._closing = True
        waiters, self._node_waiters = self._node_waiters, {}
        for waiter in waiters.values():
            waiter.set()

    # writes

    def hint(self, key: str, value: bytes, record: object) -> None:
        """`record` is what `value` decodes to: spares decoding it when it is committed."""
        if key.startswith((keys.INSTANCES, keys.NODES)):
            self._hints[key] = (value, record)

    def drop_hints(self, keys_: Sequence[str]) -> None:
        for key in keys_:
            self._hints.pop(key, None)

    def _on_commit(self, events: Sequence[WatchEvent]) -> None:
        if self._loaded:
            self._apply(events, None)
        elif self._buffer is not None:
            self._buffer.append(events)

    def _apply(self, events: Sequence[WatchEvent], loaded_at: dict[str, int] | None) -> None:
        woken: set[str] = set()
        for event in events:
            kv, revision = event.kv, event.kv.mod_revision
            key = kv.key
            if revision > self.revision:
                self.revision = revision
            if key.startswith(keys.INSTANCES):
                if loaded_at is not None and revision <= loaded_at[keys.INSTANCES]:
                    continue
                if event.type == EventType.PUT:
                    old, new = self._put_instance(key, kv.value, revision, revision)
                else:
                    old, new = self._pop_instance(key), None
                tells = _tells_the_agent(old.record if old else None,
                                         new.record if new else None)
                for item in (old, new):
                    if item is None:
                        continue
                    inst = item.record
                    self._app_revision[(inst.namespace, inst.app)] = revision
                    if inst.node is not None and tells:
                        self._node_revision[inst.node] = revision
                        woken.add(inst.node)
            elif key.startswith(keys.NODES):
                if loaded_at is not None and revision <= loaded_at[keys.NODES]:
                    continue
                if event.type == EventType.PUT:
                    record = self._hinted(key, kv.value)
                    node = record if isinstance(record, Node) else load_json(Node, kv.value)
                    self._put_node(key, Versioned(node, revision))
                else:
                    gone = self.nodes.pop(key)
                    if gone is not None:
                        self.unalive.discard(gone.record.name)
                        self.draining.discard(gone.record.name)
            elif key.startswith(keys.NODES_ALIVE):
                if loaded_at is not None and revision <= loaded_at[keys.NODES_ALIVE]:
                    continue
                name = key.removeprefix(keys.NODES_ALIVE)
                if event.type == EventType.PUT:
                    self.alive[name] = kv.value
                    self.unalive.discard(name)
                else:
                    self.alive.pop(name, None)
                    if keys.node(name) in self.nodes.items:
                        self.unalive.add(name)
        for name in woken:
            waiter = self._node_waiters.pop(name, None)
            if waiter is not None:
                waiter.set()

    def _put_node(self, key: str, item: Versioned[Node]) -> None:
        self.nodes.put(key, item)
        name = item.record.name
        if name not in self.alive:
            self.unalive.add(name)
        if item.record.state == NodeState.DRAINING:
            self.draining.add(name)
        else:
            self.draining.discard(name)

    def _hinted(self, key: str, value: bytes) -> object | None:
        hint = self._hints.pop(key, None)
        return hint[1] if hint is not None and hint[0] is value else None

    def _put_instance(self, key: str, value: bytes, mod_revision: int, revision: int
                      ) -> tuple[Versioned[Instance] | None, Versioned[Instance]]:
        record = self._hinted(key, value)
        inst = _intern(record if isinstance(record, Instance) else load_json(Instance, value))
        item = Versioned(inst, mod_revision)
        old = self.instances.put(key, item)
        if old is not None:
            self._forget(old.record, moved=old.record.node != inst.node)
            self._unlist(old.record)
        if inst.node is not None:
            self._by_node.setdefault(inst.node, {})[inst.id] = item
            if holds_resources(inst):
                self._held.setdefault(inst.node, _Held()).add(inst, 1)
        if _pending(inst):
            self.pending[inst.id] = None
        app = (inst.namespace, inst.app)
        self._by_app.setdefault(app, {})[inst.id] = item
        if inst.kind == "job":
            self._jobs.setdefault(app, {})[inst.id] = item
        if inst.migrate:
            self.migrating[inst.id] = None
        if inst.state in TERMINAL_STATES:
            self.ended[inst.id] = None
        if counts_for_placement(inst):
            service = (inst.namespace, inst.app, inst.service)
            self._placed.setdefault(service, Counter())[inst.node or ""] += 1
        return old, item

    def _pop_instance(self, key: str) -> Versioned[Instance] | None:
        old = self.instances.pop(key)
        if old is not None:
            self._forget(old.record, moved=True)
            self._unlist(old.record)
        return old

    def _unlist(self, inst: Instance) -> None:
        """Take `inst` out of the per-application tables."""
        app = (inst.namespace, inst.app)
        for table in (self._by_app, self._jobs):
            mine = table.get(app)
            if mine is not None:
                mine.pop(inst.id, None)
                if not mine:
                    del table[app]

    def _forget(self, inst: Instance, *, moved: bool) -> None:
        """Undo what `inst` (a record being replaced or deleted) counted for."""
        self.pending.pop(inst.id, None)
        self.migrating.pop(inst.id, None)
        self.ended.pop(inst.id, None)
        if counts_for_placement(inst):
            service = (inst.namespace, inst.app, inst.service)
            counts = self._placed[service]
            counts[inst.node or ""] -= 1
            if counts[inst.node or ""] <= 0:
                del counts[inst.node or ""]
                if not counts:
                    del self._placed[service]
        if inst.node is None:
            return
        if moved:
            self._by_node.get(inst.node, {}).pop(inst.id, None)
        if holds_resources(inst):
            self._held[inst.node].add(inst, -1)

    def close(self) -> None:
        self._unsubscribe()
