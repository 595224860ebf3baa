"""What a busy event loop costs the store's worker thread: rows written and read by a
second thread through Python's sqlite3, with the main thread idle or running Python code.

Python's sqlite3 lets go of the GIL around every step of a statement, which is once per
row an `executemany` inserts and once per row a query returns. A thread that lets go of
the GIL while another runs Python code waits up to the switch interval (5 ms by default)
to get it back. This measures, for `--rows` rows of the store's size (a 300-byte value):

- `executemany`: one INSERT statement stepped once per row (the store before 1d36bdc);
- `multi-row`: INSERTs of 500 rows each (`_Db._insert`);
- `rows`: a `key IN (...)` query per 500 keys, fetching a row per key (`_Db.get_many`);
- `json`: the same keys' revisions as one JSON array per 500 keys (`_Db._heads`);

each with the main thread idle (waiting on the worker) and busy (spinning in Python).
`--switch-interval S` sets Python's switch interval first (the store leaves it at 5 ms:
at 0.5 ms a 100,000-instance run cost the server more CPU and was no faster,
docs/benchmarks.md).

`.venv/bin/python bench/sqlite_gil.py --runs 5 [--switch-interval 0.0005]` (medians;
`--json` for one object).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

CHUNK = 500
VALUE = b"v" * 300


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                 "create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL, "
                 "version INTEGER NOT NULL, lease INTEGER NOT NULL)")
    return conn


def write_executemany(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT OR REPLACE INTO kv VALUES (?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")


def write_multirow(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN")
    for start in range(0, len(rows), CHUNK):
        part = rows[start:start + CHUNK]
        conn.execute("INSERT OR REPLACE INTO kv VALUES " + ",".join(["(?,?,?,?,?,?)"] * len(part)),
                     [value for row in part for value in row])
    conn.execute("COMMIT")


def read_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    names = [row[0] for row in rows]
    found = {}
    for start in range(0, len(names), CHUNK):
        part = names[start:start + CHUNK]
        for row in conn.execute("SELECT key, create_revision, mod_revision, version, lease "
                                f"FROM kv WHERE key IN ({','.join('?' * len(part))})", part):
            found[row[0]] = row
    assert len(found) == len(names)


def read_json(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    names = [row[0] for row in rows]
    found = {}
    for start in range(0, len(names), CHUNK):
        part = names[start:start + CHUNK]
        (packed,) = conn.execute(
            "SELECT json_group_array(json_array(key, create_revision, mod_revision, version, "
            f"lease)) FROM kv WHERE key IN ({','.join('?' * len(part))})", part).fetchone()
        for head in orjson.loads(packed):
            found[head[0]] = head
    assert len(found) == len(names)


def timed(folder: Path, work: Callable[[sqlite3.Connection, list[tuple[Any, ...]]], None],
          rows: list[tuple[Any, ...]], busy: bool, prefill: bool) -> float:
    """Seconds `work` takes on a worker thread while this thread idles or spins."""
    path = folder / f"gil-{time.monotonic_ns()}.db"
    conn = connect(path)
    try:
        if prefill:
            write_multirow(conn, rows)
        worker = threading.Thread(target=work, args=(conn, rows))
        start = time.perf_counter()
        worker.start()
        if busy:
            spins = 0
            while worker.is_alive():
                spins += 1  # Python code: holds the GIL between forced switches
        worker.join()
        return time.perf_counter() - start
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="seconds (Python's default: 0.005)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    rows = [(f"/instances/{i:016x}", VALUE, i, i, 1, 0) for i in range(args.rows)]
    cases = {"executemany": (write_executemany, False), "multi-row": (write_multirow, False),
             "rows": (read_rows, True), "json": (read_json, True)}
    seconds: dict[str, dict[str, list[float]]] = {
        name: {"idle": [], "busy": []} for name in cases}
    with tempfile.TemporaryDirectory(prefix="corral-gil-bench-") as tmp:
        for _ in range(args.runs):
            for name, (work, prefill) in cases.items():
                for mode in ("idle", "busy"):
                    seconds[name][mode].append(
                        timed(Path(tmp), work, rows, mode == "busy", prefill))
    median = {name: {mode: round(statistics.median(v), 4) for mode, v in modes.items()}
              for name, modes in seconds.items()}
    result = {"rows": args.rows, "runs": args.runs, "switch_interval_s": sys.getswitchinterval(),
              "median_seconds": median,
              "busy_over_idle": {name: round(m["busy"] / m["idle"], 1)
                                 for name, m in median.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.rows:,} rows on a worker thread, median of {args.runs} (seconds; switch "
          f"interval {result['switch_interval_s'] * 1000:g} ms):")
    print(f"  {'':12} {'idle':>8} {'busy':>8} {'busy/idle':>10}")
    for name, m in median.items():
        print(f"  {name:12} {m['idle']:8.3f} {m['busy']:8.3f} "
              f"{result['busy_over_idle'][name]:>9}x")


if __name__ == "__main__":
    main()
