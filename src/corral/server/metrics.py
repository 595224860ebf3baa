"""The server's Prometheus metrics (`GET /metrics`, behind the admin token), one
`prometheus_client` registry per server (never the process-global one, so two servers in
one test process do not collide).

Measured as things happen:
- `corral_api_request_duration_seconds{method,route,status}` time to the response's first
  byte (its headers), by route template (`/v1/instances/{instance_id}`), so a followed
  stream counts its set-up, not its lifetime. `RequestTimer` is the ASGI middleware.
- `corral_store_operation_duration_seconds{operation}` every get/range/put/delete/txn of
  the store, through `MeasuredStore` (a wrapper, so the store backends know nothing of it).
- `corral_controller_reconcile_seconds{controller}` one controller pass;
  `corral_scheduling_pass_seconds` the scheduling passes that placed something.
Read when scraped (`render`): `corral_scheduler_placements_total` and
`corral_events_written_total{topic}` (counted by the event feed from every commit,
`server/eventfeed.py`), `corral_pending_instances`, `corral_nodes{state}`,
`corral_instances{state}`, `corral_deployments{status}`, `corral_applications`,
`corral_event_followers`, `corral_event_follower_buffered`,
`corral_event_followers_fell_behind_total`, `corral_store_revision`.

Neighbours: `server/app.py` installs the middleware and wraps the controllers,
`server/main.py` wraps the store, `server/api/system.py` serves `render`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.model.app import Application
from corral.model.deployment import Deployment, DeploymentStatus
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.node import Node, NodeState
from corral.server import keys
from corral.store.base import Compare, KeyValue, Listener, Op, Store, TxnResult, WatchEvent

__all__ = ["MeasuredStore", "RequestTimer", "ServerMetrics"]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Snapshot(Collector):
    """Hands the registry the families `ServerMetrics.render` computed just before."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Histogram(
            "corral_api_request_duration_seconds", "API requests: time to the response's "
            "headers, by method, route template and status.", ("method", "route", "status"),
            buckets=_LATENCY, registry=self.registry)
        self.store_ops = Histogram(
            "corral_store_operation_duration_seconds", "Store operations by kind.",
            ("operation",), buckets=_LATENCY, registry=self.registry)
        self.reconciles = Histogram(
            "corral_controller_reconcile_seconds", "One controller pass, by controller.",
            ("controller",), buckets=_LATENCY, registry=self.registry)
        self.scheduling = Histogram(
            "corral_scheduling_pass_seconds", "Scheduling passes that placed at least one "
            "instance: snapshot, plan and commit.", buckets=_LATENCY, registry=self.registry)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def measure_store(self, store: Store) -> MeasuredStore:
        return MeasuredStore(store, self.store_ops)

    def timed(self, name: str, reconcile: Callable[[Any], Awaitable[float | None]],
              placements: Callable[[], int] | None = None
              ) -> Callable[[Any], Awaitable[float | None]]:
        """`reconcile`, observed in the reconcile histogram (and, given the placement
        count to compare, in the scheduling one when the pass placed something)."""
        histogram = self.reconciles.labels(name)

        async def run(ctx: Any) -> float | None:
            before = placements() if placements else 0
            start = time.perf_counter()
            try:
                return await reconcile(ctx)
            finally:
                took = time.perf_counter() - start
                histogram.observe(took)
                if placements is not None and placements() > before:
                    self.scheduling.observe(took)

        return run

    async def render(self, ctx: Any) -> bytes:
        """The text format, with the cluster's state read now. `ctx`: `ServerContext`."""
        nodes, _ = await ctx.records.scan(Node, keys.NODES)
        instances, _ = await ctx.records.scan(Instance, keys.INSTANCES)
        deployments, _ = await ctx.records.scan(Deployment, keys.DEPLOYMENTS)
        apps, _ = await ctx.records.scan(Application, keys.APPS)
        by_node = Counter(str(n.record.state) for n in nodes)
        by_state = Counter(str(i.record.state) for i in instances)
        by_status = Counter(str(d.record.status) for d in deployments)
        pending = sum(1 for i in instances if i.record.state == InstanceState.PENDING
                      and i.record.desired == DesiredState.RUN)
        feed = ctx.events
        stats = feed.stats()
        families: list[Metric] = [
            _gauge("corral_nodes", "Nodes by state.", "state",
                   {s.value: by_node.get(s.value, 0) for s in NodeState}),
            _gauge("corral_instances", "Instances by state.", "state",
                   {s.value: by_state.get(s.value, 0) for s in InstanceState}),
            _gauge("corral_deployments", "Deployments (kept in history) by status.", "status",
                   {s.value: by_status.get(s.value, 0) for s in DeploymentStatus}),
            GaugeMetricFamily("corral_pending_instances",
                              "Instances waiting for a node.", value=pending),
            GaugeMetricFamily("corral_applications", "Applications.", value=len(apps)),
            CounterMetricFamily("corral_scheduler_placements",
                                "Instances placed on a node since the server started.",
                                value=feed.placements),
            _counter("corral_events_written", "Events committed since the server started, "
                     "by topic.", "topic", feed.written_by_topic()),
            GaugeMetricFamily("corral_event_followers", "Clients following the event "
                              "stream.", value=stats.followers),
            GaugeMetricFamily("corral_event_follower_buffered", "Events queued for "
                              "followers, all together.", value=stats.buffered),
            CounterMetricFamily("corral_event_followers_fell_behind",
                                "Followers cut off because their buffer overflowed.",
                                value=stats.fell_behind),
            GaugeMetricFamily("corral_store_revision", "The store's revision.",
                              value=await ctx.store.revision()),
        ]
        self._snapshot.families = families
        try:
            return generate_latest(self.registry)
        finally:
            self._snapshot.families = []


def _gauge(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)
    return family


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)
    return family


class RequestTimer:
    """ASGI middleware: observes every HTTP request in `corral_api_request_duration_seconds`
    when its response starts. Unrouted paths share the label `unmatched`, so a scan of
    random URLs cannot grow the series without bound."""

    def __init__(self, app: Asgi, metrics: Callable[[], ServerMetrics]) -> None:
        self.app = app
        self.metrics = metrics  # read per request: the context's, even if replaced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics().requests.labels(scope.get("method", ""), route,
                                         str(status)).observe(time.perf_counter() - start)

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except BaseException:
            observe(500)
            raise


class MeasuredStore:
    """A `Store` that times each operation of the store it wraps."""

    def __init__(self, store: Store, histogram: Histogram) -> None:
        self._store = store
        self._h = {op: histogram.labels(op) for op in
                   ("revision", "get", "range", "count", "put", "delete", "txn", "compact",
                    "lease")}

    @property
    def inner(self) -> Store:
        return self._store

    async def revision(self) -> int:
        with self._h["revision"].time():
            return await self._store.revision()

    async def get(self, key: str) -> KeyValue | None:
        with self._h["get"].time():
            return await self._store.get(key)

    async def range(self, prefix: str, *, limit: int = 0,
                    keys_only: bool = False) -> tuple[list[KeyValue], int]:
        with self._h["range"].time():
            return await self._store.range(prefix, limit=limit, keys_only=keys_only)

    async def count(self, prefix: str) -> tuple[int, int]:
        with self._h["count"].time():
            return await self._store.count(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        with self._h["put"].time():
            return await self._store.put(key, value, lease=lease)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        with self._h["delete"].time():
            return await self._store.delete(key, prefix=prefix)

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        with self._h["txn"].time():
            return await self._store.txn(compares, success, failure)

    def watch(self, prefix: str, *,
              start_revision: int = 0) -> AsyncGenerator[WatchEvent, None]:
        return self._store.watch(prefix, start_revision=start_revision)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._store.subscribe(listener)

    async def compact(self, revision: int) -> None:
        with self._h["compact"].time():
            await self._store.compact(revision)

    async def lease_grant(self, lease_id: int, ttl: float, *, now: float) -> None:
        with self._h["lease"].time():
            await self._store.lease_grant(lease_id, ttl, now=now)

    async def lease_keepalive(self, lease_id: int, *, now: float) -> bool:
        with self._h["lease"].time():
            return await self._store.lease_keepalive(lease_id, now=now)

    async def lease_revoke(self, lease_id: int) -> int:
        with self._h["lease"].time():
            return await self._store.lease_revoke(lease_id)

    async def expire_leases(self, *, now: float) -> list[int]:
        with self._h["lease"].time():
            return await self._store.expire_leases(now=now)

    async def close(self) -> None:
        await self._store.close()
