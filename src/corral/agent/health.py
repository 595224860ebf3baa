"""Health checks of one running instance: `http`, `tcp` or `command`, run by the agent that
runs the instance, every `interval` once `grace` has passed, each attempt bounded by
`timeout`.

```
            success                      `failures` consecutive failures
 unknown ------------> healthy  <-------------------------------------+
    |                   |    ^                                        |
    | `failures`        |    | one success                            |
    | consecutive       |    |                                        |
    | failures          v    |                                        |
    +-------------> unhealthy ------ on_unhealthy: restart ---> (the runner stops the
                    (reported once;                               process; its restart
                     ignore: checks go on)                        policy decides)
```
`unknown` is where every run of the process starts (the instance is `running`, `health:
unknown`); the first transition makes it `healthy` or `unhealthy`. One success is enough
to be healthy (Nomad, Kubernetes' default `successThreshold: 1`); `failures` in a row make
it unhealthy, and only a transition is reported, so a service flapping within its
threshold causes no events.

The decision (`HealthTracker.observe`) is pure; `HealthChecker` only loops: sleep, probe,
observe, tell the runner. Probes are the I/O: `HttpProbe`, `TcpProbe`, `CommandProbe`,
built by `make_probe` from the spec. The checker takes a `Clock`, so tests drive it with a
`FakeClock` and fake probes.

Neighbours: `agent/runner.py` starts a checker when the process runs, stops it when the
process ends, and turns transitions into state reports (`healthy`/`unhealthy`, `health=`)
and, on `unhealthy` with `on_unhealthy: restart`, into a restart; `drivers/supervised.py`
(`exec_command`) says how to run a command inside an instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import httpx

from corral.agent.drivers.base import Driver, DriverError, TaskHandle
from corral.agent.drivers.supervised import SupervisedDriver
from corral.clock import Clock
from corral.model.application import HealthSpec

__all__ = [
    "CommandProbe", "HealthChecker", "HealthStatus", "HealthTracker", "HttpProbe", "Probe",
    "ProbeResult", "TcpProbe", "Transition", "make_probe",
]

log = logging.getLogger(__name__)

_OUTPUT_MAX = 4096  # bytes of a check command's output kept for the reason
_REASON_MAX = 200


class HealthStatus(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    ok: bool
    detail: str  # "http /healthz: 503", "tcp main: connection refused"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    status: HealthStatus
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthTracker:
    """What is known of one run of a process: its status and the failures in a row."""

    failures_needed: int
    status: HealthStatus = HealthStatus.UNKNOWN
    failures: int = 0

    def observe(self, result: ProbeResult) -> tuple[HealthTracker, Transition | None]:
        """The tracker after one attempt, and the transition it causes, if any."""
        if result.ok:
            after = dataclasses.replace(self, status=HealthStatus.HEALTHY, failures=0)
            changed = self.status != HealthStatus.HEALTHY
            return after, Transition(status=HealthStatus.HEALTHY, reason=result.detail) \
                if changed else None
        failures = self.failures + 1
        if failures >= self.failures_needed and self.status != HealthStatus.UNHEALTHY:
            after = dataclasses.replace(self, status=HealthStatus.UNHEALTHY, failures=failures)
            why = result.detail if failures == 1 else \
                f"{result.detail} ({failures} checks in a row)"
            return after, Transition(status=HealthStatus.UNHEALTHY, reason=why)
        return dataclasses.replace(self, failures=failures), None


class Probe(Protocol):
    async def __call__(self) -> ProbeResult: ...


class HealthChecker:
    """Runs `probe` for one run of an instance's process and calls `on_change` on every
    transition. `start` once; `close` when the process has ended or is being stopped."""

    def __init__(self, *, spec: HealthSpec, probe: Probe, clock: Clock,
                 on_change: Callable[[Transition], None], name: str = "") -> None:
        self._spec = spec
        self._probe = probe
        self._clock = clock
        self._on_change = on_change
        self._name = name
        self.tracker = HealthTracker(failures_needed=spec.failures)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"health-{self._name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        await self._clock.sleep(self._spec.grace)
        while True:
            result = await self._attempt()
            self.tracker, transition = self.tracker.observe(result)
            if transition is not None:
                self._on_change(transition)
            await self._clock.sleep(self._spec.interval)

    async def _attempt(self) -> ProbeResult:
        try:
            # The bound is real time: it limits real I/O (a FakeClock only moves the
            # schedule), and probes stop their own work when cancelled.
            return await asyncio.wait_for(self._probe(), self._spec.timeout)
        except TimeoutError:
            return ProbeResult(ok=False, detail=f"{_kind(self._spec)}: timed out after "
                                                f"{self._spec.timeout:g}s")
        except Exception as exc:  # a probe bug must not end the checks, nor the agent
            log.exception("health probe %s failed", self._name)
            return ProbeResult(ok=False, detail=f"{_kind(self._spec)}: {exc}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpProbe:
    """GET `url`; a status 200-399 is healthy. Redirects are not followed (a 3xx is an
    answer, as for Kubernetes' and Nomad's checks)."""

    url: str
    path: str
    timeout: float

    async def __call__(self) -> ProbeResult:
        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
                response = await client.get(self.url)
        except httpx.TimeoutException:
            return ProbeResult(ok=False, detail=f"http {self.path}: timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(ok=False, detail=f"http {self.path}: {_describe(exc)}")
        code = response.status_code
        return ProbeResult(ok=200 <= code < 400, detail=f"http {self.path}: {code}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpProbe:
    """A TCP connection to `host:port` can be opened (and is closed at once)."""

    host: str
    port: int
    name: str

    async def __call__(self) -> ProbeResult:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            return ProbeResult(ok=False, detail=f"tcp {self.name}: {_describe(exc)}")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return ProbeResult(ok=True, detail=f"tcp {self.name}: connected")


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandProbe:
    """Runs the argv `prepare()` returns; exit code 0 is healthy. `prepare` is called on
    every attempt (the instance's process can change between two), and may raise
    `DriverError` (the instance is gone). The command gets its own session, so a timeout
    kills it and whatever it started (`nsenter`'s child included)."""

    prepare: Callable[[], Awaitable[tuple[Sequence[str], Mapping[str, str], str]]]
    label: str  # the command as users wrote it, for the reason

    async def __call__(self) -> ProbeResult:
        try:
            argv, env, cwd = await self.prepare()
        except DriverError as exc:
            return ProbeResult(ok=False, detail=f"command {self.label}: {exc}")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        except OSError as exc:
            return ProbeResult(ok=False, detail=f"command {self.label}: {_describe(exc)}")
        try:
            assert proc.stdout is not None
            # `read(n)` answers with whatever has arrived: gather up to the limit, then
            # drain the rest so the command cannot block on a full pipe.
            output = b""
            while len(output) < _OUTPUT_MAX:
                chunk = await proc.stdout.read(_OUTPUT_MAX - len(output))
                if not chunk:
                    break
                output += chunk
            while await proc.stdout.read(65536):
                pass
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(proc.wait())
            raise
        if code == 0:
            return ProbeResult(ok=True, detail=f"command {self.label}: exit 0")
        lines = output.decode(errors="replace").strip().splitlines()
        last = f": {lines[-1].strip()}" if lines else ""
        how = f"exit {code}" if code >= 0 else f"killed by signal {-code}"
        return ProbeResult(ok=False, detail=_clip(f"command {self.label}: {how}{last}"))


def make_probe(spec: HealthSpec, *, host: str, ports: Mapping[str, int],
               port_names: Sequence[str], driver: Driver, handle: TaskHandle) -> Probe:
    """The probe `spec` asks for, against the instance's ports on `host` (the address it
    is advertised at) or, for `command`, inside the instance through its driver."""
    if spec.command is not None:
        command = spec.command

        async def prepare() -> tuple[Sequence[str], Mapping[str, str], str]:
            if not isinstance(driver, SupervisedDriver):
                raise DriverError(f"driver {driver.name} cannot run commands in instances")
            run = driver.exec_command(handle, command)
            return run.argv, run.env, str(run.cwd)

        return CommandProbe(prepare=prepare, label=_clip(" ".join(command), 60))
    name = spec.tcp if spec.tcp is not None else spec.port or \
        (port_names[0] if port_names else "")
    port = ports.get(name)
    if port is None:
        return _Broken(detail=f"{_kind(spec)}: the instance has no port {name!r}")
    if spec.tcp is not None:
        return TcpProbe(host=host, port=port, name=name)
    path = spec.http or "/"
    return HttpProbe(url=f"http://{_host(host)}:{port}{path}", path=path, timeout=spec.timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Broken:
    """A check that cannot run (spec validation should have refused it): always fails,
    saying why, rather than silently passing."""

    detail: str

    async def __call__(self) -> ProbeResult:
        return ProbeResult(ok=False, detail=self.detail)


def _kind(spec: HealthSpec) -> str:
    if spec.http is not None:
        return f"http {spec.http}"
    if spec.tcp is not None:
        return f"tcp {spec.tcp}"
    return "command"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _describe(exc: BaseException) -> str:
    # httpx wraps the OS error ("All connection attempts failed"): the cause says more.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return _clip(str(exc) or type(exc).__name__)


def _clip(text: str, limit: int = _REASON_MAX) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
