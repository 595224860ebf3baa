"""`bench/store_writes.py` as a correctness check: it runs, writes what it says, and
reports every figure. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.parametrize("busy", [False, True], ids=["idle-loop", "busy-loop"])
def test_store_writes_bench_runs_and_reports_its_figures(busy: bool) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "store_writes.py"),
                             "--instances", "400", "--batch", "100", "--runs", "1", "--json",
                             *(["--busy-loop"] if busy else [])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert figures["instances"] == 400 and figures["busy_loop"] is busy
    assert set(figures["seconds"]) == {"create", "place", "report", "total", "floor"}
    assert figures["puts_per_second"] > 0 and figures["floor_puts_per_second"] > 0
    assert figures["ratio_to_floor"] > 0 and figures["store_mib"] >= 0


@pytest.mark.bench
def test_sqlite_gil_bench_runs_every_case() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "sqlite_gil.py"),
                             "--rows", "600", "--runs", "1", "--switch-interval", "0.001",
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    assert figures["rows"] == 600 and figures["switch_interval_s"] == pytest.approx(0.001)
    assert set(figures["median_seconds"]) == {"executemany", "multi-row", "rows", "json"}
    for case in figures["median_seconds"].values():
        assert case["idle"] > 0 and case["busy"] > 0
