"""`bench/agent_requests.py` as a correctness check: both servers (lean agent path and
FastAPI) start, every request of every kind succeeds (the bench raises on any non-200 or
on a status report that changed nothing), and every figure is reported. No timing is
asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
def test_agent_requests_bench_runs_and_reports_its_figures() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "agent_requests.py"),
                             "--runs", "1", "--nodes", "4", "--per-node", "3",
                             "--requests", "40", "--concurrency", "4", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout)
    kinds = {"heartbeat", "poll, nothing new", "poll, whole", "status batch"}
    for path in ("lean", "fastapi"):
        assert set(figures["median"][path]) == kinds
        for kind in kinds:
            assert figures["median"][path][kind]["requests_per_second"] > 0
            assert figures["median"][path][kind]["cpu_us_per_request"] >= 0
    assert set(figures["lean_over_fastapi_cpu"]) == kinds
