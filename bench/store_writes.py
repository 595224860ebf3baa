"""The embedded store's write path under C1M's pattern, next to SQLite's own floor.

What one instance costs the store in a C1M run, for `--instances` instances (values of
the size the server writes: a stored instance record and an event):

- create: transactions of `--batch` new instance keys, each with its event (the
  applications controller);
- place: transactions of `--batch` updates, each guarded by a compare on the key's
  mod_revision, each with its event (the plan applier);
- report: two rounds of small transactions of 10 instances each, all queued at once so
  the store group-commits them (a node's status batch: starting, then running), each
  update guarded and with its event.

The floor, measured in the same run: the same kv and history rows written by plain
`sqlite3` `executemany` in one transaction per batch, without compares, savepoints,
events to the loop or group commit. The ratio says how much the store's own logic costs
over SQLite's.

`--busy-loop`: the event loop runs Python code the whole time the store writes (a task
that spins 2 ms at a time, yielding in between), as the server's loop does at C1M: the
store's worker thread then has to win the GIL back from a busy thread after every call
that lets go of it.

`.venv/bin/python bench/store_writes.py --runs 3 [--busy-loop]` (medians; `--json` for one
object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.store.base import Compare, CompareTarget, Put
from corral.store.sqlite import SqliteStore

INSTANCE = b"i" * 340  # a running instance's stored record (model/codec.py)
EVENT = b"e" * 330  # an instance event
REPORT_SIZE = 10  # instances per status batch


async def spin(stop: asyncio.Event) -> int:
    """Keep the loop's thread running Python code until `stop`: 2 ms slices of
    arithmetic, yielding to the loop between slices. Returns the slices run."""
    slices = 0
    while not stop.is_set():
        until = time.perf_counter() + 0.002
        while time.perf_counter() < until:
            pass
        slices += 1
        await asyncio.sleep(0)
    return slices


async def store_run(folder: Path, ids: list[str], batch: int, busy: bool
                    ) -> dict[str, float]:
    store = await SqliteStore.open(folder / "store.db")
    counter = 0
    stop = asyncio.Event()
    spinner = asyncio.create_task(spin(stop)) if busy else None

    def event() -> Put:
        nonlocal counter
        counter += 1
        return Put(key=f"/events/{counter:020d}", value=EVENT)

    def guarded(part: list[str]) -> tuple[list[Compare], list[Put]]:
        compares = [Compare(key=f"/instances/{i}", target=CompareTarget.MOD, op=">", value=0)
                    for i in part]
        ops: list[Put] = []
        for i in part:
            ops += [Put(key=f"/instances/{i}", value=INSTANCE), event()]
        return compares, ops

    try:
        start = time.perf_counter()
        for at in range(0, len(ids), batch):
            ops: list[Put] = []
            for i in ids[at:at + batch]:
                ops += [Put(key=f"/instances/{i}", value=INSTANCE), event()]
            await store.txn([], ops)
        created = time.perf_counter()
        for at in range(0, len(ids), batch):
            compares, ops = guarded(ids[at:at + batch])
            assert (await store.txn(compares, ops)).succeeded
        placed = time.perf_counter()
        for _ in range(2):
            results = await asyncio.gather(*(
                store.txn(*guarded(ids[at:at + REPORT_SIZE]))
                for at in range(0, len(ids), REPORT_SIZE)))
            assert all(r.succeeded for r in results)
        reported = time.perf_counter()
    finally:
        stop.set()
        if spinner is not None:
            await spinner
        await store.close()
    return {"create": created - start, "place": placed - created,
            "report": reported - placed, "total": reported - start}


def floor_run(folder: Path, ids: list[str], batch: int) -> float:
    """The same rows through plain sqlite3, one transaction per batch (reports included,
    in batches too: the floor has no per-transaction cost to pay)."""
    conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_revision "
            "INTEGER NOT NULL, mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, "
            "lease INTEGER NOT NULL);"
            "CREATE TABLE history (revision INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "key TEXT NOT NULL, type TEXT NOT NULL, value BLOB NOT NULL, create_revision "
            "INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL, "
            "PRIMARY KEY (revision, seq));")
        revision = events = 0
        start = time.perf_counter()
        for _ in range(4):  # create, place, two reports
            for at in range(0, len(ids), batch):
                revision += 1
                kv: list[tuple[Any, ...]] = []
                history: list[tuple[Any, ...]] = []
                for i in ids[at:at + batch]:
                    events += 1
                    for key, value in ((f"/instances/{i}", INSTANCE),
                                       (f"/events/{events:020d}", EVENT)):
                        kv.append((key, value, 1, revision, 1, 0))
                        history.append((revision, len(history), key, "put", value, 1, 1, 0))
                conn.execute("BEGIN")
                conn.executemany("INSERT OR REPLACE INTO kv VALUES (?,?,?,?,?,?)", kv)
                conn.executemany("INSERT INTO history VALUES (?,?,?,?,?,?,?,?)", history)
                conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy-loop", action="store_true",
                        help="keep the event loop busy with Python code while writing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    for _ in range(args.runs):
        ids = [secrets.token_hex(8) for _ in range(args.instances)]
        with tempfile.TemporaryDirectory(prefix="corral-store-bench-") as tmp:
            figures = asyncio.run(store_run(Path(tmp), ids, args.batch,
                                           args.busy_loop))
            figures["floor"] = floor_run(Path(tmp), ids, args.batch)
            figures["store_mib"] = sum(f.stat().st_size for f in Path(tmp).iterdir()
                                       if f.name.startswith("store.db")) / 2**20
        runs.append(figures)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    puts = args.instances * 2 * 4  # instance and event, four times
    result = {
        "instances": args.instances, "runs": args.runs, "busy_loop": args.busy_loop,
        "seconds": {k: round(v, 2) for k, v in median.items() if k != "store_mib"},
        "store_mib": round(median["store_mib"]),
        "puts_per_second": round(puts / median["total"]),
        "floor_puts_per_second": round(puts / median["floor"]),
        "ratio_to_floor": round(median["total"] / median["floor"], 2),
        "per_run_total": [round(r["total"], 2) for r in runs],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    s = result["seconds"]
    busy = ", event loop busy" if args.busy_loop else ""
    print(f"store writes, {args.instances:,} instances{busy}, median of {args.runs} "
          f"(pid {os.getpid()}):")
    print(f"  create {s['create']} s, place {s['place']} s, report {s['report']} s: "
          f"total {s['total']} s = {result['puts_per_second']:,} puts/s, "
          f"{result['store_mib']} MiB on disk")
    print(f"  floor (plain sqlite3, same rows): {s['floor']} s = "
          f"{result['floor_puts_per_second']:,} puts/s; store/floor = "
          f"{result['ratio_to_floor']}x")


if __name__ == "__main__":
    main()
