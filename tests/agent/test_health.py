"""Health checks: the pure transition logic, the checker's schedule on a FakeClock with
scripted probes (grace, interval, failures threshold, recovery), each probe against real
local servers, ports and commands, and a command run inside real instances of the
`process` and `sandbox` drivers (`SupervisedDriver.exec_command`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from corral.agent.drivers.base import Driver, DriverError, TaskHandle
from corral.agent.drivers.process import ProcessDriver
from corral.agent.drivers.sandbox import SandboxDriver
from corral.agent.drivers.supervised import SupervisedDriver
from corral.agent.health import (
    CommandProbe,
    HealthChecker,
    HealthStatus,
    HealthTracker,
    HttpProbe,
    ProbeResult,
    TcpProbe,
    Transition,
    make_probe,
)
from corral.model.application import HealthSpec
from corral.testing.cgroups import real_cgroups
from corral.testing.clock import FakeClock
from tests.agent.drivers.conformance import Harness, free_port

pytestmark = pytest.mark.timeout(60)

OK = ProbeResult(ok=True, detail="http /healthz: 200")
BAD = ProbeResult(ok=False, detail="http /healthz: 503")


# --- the decision ---------------------------------------------------------------------

def test_one_success_makes_an_unknown_instance_healthy() -> None:
    tracker, change = HealthTracker(failures_needed=3).observe(OK)
    assert tracker.status == HealthStatus.HEALTHY
    assert change == Transition(status=HealthStatus.HEALTHY, reason="http /healthz: 200")
    tracker, change = tracker.observe(OK)
    assert change is None and tracker.status == HealthStatus.HEALTHY


def test_unhealthy_only_after_the_threshold_of_failures_in_a_row() -> None:
    tracker, _ = HealthTracker(failures_needed=3).observe(OK)
    for _ in range(2):
        tracker, change = tracker.observe(BAD)
        assert change is None and tracker.status == HealthStatus.HEALTHY
    tracker, change = tracker.observe(BAD)
    assert tracker.status == HealthStatus.UNHEALTHY
    assert change == Transition(status=HealthStatus.UNHEALTHY,
                                reason="http /healthz: 503 (3 checks in a row)")
    # reported once: further failures change nothing
    tracker, change = tracker.observe(BAD)
    assert change is None and tracker.failures == 4


def test_a_success_resets_the_count_of_failures() -> None:
    tracker = HealthTracker(failures_needed=2)
    tracker, _ = tracker.observe(BAD)
    tracker, _ = tracker.observe(OK)
    tracker, change = tracker.observe(BAD)
    assert change is None and tracker.status == HealthStatus.HEALTHY and tracker.failures == 1


def test_an_instance_never_healthy_becomes_unhealthy_and_recovers() -> None:
    tracker, change = HealthTracker(failures_needed=1).observe(BAD)
    assert change == Transition(status=HealthStatus.UNHEALTHY, reason="http /healthz: 503")
    tracker, change = tracker.observe(OK)
    assert tracker.status == HealthStatus.HEALTHY and tracker.failures == 0
    assert change is not None and change.status == HealthStatus.HEALTHY


# --- the schedule, on a FakeClock ------------------------------------------------------

class Script:
    """A probe answering from a list (the last answer repeats), recording call times."""

    def __init__(self, clock: FakeClock, answers: Sequence[ProbeResult]) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.calls: list[float] = []

    async def __call__(self) -> ProbeResult:
        self.calls.append(self.clock.monotonic())
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


async def run_checker(clock: FakeClock, spec: HealthSpec, answers: Sequence[ProbeResult]
                      ) -> tuple[HealthChecker, Script, list[tuple[float, Transition]]]:
    probe = Script(clock, answers)
    changes: list[tuple[float, Transition]] = []
    checker = HealthChecker(spec=spec, probe=probe, clock=clock,
                            on_change=lambda t: changes.append((clock.monotonic(), t)))
    checker.start()
    await until(lambda: clock.sleepers == 1)  # the checker waits out its grace
    await clock.advance(0)
    return checker, probe, changes


async def test_no_check_during_grace_then_one_every_interval(clock: FakeClock) -> None:
    spec = HealthSpec(http="/healthz", interval=2.0, grace=5.0, failures=3)
    checker, probe, changes = await run_checker(clock, spec, [OK])
    await clock.advance(4.9)
    assert probe.calls == [] and changes == []
    await clock.advance(0.1)
    assert probe.calls == [5.0]
    assert changes == [(5.0, Transition(status=HealthStatus.HEALTHY,
                                        reason="http /healthz: 200"))]
    await clock.advance(6.0)
    assert probe.calls == [5.0, 7.0, 9.0, 11.0]
    assert len(changes) == 1  # steady health reports nothing
    await checker.close()
    await clock.advance(10.0)
    assert len(probe.calls) == 4  # closed: no more checks


async def test_failures_threshold_then_recovery(clock: FakeClock) -> None:
    spec = HealthSpec(tcp="main", interval=1.0, grace=0.0, failures=3)
    failing = ProbeResult(ok=False, detail="tcp main: connection refused")
    checker, _, changes = await run_checker(
        clock, spec, [OK, failing, failing, failing, failing, OK])
    await clock.advance(2.0)  # checks at 0, 1, 2: healthy, then 2 failures
    assert [c.status for _, c in changes] == [HealthStatus.HEALTHY]
    await clock.advance(1.0)  # third failure in a row
    assert changes[-1] == (3.0, Transition(
        status=HealthStatus.UNHEALTHY, reason="tcp main: connection refused (3 checks in a row)"))
    await clock.advance(1.0)  # a fourth: still unhealthy, nothing new
    assert len(changes) == 2
    await clock.advance(1.0)
    assert changes[-1] == (5.0, Transition(status=HealthStatus.HEALTHY,
                                           reason="http /healthz: 200"))
    assert checker.tracker.status == HealthStatus.HEALTHY
    await checker.close()


async def test_a_probe_that_raises_counts_as_a_failure(clock: FakeClock) -> None:
    async def broken() -> ProbeResult:
        raise RuntimeError("boom")

    changes: list[Transition] = []
    checker = HealthChecker(spec=HealthSpec(tcp="main", grace=0.0, failures=1),
                            probe=broken, clock=clock, on_change=changes.append)
    checker.start()
    await until(lambda: clock.sleepers == 1)  # the checker waits out its grace
    await clock.advance(0)
    await until(lambda: bool(changes))
    assert changes == [Transition(status=HealthStatus.UNHEALTHY, reason="tcp main: boom")]
    await checker.close()


async def test_an_attempt_is_bounded_by_the_timeout(clock: FakeClock) -> None:
    async def hangs() -> ProbeResult:
        await asyncio.sleep(30)
        return OK

    changes: list[Transition] = []
    spec = HealthSpec(http="/slow", grace=0.0, timeout=0.05, failures=1)
    checker = HealthChecker(spec=spec, probe=hangs, clock=clock, on_change=changes.append)
    checker.start()
    await until(lambda: clock.sleepers == 1)
    await clock.advance(0)
    await until(lambda: bool(changes))
    assert changes == [Transition(status=HealthStatus.UNHEALTHY,
                                  reason="http /slow: timed out after 0.05s")]
    await checker.close()


# --- probes against real servers -------------------------------------------------------

@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A local HTTP server answering each request with the next status of its list."""
    statuses: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        code = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, statuses


async def test_http_probe_accepts_200_to_399_only(http_server: tuple[int, list[int]]
                                                  ) -> None:
    port, statuses = http_server
    statuses.extend([200, 302, 500, 404])
    probe = HttpProbe(url=f"http://127.0.0.1:{port}/healthz", path="/healthz", timeout=2.0)
    assert await probe() == ProbeResult(ok=True, detail="http /healthz: 200")
    assert await probe() == ProbeResult(ok=True, detail="http /healthz: 302")
    assert await probe() == ProbeResult(ok=False, detail="http /healthz: 500")
    assert await probe() == ProbeResult(ok=False, detail="http /healthz: 404")


async def test_http_probe_on_a_closed_port() -> None:
    port = free_port()
    probe = HttpProbe(url=f"http://127.0.0.1:{port}/", path="/", timeout=2.0)
    assert await probe() == ProbeResult(ok=False, detail="http /: connection refused")


async def test_checker_with_a_real_http_server_goes_healthy_then_unhealthy(
        http_server: tuple[int, list[int]], clock: FakeClock) -> None:
    port, statuses = http_server
    statuses.extend([200, 500])
    spec = HealthSpec(http="/healthz", port="http", grace=0.0, interval=1.0, failures=2)
    probe = make_probe(spec, host="127.0.0.1", ports={"http": port}, port_names=["http"],
                       driver=ProcessDriver(), handle=_no_handle())
    changes: list[Transition] = []
    checker = HealthChecker(spec=spec, probe=probe, clock=clock, on_change=changes.append)
    checker.start()
    await until(lambda: clock.sleepers == 1)
    await clock.advance(0)
    await until(lambda: len(changes) == 1 and clock.sleepers == 1)
    await clock.advance(1.0)  # the 500 (one failure: still healthy)
    await until(lambda: clock.sleepers == 1)
    await clock.advance(1.0)
    await until(lambda: len(changes) == 2)
    assert changes == [
        Transition(status=HealthStatus.HEALTHY, reason="http /healthz: 200"),
        Transition(status=HealthStatus.UNHEALTHY, reason="http /healthz: 500 (2 checks in a row)"),
    ]
    await checker.close()


async def test_tcp_probe_connects_or_is_refused() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await TcpProbe(host="127.0.0.1", port=port, name="main")() == \
            ProbeResult(ok=True, detail="tcp main: connected")
    closed = free_port()
    assert await TcpProbe(host="127.0.0.1", port=closed, name="main")() == \
        ProbeResult(ok=False, detail="tcp main: connection refused")


def test_make_probe_picks_the_port() -> None:
    handle = _no_handle()
    driver = ProcessDriver()
    http = make_probe(HealthSpec(http="/h"), host="10.0.0.5", ports={"web": 1, "admin": 2},
                      port_names=["web", "admin"], driver=driver, handle=handle)
    assert http == HttpProbe(url="http://10.0.0.5:1/h", path="/h", timeout=2.0)
    other = make_probe(HealthSpec(http="/h", port="admin"), host="::1",
                       ports={"web": 1, "admin": 2}, port_names=["web", "admin"],
                       driver=driver, handle=handle)
    assert other == HttpProbe(url="http://[::1]:2/h", path="/h", timeout=2.0)
    tcp = make_probe(HealthSpec(tcp="admin"), host="h", ports={"admin": 2},
                     port_names=["admin"], driver=driver, handle=handle)
    assert tcp == TcpProbe(host="h", port=2, name="admin")


async def test_make_probe_without_the_port_always_fails() -> None:
    probe = make_probe(HealthSpec(tcp="main"), host="h", ports={}, port_names=["main"],
                       driver=ProcessDriver(), handle=_no_handle())
    assert await probe() == ProbeResult(
        ok=False, detail="tcp main: the instance has no port 'main'")


def host_command(argv: Sequence[str], env: Mapping[str, str] | None = None
                 ) -> CommandProbe:
    async def prepare() -> tuple[Sequence[str], Mapping[str, str], str]:
        return argv, env or {"PATH": os.defpath}, "/"

    return CommandProbe(prepare=prepare, label=" ".join(argv))


async def test_command_probe_exit_codes_and_output() -> None:
    assert (await host_command(["sh", "-c", "exit 0"])()).ok
    result = await host_command(["sh", "-c", "echo starting; echo 'db down' >&2; exit 1"])()
    assert result == ProbeResult(
        ok=False, detail="command sh -c echo starting; echo 'db down' >&2; exit 1: exit 1: "
                         "db down")
    missing = await host_command(["/nonexistent/check"])()
    assert not missing.ok and "No such file" in missing.detail


async def test_command_probe_timeout_kills_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    probe = host_command(["sh", "-c", f"sleep 30 & echo $! >{pid_file}; wait"])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(probe(), 0.5)
    child = int(pid_file.read_text())
    await until(lambda: not _alive(child))


async def test_command_probe_reports_a_driver_error() -> None:
    async def gone() -> tuple[Sequence[str], Mapping[str, str], str]:
        raise DriverError("instance x is not running")

    assert await CommandProbe(prepare=gone, label="check")() == ProbeResult(
        ok=False, detail="command check: instance x is not running")


# --- a command inside real instances ---------------------------------------------------

@pytest.fixture(scope="module")
def cgroup_parent() -> Iterator[str]:
    parent = f"corral-test-{os.getpid()}-health"
    for _ in real_cgroups(parent):  # skips when not root; removes the parent after
        yield parent


DRIVERS: dict[str, tuple[Callable[..., Driver], str | None]] = {
    "process": (ProcessDriver, None),
    "sandbox": (SandboxDriver, "/task"),
}


@pytest.fixture(params=sorted(DRIVERS))
async def h(request: pytest.FixtureRequest, cgroup_parent: str, tmp_path: Path
            ) -> AsyncIterator[Harness]:
    factory, inside = DRIVERS[request.param]
    harness = Harness(lambda: factory(cgroup_parent=cgroup_parent), tmp_path, inside)
    reason = harness.driver.available()
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    try:
        yield harness
    finally:
        await harness.close()


async def test_exec_command_runs_inside_the_instance(h: Harness) -> None:
    config = h.config("sleep", "60", env={"SECRET": "s3", "PORT_X": "8080"})
    handle = await h.start(config)
    driver = h.driver
    assert isinstance(driver, SupervisedDriver)
    script = ('echo "$SECRET $1"; pwd; readlink /proc/self/ns/pid; '
              'grep -c "/inst-" /proc/self/cgroup')
    run = driver.exec_command(handle, ["sh", "-c", script, "sh", "${PORT_X}"])
    proc = await asyncio.create_subprocess_exec(
        *run.argv, env=dict(run.env), cwd=run.cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    secret, cwd, pid_ns, groups = out.decode().splitlines()
    assert secret == "s3 8080"  # the instance's env; ${PORT_X} in arguments expanded
    assert cwd == h.task_dir_inside(config)
    assert pid_ns == os.readlink(f"/proc/{handle.pid}/ns/pid")
    assert int(groups) >= 1  # in the instance's cgroups

    spec = HealthSpec(command=("sh", "-c", 'test "$SECRET" = s3'))
    probe = make_probe(spec, host="127.0.0.1", ports={}, port_names=[], driver=driver,
                       handle=handle)
    assert (await probe()).ok
    failing = make_probe(HealthSpec(command=("sh", "-c", "echo nope; exit 3")),
                         host="127.0.0.1", ports={}, port_names=[], driver=driver,
                         handle=handle)
    assert await failing() == ProbeResult(ok=False,
                                          detail="command sh -c echo nope; exit 3: exit 3: nope")
    await driver.stop(handle, signal=15, timeout=5)
    with pytest.raises(DriverError, match="not running"):
        driver.exec_command(handle, ["true"])


async def until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let real I/O (or a task's few extra steps) finish; fails the test on timeout."""
    for _ in range(int(timeout / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _no_handle() -> TaskHandle:
    return TaskHandle(driver="process", instance_id="x", pid=1, started_at=0.0)
