"""`SqliteStore`: the embedded default `Store` backend, one SQLite file in WAL mode.

Neighbours: implements the protocol in `store.base`; `store.memory` is its in-process twin
and both pass `tests/store/conformance.py`; `store.open_store("sqlite:///abs/path.db")`
builds one. Only the API server opens it, and only one process at a time: the file is held
with an exclusive lock, so a second server fails at open instead of corrupting revisions.

Threads: one worker thread owns the connection and runs every statement, so transactions
are serialized without a lock and the event loop only ever waits on a future. `_Db` is all
that runs on that thread; `SqliteStore` is the loop side: it mirrors the revision, keeps a
bounded tail of recent events and wakes watchers.

Group commit: writes that queue while the worker is busy are committed together, in one
SQLite transaction (`_Db.run_group`): each keeps its own revision, compares and
all-or-nothing outcome, but a burst of small writes (status reports of a thousand agents)
pays for one commit instead of a thousand, and the next group forms while this one runs.
A run of plain transactions (puts and single-key deletes: nearly every write) is run from
memory (`_Db._run_staged`): every key the run names is read in one statement per 500, each
transaction is checked and applied to that picture in order, and what they wrote is stored
in a few statements at the end, so a thousand status reports cost a handful of statements,
not six each (a savepoint, two reads, two inserts, a release). Any other write (a prefix
delete, a lease, a compaction) runs on its own in a savepoint.

Few statements, many rows: Python's sqlite3 lets go of the GIL around every step of a
statement, which is once per row inserted or fetched, and a thread that lets go of it
while the event loop is busy waits up to the switch interval (5 ms) to get it back:
20,000 rows inserted with `executemany` took 31 s on a worker thread while the main
thread ran Python code, against 0.16 s while it was idle (`bench/sqlite_gil.py`). So rows
are inserted 500 to a statement, and the revisions of many keys are read as one JSON
array per 500 keys (`_Db._heads`): a transaction of 20,000 placements and their events
takes about 300 steps instead of 120,000.

Durability: a write commits before its coroutine returns. With WAL and synchronous=NORMAL a
commit survives the death of the process (kill -9) but not necessarily a power cut;
synchronous=FULL also syncs every commit to disk and survives that too, at a cost per write.

Leases: the table keeps each lease with the TTL and expiry it was created with; the TTL and
expiry that later grants and keepalives set live in memory on the loop side, so a
keepalive or a refreshing grant (each node heartbeat does both) and an `expire_leases`
with nothing due never wait for the worker thread behind other writes. After a restart a
lease expires at its creation's expiry unless granted again: the server renews every
node's lease when it starts (`controllers/nodes.renew_all_leases`), as Nomad resets its
heartbeat timers on election.

Watchers: a watcher is a cursor `(revision, seq)` into history. When caught up it reads the
in-memory tail of the last `tail_events` events; when it has fallen behind the tail, or
replays from an old revision, it reads the `history` table in batches. Nothing is queued per
watcher, so one that stops reading costs a cursor and never slows a writer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import sqlite3
from bisect import bisect_left
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from corral.store.base import (
    CompactedError,
    Compare,
    CompareTarget,
    Delete,
    EventType,
    KeyValue,
    Listener,
    Op,
    Put,
    StoreError,
    TxnResult,
    WatchEvent,
    compare_holds,
    notify,
    prefix_end,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")
Position = tuple[int, int]  # (revision, seq): seq orders the events of one revision
_Entry = tuple[int, int, WatchEvent]

_BATCH = 256  # history rows per read when a watcher replays from the table
_IN_CHUNK = 500  # keys per "key IN (...)" query, well below SQLite's variable limit
_ROWS = 500  # rows per INSERT statement (8 columns: 4,000 variables of the 32,766 allowed)
_GROUP = 1000  # writes committed together at most (group commit)
_LOCK_TIMEOUT = 1.0  # seconds
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL  -- newest revision dropped from history
);
INSERT INTO meta VALUES (0, 0, 0);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL
);
CREATE INDEX kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE history (
    revision INTEGER NOT NULL,  -- also the event's mod_revision
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
);
CREATE TABLE leases (
    id INTEGER PRIMARY KEY,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX leases_expiry ON leases (expires_at);
"""
_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"
_HISTORY_COLUMNS = "revision, seq, key, type, value, create_revision, version, lease"
# Schema 1 kept each change's previous value in history as well (etcd's optional prev_kv):
# nothing read it, and it doubled the bytes of every update. Opening a schema-1 file
# drops those columns; what history it holds replays as before.
_MIGRATIONS = {
    1: "".join(f"ALTER TABLE history DROP COLUMN prev_{name}; " for name in (
        "value", "create_revision", "mod_revision", "version", "lease")),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Commit:
    """What one committed write tells the loop side."""

    revision: int
    compact_revision: int
    entries: tuple[_Entry, ...] = ()


def _prefix_clause(prefix: str) -> tuple[str, tuple[str, ...]]:
    end = prefix_end(prefix)
    if not end:
        return "1", ()
    return "key >= ? AND key < ?", (prefix, end)


def _kv(row: Any) -> KeyValue:
    key, value, create_revision, mod_revision, version, lease = row
    return KeyValue(key=key, value=value, create_revision=create_revision,
                    mod_revision=mod_revision, version=version, lease=lease)


def _event(row: Any) -> WatchEvent:
    revision, _seq, key, type_, value, create_revision, version, lease = row
    kv = KeyValue(key=key, value=value, create_revision=create_revision,
                  mod_revision=revision, version=version, lease=lease)
    return WatchEvent(type=EventType(type_), kv=kv)


def _kind(op: Op) -> str:
    return "put" if isinstance(op, Put) else "prefix" if op.prefix else "delete"


_TxnArgs = tuple[Sequence[Compare], Sequence[Op], Sequence[Op]]


def _txn_args(job: Callable[[], Any]) -> _TxnArgs:
    assert isinstance(job, partial)
    compares, success, failure = job.args
    return compares, success, failure


def _check_ops(ops: Sequence[Op], leases: set[int]) -> None:
    """Refuse `ops` as the memory store does, op by op, before anything changes: an empty
    key, a put under a lease not in `leases` (the ids that exist)."""
    for op in ops:
        if isinstance(op, Put):
            if not op.key:
                raise ValueError("cannot put the empty key")
            if op.lease and op.lease not in leases:
                raise StoreError(f"put {op.key!r}: lease {op.lease} does not exist")
        elif not op.key and not op.prefix:
            raise ValueError("cannot delete the empty key")


def _record_position(entries: list[_Entry], revision: int) -> Position:
    last = entries[-1] if entries else None
    return revision, last[1] + 1 if last and last[0] == revision else 0


class _Db:
    """The connection and every statement; lives on, and is only called from, the worker
    thread. `revision` and `compact_revision` always equal what is committed in `meta`."""

    def __init__(self, path: Path, synchronous: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun and ended explicitly below. The
        # timeout only matters at open, when another process holds the file: waiting long
        # for a server that is not about to exit would only hide the mistake.
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=_LOCK_TIMEOUT)
        try:
            self._conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{path}: cannot use WAL journal mode (got {mode})")
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            try:
                self._conn.execute("SELECT json_group_array(json_array(1, 'a'))").fetchone()
            except sqlite3.OperationalError as exc:
                raise StoreError(f"SQLite {sqlite3.sqlite_version} lacks its JSON functions "
                                 "(3.38 or later has them built in)") from exc
            found = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if found == 0:
                self._conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} "
                                         f"PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;")
            elif found in _MIGRATIONS:
                self._conn.executescript(f"BEGIN IMMEDIATE; {_MIGRATIONS[found]} "
                                         f"PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;")
            elif found != _SCHEMA_VERSION:
                raise StoreError(f"{path}: schema version {found}, this corral reads "
                                 f"{_SCHEMA_VERSION}")
            row = self._conn.execute("SELECT revision, compact_revision FROM meta").fetchone()
            self.revision: int = row[0]
            self.compact_revision: int = row[1]
            self._grouped = False  # inside run_group: jobs write in savepoints
        except sqlite3.Error as exc:
            self._conn.close()
            hint = " (is another corral server using it?)" if "locked" in str(exc) else ""
            raise StoreError(f"cannot open store {path}: {exc}{hint}") from exc
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    # reads

    def get(self, key: str) -> KeyValue | None:
        row = self._conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?",
                                 (key,)).fetchone()
        return None if row is None else _kv(row)

    def get_many(self, names: Sequence[str]) -> dict[str, KeyValue]:
        """The stored value of each of `names` that exists, with one query per 500 (a step
        per row: for values, which `_heads` leaves out)."""
        found: dict[str, KeyValue] = {}
        for start in range(0, len(names), _IN_CHUNK):
            part = names[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            for row in self._conn.execute(
                    f"SELECT {_KV_COLUMNS} FROM kv WHERE key IN ({marks})", part):
                found[row[0]] = _kv(row)
        return found

    def _heads(self, names: Sequence[str]) -> dict[str, KeyValue]:
        """Each of `names` that exists, its value left out (b""): revisions, version and
        lease, read as one JSON array per 500 keys, so one step each (the module's
        docstring says why steps count)."""
        found: dict[str, KeyValue] = {}
        for start in range(0, len(names), _IN_CHUNK):
            part = names[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            (packed,) = self._conn.execute(
                "SELECT json_group_array(json_array(key, create_revision, mod_revision, "
                f"version, lease)) FROM kv WHERE key IN ({marks})", part).fetchone()
            for key, create, mod, version, lease in orjson.loads(packed):
                found[key] = KeyValue(key=key, value=b"", create_revision=create,
                                      mod_revision=mod, version=version, lease=lease)
        return found

    def _keys_where(self, where: str, args: tuple[Any, ...]) -> list[str]:
        """The keys matching `where`, sorted, in one step (as `_heads`)."""
        (packed,) = self._conn.execute(
            f"SELECT json_group_array(key) FROM kv WHERE {where}", args).fetchone()
        # SQLite's BINARY collation orders UTF-8 bytes, which is code point order, as
        # Python's sort does: the same order as the "ORDER BY key" this replaces
        return sorted(orjson.loads(packed))

    def _insert(self, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """`head` ("INSERT ... VALUES ") for each row, `_ROWS` rows to a statement."""
        if not rows:
            return
        one = f"({','.join('?' * len(rows[0]))})"
        for start in range(0, len(rows), _ROWS):
            part = rows[start:start + _ROWS]
            self._conn.execute(head + ",".join([one] * len(part)),
                               [value for row in part for value in row])

    def range(self, prefix: str, limit: int,
              keys_only: bool = False) -> tuple[list[KeyValue], int]:
        where, args = _prefix_clause(prefix)
        if keys_only:  # no values: one step, as `_heads`
            (packed,) = self._conn.execute(
                "SELECT json_group_array(json_array(key, create_revision, mod_revision, "
                f"version, lease)) FROM (SELECT * FROM kv WHERE {where} ORDER BY key "
                "LIMIT ?)", (*args, limit or -1)).fetchone()
            heads = sorted(orjson.loads(packed))  # by key: see `_keys_where`
            return [KeyValue(key=key, value=b"", create_revision=create, mod_revision=mod,
                             version=version, lease=lease)
                    for key, create, mod, version, lease in heads], self.revision
        rows = self._conn.execute(
            f"SELECT {_KV_COLUMNS} FROM kv WHERE {where} ORDER BY key LIMIT ?",
            (*args, limit or -1)).fetchall()
        return [_kv(row) for row in rows], self.revision

    def count(self, prefix: str) -> tuple[int, int]:
        where, args = _prefix_clause(prefix)
        row = self._conn.execute(f"SELECT COUNT(*) FROM kv WHERE {where}", args).fetchone()
        return int(row[0]), self.revision

    def history(self, prefix: str, cursor: Position,
                limit: int) -> tuple[list[WatchEvent], Position]:
        """Up to `limit` events under `prefix` from `cursor` on, and the cursor after them."""
        if cursor[0] <= self.compact_revision:
            raise CompactedError(cursor[0], self.compact_revision)
        where, args = _prefix_clause(prefix)
        rows = self._conn.execute(
            f"SELECT {_HISTORY_COLUMNS} FROM history WHERE revision >= ? "
            f"AND (revision > ? OR seq >= ?) AND {where} ORDER BY revision, seq LIMIT ?",
            (cursor[0], cursor[0], cursor[1], *args, limit + 1)).fetchall()
        if len(rows) > limit:
            # one row more than asked: the cursor lands on an event that exists, so a later
            # compaction past it is a real loss, never a false alarm
            return [_event(row) for row in rows[:limit]], (rows[limit][0], rows[limit][1])
        return [_event(row) for row in rows], (self.revision + 1, 0)

    # writes

    def run_group(self, jobs: Sequence[Callable[[], tuple[Any, _Commit | None]]]
                  ) -> list[tuple[bool, Any, _Commit | None]]:
        """Group commit: run write jobs in one SQLite transaction, runs of plain
        transactions from memory (`_run_staged`), any other job in a savepoint of its own,
        so a job that fails leaves no trace and the others still commit. Returns per job
        (ok, result or exception, commit). If the transaction itself cannot commit, raises,
        and nothing of any job stays."""
        start, start_compact = self.revision, self.compact_revision
        outcomes: list[tuple[bool, Any, _Commit | None]] = []
        self._conn.execute("BEGIN IMMEDIATE")
        self._grouped = True
        try:
            for staged, run in itertools.groupby(jobs, key=self._stageable):
                if staged:
                    outcomes += self._run_staged([_txn_args(job) for job in run])
                    continue
                for job in run:
                    try:
                        result, commit = job()
                        outcomes.append((True, result, commit))
                    except Exception as exc:
                        outcomes.append((False, exc, None))
            if self.revision != start:
                self._conn.execute("UPDATE meta SET revision = ?", (self.revision,))
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self.revision, self.compact_revision = start, start_compact
            raise
        finally:
            self._grouped = False
        return outcomes

    def _stageable(self, job: Callable[[], Any]) -> bool:
        """A transaction of puts and single-key deletes: `_run_staged` can run it."""
        if not (isinstance(job, partial) and job.func == self.txn):
            return False
        _, success, failure = _txn_args(job)
        return not any(isinstance(op, Delete) and op.prefix for op in (*success, *failure))

    def _run_staged(self, jobs: Sequence[_TxnArgs]) -> list[tuple[bool, Any, _Commit | None]]:
        """A run of transactions of a group, in a few statements for all of them rather than
        five or six each: every key they name read once up front, each transaction then
        checked and applied in memory, in order, and what they wrote stored at the end
        (what a key holds last; every event). Each keeps its own revision, compares and
        all-or-nothing outcome, as `txn` gives it: one that would fail (an empty key, a
        missing lease, a malformed compare) is refused before it changes anything, so it
        needs no savepoint."""
        every = [op for compares, success, failure in jobs
                 for op in (*compares, *success, *failure)]
        names = list(dict.fromkeys(op.key for op in every))
        state: dict[str, KeyValue | None] = dict.fromkeys(names)
        state.update(self._heads(names))
        valued = [c.key for c in every if isinstance(c, Compare)
                  and c.target is CompareTarget.VALUE]
        if valued:  # the values themselves only where a compare reads them
            state.update(self.get_many(list(dict.fromkeys(valued))))
        leases = self._leases_of([op for op in every if isinstance(op, Put)])
        outcomes: list[tuple[bool, Any, _Commit | None]] = []
        history: list[tuple[Any, ...]] = []
        written: dict[str, None] = {}  # keys put or deleted, in order
        for compares, success, failure in jobs:
            try:
                # every compare is evaluated (no short cut), as in `txn`
                succeeded = all([compare_holds(c, state[c.key]) for c in compares])
                ops = success if succeeded else failure
                _check_ops(ops, leases)
            except Exception as exc:
                outcomes.append((False, exc, None))
                continue
            entries: list[_Entry] = []
            revision = self.revision + 1
            for op in ops:
                prev = state[op.key]
                if isinstance(op, Put):
                    kv = state[op.key] = KeyValue(
                        key=op.key, value=op.value, mod_revision=revision, lease=op.lease,
                        create_revision=prev.create_revision if prev else revision,
                        version=prev.version + 1 if prev else 1)
                    history.append(self._history_row(entries, WatchEvent(type=EventType.PUT,
                                                                         kv=kv)))
                elif prev is not None:  # deleting what is not there changes nothing
                    state[op.key] = None
                    history.append(self._history_row(entries, WatchEvent(
                        type=EventType.DELETE, kv=KeyValue(
                            key=op.key, value=b"", create_revision=0, mod_revision=revision,
                            version=0))))
                else:
                    continue
                written[op.key] = None
            if entries:
                self.revision = revision
            outcomes.append((True, (succeeded, self.revision), self._commit(entries)))
        gone = [key for key in written if state[key] is None]
        for start in range(0, len(gone), _IN_CHUNK):
            part = gone[start:start + _IN_CHUNK]
            self._conn.execute(f"DELETE FROM kv WHERE key IN ({','.join('?' * len(part))})",
                               part)
        self._insert(f"INSERT OR REPLACE INTO kv ({_KV_COLUMNS}) VALUES ", [
            (last.key, last.value, last.create_revision, last.mod_revision, last.version,
             last.lease) for key in written if (last := state[key]) is not None])
        self._insert(f"INSERT INTO history ({_HISTORY_COLUMNS}) VALUES ", history)
        return outcomes

    @contextmanager
    def _writing(self) -> Iterator[list[_Entry]]:
        """One write transaction (a savepoint inside a group commit); yields the list to
        record events in. On any error nothing of it stays, in the file or in `revision`."""
        start = self.revision
        entries: list[_Entry] = []
        if self._grouped:
            self._conn.execute("SAVEPOINT job")
            try:
                yield entries
                self._conn.execute("RELEASE job")
            except BaseException:
                self._conn.execute("ROLLBACK TO job")
                self._conn.execute("RELEASE job")
                self.revision = start
                raise
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield entries
            if self.revision != start:
                self._conn.execute("UPDATE meta SET revision = ?", (self.revision,))
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self.revision = start
            raise

    def _commit(self, entries: list[_Entry]) -> _Commit | None:
        if not entries:
            return None
        return _Commit(revision=self.revision, compact_revision=self.compact_revision,
                       entries=tuple(entries))

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op]) -> tuple[tuple[bool, int], _Commit | None]:
        with self._writing() as entries:
            names = list(dict.fromkeys(c.key for c in compares))
            values = any(c.target is CompareTarget.VALUE for c in compares)
            found = self.get_many(names) if values else self._heads(names)
            # every compare is evaluated (no short cut) so a malformed one always raises
            results = [compare_holds(c, found.get(c.key)) for c in compares]
            succeeded = all(results)
            self._apply(success if succeeded else failure, entries)
        return (succeeded, self.revision), self._commit(entries)

    def _apply(self, ops: Sequence[Op], entries: list[_Entry]) -> None:
        """Ops in order, each run of puts and each run of single-key deletes in a few
        statements."""
        _check_ops(ops, self._leases_of(ops))
        revision = self.revision + 1
        before = len(entries)
        for kind, run in itertools.groupby(ops, key=_kind):
            if kind == "put":
                self._put_many([op for op in run if isinstance(op, Put)], revision, entries)
            elif kind == "delete":
                self._delete_many([op.key for op in run], revision, entries)
            else:
                for op in run:
                    self._delete_where(*_prefix_clause(op.key), revision, entries)
        if len(entries) > before:
            self.revision = revision

    def _leases_of(self, ops: Sequence[Op]) -> set[int]:
        """Which of the leases `ops` put keys under exist."""
        wanted = list(dict.fromkeys(op.lease for op in ops if isinstance(op, Put) and op.lease))
        if not wanted:
            return set()
        return {row[0] for row in self._conn.execute(
            f"SELECT id FROM leases WHERE id IN ({','.join('?' * len(wanted))})", wanted)}

    def _put_many(self, ops: Sequence[Put], revision: int, entries: list[_Entry]) -> None:
        """A run of puts: their previous revisions read and their rows written a few
        hundred keys to a statement, rather than three statements each (a transaction of
        20,000 placements spent most of its time in per-row calls)."""
        known = self._heads(list(dict.fromkeys(op.key for op in ops)))
        rows: dict[str, tuple[Any, ...]] = {}
        history: list[tuple[Any, ...]] = []
        for op in ops:
            prev = known.get(op.key)
            kv = KeyValue(key=op.key, value=op.value, mod_revision=revision, lease=op.lease,
                          create_revision=prev.create_revision if prev else revision,
                          version=prev.version + 1 if prev else 1)
            known[op.key] = kv  # a second put of the key in this transaction follows it
            rows[op.key] = (kv.key, kv.value, kv.create_revision, revision, kv.version,
                            kv.lease)
            history.append(self._history_row(entries, WatchEvent(type=EventType.PUT, kv=kv)))
        self._insert(f"INSERT OR REPLACE INTO kv ({_KV_COLUMNS}) VALUES ", list(rows.values()))
        self._insert(f"INSERT INTO history ({_HISTORY_COLUMNS}) VALUES ", history)

    def _delete_where(self, where: str, args: tuple[Any, ...], revision: int,
                      entries: list[_Entry]) -> None:
        names = self._keys_where(where, args)
        if names:
            self._conn.execute(f"DELETE FROM kv WHERE {where}", args)
            self._deleted(names, revision, entries)

    def _delete_many(self, names: Sequence[str], revision: int,
                     entries: list[_Entry]) -> None:
        """A run of single-key deletes, in their order; a key that is not there (or is
        named twice) is deleted once or not at all."""
        existing: set[str] = set()
        unique = list(dict.fromkeys(names))
        for start in range(0, len(unique), _IN_CHUNK):
            part = unique[start:start + _IN_CHUNK]
            where = f"key IN ({','.join('?' * len(part))})"
            existing.update(self._keys_where(where, tuple(part)))
            self._conn.execute(f"DELETE FROM kv WHERE {where}", part)
        self._deleted([name for name in unique if name in existing], revision, entries)

    def _deleted(self, names: Sequence[str], revision: int, entries: list[_Entry]) -> None:
        history = [self._history_row(entries, WatchEvent(type=EventType.DELETE, kv=KeyValue(
            key=name, value=b"", create_revision=0, mod_revision=revision, version=0)))
            for name in names]
        self._insert(f"INSERT INTO history ({_HISTORY_COLUMNS}) VALUES ", history)

    @staticmethod
    def _history_row(entries: list[_Entry], event: WatchEvent) -> tuple[Any, ...]:
        """Give the event its place (revision, seq) in `entries`; its `history` row."""
        revision, seq = _record_position(entries, event.kv.mod_revision)
        kv = event.kv
        entries.append((revision, seq, event))
        return (revision, seq, kv.key, event.type.value, kv.value, kv.create_revision,
                kv.version, kv.lease)

    def compact(self, revision: int) -> tuple[None, _Commit | None]:
        if revision > self.revision:
            raise ValueError(f"cannot compact at {revision}: the store is at {self.revision}")
        if revision - 1 <= self.compact_revision:
            return None, None
        with self._writing():
            self._conn.execute("DELETE FROM history WHERE revision < ?", (revision,))
            self._conn.execute("UPDATE meta SET compact_revision = ?", (revision - 1,))
        self.compact_revision = revision - 1
        return None, _Commit(revision=self.revision, compact_revision=self.compact_revision)

    # leases

    def lease_grant(self, lease_id: int, ttl: float, now: float) -> tuple[None, None]:
        with self._writing():
            self._conn.execute(
                "INSERT INTO leases (id, ttl, expires_at) VALUES (?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET ttl = excluded.ttl, expires_at = excluded.expires_at",
                (lease_id, ttl, now + ttl))
        return None, None

    def leases(self) -> dict[int, tuple[float, float]]:
        """id -> (ttl, expiry of its last grant), read once at open."""
        return {row[0]: (row[1], row[2])
                for row in self._conn.execute("SELECT id, ttl, expires_at FROM leases")}

    def lease_revoke(self, lease_id: int) -> tuple[int, _Commit | None]:
        with self._writing() as entries:
            self._revoke(lease_id, entries)
        return self.revision, self._commit(entries)

    def revoke_leases(self, lease_ids: Sequence[int]) -> tuple[None, _Commit | None]:
        with self._writing() as entries:
            for lease_id in lease_ids:
                self._revoke(lease_id, entries)
        return None, self._commit(entries)

    def _revoke(self, lease_id: int, entries: list[_Entry]) -> None:
        """Each revoked lease that held keys takes a revision of its own, as in etcd."""
        if self._conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,)).rowcount:
            revision = self.revision + 1
            before = len(entries)
            # "lease != 0" repeats the partial index's condition so the planner may use it
            self._delete_where("lease = ? AND lease != 0", (lease_id,), revision, entries)
            if len(entries) > before:
                self.revision = revision


class SqliteStore:
    """A `Store` in one SQLite file. Build it with `await SqliteStore.open(path)`."""

    def __init__(self, db: _Db, executor: ThreadPoolExecutor, *, tail_events: int,
                 leases: dict[int, tuple[float, float]]) -> None:
        self._db = db
        # lease id -> [ttl, expires_at]: the live expiry of every lease (see the docstring)
        self._leases: dict[int, list[float]] = {i: [t, e] for i, (t, e) in leases.items()}
        # (expires_at, lease id) for every expiry ever set, the stale ones included (an
        # entry is stale once its lease moved on): `expire_leases` pops what is due instead
        # of reading every lease, which made registering N nodes cost O(N^2).
        self._expiries: list[tuple[float, int]] = [(e, i) for i, (_, e) in leases.items()]
        heapq.heapify(self._expiries)
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._revision = db.revision
        self._compact_revision = db.compact_revision
        self._tail: list[_Entry] = []
        self._tail_from: Position = (db.revision + 1, 0)  # the tail holds every event >= it
        self._tail_events = tail_events
        # Replaced on every commit; waiters hold the old one, which is set.
        self._changed = asyncio.Event()
        self._closed = False
        self._listeners: list[Listener] = []
        # Group commit: writes wait here while the worker runs a group (`_Db.run_group`).
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._grouping = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *,
                   synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
                   tail_events: int = 4096) -> SqliteStore:
        """Open (creating if needed) the store at `path`. `tail_events` bounds the recent
        events kept in memory for watchers that are caught up."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        if tail_events < 0:
            raise ValueError(f"tail_events must be >= 0, not {tail_events}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-sqlite")
        try:
            loop = asyncio.get_running_loop()
            db = await loop.run_in_executor(executor, _Db, Path(path), synchronous)
            leases = await loop.run_in_executor(executor, db.leases)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(db, executor, tail_events=tail_events, leases=leases)

    # reads

    async def revision(self) -> int:
        self._check_open()
        return self._revision

    async def get(self, key: str) -> KeyValue | None:
        return await self._run(partial(self._db.get, key))

    async def range(self, prefix: str, *, limit: int = 0,
                    keys_only: bool = False) -> tuple[list[KeyValue], int]:
        if limit < 0:
            raise ValueError(f"range limit must be >= 0, not {limit}")
        return await self._run(partial(self._db.range, prefix, limit, keys_only))

    async def count(self, prefix: str) -> tuple[int, int]:
        return await self._run(partial(self._db.count, prefix))

    # writes

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return (await self.txn((), [Put(key=key, value=value, lease=lease)])).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        return (await self.txn((), [Delete(key=key, prefix=prefix)])).revision

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        # copied here: the caller may change its lists while the worker thread reads them
        job = partial(self._db.txn, tuple(compares), tuple(success), tuple(failure))
        succeeded, revision = await self._write(job)
        return TxnResult(succeeded=succeeded, revision=revision)

    async def compact(self, revision: int) -> None:
        await self._write(partial(self._db.compact, revision))

    # leases

    async def lease_grant(self, lease_id: int, ttl: float, *, now: float) -> None:
        if lease_id <= 0:
            raise ValueError(f"lease ids are positive (0 means no lease), not {lease_id}")
        if ttl <= 0:
            raise ValueError(f"lease ttl must be > 0, not {ttl}")
        lease = self._leases.get(lease_id)
        if lease is not None:
            self._check_open()
            # A refresh, even with a new TTL: in memory only (see the module docstring).
            lease[0], lease[1] = ttl, now + ttl
            self._expires(lease_id, now + ttl)
            return
        await self._write(partial(self._db.lease_grant, lease_id, ttl, now))
        self._leases[lease_id] = [ttl, now + ttl]
        self._expires(lease_id, now + ttl)

    def _expires(self, lease_id: int, at: float) -> None:
        heapq.heappush(self._expiries, (at, lease_id))
        if len(self._expiries) > 4 * len(self._leases) + 64:  # mostly stale: rebuild
            self._expiries = [(e, i) for i, (_, e) in self._leases.items()]
            heapq.heapify(self._expiries)

    async def lease_keepalive(self, lease_id: int, *, now: float) -> bool:
        self._check_open()
        lease = self._leases.get(lease_id)
        if lease is None or lease[1] <= now:
            return False
        lease[1] = now + lease[0]
        self._expires(lease_id, lease[1])
        return True

    async def lease_revoke(self, lease_id: int) -> int:
        try:
            return await self._write(partial(self._db.lease_revoke, lease_id))
        finally:
            self._leases.pop(lease_id, None)

    async def expire_leases(self, *, now: float) -> list[int]:
        self._check_open()
        found: set[int] = set()
        while self._expiries and self._expiries[0][0] <= now:
            _, lease_id = heapq.heappop(self._expiries)
            lease = self._leases.get(lease_id)
            if lease is not None and lease[1] <= now:
                found.add(lease_id)
        due = sorted(found)
        if due:
            try:
                await self._write(partial(self._db.revoke_leases, due))
            except BaseException:
                for lease_id in due:  # still due: the next call tries again
                    if lease_id in self._leases:
                        heapq.heappush(self._expiries, (self._leases[lease_id][1], lease_id))
                raise
            for lease_id in due:
                self._leases.pop(lease_id, None)
        return due

    # watch

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def watch(self, prefix: str, *,
              start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, not {start_revision}")
        # Fixed now, not at the first iteration, so a change made between creating the
        # watch and first reading it is not lost.
        start = start_revision or self._revision + 1
        return self._watch(prefix, (start, 0))

    async def _watch(self, prefix: str, cursor: Position) -> AsyncGenerator[WatchEvent, None]:
        while True:
            self._check_open()
            if cursor[0] <= self._compact_revision:
                raise CompactedError(cursor[0], self._compact_revision)
            if cursor >= self._tail_from:
                changed = self._changed
                batch, cursor = self._read_tail(prefix, cursor)
                if not batch:
                    await changed.wait()
                    continue
            else:
                batch, cursor = await self._run(
                    partial(self._db.history, prefix, cursor, _BATCH))
            for event in batch:
                # Read before a compaction that has since passed it: the memory backend
                # could not deliver it either, so neither does this one.
                if event.kv.mod_revision <= self._compact_revision:
                    raise CompactedError(event.kv.mod_revision, self._compact_revision)
                yield event

    def _read_tail(self, prefix: str, cursor: Position) -> tuple[list[WatchEvent], Position]:
        tail = self._tail
        i = bisect_left(tail, cursor, key=_position)
        batch: list[WatchEvent] = []
        while i < len(tail) and len(batch) < _BATCH:
            event = tail[i][2]
            i += 1
            if event.kv.key.startswith(prefix):
                batch.append(event)
        if i < len(tail):
            return batch, _position(tail[i])
        # The cursor never moves back. (A table read cannot overtake a commit's announcement,
        # as both reach the loop through the worker thread in order; max keeps that an
        # assumption this method does not rest on.)
        return batch, max(cursor, (self._revision + 1, 0))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        for _, future in self._queued:
            if not future.done():
                future.set_exception(StoreError("store is closed"))
        self._queued = []
        try:
            await self._loop.run_in_executor(self._executor, self._db.close)
        finally:
            self._executor.shutdown(wait=True)

    # internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    async def _run(self, job: Callable[[], T]) -> T:
        self._check_open()
        return await self._loop.run_in_executor(self._executor, job)

    async def _write(self, job: Callable[[], tuple[T, _Commit | None]]) -> T:
        """Queue a write; writes queued while a group runs go together in the next one."""
        self._check_open()
        future: asyncio.Future[T] = self._loop.create_future()
        self._queued.append((job, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._grouping or not self._queued or self._closed:
            return
        self._grouping = True
        group, self._queued = self._queued[:_GROUP], self._queued[_GROUP:]
        running = self._loop.run_in_executor(self._executor, self._db.run_group,
                                             [job for job, _ in group])
        running.add_done_callback(partial(self._group_done, group))

    def _group_done(self, group: list[tuple[Callable[[], Any], asyncio.Future[Any]]],
                    running: asyncio.Future[list[tuple[bool, Any, _Commit | None]]]) -> None:
        self._grouping = False
        try:
            exc = running.exception()
        except asyncio.CancelledError as cancelled:
            exc = cancelled
        if exc is not None:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        else:
            outcomes = running.result()
            # Every commit is announced (in order) before any writer resumes, so the loop
            # side is up to date when a caller resumes, even one cancelled meanwhile.
            for _, _, commit in outcomes:
                if commit is not None:
                    self._on_commit(commit)
            for (_, future), (ok, value, _) in zip(group, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        self._kick()

    def _on_commit(self, commit: _Commit) -> None:
        self._revision = commit.revision
        self._compact_revision = commit.compact_revision
        if not commit.entries:
            return
        self._tail.extend(commit.entries)
        if len(self._tail) > 2 * self._tail_events:  # trim in bulk: amortised O(1) per event
            del self._tail[:len(self._tail) - self._tail_events]
        self._tail_from = _position(self._tail[0]) if self._tail else (self._revision + 1, 0)
        self._wake()
        if self._listeners:
            notify(self._listeners, [entry[2] for entry in commit.entries])

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _position(entry: _Entry) -> Position:
    return entry[0], entry[1]
