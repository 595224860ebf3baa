"""The one conformance suite every `Store` backend passes (memory, sqlite, later etcd).

A backend's test module subclasses `StoreConformance` and provides the `store` fixture; every
test here then runs against that backend through the `Store` protocol only. Time is passed
in as `now`, and tests wait on events, never on the clock: `GUARD` only turns a hang into a
failure and is no assertion about speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest

from corral.store import (
    CompactedError,
    Compare,
    CompareTarget,
    Delete,
    KeyValue,
    Put,
    Store,
    StoreError,
    TxnResult,
    WatchEvent,
)

__all__ = ["StoreConformance"]

GUARD = 60.0


async def next_event(watch: AsyncIterator[WatchEvent]) -> WatchEvent:
    async with asyncio.timeout(GUARD):
        return await anext(watch)


async def take(watch: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    return [await next_event(watch) for _ in range(count)]


def brief(events: Sequence[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type.value, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


def kv(key: str, value: bytes, create: int, mod: int, version: int, lease: int = 0) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                    version=version, lease=lease)


MOD, CREATE, VERSION, VALUE = (CompareTarget.MOD, CompareTarget.CREATE, CompareTarget.VERSION,
                               CompareTarget.VALUE)

# "/k" ends at create 1, mod 3, version 2, value b"c"; "/none" never exists.
COMPARE_CASES = [
    ("/k", MOD, "==", 3, True), ("/k", MOD, "!=", 3, False), ("/k", MOD, "<", 4, True),
    ("/k", MOD, "<", 3, False), ("/k", MOD, ">", 2, True), ("/k", MOD, ">", 3, False),
    ("/k", CREATE, "==", 1, True), ("/k", CREATE, "!=", 1, False),
    ("/k", CREATE, "<", 1, False), ("/k", CREATE, ">", 0, True),
    ("/k", VERSION, "==", 2, True), ("/k", VERSION, "!=", 1, True),
    ("/k", VERSION, "<", 3, True), ("/k", VERSION, ">", 2, False),
    ("/k", VALUE, "==", b"c", True), ("/k", VALUE, "!=", b"c", False),
    ("/k", VALUE, "<", b"d", True), ("/k", VALUE, ">", b"b", True),
    ("/k", VALUE, ">", b"c", False),
    ("/none", MOD, "==", 0, True), ("/none", MOD, ">", 0, False),
    ("/none", CREATE, "==", 0, True), ("/none", CREATE, "!=", 0, False),
    ("/none", VERSION, "==", 0, True), ("/none", VERSION, "<", 1, True),
    ("/none", VALUE, "==", b"", True), ("/none", VALUE, "!=", b"", False),
    ("/none", VALUE, "<", b"a", True),
]


class StoreConformance:
    """Subclass as `Test<Backend>` and override `store` with a fixture yielding a fresh,
    empty store (and closing it afterwards)."""

    @pytest.fixture
    async def store(self) -> Store:
        raise NotImplementedError("a backend's test class provides the store fixture")

    # keys and revisions

    async def test_empty_store_is_at_revision_zero(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert await store.revision() == 0
        assert await store.get("/a") is None
        assert await store.range("") == ([], 0)

    async def test_put_sets_create_mod_revision_and_version(self, store: Store) -> None:
        assert await store.put("/a", b"1") == 1
        assert await store.put("/b", b"x") == 2
        assert await store.put("/a", b"2") == 3
        assert await store.get("/a") == kv("/a", b"2", create=1, mod=3, version=2)
        assert await store.get("/b") == kv("/b", b"x", create=2, mod=2, version=1)
        assert await store.revision() == 3

    async def test_delete_resets_version_and_create_revision(self, store: Store) -> None:
        await store.put("/a", b"1")
        await store.put("/a", b"2")
        assert await store.delete("/a") == 3
        assert await store.get("/a") is None
        assert await store.delete("/a") == 3  # nothing left to delete: no new revision
        assert await store.put("/a", b"3") == 4
        assert await store.get("/a") == kv("/a", b"3", create=4, mod=4, version=1)

    async def test_delete_prefix_removes_only_keys_under_it_at_one_revision(
            self, store: Store) -> None:
        for key in ("/a/2", "/a/1", "/a", "/ab", "/b/1"):
            await store.put(key, key.encode())
        assert await store.delete("/a/", prefix=True) == 6
        keys, _ = await store.range("")
        assert [k.key for k in keys] == ["/a", "/ab", "/b/1"]
        watch = store.watch("/", start_revision=6)
        events = await take(watch, 2)
        await watch.aclose()
        assert brief(events) == [("delete", "/a/1", b"", 6), ("delete", "/a/2", b"", 6)]

    async def test_range_is_sorted_limited_and_tells_its_revision(self, store: Store) -> None:
        for key in ("/x/c", "/x/a", "/y/a", "/x/b", "/x", "/x/\u00e9", "/x/\u65e5", "/x/z"):
            await store.put(key, key.encode())
        found, revision = await store.range("/x/")
        assert [k.key for k in found] == sorted(["/x/a", "/x/b", "/x/c", "/x/z", "/x/\u00e9",
                                                 "/x/\u65e5"])
        assert revision == 8
        found, revision = await store.range("/x/", limit=2)
        assert [k.key for k in found] == ["/x/a", "/x/b"]
        assert revision == 8
        everything, _ = await store.range("")
        assert len(everything) == 8
        await store.put("/x/a", b"new")
        found, revision = await store.range("/x/", limit=1)
        assert (found, revision) == ([kv("/x/a", b"new", create=2, mod=9, version=2)], 9)

    async def test_range_keys_only_gives_everything_but_the_values(self, store: Store) -> None:
        await store.lease_grant(4, 10.0, now=0.0)
        await store.put("/e/2", b"second", lease=4)
        await store.put("/e/1", b"first")
        await store.put("/e/1", b"again")
        await store.put("/f", b"other")
        found, revision = await store.range("/e/", keys_only=True)
        assert (found, revision) == ([kv("/e/1", b"", create=2, mod=3, version=2),
                                      kv("/e/2", b"", create=1, mod=1, version=1, lease=4)], 4)
        found, _ = await store.range("/e/", keys_only=True, limit=1)
        assert [k.key for k in found] == ["/e/1"]
        assert (await store.get("/e/1")) == kv("/e/1", b"again", create=2, mod=3, version=2)

    async def test_large_transactions_and_keys_that_need_escaping(self, store: Store) -> None:
        """More keys than one statement or query carries (the SQLite backend writes and
        reads them in chunks of 500), some with quotes, backslashes, control characters
        and characters outside the BMP (it reads revisions back as JSON)."""
        odd = ["/m/\"q\"", "/m/back\\slash", "/m/tab\tnew\nline", "/m/\x01", "/m/\U0001f600",
               "/m/\u00e9\u65e5"]
        names = [f"/m/{i:05d}" for i in range(1234)] + odd
        first = await store.txn([], [Put(key=k, value=k.encode()) for k in names])
        assert first.succeeded and first.revision == 1
        # every key guarded by its revision, each put twice in one transaction
        again = await store.txn(
            [Compare(key=k, target=MOD, op="==", value=1) for k in names],
            [Put(key=k, value=b"2") for k in names] + [Put(key=k, value=b"3") for k in names])
        assert again.succeeded and again.revision == 2
        found, _ = await store.range("/m/")
        assert [k.key for k in found] == sorted(names)
        assert {(k.value, k.create_revision, k.mod_revision, k.version) for k in found} == {
            (b"3", 1, 2, 3)}
        heads, _ = await store.range("/m/", keys_only=True)
        assert heads == [dataclasses.replace(k, value=b"") for k in found]
        stale = await store.txn([Compare(key=odd[0], target=MOD, op="==", value=1)],
                                [Put(key=odd[0], value=b"no")])
        assert not stale.succeeded
        gone = await store.txn([], [Delete(key=k) for k in names[:700] + odd])
        assert gone.revision == 3
        assert await store.count("/m/") == (len(names) - 700 - len(odd), 3)
        assert await store.delete("/m/", prefix=True) == 4  # the new revision
        assert await store.count("/m/") == (0, 4)
        watch = store.watch("/m/", start_revision=3)
        deleted = await take(watch, len(names))
        await watch.aclose()
        assert [e.kv.key for e in deleted] == names[:700] + odd + names[700:1234]
        assert {(e.type.value, e.kv.mod_revision) for e in deleted} == {
            ("delete", 3), ("delete", 4)}

    async def test_count_counts_the_keys_under_a_prefix(self, store: Store) -> None:
        assert await store.count("/e/") == (0, 0)
        await store.put("/e/2", b"second")
        await store.put("/e/1", b"first")
        await store.put("/e/1", b"again")
        await store.put("/e", b"not under /e/")
        await store.put("/f/1", b"other")
        assert await store.count("/e/") == (2, 5)
        assert await store.count("") == (4, 5)
        await store.delete("/e/2")
        assert await store.count("/e/") == (1, 6)

    # transactions

    @pytest.mark.parametrize(("key", "target", "op", "value", "holds"), COMPARE_CASES)
    async def test_txn_compare(self, store: Store, key: str, target: CompareTarget, op: str,
                               value: int | bytes, holds: bool) -> None:
        await store.put("/k", b"b")
        await store.put("/other", b"x")
        await store.put("/k", b"c")
        result = await store.txn([Compare(key=key, target=target, op=op, value=value)],
                                 [Put(key="/result", value=b"then")],
                                 [Put(key="/result", value=b"else")])
        assert result == TxnResult(succeeded=holds, revision=4)
        found = await store.get("/result")
        assert found is not None
        assert found.value == (b"then" if holds else b"else")

    async def test_txn_applies_one_branch_when_all_compares_hold(self, store: Store) -> None:
        free = Compare(key="/lock", target=VERSION, op="==", value=0)
        result = await store.txn([free, Compare(key="/other", op="==", value=0)],
                                 [Put(key="/lock", value=b"me"), Put(key="/log", value=b"won")],
                                 [Put(key="/log", value=b"lost")])
        assert result == TxnResult(succeeded=True, revision=1)
        result = await store.txn([free], [Put(key="/lock", value=b"you")],
                                 [Put(key="/log", value=b"lost")])
        assert result == TxnResult(succeeded=False, revision=2)
        assert await store.get("/lock") == kv("/lock", b"me", create=1, mod=1, version=1)
        assert await store.get("/log") == kv("/log", b"lost", create=1, mod=2, version=2)

    async def test_txn_that_writes_nothing_keeps_the_revision(self, store: Store) -> None:
        await store.put("/a", b"1")
        result = await store.txn([Compare(key="/a", op="==", value=99)],
                                 [Put(key="/a", value=b"2")])
        assert result == TxnResult(succeeded=False, revision=1)
        result = await store.txn([], [Delete(key="/missing"), Delete(key="/no/", prefix=True)])
        assert result == TxnResult(succeeded=True, revision=1)
        assert await store.revision() == 1
        watch = store.watch("/", start_revision=2)
        await store.put("/marker", b"")
        assert brief([await next_event(watch)]) == [("put", "/marker", b"", 2)]
        await watch.aclose()

    async def test_all_writes_of_a_txn_share_one_revision(self, store: Store) -> None:
        await store.put("/c", b"old")
        result = await store.txn([], [Put(key="/b", value=b"2"), Put(key="/a", value=b"1"),
                                      Delete(key="/c")])
        assert result == TxnResult(succeeded=True, revision=2)
        assert await store.get("/a") == kv("/a", b"1", create=2, mod=2, version=1)
        assert await store.get("/b") == kv("/b", b"2", create=2, mod=2, version=1)
        watch = store.watch("/", start_revision=2)
        events = await take(watch, 3)
        await watch.aclose()
        assert brief(events) == [("put", "/b", b"2", 2), ("put", "/a", b"1", 2),
                                 ("delete", "/c", b"", 2)]

    async def test_deletes_and_puts_of_one_txn_apply_in_order(self, store: Store) -> None:
        for key in ("/a", "/b", "/c"):
            await store.put(key, b"old")
        watch = store.watch("/", start_revision=4)
        result = await store.txn([], [
            Delete(key="/c"), Delete(key="/missing"), Delete(key="/a"), Delete(key="/c"),
            Put(key="/a", value=b"back"), Delete(key="/b"), Put(key="/b", value=b"new"),
            Delete(key="/a")])
        assert result == TxnResult(succeeded=True, revision=4)
        events = await take(watch, 6)
        await watch.aclose()
        assert brief(events) == [("delete", "/c", b"", 4), ("delete", "/a", b"", 4),
                                 ("put", "/a", b"back", 4), ("delete", "/b", b"", 4),
                                 ("put", "/b", b"new", 4), ("delete", "/a", b"", 4)]
        remaining, _ = await store.range("/")
        assert remaining == [kv("/b", b"new", create=4, mod=4, version=1)]
        assert await store.txn([], [Delete(key="/a"), Delete(key="/zz")]) == TxnResult(
            succeeded=True, revision=4)  # nothing to delete: no new revision

    async def test_malformed_requests_raise_value_error(self, store: Store) -> None:
        with pytest.raises(ValueError):
            await store.txn([Compare(key="/a", op="<=", value=0)], [])
        with pytest.raises(ValueError):
            await store.txn([Compare(key="/a", target=VALUE, value=1)], [])
        with pytest.raises(ValueError):
            await store.txn([Compare(key="/a", op="!=", value=1),
                             Compare(key="/a", target=MOD, value=b"x")], [])
        with pytest.raises(ValueError):
            await store.put("", b"x")
        with pytest.raises(ValueError):
            await store.range("/", limit=-1)
        with pytest.raises(ValueError):
            await store.lease_grant(0, 1.0, now=0.0)
        with pytest.raises(ValueError):
            store.watch("/", start_revision=-1)
        assert await store.revision() == 0

    # concurrency

    async def test_concurrent_cas_increments_lose_nothing(self, store: Store) -> None:
        await store.put("/counter", b"0")
        attempts = 0

        async def increment() -> None:
            nonlocal attempts
            while True:
                current = await store.get("/counter")
                assert current is not None
                await asyncio.sleep(0)  # a yield, not a wait: lets the others read too
                attempts += 1
                result = await store.txn(
                    [Compare(key="/counter", op="==", value=current.mod_revision)],
                    [Put(key="/counter", value=str(int(current.value) + 1).encode())])
                if result.succeeded:
                    return

        await asyncio.gather(*(increment() for _ in range(20)))
        final = await store.get("/counter")
        assert final is not None
        assert (final.value, final.version) == (b"20", 21)
        assert attempts > 20  # stale writes really were refused and retried

    async def test_one_winner_when_many_swap_the_same_revision(self, store: Store) -> None:
        await store.put("/leader", b"none")
        everyone_read = asyncio.Barrier(20)

        async def campaign(name: bytes) -> bool:
            seen = await store.get("/leader")
            assert seen is not None
            await everyone_read.wait()
            result = await store.txn([Compare(key="/leader", op="==", value=seen.mod_revision)],
                                     [Put(key="/leader", value=name)])
            return result.succeeded

        wins = await asyncio.gather(*(campaign(b"n%d" % i) for i in range(20)))
        assert wins.count(True) == 1
        assert await store.get("/leader") == kv("/leader", b"n%d" % wins.index(True),
                                                create=1, mod=2, version=2)

    # watches

    async def test_watch_from_zero_sees_only_future_changes(self, store: Store) -> None:
        await store.put("/a", b"before")
        watch = store.watch("/")
        # made after the watch was created but before it is first read: still seen
        await store.put("/a", b"after")
        event = await next_event(watch)
        assert brief([event]) == [("put", "/a", b"after", 2)]
        assert event.kv == kv("/a", b"after", create=1, mod=2, version=2)
        waiting = asyncio.create_task(next_event(watch))
        await store.put("/b", b"live")
        assert brief([await waiting]) == [("put", "/b", b"live", 3)]
        await watch.aclose()

    async def test_watch_replays_history_then_goes_live(self, store: Store) -> None:
        await store.put("/a", b"1")
        await store.put("/b", b"1")
        await store.put("/a", b"2")
        await store.delete("/b")
        watch = store.watch("/", start_revision=2)
        replay = await take(watch, 3)
        assert brief(replay) == [("put", "/b", b"1", 2), ("put", "/a", b"2", 3),
                                 ("delete", "/b", b"", 4)]
        assert replay[1].kv == kv("/a", b"2", create=1, mod=3, version=2)
        assert replay[2].kv == kv("/b", b"", create=0, mod=4, version=0)
        await store.put("/c", b"live")
        assert brief([await next_event(watch)]) == [("put", "/c", b"live", 5)]
        await watch.aclose()

    async def test_watch_on_a_prefix_sees_only_keys_under_it(self, store: Store) -> None:
        live = store.watch("/a/")
        for key in ("/a", "/b/1", "/a/1", "/ab", "/a/2"):
            await store.put(key, b"x")
        replay = store.watch("/a/", start_revision=1)
        assert [e.kv.key for e in await take(live, 2)] == ["/a/1", "/a/2"]
        assert [e.kv.key for e in await take(replay, 2)] == ["/a/1", "/a/2"]
        await store.put("/b/2", b"x")
        await store.put("/a/3", b"x")
        assert [e.kv.key for e in await take(live, 1)] == ["/a/3"]
        assert [e.kv.key for e in await take(replay, 1)] == ["/a/3"]
        await live.aclose()
        await replay.aclose()

    async def test_watch_from_a_future_revision_waits_for_it(self, store: Store) -> None:
        await store.put("/a", b"x")
        watch = store.watch("/", start_revision=4)
        first = asyncio.create_task(next_event(watch))
        await asyncio.sleep(0)  # a yield, not a wait: the watch starts before the writes
        for key in ("/b", "/c", "/d"):
            await store.put(key, b"x")
        assert brief([await first]) == [("put", "/d", b"x", 4)]
        await watch.aclose()

    async def test_compact_fails_old_watches_and_serves_newer_ones(self, store: Store) -> None:
        for i in range(1, 6):
            await store.put(f"/k{i}", b"x")
        await store.compact(4)
        with pytest.raises(CompactedError) as info:
            await next_event(store.watch("/", start_revision=3))
        assert (info.value.requested, info.value.compact_revision) == (3, 3)
        watch = store.watch("/", start_revision=4)
        assert [e.kv.mod_revision for e in await take(watch, 2)] == [4, 5]
        await watch.aclose()
        assert len((await store.range(""))[0]) == 5  # compaction drops history, not data
        await store.compact(2)  # older than the last compaction: nothing to do
        watch = store.watch("/", start_revision=4)
        assert (await next_event(watch)).kv.mod_revision == 4
        await watch.aclose()
        with pytest.raises(ValueError):
            await store.compact(6)  # a revision that does not exist yet

    async def test_compact_past_a_lagging_watcher_ends_it(self, store: Store) -> None:
        watch = store.watch("/")
        for i in range(5):
            await store.put(f"/k{i}", b"x")
        assert (await next_event(watch)).kv.mod_revision == 1
        await store.compact(4)
        with pytest.raises(CompactedError):
            await take(watch, 4)

    async def test_a_watcher_that_never_reads_does_not_block_writers(self, store: Store) -> None:
        stalled = store.watch("/")
        await store.put("/first", b"x")
        assert (await next_event(stalled)).kv.key == "/first"
        for i in range(2000):
            await store.put(f"/k/{i:04}", b"v")
        assert await store.revision() == 2001
        # and it still gets everything, in order, when it reads again
        events = await take(stalled, 2000)
        assert [e.kv.mod_revision for e in events] == list(range(2, 2002))
        assert events[-1].kv.key == "/k/1999"
        await stalled.aclose()

    async def test_aclose_ends_the_watch(self, store: Store) -> None:
        watch = store.watch("/")
        other = store.watch("/")
        await store.put("/a", b"1")
        await next_event(watch)
        await watch.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(watch)
        await store.put("/b", b"2")
        assert [e.kv.key for e in await take(other, 2)] == ["/a", "/b"]
        await other.aclose()

    async def test_closed_store_refuses_calls_and_ends_watches(self, store: Store) -> None:
        watch = store.watch("/")
        await store.close()
        with pytest.raises(StoreError):
            await store.put("/a", b"1")
        with pytest.raises(StoreError):
            await store.get("/a")
        with pytest.raises(StoreError):
            await next_event(watch)
        await store.close()  # closing twice is harmless

    # leases

    async def test_expired_leases_delete_their_keys(self, store: Store) -> None:
        await store.lease_grant(7, 10.0, now=100.0)
        await store.lease_grant(8, 30.0, now=100.0)
        await store.put("/nodes/a", b"up", lease=7)
        await store.put("/nodes/b", b"up", lease=7)
        await store.put("/nodes/c", b"up", lease=8)
        await store.put("/nodes/d", b"static")
        assert await store.get("/nodes/a") == kv("/nodes/a", b"up", 1, 1, 1, lease=7)
        watch = store.watch("/nodes/")
        assert await store.expire_leases(now=109.9) == []
        assert await store.lease_keepalive(7, now=105.0)  # now due at 115
        assert await store.expire_leases(now=114.9) == []
        assert await store.revision() == 4
        assert await store.expire_leases(now=130.0) == [7, 8]
        events = await take(watch, 3)
        assert [(e.type.value, e.kv.key) for e in events] == [
            ("delete", "/nodes/a"), ("delete", "/nodes/b"), ("delete", "/nodes/c")]
        assert events[0].kv.mod_revision == events[1].kv.mod_revision > 4
        await watch.aclose()
        assert [k.key for k in (await store.range("/nodes/"))[0]] == ["/nodes/d"]
        assert not await store.lease_keepalive(7, now=131.0)
        assert await store.expire_leases(now=1000.0) == []

    async def test_keepalive_of_unknown_or_due_lease_is_false(self, store: Store) -> None:
        assert not await store.lease_keepalive(42, now=0.0)
        await store.lease_grant(1, 5.0, now=0.0)
        assert await store.lease_keepalive(1, now=4.0)
        assert not await store.lease_keepalive(1, now=9.0)  # due at 9: already expired
        assert await store.expire_leases(now=9.0) == [1]

    async def test_lease_grant_refreshes_an_existing_lease(self, store: Store) -> None:
        await store.lease_grant(1, 5.0, now=0.0)
        await store.lease_grant(1, 50.0, now=10.0)
        assert await store.expire_leases(now=59.0) == []
        assert await store.lease_keepalive(1, now=59.0)  # keeps the new ttl: due at 109
        assert await store.expire_leases(now=108.0) == []
        assert await store.expire_leases(now=109.0) == [1]

    async def test_revoke_deletes_attached_keys_at_a_new_revision(self, store: Store) -> None:
        await store.lease_grant(3, 60.0, now=0.0)
        await store.put("/s/a", b"1", lease=3)
        await store.put("/s/b", b"1", lease=3)
        await store.put("/s/c", b"1")
        assert await store.lease_revoke(3) == 4
        assert [k.key for k in (await store.range("/s/"))[0]] == ["/s/c"]
        assert await store.lease_revoke(3) == 4  # already gone: nothing to do
        assert not await store.lease_keepalive(3, now=1.0)
        assert await store.expire_leases(now=1000.0) == []

    async def test_put_without_lease_detaches_the_key(self, store: Store) -> None:
        await store.lease_grant(1, 10.0, now=0.0)
        await store.put("/a", b"1", lease=1)
        await store.put("/a", b"2")
        assert await store.lease_revoke(1) == 2  # no key left on it: no new revision
        assert await store.get("/a") == kv("/a", b"2", create=1, mod=2, version=2)

    async def test_put_with_unknown_lease_is_refused_whole(self, store: Store) -> None:
        with pytest.raises(StoreError):
            await store.put("/a", b"1", lease=9)
        await store.lease_grant(1, 10.0, now=0.0)
        with pytest.raises(StoreError):
            await store.txn([], [Put(key="/x", value=b"1", lease=1),
                                 Put(key="/y", value=b"1", lease=9)])
        assert await store.revision() == 0
        assert await store.range("") == ([], 0)

    # subscribe: each commit's events, at once, before the writer resumes

    async def test_subscribers_get_each_commit_whole_before_the_write_returns(
            self, store: Store) -> None:
        seen: list[list[tuple[str, str, bytes, int]]] = []
        unsubscribe = store.subscribe(lambda events: seen.append(brief(events)))
        await store.put("/a", b"1")
        assert seen == [[("put", "/a", b"1", 1)]]  # already there when put returns
        await store.txn((), [Put(key="/b", value=b"2"), Put(key="/a", value=b"3"),
                             Delete(key="/nothing")])
        assert seen[1] == [("put", "/b", b"2", 2), ("put", "/a", b"3", 2)]
        await store.txn((), [])  # writes nothing: no commit to tell
        await store.delete("/", prefix=True)
        assert seen[2] == [("delete", "/a", b"", 3), ("delete", "/b", b"", 3)]
        unsubscribe()
        await store.put("/c", b"4")
        assert len(seen) == 3
        unsubscribe()  # twice is harmless

    async def test_subscribers_see_whole_records_and_lease_revocations(
            self, store: Store) -> None:
        seen: list[WatchEvent] = []
        store.subscribe(seen.extend)
        await store.lease_grant(3, 10.0, now=0.0)
        await store.put("/alive/n1", b"3", lease=3)
        await store.put("/alive/n1", b"4", lease=3)
        assert seen[1].kv == kv("/alive/n1", b"4", 1, 2, 2, lease=3)
        assert await store.expire_leases(now=10.0) == [3]
        assert brief(seen[2:]) == [("delete", "/alive/n1", b"", 3)]

    async def test_a_failing_subscriber_neither_fails_the_write_nor_silences_others(
            self, store: Store) -> None:
        def broken(events: Sequence[WatchEvent]) -> None:
            raise RuntimeError("listener bug")

        seen: list[WatchEvent] = []
        store.subscribe(broken)
        store.subscribe(seen.extend)
        assert await store.put("/a", b"1") == 1
        assert await store.get("/a") == kv("/a", b"1", 1, 1, 1)
        assert brief(seen) == [("put", "/a", b"1", 1)]

    async def test_a_refreshing_grant_and_keepalives_keep_a_lease_alive(
            self, store: Store) -> None:
        await store.lease_grant(5, 10.0, now=0.0)
        await store.put("/alive/n", b"5", lease=5)
        for now in (8.0, 16.0, 24.0):
            await store.lease_grant(5, 10.0, now=now)  # same ttl: a refresh
            assert await store.expire_leases(now=now + 9.0) == []
        assert await store.lease_keepalive(5, now=33.0)
        assert await store.expire_leases(now=42.9) == []
        await store.lease_grant(5, 2.0, now=43.0)  # a new ttl
        assert await store.expire_leases(now=45.0) == [5]
        assert await store.get("/alive/n") is None

    async def test_many_leases_expire_each_at_its_own_latest_time(self, store: Store) -> None:
        for lease in range(1, 201):
            await store.lease_grant(lease, 10.0, now=0.0)
        for step in range(1, 21):  # the even leases are kept alive, many times over
            for lease in range(2, 201, 2):
                assert await store.lease_keepalive(lease, now=step * 0.4)
        assert await store.expire_leases(now=9.9) == []
        assert await store.expire_leases(now=10.0) == list(range(1, 201, 2))
        assert await store.expire_leases(now=17.9) == []
        assert await store.expire_leases(now=18.0) == list(range(2, 201, 2))
        assert await store.expire_leases(now=100.0) == []
