"""Hollow nodes (Kubernetes' kubemark idea): simulated agents that speak the real agent
protocol to a real server but start no process, thousands of them in one asyncio process,
so the control plane (API, store, controllers, scheduler) is measured for real.

Each hollow node does what `agent/agent.py` does, minus the runtime:

```
 register (POST /v1/nodes: capacity, labels, port range, drivers) -> lease, TTL
   |
   +-- heartbeat every TTL/3 (the TTL the server answers, which grows with the cluster);
   |     404 -> register again
   +-- watch GET /v1/nodes/{name}/instances?index=R&wait=W&changes=true&watch=true
   |     (one streamed answer per change, each only the records changed since the last,
   |     merged into what the node holds, as the agent does; `full_answers=True`: the
   |     whole list every time), on each answer reconcile:
         desired=run, scheduled  -> report starting, then running
         desired=stop, not ended -> report stopped
       status reports go in one request per answer (PUT /v1/nodes/{name}/status, the
       batched endpoint the real agent's reporter can use too), or, with
       `batch_status=False`, one `PUT /v1/instances/{id}/status` per transition as
       `agent/reporter.py` sends them today.
```

Connections: httpx's pool checks every one of its connections (expiry, a readability
probe of the socket) on every request, so one pool for 10,000 long polls would cost more
than the server: measured, 64-node pools made registering 5,000 nodes take 465 s, the
hollow process busy in `_assign_requests_to_connections`. Nodes are sharded over
`shard_size`-node clients (8), each one keep-alive pool of HTTP/1.1 connections, three
per node: one held by its watch, one for its reports and one for its heartbeats, which
must never wait behind the others.

What the nodes were told is kept (`assigned`), so `check()` can say afterwards whether any
instance landed on two nodes, any node was given more than its capacity, or two instances
of one node share a port: the correctness half of `bench/c1m.py`.

Used by `bench/c1m.py` (in a process of its own, `python -m corral.testing.hollow`, so the
server's CPU is measured apart) and by `corral sim` (capacity planning against a running
server). Pure parts (`node_labels`, `next_reports`, `check`) are tested on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from corral.client import ApiError, Client, ClientConfig, Unreachable
from corral.client.assignments import merge_assignments
from corral.client.heartbeats import retry_delay
from corral.client.http import tls_context
from corral.gc_tuning import tune_for_large_heaps
from corral.model.node import DEFAULT_PORT_RANGE

__all__ = [
    "FleetSpec", "FleetStats", "HollowFleet", "HollowNode", "Verdict", "check",
    "next_reports", "node_labels", "node_name", "parse_labels",
]

log = logging.getLogger(__name__)

GiB = 1024 ** 3
_ENDED = ("stopped", "lost")
_REPORT_ATTEMPTS = 6  # a batch of status reports that timed out is sent again
_STARTED = ("starting", "running", "healthy")


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    count: int
    prefix: str = "hollow"
    first: int = 0  # index of the first node: several fleets can share a server
    cpu: float = 4.0
    memory: int = 8 * GiB
    # label -> values; node i gets values[i % len(values)] of each label
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    address: str = "127.0.0.1"
    poll_wait: float = 30.0
    batch_status: bool = True
    full_answers: bool = False  # long polls answer the whole list, not what changed
    shard_size: int = 8  # nodes per HTTP client (connection pool): see the docstring
    register_concurrency: int = 32


def parse_labels(texts: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`["zone=a,b,c", "disk=ssd"]` -> (("zone", ("a", "b", "c")), ("disk", ("ssd",))).
    Raises ValueError naming the bad one."""
    out: dict[str, tuple[str, ...]] = {}
    for text in texts:
        for part in text.split(";"):
            key, sep, values = part.strip().partition("=")
            items = tuple(v.strip() for v in values.split(",") if v.strip())
            if not sep or not key.strip() or not items:
                raise ValueError(f"label {part!r}: expected KEY=VALUE[,VALUE...]")
            out[key.strip()] = items
    return tuple(sorted(out.items()))


def node_name(spec: FleetSpec, index: int) -> str:
    return f"{spec.prefix}-{index:05d}"


def node_labels(spec: FleetSpec, index: int) -> dict[str, str]:
    """Round-robin over each label's values, so values are spread evenly over the nodes."""
    return {key: values[index % len(values)] for key, values in spec.labels}


@dataclass(frozen=True, slots=True)
class Held:
    """What a node was told one instance holds: for the correctness check."""

    cpu_milli: int
    memory: int
    ports: tuple[int, ...]


def next_reports(instances: Sequence[Mapping[str, Any]],
                 handled: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """The status reports one long-poll answer calls for, per instance in answer order:
    (id, states to report in order). `handled`: id -> the last state this node already
    reported (or is reporting) for it, so an answer that still shows an older state (the
    report is not committed yet) does not cause the same report twice."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for inst in instances:
        iid, state, done = str(inst["id"]), str(inst["state"]), handled.get(str(inst["id"]))
        if inst.get("desired") == "stop":
            if state not in _ENDED and done != "stopped":
                out.append((iid, ("stopped",)))
        elif done is None and state in ("scheduled", "fetching"):
            out.append((iid, ("starting", "running")))
        elif done is None and state in ("starting",):
            out.append((iid, ("running",)))
    return out


@dataclass(slots=True)
class HollowNode:
    """One simulated agent's state. Mutable scratch state of the fleet's event loop."""

    name: str
    labels: dict[str, str]
    lease_id: int = 0
    ttl: float = 10.0
    heartbeat_interval: float = 10.0 / 3
    index: int = 0
    records: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # live, by id
    handled: dict[str, str] = field(default_factory=dict)
    assigned: dict[str, Held] = field(default_factory=dict)
    registered: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class FleetStats:
    registered: int = 0
    running: int = 0  # instances whose `running` report the server accepted
    stopped: int = 0
    reports: int = 0  # instance transitions reported
    requests: int = 0  # agent protocol requests other than watches
    polls: int = 0  # assignment answers (watch lines or long-poll answers)
    records: int = 0  # instance records those answers carried
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, requests (not polls)
    first_running: float | None = None  # time.time() of the first and the latest running
    last_running: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The correctness of what the nodes were told (see `check`)."""

    instances: int
    on_two_nodes: tuple[str, ...] = ()
    over_capacity: tuple[str, ...] = ()
    duplicate_ports: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.on_two_nodes or self.over_capacity or self.duplicate_ports)


def check(nodes: Sequence[HollowNode], *, cpu: float, memory: int) -> Verdict:
    """Every instance on one node only, no node given more cpu or memory than its capacity,
    no port held twice on a node: over what the long polls handed out (live instances)."""
    seen: dict[str, str] = {}
    twice: set[str] = set()
    over: list[str] = []
    dup: list[str] = []
    capacity_cpu = round(cpu * 1000)
    for node in nodes:
        used_cpu = used_memory = 0
        ports: set[int] = set()
        for iid, held in node.assigned.items():
            if seen.setdefault(iid, node.name) != node.name:
                twice.add(iid)
            used_cpu += held.cpu_milli
            used_memory += held.memory
            for port in held.ports:
                if port in ports:
                    dup.append(f"{node.name}:{port}")
                ports.add(port)
        if used_cpu > capacity_cpu or used_memory > memory:
            over.append(node.name)
    return Verdict(instances=len(seen), on_two_nodes=tuple(sorted(twice)),
                   over_capacity=tuple(over), duplicate_ports=tuple(dup))


class HollowFleet:
    """`spec.count` hollow nodes against the server at `config.addr`, until cancelled."""

    def __init__(self, config: ClientConfig, spec: FleetSpec, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`transport`: one for every node (tests: the in-process server's ASGI app)."""
        self.config = config
        self.spec = spec
        self._transport = transport
        self.stats = FleetStats()
        self.nodes = [HollowNode(name=node_name(spec, i), labels=node_labels(spec, i))
                      for i in range(spec.first, spec.first + spec.count)]
        self._clients: list[Client] = []
        self._batch = spec.batch_status
        self.changed = asyncio.Event()  # set whenever `stats.running` moves

    def _client_for(self, position: int) -> Client:
        shard = position // self.spec.shard_size
        if self._transport is not None:
            shard = 0
        while len(self._clients) <= shard:
            if self._transport is not None:
                self._clients.append(Client(self.config, transport=self._transport,
                                            timeout=self.spec.poll_wait + 60))
                break
            # Three per node: its watch (held open), its reports and its heartbeat. Fewer,
            # and heartbeats queue behind reports in the pool until their lease expires.
            size = 3 * self.spec.shard_size
            limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
            verify: Any = tls_context(self.config.cacert) \
                if self.config.addr.startswith("https://") else False
            transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits, retries=1)
            self._clients.append(Client(self.config, transport=transport,
                                        timeout=self.spec.poll_wait + 60))
        return self._clients[shard]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)
        self._clients.clear()

    def _error(self, exc: BaseException) -> None:
        """Count an error; log the first few and then one in a thousand (stderr)."""
        self.stats.errors += 1
        if self.stats.errors <= 20 or self.stats.errors % 1000 == 0:
            cause = exc.__cause__
            log.warning("hollow nodes: error %d: %s: %s%s", self.stats.errors,
                        type(exc).__name__, exc,
                        f" ({type(cause).__name__})" if cause is not None else "")

    async def _timed(self, call: Any) -> Any:
        start = time.perf_counter()
        try:
            return await call
        finally:
            self.stats.latencies.append(time.perf_counter() - start)
            self.stats.requests += 1

    async def register(self, position: int) -> None:
        node, client = self.nodes[position], self._client_for(position)
        body = {"name": node.name, "address": self.spec.address, "agent_url": "",
                "capacity": {"cpu": self.spec.cpu, "memory": self.spec.memory},
                "labels": node.labels, "port_range": list(self.spec.port_range),
                "reserved_ports": [], "drivers": {"process": ""},
                "default_driver": "process", "attributes": {"hollow": "true"}}
        delay = 0.2
        while True:
            try:
                answer = await self._timed(client.register_node(body))
                break
            except (Unreachable, ApiError) as exc:
                self._error(exc)
                if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 409:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        node.lease_id = int(answer["lease_id"])
        node.ttl = float(answer["ttl"])
        node.heartbeat_interval = float(answer["heartbeat_interval"])
        if not node.registered.is_set():
            self.stats.registered += 1
        node.registered.set()

    async def register_all(self, then: Any = None) -> None:
        """Register every node, `register_concurrency` at a time; `then(position)` right
        after each node's own registration (as an agent starts heartbeating at once)."""
        queue = iter(range(len(self.nodes)))

        async def worker() -> None:
            for position in queue:
                await self.register(position)
                if then is not None:
                    then(position)

        await asyncio.gather(*(worker() for _ in range(self.spec.register_concurrency)))

    async def _heartbeat(self, position: int) -> None:
        node, client = self.nodes[position], self._client_for(position)
        # The first beat comes somewhere within the first interval, so thousands of nodes
        # registered in a burst do not all beat in the same second ever after.
        delay = node.heartbeat_interval * ((position % 97) + 1) / 97
        retry: float | None = None  # as the real agent (client/heartbeats.py)
        while True:
            await asyncio.sleep(delay)
            try:
                answer = await self._timed(client.heartbeat(node.name, node.lease_id))
                retry = None
                node.ttl = float(answer.get("ttl", node.ttl))
                node.heartbeat_interval = float(answer.get("heartbeat_interval",
                                                           node.heartbeat_interval))
            except ApiError as exc:
                self._error(exc)
                retry = retry_delay(retry, node.heartbeat_interval) if exc.status >= 500 \
                    else None
                if exc.status == 404:
                    await self.register(position)
            except Unreachable as exc:
                self._error(exc)
                retry = retry_delay(retry, node.heartbeat_interval)
            delay = node.heartbeat_interval if retry is None else retry

    async def _watch(self, position: int) -> None:
        node, client = self.nodes[position], self._client_for(position)
        delay = 0.2
        while True:
            try:
                async for answer in client.watch_node_instances(
                        node.name, index=node.index, wait=self.spec.poll_wait,
                        changes=not self.spec.full_answers):
                    delay = 0.2
                    if not await self._take(position, answer):
                        break  # the cache and the server disagree: the whole list again
            except (Unreachable, ApiError) as exc:
                self._error(exc)
                if isinstance(exc, ApiError) and exc.status == 404:
                    await self.register(position)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _take(self, position: int, answer: Mapping[str, Any]) -> bool:
        """One answer of the node's watch: keep it, report what the agent would; whether
        the node's list is complete."""
        node = self.nodes[position]
        self.stats.polls += 1
        self.stats.records += len(answer["instances"])
        node.records, complete = merge_assignments(node.records, answer, lambda data: data)
        node.index = int(answer["index"]) if complete else 0
        instances = list(node.records.values())
        self._remember(node, instances)
        reports = next_reports(instances, node.handled)
        if reports:
            await self._send(position, reports)
        return complete

    def _remember(self, node: HollowNode, instances: Sequence[Mapping[str, Any]]) -> None:
        """The answer is the node's whole list of live instances: keep what each holds."""
        assigned: dict[str, Held] = {}
        for inst in instances:
            if inst["state"] in _ENDED:
                continue
            res = inst["resources"]
            assigned[inst["id"]] = Held(cpu_milli=round(float(res["cpu"]) * 1000),
                                        memory=int(res["memory"]),
                                        ports=tuple(sorted(inst["ports"].values())))
        node.assigned = assigned
        for iid in [i for i in node.handled if i not in assigned]:
            del node.handled[iid]

    async def _send(self, position: int,
                    reports: list[tuple[str, tuple[str, ...]]]) -> None:
        node, client = self.nodes[position], self._client_for(position)
        for iid, states in reports:
            node.handled[iid] = states[-1]
        if self._batch:
            body = [{"id": iid, "state": state} for iid, states in reports for state in states]
            delay = 0.2
            answer: dict[str, Any] | None = None
            for attempt in range(_REPORT_ATTEMPTS):
                try:
                    answer = await self._timed(client.report_statuses(node.name, body))
                    break
                except Unreachable as exc:
                    # A timed-out batch may have been committed all the same: the server
                    # then has nothing new to tell this node, and no answer would ask for
                    # the reports again. Send it again (a report of the state an instance
                    # is already in is accepted, a step back refused, per instance).
                    self._error(exc)
                    if attempt + 1 < _REPORT_ATTEMPTS:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                except ApiError as exc:
                    self._error(exc)
                    if exc.status in (404, 405):
                        self._batch = False  # an older server: one report per transition
                    break
            if answer is None:
                for iid, _ in reports:
                    node.handled.pop(iid, None)  # the next answer asks again
                return
            results = answer.get("results", [])
            accepted = [r["id"] for r in results if r.get("error") is None]
            self._count(reports, set(accepted))
            return
        accepted_ids: set[str] = set()

        async def one(iid: str, states: tuple[str, ...]) -> None:
            for state in states:
                try:
                    await self._timed(client.report_status(iid, {"node": node.name,
                                                                 "state": state}))
                except (Unreachable, ApiError) as exc:
                    self._error(exc)
                    node.handled.pop(iid, None)
                    return
            accepted_ids.add(iid)

        await asyncio.gather(*(one(iid, states) for iid, states in reports))
        self._count(reports, accepted_ids)

    def _count(self, reports: list[tuple[str, tuple[str, ...]]], accepted: set[str]) -> None:
        now = time.time()
        for iid, states in reports:
            if iid not in accepted:
                continue
            self.stats.reports += len(states)
            if states[-1] == "running":
                self.stats.running += 1
                self.stats.first_running = self.stats.first_running or now
                self.stats.last_running = now
            elif states[-1] == "stopped":
                self.stats.stopped += 1
        self.changed.set()

    async def run(self) -> None:
        """Register every node, then heartbeat and watch for all of them until cancelled."""
        tasks: list[asyncio.Task[None]] = []

        def start(position: int) -> None:
            tasks.extend(asyncio.create_task(loop(position))
                         for loop in (self._heartbeat, self._watch))

        try:
            await self.register_all(then=start)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def verdict(self) -> Verdict:
        return check(self.nodes, cpu=self.spec.cpu, memory=self.spec.memory)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(fleet: HollowFleet) -> dict[str, Any]:
    """The fleet's figures as one JSON-ready object."""
    stats, verdict = fleet.stats, fleet.verdict()
    return {
        "nodes": len(fleet.nodes), "registered": stats.registered,
        "running": stats.running, "stopped": stats.stopped, "reports": stats.reports,
        "requests": stats.requests, "polls": stats.polls, "records": stats.records,
        "errors": stats.errors,
        "p50_ms": _ms(_percentile(stats.latencies, 0.50)),
        "p99_ms": _ms(_percentile(stats.latencies, 0.99)),
        "first_running": stats.first_running, "last_running": stats.last_running,
        "verdict": {"ok": verdict.ok, "instances": verdict.instances,
                    "on_two_nodes": list(verdict.on_two_nodes[:20]),
                    "over_capacity": list(verdict.over_capacity[:20]),
                    "duplicate_ports": list(verdict.duplicate_ports[:20])},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def _serve(config: ClientConfig, spec: FleetSpec, interval: float) -> None:
    """The `python -m corral.testing.hollow` process: run the fleet, print one JSON line
    per `interval` (and when all nodes are registered) until SIGTERM/SIGINT, then a final
    line with the correctness verdict."""
    fleet = HollowFleet(config, spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(fleet.run())

    def emit(kind: str) -> None:
        if kind == "final":
            line = {"event": kind, "time": time.time(), **summary(fleet)}
        else:  # cheap: no verdict, no percentiles (both walk everything)
            stats = fleet.stats
            line = {"event": kind, "time": time.time(), "registered": stats.registered,
                    "running": stats.running, "stopped": stats.stopped,
                    "errors": stats.errors, "first_running": stats.first_running,
                    "last_running": stats.last_running}
        print(json.dumps(line), flush=True)

    announced = False
    while not stop.is_set() and not task.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if not announced and fleet.stats.registered == len(fleet.nodes):
            announced = True
            emit("registered")
        emit("progress")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    emit("final")
    await fleet.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run hollow nodes against a corral server.")
    parser.add_argument("--server", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--cacert", default="")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--prefix", default="hollow")
    parser.add_argument("--cpu", type=float, default=4.0)
    parser.add_argument("--memory", type=int, default=8 * GiB)
    parser.add_argument("--labels", action="append", default=[])
    parser.add_argument("--poll-wait", type=float, default=30.0)
    parser.add_argument("--per-instance-status", action="store_true")
    parser.add_argument("--full-answers", action="store_true",
                        help="long polls answer the whole list (the older protocol)")
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    spec = FleetSpec(count=args.nodes, first=args.first, prefix=args.prefix, cpu=args.cpu,
                     memory=args.memory, labels=parse_labels(args.labels),
                     poll_wait=args.poll_wait, batch_status=not args.per_instance_status,
                     full_answers=args.full_answers)
    config = ClientConfig(addr=args.server, token=args.token, cacert=args.cacert)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        tune_for_large_heaps()  # a fleet keeps every node's assignments (gc_tuning.py)
        asyncio.run(_serve(config, spec, args.interval))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
