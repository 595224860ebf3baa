"""C1M: many instances on many simulated nodes, through the real control plane.

Starts a real `corral server` (embedded SQLite store, in a temp dir, plain HTTP with
`--insecure-http`: the hollow nodes then use the admin token, as `corral agent --server`
does, and TLS handshakes of thousands of simulated agents stay out of the figures), then
a separate process of N hollow nodes (`corral.testing.hollow`: real agent protocol, no
processes), waits until all are registered, applies M applications of one service with K
instances each, and waits until every instance was reported `running`.

Reports:
- placements/s of the scheduler alone: placements over the time spent in the pure
  `schedule()`, summed over the server's `scheduling pass` log lines;
- end to end: from the first apply to the last `running` report the server accepted;
- p99 latency of the agents' requests during the run (register, heartbeat, status
  reports; not long polls) and of the applies;
- the server's RSS at the end (and its peak), its CPU seconds;
- correctness: every instance placed exactly once, no node over capacity, no port twice
  on a node, checked over what the nodes were told and over the server's own view
  (`GET /v1/nodes`, `GET /v1/instances?app=`). A failed check makes the exit code 1.

Presets: `--quick` (1,000 nodes, 20 x 1,000 instances; in the test suite as a correctness
check, `tests/e2e/test_sim.py`) and `--c1m` (10,000 nodes, 100 x 10,000 instances).
Knobs: `--nodes`, `--services`, `--instances` (per service), `--json`.

`.venv/bin/python bench/c1m.py --quick`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from corral.client import Client, ClientConfig

PRESETS = {"quick": (1_000, 20, 1_000), "c1m": (10_000, 100, 10_000)}
CPU, MEMORY = 0.02, 32 * 1024 * 1024  # per instance: 200 fit a 4-core, 8 GiB hollow node
# Published figures, for context.
PEERS = {
    "Nomad C1M (2015): 1M containers, 5,000 hosts, 5 servers, < 5 min": "~3,750/s",
    "Nomad C2M (2020): 2M containers, 6,100 hosts, 22 min": "~1,500/s",
    "kube-scheduler (SIG scalability, 5,000 nodes)": "~100 pods/s",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """Thousands of hollow nodes hold thousands of connections, on both ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def spec(index: int, instances: int) -> dict[str, Any]:
    return {"name": f"c1m-{index:04d}", "services": {"web": {
        "instances": instances, "command": ["sleep", "infinity"],
        "resources": {"cpu": CPU, "memory": MEMORY}, "ports": [{"name": "http"}]}}}


class Lines:
    """Reads a child's stdout JSON lines on a thread; keeps the latest of each kind."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.log = log
        self.latest: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                with self.changed:
                    self.latest[line["event"]] = line
                    self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    ended = False

    def wait(self, predicate: Any, timeout: float) -> dict[str, dict[str, Any]]:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.latest) or self.ended,
                                         timeout):
                raise TimeoutError(f"timed out; last: {self.latest.get('progress')}")
            if not predicate(self.latest):
                raise RuntimeError("the hollow nodes' process ended early; the end of its "
                                   "log:\n" + self.log.read_text(errors="replace")[-4000:])
            return dict(self.latest)


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {line.split(":")[0]: line.split()[1] for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": int(values["VmRSS"]) / 1024, "peak_rss_mib": int(values["VmHWM"]) / 1024,
            "cpu_seconds": (int(fields[11]) + int(fields[12])) / ticks}


def scheduler_figures(log: Path) -> dict[str, Any]:
    placed = failed = passes = 0
    schedule_s = snapshot_s = apply_s = 0.0
    batches = []
    for raw in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if line.get("msg") != "scheduling pass":
                continue
            passes += 1
            placed += line["placed"]
            failed += line["failed"]
            schedule_s += line["schedule_seconds"]
            snapshot_s += line["snapshot_seconds"]
            apply_s += line["apply_seconds"]
            batches.append(line["requests"])
    return {"passes": passes, "placed": placed, "failed": failed,
            "schedule_seconds": round(schedule_s, 3), "snapshot_seconds": round(snapshot_s, 3),
            "apply_seconds": round(apply_s, 3),
            "placements_per_second": round(placed / schedule_s) if schedule_s else None,
            "median_batch": statistics.median(batches) if batches else 0,
            "largest_batch": max(batches, default=0)}


def time_spent(metrics_text: str) -> dict[str, dict[str, Any]]:
    """From the server's /metrics: per API route, store operation and controller, the
    count and total seconds (the histograms' `_count` and `_sum`)."""
    out: dict[str, dict[str, Any]] = {}
    wanted = {"corral_api_request_duration_seconds": ("route", "method"),
              "corral_store_operation_duration_seconds": ("operation",),
              "corral_controller_reconcile_seconds": ("controller",)}
    for line in metrics_text.splitlines():
        name, _, rest = line.partition("{")
        for base, labels in wanted.items():
            if name not in (base + "_sum", base + "_count"):
                continue
            fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            key = base.split("_")[1] + " " + " ".join(fields.get(k, "") for k in labels)
            entry = out.setdefault(key.strip(), {"count": 0, "seconds": 0.0})
            value = float(line.rsplit(" ", 1)[1])
            if name.endswith("_sum"):
                entry["seconds"] = round(entry["seconds"] + value, 2)
            else:
                entry["count"] += int(value)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["seconds"]))


def server_errors(log: Path) -> list[str]:
    out = []
    for raw in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(raw)
            if line.get("level") in ("error", "critical"):
                out.append(f"{line.get('logger')}: {line.get('msg')} {line.get('exc', '')}"[:2000])
    return out


async def apply_all(client: Client, services: int, instances: int) -> list[float]:
    """Apply every application, 4 at a time; returns each apply's latency."""
    latencies: list[float] = []
    queue = iter(range(services))

    async def worker() -> None:
        for i in queue:
            start = time.perf_counter()
            await client.apply(spec(i, instances))
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(4)))
    return latencies


async def server_view(client: Client, services: int, instances: int) -> dict[str, Any]:
    """The correctness checks over the server's own records."""
    problems: list[str] = []
    nodes = await client.list_nodes()
    allocated = 0
    for node in nodes:
        alloc, cap = node["allocated"], node["capacity"]
        allocated += alloc["instances"]
        if alloc["cpu"] > cap["cpu"] + 1e-9 or alloc["memory"] > cap["memory"]:
            problems.append(f"node {node['name']} over capacity: {alloc} > {cap}")
    if allocated != services * instances:
        problems.append(f"{allocated} instances allocated on nodes, want "
                        f"{services * instances}")
    seen: dict[str, str] = {}
    ports: Counter[tuple[str, int]] = Counter()
    for i in range(services):
        app = f"c1m-{i:04d}"
        found = await client.list_instances(app=app)
        live = [x for x in found if x["desired"] == "run"]
        if len(live) != instances:
            problems.append(f"{app}: {len(live)} instances, want {instances}")
        for inst in live:
            if inst["state"] != "running" or not inst["node"]:
                problems.append(f"{inst['id']} is {inst['state']} on {inst['node']}")
            if seen.setdefault(inst["id"], inst["node"]) != inst["node"]:
                problems.append(f"{inst['id']} on two nodes")
            for port in inst["ports"].values():
                ports[(inst["node"], port)] += 1
    problems += [f"port {port} twice on {node}" for (node, port), n in ports.items() if n > 1]
    return {"ok": not problems, "problems": problems[:20], "instances": len(seen)}


class Probe:
    """GET /healthz every 0.2 s on a thread: it touches no store, so its latency is the
    server's event-loop lag (plus one HTTP round trip) while the run goes on."""

    def __init__(self, addr: str) -> None:
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(addr,), daemon=True)
        self._thread.start()

    def _run(self, addr: str) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.wait(0.2):
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{addr}/healthz")
                    self.latencies.append(time.perf_counter() - start)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=130)
        return {"p50_ms": round((percentile(self.latencies, 0.5) or 0) * 1000, 1),
                "p99_ms": round((percentile(self.latencies, 0.99) or 0) * 1000, 1),
                "samples": len(self.latencies)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    raise_fd_limit()
    port = free_port()
    data = tmp / "server"
    server_log = tmp / "server.log"
    env = {**os.environ, "CORRAL_LOG_FORMAT": "json"}
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {"nodes": args.nodes, "services": args.services,
                              "instances_per_service": args.instances,
                              "instances": args.services * args.instances}
    try:
        with open(server_log, "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "corral.cli.main", "server", "--data-dir", str(data),
                 "--port", str(port), "--insecure-http", "--log-level", "info"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(server)
        addr = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{addr}/healthz", timeout=1).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + server_log.read_text()[-4000:])
            time.sleep(0.1)
        token = (data / "admin-token").read_text().strip()
        hollow_cmd = [sys.executable, "-m", "corral.testing.hollow", "--server", addr,
                      f"--token={token}", "--nodes", str(args.nodes), "--labels", "zone=a,b,c",
                      "--interval", "0.25"]
        if args.per_instance_status:
            hollow_cmd.append("--per-instance-status")
        if args.full_answers:
            hollow_cmd.append("--full-answers")
        hollow = subprocess.Popen(hollow_cmd, stdout=subprocess.PIPE,
                                  stderr=open(tmp / "hollow.log", "wb"),  # noqa: SIM115
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(hollow)
        lines = Lines(hollow, tmp / "hollow.log")
        started = time.time()
        lines.wait(lambda latest: "registered" in latest, args.timeout)
        result["register_seconds"] = round(time.time() - started, 2)
        before = proc_stats(server.pid)
        hollow_before = proc_stats(hollow.pid)
        total = args.services * args.instances
        probe = Probe(addr)

        async def apply_and_wait() -> dict[str, Any]:
            async with Client(ClientConfig(addr=addr, token=token), timeout=600) as client:
                t0 = time.time()
                applies = await apply_all(client, args.services, args.instances)
                applied = time.time()
                latest = await asyncio.to_thread(
                    lines.wait, lambda latest: latest.get("progress", {}).get("running", 0)
                    >= total, args.timeout)
                end = latest["progress"]["last_running"]
                return {"t0": t0, "apply_seconds": round(applied - t0, 2),
                        "apply_p99_ms": round((percentile(applies, 0.99) or 0) * 1000, 1),
                        "end_to_end_seconds": round(end - t0, 2),
                        "first_running_seconds": round(
                            latest["progress"]["first_running"] - t0, 2)}

        timing = asyncio.run(apply_and_wait())
        after = proc_stats(server.pid)
        hollow_after = proc_stats(hollow.pid)
        result["healthz"] = probe.stop()
        with contextlib.suppress(httpx.HTTPError):
            scraped = httpx.get(f"{addr}/metrics", timeout=120,
                                headers={"authorization": f"Bearer {token}"})
            result["time_spent"] = time_spent(scraped.text)
        result["hollow_cpu_seconds"] = round(hollow_after["cpu_seconds"]
                                             - hollow_before["cpu_seconds"], 1)
        result.update({k: v for k, v in timing.items() if k != "t0"})
        result["end_to_end_per_second"] = round(total / timing["end_to_end_seconds"])
        result["server"] = {"rss_mib": round(after["rss_mib"]),
                            "peak_rss_mib": round(after["peak_rss_mib"]),
                            "cpu_seconds_during_run": round(after["cpu_seconds"]
                                                            - before["cpu_seconds"], 1)}
        result["scheduler"] = scheduler_figures(server_log)
        hollow.send_signal(signal.SIGTERM)
        final = lines.wait(lambda latest: "final" in latest, 120)["final"]
        result["agents"] = {"requests": final["requests"], "polls": final["polls"],
                            "records": final["records"], "errors": final["errors"],
                            "p50_ms": final["p50_ms"], "p99_ms": final["p99_ms"]}
        result["check_agents"] = final["verdict"]
        if args.server_check:
            async def check() -> dict[str, Any]:
                async with Client(ClientConfig(addr=addr, token=token), timeout=600) as c:
                    return await server_view(c, args.services, args.instances)
            result["check_server"] = asyncio.run(check())
        result["server_errors"] = server_errors(server_log)[:5]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    result["ok"] = bool(result.get("check_agents", {}).get("ok")) and \
        result.get("check_server", {"ok": True})["ok"] and \
        result["check_agents"]["instances"] == total
    return result


def show(result: dict[str, Any]) -> None:
    s, a = result["scheduler"], result["agents"]
    print(f"C1M bench: {result['nodes']:,} hollow nodes, {result['services']} services x "
          f"{result['instances_per_service']:,} = {result['instances']:,} instances")
    rows = [
        ("nodes registered in", f"{result['register_seconds']} s"),
        ("scheduler (pure schedule())", f"{s['placements_per_second']:,} placements/s "
         f"({s['placed']:,} in {s['schedule_seconds']} s, {s['passes']} passes)"),
        ("  snapshot / apply_plan", f"{s['snapshot_seconds']} s / {s['apply_seconds']} s"),
        ("applies done", f"{result['apply_seconds']} s (p99 {result['apply_p99_ms']} ms)"),
        ("apply -> first running", f"{result['first_running_seconds']} s"),
        ("apply -> all running (end to end)", f"{result['end_to_end_seconds']} s = "
         f"{result['end_to_end_per_second']:,} instances/s"),
        ("agent requests p50 / p99", f"{a['p50_ms']} / {a['p99_ms']} ms "
         f"({a['requests']:,} requests, {a['polls']:,} answers carrying "
         f"{a['records']:,} records, {a['errors']} errors)"),
        ("GET /healthz p50 / p99 (loop lag)", f"{result['healthz']['p50_ms']} / "
         f"{result['healthz']['p99_ms']} ms"),
        ("server RSS end / peak", f"{result['server']['rss_mib']:,} / "
         f"{result['server']['peak_rss_mib']:,} MiB"),
        ("server / hollow nodes CPU in the run", f"{result['server']['cpu_seconds_during_run']}"
         f" s / {result['hollow_cpu_seconds']} s"),
        ("correctness (agents' view)", "ok" if result["check_agents"]["ok"] else
         json.dumps(result["check_agents"])),
    ]
    if "check_server" in result:
        rows.append(("correctness (server's view)", "ok" if result["check_server"]["ok"]
                     else json.dumps(result["check_server"])))
    for what, value in rows:
        print(f"  {what:<36}{value}")
    spent = list(result.get("time_spent", {}).items())[:12]
    if spent:
        print("  where the server's time went (total seconds, count):")
        for what, figures in spent:
            print(f"    {what:<52}{figures['seconds']:>9} s {figures['count']:>9,}")
    for line in result["server_errors"]:
        print(f"  server error: {line}")
    print("For context:", "; ".join(f"{k} {v}" for k, v in PEERS.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="1,000 nodes, 20 x 1,000")
    preset.add_argument("--c1m", action="store_true", help="10,000 nodes, 100 x 10,000")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--services", type=int)
    parser.add_argument("--instances", type=int, help="instances per service")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per wait")
    parser.add_argument("--per-instance-status", action="store_true",
                        help="agents send one request per transition (today's agent)")
    parser.add_argument("--full-answers", action="store_true",
                        help="long polls answer every record, not what changed (before "
                             "2026-11-22)")
    parser.add_argument("--no-server-check", dest="server_check", action="store_false",
                        help="skip listing every instance from the server afterwards")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    nodes, services, instances = PRESETS["c1m" if args.c1m else "quick"]
    args.nodes = args.nodes or nodes
    args.services = args.services or services
    args.instances = args.instances or instances
    tmp = Path(tempfile.mkdtemp(prefix="corral-c1m-"))
    try:
        result = run(args, tmp)
    finally:
        if not args.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
