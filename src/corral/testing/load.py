"""A small, bounded HTTP load generator for zero-downtime tests and benchmarks: a few
worker threads GET one URL over and over, each either on one keep-alive connection
(reopened when the server closes it, as any HTTP/1.1 client does) or on a fresh
connection per request, and record every request's start, latency, status and body.

`LoadGenerator` is the effect (threads, sockets, `time.monotonic`); `summarize` and
`percentile` are pure functions over the recorded `Sample`s, tested on their own.
Used by `tests/e2e/test_webshop.py` and `bench/rolling_update.py` to drive traffic
through the webshop example's haproxy while its web tier is rolled or scaled.

Threads and the standard library's `http.client`, not asyncio: the callers are
synchronous tests and scripts, and a load this size (tens of requests a second) gains
nothing from an event loop. Every run is bounded: by a request count, by `stop()`, and
always by `max_duration`, so a forgotten generator cannot run on.

A failure is anything but a complete response with a status below 500 (a refused or
reset connection, a timeout, a 502/503 from the proxy), recorded with its error text. A
request sent on a reused keep-alive connection that the server had already closed is a
failure too: the zero-downtime tests exist to show that the proxy never does that.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["LoadGenerator", "LoadSummary", "Sample", "percentile", "summarize"]

BODY_LIMIT = 4096  # bytes of each body kept: enough for a version and a counter


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One request as the client saw it. `start` is `time.monotonic()` when it was sent."""

    worker: int
    keepalive: bool  # the worker's mode, not whether this request reused a connection
    start: float
    latency: float
    status: int | None = None
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 500


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSummary:
    requests: int
    failed: int
    p50: float | None  # seconds, over the successful requests
    p99: float | None
    errors: dict[str, int] = field(default_factory=dict)  # error or status -> count


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks, as
    numpy's default; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: Iterable[Sample]) -> LoadSummary:
    samples = list(samples)
    latencies = [s.latency for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = s.error or f"HTTP {s.status}"
            errors[key] = errors.get(key, 0) + 1
    return LoadSummary(requests=len(samples), failed=sum(errors.values()),
                       p50=percentile(latencies, 50), p99=percentile(latencies, 99),
                       errors=dict(sorted(errors.items())))


class LoadGenerator:
    """`workers` threads GET `url`; the first `keepalive` of them hold one keep-alive
    connection each, the others open a fresh connection per request. Each worker waits
    `interval` seconds between its requests (0: back to back), so the offered load is
    about `workers / (interval + latency)` requests a second.

    Use as a context manager (`with LoadGenerator(...) as load: ...`), or `start()`
    then `stop()` (or `join()` when bounded by `requests`). `samples()` may be read at
    any time; it is a copy."""

    def __init__(self, url: str, *, workers: int = 4, keepalive: int | None = None,
                 interval: float = 0.01, timeout: float = 5.0, requests: int | None = None,
                 max_duration: float = 600.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL, got {url!r}")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.workers = workers
        self.keepalive = workers // 2 if keepalive is None else min(keepalive, workers)
        self.interval = interval
        self.timeout = timeout
        self.limit = requests
        self.max_duration = max_duration
        self.headers = dict(headers or {})
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._sent = 0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("already started")
        deadline = time.monotonic() + self.max_duration
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, args=(n, n < self.keepalive, deadline),
                                      name=f"load-{n}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> list[Sample]:
        """Stops the workers after their current request; returns every sample."""
        self._stop.set()
        return self.join()

    def join(self, timeout: float | None = None) -> list[Sample]:
        for thread in self._threads:
            thread.join(timeout)
        return self.samples()

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def count(self) -> int:
        with self._lock:
            return len(self._samples)

    def wait_for(self, more: int, timeout: float = 60.0) -> None:
        """Blocks until `more` further samples are recorded (a hang guard after
        `timeout`, then AssertionError)."""
        target = self.count() + more
        deadline = time.monotonic() + timeout
        while self.count() < target:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self._threads):
                raise AssertionError(f"load: {self.count()} samples, wanted {target}")
            time.sleep(0.02)

    def _claim(self) -> bool:
        with self._lock:
            if self.limit is not None and self._sent >= self.limit:
                return False
            self._sent += 1
            return True

    def _run(self, worker: int, keepalive: bool, deadline: float) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set() and time.monotonic() < deadline and self._claim():
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port,
                                                      timeout=self.timeout)
                sample, reusable = self._one(conn, worker, keepalive)
                with self._lock:
                    self._samples.append(sample)
                if not (keepalive and reusable):
                    conn.close()
                    conn = None
                if self.interval:
                    self._stop.wait(self.interval)
        finally:
            if conn is not None:
                conn.close()

    def _one(self, conn: http.client.HTTPConnection, worker: int, keepalive: bool
             ) -> tuple[Sample, bool]:
        headers = dict(self.headers)
        if not keepalive:
            headers.setdefault("Connection", "close")
        start = time.monotonic()
        try:
            conn.request("GET", self.path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            error = type(e).__name__ + (f": {e}" if str(e) else "")
            if isinstance(e, socket.timeout | TimeoutError):
                error = f"timeout after {self.timeout}s"
            return Sample(worker=worker, keepalive=keepalive, start=start,
                          latency=time.monotonic() - start, error=error), False
        sample = Sample(worker=worker, keepalive=keepalive, start=start,
                        latency=time.monotonic() - start, status=response.status,
                        body=body[:BODY_LIMIT])
        return sample, not response.will_close
