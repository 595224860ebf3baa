"""The load generator (`corral.testing.load`): percentiles and summaries as pure
functions, then real traffic against a local HTTP/1.1 server: bounded by a count or by
stop(), keep-alive workers holding one connection while fresh ones open one per request,
bodies kept, and every kind of failure (a 503, a connection closed without an answer, a
refused connection, a timeout) recorded as one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from corral.testing.cluster import free_port
from corral.testing.load import LoadGenerator, Sample, percentile, summarize


def sample(latency: float, *, status: int | None = 200, error: str | None = None) -> Sample:
    return Sample(worker=0, keepalive=False, start=0.0, latency=latency, status=status,
                  error=error)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    assert percentile([float(i) for i in range(101)], 99) == 99.0
    with pytest.raises(ValueError, match="within 0-100"):
        percentile([1.0], 101)


def test_summary_counts_failures_by_cause_and_times_only_successes() -> None:
    samples = [sample(0.01), sample(0.03), sample(0.02, status=404),
               sample(9.0, status=503), sample(9.0, status=None, error="ConnectionResetError"),
               sample(9.0, status=502)]
    summary = summarize(samples)
    assert (summary.requests, summary.failed) == (6, 3)
    assert summary.errors == {"ConnectionResetError": 1, "HTTP 502": 1, "HTTP 503": 1}
    assert summary.p50 == 0.02 and summary.p99 == pytest.approx(0.0298)
    assert [s.ok for s in samples] == [True, True, True, False, False, False]


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.lock = threading.Lock()
        self.mode = "ok"  # ok | 503 | drop | slow

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out closed its end: expected here

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        mode = self.server.mode
        if mode == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "slow":
            threading.Event().wait(1.0)
        status = 503 if mode == "503" else 200
        body = f"{self.path} {status}".encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def url(server: Server, path: str = "/shop") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_a_count_bounds_the_run_and_keepalive_workers_reuse_their_connection(
        server: Server) -> None:
    load = LoadGenerator(url(server, "/shop?x=1"), workers=4, keepalive=2, interval=0,
                         requests=200)
    load.start()
    samples = load.join(timeout=60)
    assert len(samples) == 200
    assert all(s.ok and s.status == 200 and s.body == b"/shop?x=1 200" for s in samples)
    fresh = sum(1 for s in samples if not s.keepalive)
    # One connection per fresh request, one per keep-alive worker.
    assert server.connections == fresh + 2
    assert {s.worker for s in samples if s.keepalive} == {0, 1}
    assert {s.worker for s in samples if not s.keepalive} == {2, 3}
    assert summarize(samples).failed == 0


def test_stop_ends_an_unbounded_run(server: Server) -> None:
    with LoadGenerator(url(server), workers=2, interval=0.005) as load:
        load.wait_for(20)
    count = load.count()
    assert count >= 20
    assert load.samples() == load.stop() and load.count() == count  # nothing after stop


def test_max_duration_ends_a_run_nobody_stops(server: Server) -> None:
    load = LoadGenerator(url(server), workers=1, interval=0.01, max_duration=0.3)
    load.start()
    samples = load.join(timeout=30)
    assert samples and all(s.ok for s in samples)


@pytest.mark.parametrize(("mode", "error"), [
    ("503", "HTTP 503"),
    ("drop", "RemoteDisconnected: Remote end closed connection without response"),
])
def test_server_failures_are_recorded(server: Server, mode: str, error: str) -> None:
    server.mode = mode
    load = LoadGenerator(url(server), workers=2, keepalive=1, interval=0, requests=10)
    load.start()
    summary = summarize(load.join(timeout=30))
    assert (summary.requests, summary.failed, summary.errors) == (10, 10, {error: 10})


def test_a_refused_connection_and_a_timeout_are_failures(server: Server) -> None:
    refused = LoadGenerator(f"http://127.0.0.1:{free_port()}/", workers=1, requests=3,
                            interval=0)
    refused.start()
    assert summarize(refused.join(timeout=30)).errors == {
        "ConnectionRefusedError: [Errno 111] Connection refused": 3}
    server.mode = "slow"
    slow = LoadGenerator(url(server), workers=1, requests=1, timeout=0.2)
    slow.start()
    [timed_out] = slow.join(timeout=30)
    assert not timed_out.ok and timed_out.error == "timeout after 0.2s"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="http:// URL"):
        LoadGenerator("https://127.0.0.1/")
    with pytest.raises(ValueError, match="at least 1"):
        LoadGenerator("http://127.0.0.1/", workers=0)
