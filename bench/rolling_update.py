"""Rolling update under load: examples/webshop (haproxy in front of N Python web
instances and redis) on a real single-machine cluster (`corral up`: server, agent,
SQLite, the node's default driver: `sandbox` as root), with constant HTTP traffic through
haproxy (`corral.testing.load`: half the clients keep their connection alive, half open
one per request), while `corral apply` rolls the web tier to a new release.

For each run: load for `--before` seconds, then `corral apply` of the next release
(v1 -> v2 -> v3 ...), with the load still running until the apply has returned. Reported:
failed requests over the whole run (must be 0), the update's duration (the deployment's
record: created -> successful; and the `corral apply` wall time), haproxy reloads, and
the p50/p99 latency of the requests sent before the update against those sent during
it. Figures are medians over `--runs` runs; failed requests are summed.

Run as root: `.venv/bin/python bench/rolling_update.py --runs 3 --instances 5`.
Prints a table and, with `--json`, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.testing.cluster import LocalCluster, free_port, local_cluster
from corral.testing.load import LoadGenerator, percentile, summarize
from corral.testing.webshop import copy_webshop


def latest_web_deployment(cluster: LocalCluster) -> dict[str, Any]:
    deps = [d for d in cluster.corral_json("deployment", "list", "webshop")
            if d["service"] == "web"]
    return dict(deps[-1])  # oldest first


def reloads(cluster: LocalCluster) -> int:
    logs = cluster.corral("logs", "webshop/lb", check=True).stdout
    return logs.count("Reloading HAProxy")


def one_run(cluster: LocalCluster, spec: Path, url: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    reloads_before = reloads(cluster)
    with LoadGenerator(url, workers=args.workers, keepalive=args.workers // 2,
                       interval=args.interval, max_duration=args.before + 600) as load:
        time.sleep(args.before)
        t0, wall0 = time.monotonic(), time.time()
        applied = cluster.corral("apply", "-f", str(spec), "--timeout", "10m", timeout=660)
        t1, wall1 = time.monotonic(), time.time()
    if applied.returncode != 0:
        raise RuntimeError(f"apply failed:\n{applied.stdout}\n{applied.stderr}")
    samples = load.samples()
    dep = latest_web_deployment(cluster)
    if dep["status"] != "successful":
        raise RuntimeError(f"deployment ended {dep['status']}: {dep.get('reason')}")
    before = [s.latency for s in samples if s.ok and s.start < t0]
    during = [s.latency for s in samples if s.ok and t0 <= s.start < t1]
    summary = summarize(samples)
    return {
        "requests": summary.requests, "failed": summary.failed, "errors": summary.errors,
        "requests_before": len(before), "requests_during": len(during),
        "deployment_s": dep["updated_at"] - dep["created_at"], "apply_s": t1 - t0,
        # Where the rest of the apply's time goes: the CLI's start, packing and the API
        # call before the deployment exists; following it after it is successful.
        "apply_to_created_s": dep["created_at"] - wall0,
        "successful_to_return_s": wall1 - dep["updated_at"],
        "reloads": reloads(cluster) - reloads_before,
        "p50_before_ms": (percentile(before, 50) or 0) * 1000,
        "p99_before_ms": (percentile(before, 99) or 0) * 1000,
        "p50_during_ms": (percentile(during, 50) or 0) * 1000,
        "p99_during_ms": (percentile(during, 99) or 0) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="updates measured")
    parser.add_argument("--instances", type=int, default=5, help="web instances")
    parser.add_argument("--workers", type=int, default=4,
                        help="load clients (half keep-alive)")
    parser.add_argument("--interval", type=float, default=0.02,
                        help="seconds each client waits between its requests")
    parser.add_argument("--before", type=float, default=10.0,
                        help="seconds of load before each update")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    releases = tuple(f"v{i}" for i in range(1, args.runs + 2))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        port = free_port()
        files = copy_webshop(Path(tmp) / "webshop", port=port, releases=releases,
                             instances=args.instances)
        with local_cluster(Path(tmp) / "cluster") as cluster:
            cluster.corral("apply", "-f", str(files["v1"]), "--timeout", "5m", check=True)
            for release in releases[1:]:
                runs.append(one_run(cluster, files[release], f"http://127.0.0.1:{port}/",
                                    args))
                print(f"  {release}: {json.dumps(runs[-1])}", file=sys.stderr)
            cluster.corral("delete", "webshop", "--timeout", "120")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    summary: dict[str, Any] = {
        "instances": args.instances, "runs": runs,
        "failed": sum(r["failed"] for r in runs), "requests": sum(r["requests"] for r in runs),
        **{f"median_{k}": med(k) for k in (
            "deployment_s", "apply_s", "apply_to_created_s", "successful_to_return_s",
            "reloads", "requests_before", "requests_during",
            "p50_before_ms", "p99_before_ms", "p50_during_ms", "p99_during_ms")},
    }
    summary["p50_ratio"] = summary["median_p50_during_ms"] / summary["median_p50_before_ms"]
    summary["p99_ratio"] = summary["median_p99_during_ms"] / summary["median_p99_before_ms"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"rolling update of {args.instances} web instances behind haproxy, {args.runs} runs, "
          f"{args.workers} clients every {args.interval:g}s")
    print(f"failed requests: {summary['failed']} of {summary['requests']}")
    print(f"update: deployment {summary['median_deployment_s']:.1f}s, corral apply "
          f"{summary['median_apply_s']:.1f}s ({summary['median_apply_to_created_s']:.1f}s "
          f"before the deployment, {summary['median_successful_to_return_s']:.1f}s after "
          f"it), haproxy reloads {summary['median_reloads']:.0f}")
    print(f"{'latency':<10}{'before ms':>11}{'during ms':>11}{'ratio':>8}")
    for q in ("p50", "p99"):
        print(f"{q:<10}{summary[f'median_{q}_before_ms']:>11.2f}"
              f"{summary[f'median_{q}_during_ms']:>11.2f}{summary[f'{q}_ratio']:>8.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
