"""`SqliteStore` against the store conformance suite, twice (with its in-memory event tail,
and with a tail so small that watchers mostly read the history table), then what only a
file can do: survive close, reopen and kill -9. Also `open_store`'s URL handling."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.store import (
    Compare,
    CompareTarget,
    Delete,
    MemoryStore,
    Op,
    Put,
    SqliteStore,
    Store,
    StoreError,
    TxnResult,
    open_store,
)
from tests.store.conformance import GUARD, StoreConformance, brief, kv, next_event, take


class TestSqliteStore(StoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = await SqliteStore.open(tmp_path / "state.db")
        yield store
        await store.close()


class TestSqliteStoreTinyTail(StoreConformance):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = await SqliteStore.open(tmp_path / "state.db", tail_events=1)
        yield store
        await store.close()


async def test_data_revision_and_leases_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path, synchronous="FULL")
    await store.lease_grant(5, 10.0, now=0.0)
    await store.put("/a", b"1")
    await store.put("/b", b"1", lease=5)
    await store.put("/a", b"2")
    await store.delete("/c/", prefix=True)  # nothing there: no revision
    await store.close()

    store = await SqliteStore.open(path)
    try:
        assert await store.revision() == 3
        assert await store.get("/a") == kv("/a", b"2", create=1, mod=3, version=2)
        assert await store.get("/b") == kv("/b", b"1", create=2, mod=2, version=1, lease=5)
        assert await store.put("/d", b"1") == 4
        assert await store.expire_leases(now=10.0) == [5]
        assert await store.get("/b") is None
    finally:
        await store.close()


async def test_keepalives_live_in_memory_a_reopen_keeps_the_last_grant(tmp_path: Path
                                                                       ) -> None:
    # Keepalives and refreshing grants (each heartbeat) never wait for the writer thread;
    # what survives a restart is each lease as it was created, and the server grants every
    # node's lease again when it starts.
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    await store.lease_grant(5, 10.0, now=0.0)
    await store.lease_grant(6, 10.0, now=0.0)
    assert await store.lease_keepalive(5, now=9.0)  # due at 19 in this process
    await store.lease_grant(6, 20.0, now=9.0)  # a refresh, new ttl too: in memory
    assert await store.expire_leases(now=18.0) == []
    await store.close()

    store = await SqliteStore.open(path)
    try:
        assert await store.expire_leases(now=10.0) == [5, 6]
    finally:
        await store.close()


async def test_writes_queued_together_commit_together_but_each_on_its_own(
        tmp_path: Path) -> None:
    # Group commit: 60 concurrent writes (one malformed, one losing its compare) share
    # SQLite transactions; each still gets its own revision and all-or-nothing outcome.
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        await store.put("/cas", b"0")
        seen: list[int] = []
        store.subscribe(lambda events: seen.append(events[0].kv.mod_revision))

        async def write(n: int) -> object:
            if n == 13:
                return await store.txn((), [Put(key="/ok", value=b"x"), Put(key="", value=b"")])
            if n == 14:
                return await store.txn([Compare(key="/cas", value=99)],
                                       [Put(key="/lost", value=b"x")])
            return await store.put(f"/k/{n:02d}", b"v")

        results = await asyncio.gather(*(write(n) for n in range(60)), return_exceptions=True)
        assert isinstance(results[13], ValueError)
        assert results[14] == TxnResult(succeeded=False, revision=results[14].revision)
        revisions = sorted(r for r in results if isinstance(r, int))
        assert revisions == list(range(2, 60))  # 58 puts, consecutive, one each
        assert seen == revisions  # announced once each, in order
        assert await store.get("/ok") is None and await store.get("/lost") is None
        assert len((await store.range("/k/"))[0]) == 58
    finally:
        await store.close()


def random_txn(rng: random.Random, revision: int) -> tuple[list[Compare], list[Op], list[Op]]:
    """A transaction over a few keys: compares that hold or not, puts (with a lease that
    exists, or one that does not), deletes of keys there or not, now and then an empty
    key, a prefix delete or a malformed compare."""
    def key() -> str:
        return "" if rng.random() < 0.01 else f"/k/{rng.randrange(8)}"

    def op() -> Op:
        roll = rng.random()
        if roll < 0.55:
            lease = rng.choice([0, 0, 0, 7, 8])  # 7 exists, 8 does not
            return Put(key=key(), value=b"v%d" % rng.randrange(3), lease=lease)
        if roll < 0.95:
            return Delete(key=key())
        return Delete(key=rng.choice(["/k/", "/k/1"]), prefix=True)

    def compare() -> Compare:
        target = rng.choice(list(CompareTarget))
        if target is CompareTarget.VALUE:
            value: int | bytes = b"v%d" % rng.randrange(3) if rng.random() < 0.98 else 1
        else:
            value = rng.randrange(max(revision, 1) + 1)
        return Compare(key=f"/k/{rng.randrange(8)}", target=target,
                       op=rng.choice(["==", "!=", "<", ">"]), value=value)

    return ([compare() for _ in range(rng.randrange(3))],
            [op() for _ in range(rng.randrange(1, 5))],
            [op() for _ in range(rng.randrange(3))])


async def run_workload(store: Store, seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Waves of concurrent transactions (the SQLite backend commits each wave in a few
    groups); what each answered, what the store holds after, and every event."""
    rng = random.Random(seed)
    await store.lease_grant(7, 1000.0, now=0.0)
    watch = store.watch("/", start_revision=1)
    answers: list[Any] = []
    for _ in range(4):
        txns = [random_txn(rng, await store.revision()) for _ in range(150)]
        results = await asyncio.gather(*(store.txn(*t) for t in txns),
                                       return_exceptions=True)
        answers += [r if isinstance(r, TxnResult) else (type(r).__name__, str(r))
                    for r in results]
    held, _ = await store.range("/")
    await store.put("/~end", b"")
    events = []
    while (event := await next_event(watch)).kv.key != "/~end":
        events.append((event.type, event.kv))
    await watch.aclose()
    return answers, list(held), list(events)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_grouped_transactions_do_what_the_memory_store_does_one_by_one(
        tmp_path: Path, seed: int) -> None:
    # The SQLite backend runs a group's plain transactions from memory and writes them at
    # the end (`_Db._run_staged`); the memory store applies each at once. The same random
    # waves of transactions, sent concurrently, must answer, store and announce the same.
    memory = MemoryStore()
    sqlite = await SqliteStore.open(tmp_path / "state.db")
    try:
        expected = await run_workload(memory, seed)
        got = await run_workload(sqlite, seed)
    finally:
        await sqlite.close()
        await memory.close()
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert got[2] == expected[2]
    outcomes = Counter(type(a).__name__ if isinstance(a, TxnResult) else a[0]
                       for a in expected[0])
    # the workload exercised what it means to: successes, refusals and errors
    assert outcomes["TxnResult"] > 300 and outcomes["ValueError"] + outcomes["StoreError"] > 10
    assert any(isinstance(a, TxnResult) and not a.succeeded for a in expected[0])


async def test_revision_never_goes_back_after_everything_is_deleted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    for key in ("/a", "/b", "/c"):
        await store.put(key, b"x")
    assert await store.delete("/", prefix=True) == 4
    await store.compact(4)
    await store.close()

    store = await SqliteStore.open(path)
    try:
        assert await store.revision() == 4
        assert await store.range("") == ([], 4)
        assert await store.put("/a", b"again") == 5
        watch = store.watch("/", start_revision=4)
        assert [e.kv.mod_revision for e in await take(watch, 4)] == [4, 4, 4, 5]
        await watch.aclose()
    finally:
        await store.close()


async def test_history_replays_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    await store.put("/a", b"1")
    await store.txn([], [Put(key="/a", value=b"2"), Put(key="/b", value=b"1")])
    await store.delete("/a")
    await store.close()

    store = await SqliteStore.open(path)
    try:
        watch = store.watch("/", start_revision=1)
        events = await take(watch, 4)
        assert brief(events) == [("put", "/a", b"1", 1), ("put", "/a", b"2", 2),
                                 ("put", "/b", b"1", 2), ("delete", "/a", b"", 3)]
        assert events[1].kv == kv("/a", b"2", create=1, mod=2, version=2)
        await store.put("/c", b"live")
        assert brief([await next_event(watch)]) == [("put", "/c", b"live", 4)]
        await watch.aclose()
    finally:
        await store.close()


# The file layout of schema 1 (before 2026-11-22): history also held previous values.
SCHEMA_1 = """
CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL,
                   compact_revision INTEGER NOT NULL);
CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
                 mod_revision INTEGER NOT NULL, version INTEGER NOT NULL,
                 lease INTEGER NOT NULL);
CREATE INDEX kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE history (revision INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL,
                      type TEXT NOT NULL, value BLOB NOT NULL,
                      create_revision INTEGER NOT NULL, version INTEGER NOT NULL,
                      lease INTEGER NOT NULL, prev_value BLOB, prev_create_revision INTEGER,
                      prev_mod_revision INTEGER, prev_version INTEGER, prev_lease INTEGER,
                      PRIMARY KEY (revision, seq));
CREATE TABLE leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX leases_expiry ON leases (expires_at);
INSERT INTO meta VALUES (0, 2, 0);
INSERT INTO kv VALUES ('/a', x'32', 1, 2, 2, 0);
INSERT INTO history VALUES (1, 0, '/a', 'put', x'31', 1, 1, 0, NULL, NULL, NULL, NULL, NULL);
INSERT INTO history VALUES (2, 0, '/a', 'put', x'32', 1, 2, 0, x'31', 1, 1, 1, 0);
PRAGMA user_version = 1;
"""


async def test_a_schema_1_file_opens_with_its_data_and_history(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1)
    conn.close()
    store = await SqliteStore.open(path)
    try:
        assert await store.get("/a") == kv("/a", b"2", create=1, mod=2, version=2)
        watch = store.watch("/", start_revision=1)
        assert brief(await take(watch, 2)) == [("put", "/a", b"1", 1), ("put", "/a", b"2", 2)]
        assert await store.put("/b", b"1") == 3
        assert brief([await next_event(watch)]) == [("put", "/b", b"1", 3)]
        await watch.aclose()
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        columns = [row[1] for row in conn.execute("PRAGMA table_info(history)")]
        assert not [c for c in columns if c.startswith("prev_")]
    finally:
        conn.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await SqliteStore.open(path)


async def test_a_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    try:
        with pytest.raises(StoreError, match="another corral server"):
            await SqliteStore.open(path)
        assert await store.put("/a", b"1") == 1
    finally:
        await store.close()


# Commits transactions of TXN_KEYS puts each, forever, printing "<i> <revision>" once each
# is acknowledged; the test kills it with SIGKILL part way.
TXN_KEYS = 10
WRITER = f"""
import asyncio, sys
from corral.store import Put, SqliteStore

async def main(path):
    store = await SqliteStore.open(path)
    i = 0
    while True:
        result = await store.txn([], [Put(key=f"/crash/{{i:07}}/{{j}}", value=b"%d" % i)
                                      for j in range({TXN_KEYS})])
        print(i, result.revision, flush=True)
        i += 1

asyncio.run(main(sys.argv[1]))
"""


async def test_acknowledged_commits_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), stdout=asyncio.subprocess.PIPE)
    assert writer.stdout is not None
    acknowledged: list[tuple[int, int]] = []
    try:
        async with asyncio.timeout(GUARD):
            while len(acknowledged) < 300:
                line = await writer.stdout.readline()
                assert line, "the writer exited before it was killed"
                i, revision = map(int, line.split())
                acknowledged.append((i, revision))
    finally:
        writer.kill()
        await writer.wait()
    assert writer.returncode == -signal.SIGKILL

    store = await SqliteStore.open(path)
    try:
        for i, revision in acknowledged:
            for j in range(TXN_KEYS):
                assert await store.get(f"/crash/{i:07}/{j}") == kv(
                    f"/crash/{i:07}/{j}", b"%d" % i, create=revision, mod=revision, version=1)
        # whatever got in after the last acknowledgement got in whole
        found, revision = await store.range("/crash/")
        assert revision >= acknowledged[-1][1]
        per_revision = Counter(k.mod_revision for k in found)
        assert per_revision == dict.fromkeys(range(1, revision + 1), TXN_KEYS)
    finally:
        await store.close()


async def test_open_store_reads_urls_and_plain_paths(tmp_path: Path) -> None:
    for url in (f"sqlite://{tmp_path}/a.db", str(tmp_path / "b.db")):
        store = await open_store(url)
        try:
            assert isinstance(store, SqliteStore)
            assert await store.put("/a", b"1") == 1
        finally:
            await store.close()
    assert (tmp_path / "a.db").exists()
    assert (tmp_path / "b.db").exists()
    memory = await open_store("memory://")
    assert isinstance(memory, MemoryStore)
    await memory.close()


@pytest.mark.parametrize(("url", "message"), [
    ("etcd://localhost:2379", "unknown scheme 'etcd'"),
    ("sqlite://relative.db", "absolute path"),
    ("memory://somewhere", "no path"),
    ("", "empty store URL"),
])
async def test_open_store_refuses_unknown_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await open_store(url)
