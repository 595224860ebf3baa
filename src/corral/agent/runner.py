"""One instance on this node, from fetch to stop: the agent's instance state machine.

```
 (assigned) -> fetching -> starting -> running --exit--> exited --policy--> starting ...
                  |            |          ^  |              |
                  v            v          |  |              +--> failed | exited (final)
               failed       failed        |  +--stop--> stopping -> stopped
 (adopted: a handle.json an earlier agent left, recovered by the driver) --+
```
The driver's handle is written to `handle.json` the moment an instance starts and removed
when it is destroyed, so an agent that restarts (even after `kill -9`) finds and adopts
every instance still running, or learns the exit status of one that ended meanwhile.
Every transition is reported to the server (which records it and emits an event). A stop
request wins over everything: during a fetch, a backoff or a run. Restart decisions are
made by the pure `agent/restart.py`.

With a `health` spec, a `HealthChecker` (`agent/health.py`) runs while the process does;
its transitions become `healthy`/`unhealthy` reports. On `unhealthy` with
`on_unhealthy: restart` the runner stops the process (stop signal, SIGKILL after
`stop_timeout`) and its exit takes the ordinary path, as a failure whose reason starts
with "unhealthy:", so the restart policy, its backoff and its attempts apply to it too.

With `templates`, an `InstanceTemplates` (`agent/templates.py`) renders them from the
service catalog before the first start (the instance stays `fetching` until it has; an
error fails it), then re-renders on every catalog change while the runner lives. A change
of bytes applies the templates' `on_change`: `restart` stops the process (the same inner
stop as for unhealthy) and starts it again at once, outside the restart policy (no backoff,
not counted in `restarts`); `signal:X` sends X to the main process; `noop` nothing. An
adopted instance re-renders as soon as the catalog comes and acts only if bytes changed.

A stop request waits `shutdown_delay` after reporting `stopping` before the stop signal:
the catalog drops the instance when it is asked to stop, so load balancers that render it
stop sending to it first. Restarts (crash, unhealthy, template) do not wait.

Neighbours: `agent/agent.py` creates and stops runners; `agent/drivers/` runs processes;
`agent/artifacts.py` provides the unpacked artifact; `agent/reporter.py` talks to the server.

A job's instance (`kind` job) runs `job_service_spec(job)`: never restarted, it reports one
final state, `exited` (code 0) or `failed` (any other end, or "could not start"), and an
agent that restarts and finds no trace of it reports it `failed` rather than running it
twice. Its env adds `CORRAL_JOB`, `CORRAL_RUN`, `CORRAL_ATTEMPT` and
`CORRAL_COMPLETION_INDEX`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.agent.artifacts import ArtifactCache
from corral.agent.catalog import CatalogWatcher
from corral.agent.drivers.base import Driver, DriverError, ExitResult, TaskConfig, TaskHandle
from corral.agent.health import HealthChecker, HealthStatus, Transition, make_probe
from corral.agent.reporter import StatusReporter
from corral.agent.restart import decide_restart
from corral.agent.templates import (
    ChangeActions,
    InstanceTemplates,
    TemplateError,
    TemplateRenderer,
)
from corral.clock import Clock
from corral.model.application import JobSpec, RestartSpec, ServiceSpec
from corral.model.instance import Instance, InstanceState
from corral.model.units import format_size

__all__ = ["InstanceDirs", "Runner", "StartObserver", "build_env", "job_service_spec"]

log = logging.getLogger(__name__)

S = InstanceState
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Told of every `driver.start`: driver name, seconds it took, whether it succeeded
# (`AgentMetrics.observe_start`).
StartObserver = Callable[[str, float, bool], None]


@dataclass(frozen=True, slots=True)
class InstanceDirs:
    root: Path

    @property
    def task(self) -> Path:
        return self.root / "task"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def handle(self) -> Path:
        return self.root / "handle.json"


def job_service_spec(job: JobSpec) -> ServiceSpec:
    """What a job's instance runs, as the runner's spec: the job's command, artifact, env,
    resources and isolation, never restarted (a retry is a new run, decided by the
    server), no ports, health checks or templates."""
    return ServiceSpec(command=job.command, artifact=job.artifact, env=dict(job.env),
                       resources=job.resources, isolation=job.isolation,
                       restart=RestartSpec(policy="never"))


def build_env(inst: Instance, spec: ServiceSpec, *, node: str, host_ip: str,
              task_dir: Path) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOME": str(task_dir), "LANG": "C.UTF-8"}
    # Dependencies' addresses (`CACHE_ADDR`, ...) below the spec's env: a user can override.
    env.update(inst.dependency_env)
    env.update(spec.env)
    for i, name in enumerate(inst.port_names):
        port = inst.ports.get(name)
        if port is None:
            continue
        env[f"PORT_{name.upper()}"] = str(port)
        if i == 0:
            env["PORT"] = str(port)
    env.update({
        "CORRAL_APP": inst.app, "CORRAL_NAMESPACE": inst.namespace,
        "CORRAL_SERVICE": inst.service, "CORRAL_INSTANCE": inst.id, "CORRAL_NODE": node,
        "CORRAL_HOST_IP": host_ip, "CORRAL_TASK_DIR": str(task_dir),
        "CORRAL_VERSION": str(inst.version),
    })
    if inst.kind == "job":
        env.update({"CORRAL_JOB": inst.service, "CORRAL_RUN": str(inst.run),
                    "CORRAL_ATTEMPT": str(inst.attempt),
                    "CORRAL_COMPLETION_INDEX": str(inst.slot)})
    return env


def _signal_number(name: str) -> int:
    name = name.upper()
    return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))


class Runner:
    def __init__(self, *, instance: Instance, spec: ServiceSpec, driver: Driver,
                 reporter: StatusReporter, artifacts: ArtifactCache, dirs: InstanceDirs,
                 clock: Clock, node: str, host_ip: str, artifact_max_bytes: int,
                 adopt: TaskHandle | None = None,
                 catalog: CatalogWatcher | None = None,
                 observe_start: StartObserver | None = None) -> None:
        self.instance = instance
        self.spec = spec
        self._driver = driver
        self._reporter = reporter
        self._artifacts = artifacts
        self.dirs = dirs
        self._clock = clock
        self._node = node
        self._host_ip = host_ip
        self._artifact_max = artifact_max_bytes
        self._stop = asyncio.Event()
        self._stop_reason = "stop requested"
        self._restarts = instance.restarts
        self._restart_times: list[float] = []
        self._quick_exits = 0
        self.handle: TaskHandle | None = None
        self._adopt = adopt
        self.state = instance.state
        self._job = instance.kind == "job"
        self.task: asyncio.Task[None] | None = None
        # none: no checks; unknown: not checked yet in this run of the process.
        self._health = "none" if spec.health is None else "unknown"
        # A stop the runner starts itself while the process runs (unhealthy, or a template
        # asking for a restart); its exit then takes the path `_inner_kind` says.
        self._inner_stop: asyncio.Task[ExitResult | None] | None = None
        self._inner_kind = ""
        self._inner_reason = ""
        self._waiter: asyncio.Future[ExitResult] | None = None
        self._catalog = catalog
        self._templates: InstanceTemplates | None = None
        self._template_watch: asyncio.Task[None] | None = None
        self._template_problem = ""
        # What preparing found ("artifact … already cached on this node"): the reason of the
        # next `starting` report, so the event stream tells a download from a cache hit.
        self._start_note = ""
        self._files_lock = asyncio.Lock()  # templates are not written while a process starts
        self._observe_start = observe_start

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"instance-{self.instance.id}")

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()

    async def detach(self) -> None:
        """Stop supervising without stopping the instance (the agent is exiting)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    def _report(self, state: InstanceState, reason: str = "", **fields: object) -> None:
        self.state = state
        fields.setdefault("health", self._health)
        self._reporter.report(state=str(state), reason=reason, restarts=self._restarts,
                              **fields)
        log.info("instance %s %s %s", self.instance.id, state, reason,
                 extra={"instance": self.instance.id, "state": str(state)})

    async def _until_stop(self, coro: asyncio.Future[Any]) -> bool:
        """Wait for `coro` or a stop request; True if stop came first (coro cancelled)."""
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({coro, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if coro in done:
            return False
        coro.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await coro
        return True

    async def _run(self) -> None:
        try:
            await self._lifecycle()
        except asyncio.CancelledError:
            raise  # detached by an agent that exits: the instance runs on, to be adopted
        except Exception as exc:  # a bug or an OS error must not kill the agent
            log.exception("instance %s failed unexpectedly", self.instance.id)
            self._report(S.FAILED, f"agent error: {exc}")
        finally:
            await self._close_templates()
        # what is still queued after this goes on being sent by the node's reporter
        await self._reporter.flush()

    def _config(self) -> TaskConfig:
        rootfs = self.spec.isolation.rootfs
        return TaskConfig(
            instance_id=self.instance.id, command=self.spec.command,
            env=build_env(self.instance, self.spec, node=self._node, host_ip=self._host_ip,
                          task_dir=self.dirs.task),
            task_dir=self.dirs.task, log_dir=self.dirs.logs, run_dir=self.dirs.run,
            resources=self.spec.resources, stop_signal=self.spec.stop_signal,
            stop_timeout=self.spec.stop_timeout, isolation=self.spec.isolation,
            rootfs=self._artifacts.rootfs_path(rootfs) if rootfs else None)

    async def _launch(self) -> TaskHandle:
        if self.spec.isolation.network == "isolated" and \
                not self._driver.capabilities.network_isolation:
            raise DriverError(f"driver {self._driver.name} cannot isolate the network "
                              "(isolation.network: isolated); use driver sandbox or oci")
        config = self._config()
        began = self._clock.monotonic()
        try:
            handle = await self._driver.start(config)
        except Exception:
            self._observed_start(began, ok=False)
            raise
        self._observed_start(began, ok=True)
        # Saved before anything else can happen: a restarted agent adopts from this file.
        tmp = self.dirs.handle.with_suffix(".tmp")
        tmp.write_text(handle.to_json())
        os.replace(tmp, self.dirs.handle)
        return handle

    def _observed_start(self, began: float, *, ok: bool) -> None:
        if self._observe_start is not None:
            self._observe_start(self._driver.name, self._clock.monotonic() - began, ok)

    async def _release(self, handle: TaskHandle) -> None:
        await self._driver.destroy(handle)
        self.dirs.handle.unlink(missing_ok=True)

    async def _lifecycle(self) -> None:
        adopted = self._adopt
        if adopted is None:
            if self.instance.state in (S.FETCHING, S.STARTING, S.RUNNING, S.HEALTHY,
                                       S.UNHEALTHY):
                # An earlier agent process ran it and nothing of it could be recovered.
                if self._job:
                    # Whether it completed is unknown: the run fails (and may be retried)
                    # rather than running twice.
                    self._report(S.FAILED, "agent restarted and found no trace of the "
                                           "job's process")
                    return
                self._report(S.EXITED, "agent restarted and found no trace of the process; "
                                       "starting it again")
            if not await self._prepare():
                return
        elif self.spec.templates and not self._open_templates():
            # Adopted: the process runs on its files; a bad template is only reported.
            log.warning("instance %s: cannot re-render its templates", self.instance.id)
        if self._templates is not None:
            self._template_watch = asyncio.create_task(
                self._templates.watch(self._template_changed, self._template_problem_seen),
                name=f"templates-{self.instance.id}")
        while True:
            if self._stop.is_set() and adopted is None:
                self._report(S.STOPPED, self._stop_reason)
                return
            started = self._clock.monotonic()
            result: ExitResult | None = None
            if adopted is not None:
                self.handle, adopted = adopted, None
                # A checked instance keeps the health state it had (the server refuses
                # healthy -> running); the new checker's first result confirms or changes it.
                shown = self.instance.state if self.spec.health is not None and \
                    self.instance.state in (S.HEALTHY, S.UNHEALTHY) else S.RUNNING
                if shown != S.RUNNING:
                    self._health = str(shown)
                self._report(shown, "adopted after an agent restart", pid=self.handle.pid,
                             started_at=self.handle.started_at)
            else:
                self._report(S.STARTING, self._start_note)
                self._start_note = ""
                try:
                    async with self._files_lock:
                        self.handle = await self._launch()
                except Exception as exc:
                    reason = f"could not start: {exc}"
                else:
                    self._report(S.RUNNING, pid=self.handle.pid, started_at=self._clock.now())
            if self.handle is not None:
                waiter: asyncio.Future[ExitResult] = asyncio.ensure_future(
                    self._driver.wait(self.handle))
                self._waiter = waiter
                checker = self._start_checker(self.handle)
                try:
                    stopping = await self._until_stop(waiter)
                finally:
                    if checker is not None:
                        await checker.close()
                if stopping:
                    await self._end_inner_stop()
                    await self._stop_task()
                    return
                result = waiter.result()
                reason = result.reason
                inner = await self._end_inner_stop()
                if inner == "unhealthy":
                    reason = f"{self._inner_reason}; {reason}"
                    # Stopped for being unhealthy: a failure, whatever its exit code.
                    result = dataclasses.replace(result, exit_code=None)
                await self._release(self.handle)
                self.handle = None
                if self._health != "none":
                    self._health = "unknown"
                if inner == "template":
                    # Asked for by a changed template, not a failure: no restart policy,
                    # no backoff, not counted in `restarts`.
                    self._report(S.EXITED, f"{self._inner_reason}; {reason}",
                                 exit_code=result.exit_code)
                    continue
            succeeded = result is not None and result.exit_code == 0
            exit_code = result.exit_code if result is not None else None
            if self._job:
                # One final report: the job controller counts it at once, and a job's
                # instance never starts again (a retry is a new run with new instances).
                self._report(S.EXITED if succeeded else S.FAILED, reason, exit_code=exit_code)
                return
            self._report(S.EXITED, reason, exit_code=exit_code)
            if self._clock.monotonic() - started >= self.spec.restart.max_backoff:
                self._quick_exits = 0  # it ran for a while: a new crash starts a new backoff
            decision = decide_restart(self.spec.restart, succeeded=succeeded,
                                      exit_reason=reason, quick_exits=self._quick_exits,
                                      recent_restarts=self._restart_times,
                                      now=self._clock.monotonic())
            self._quick_exits += 1
            if not decision.restart:
                self._report(decision.state, decision.reason, exit_code=exit_code)
                return
            if decision.state != S.EXITED:
                self._report(decision.state, decision.reason, exit_code=exit_code)
            if await self._until_stop(asyncio.ensure_future(self._clock.sleep(decision.delay))):
                self._report(S.STOPPED, self._stop_reason)
                return
            self._restarts += 1
            self._restart_times.append(self._clock.monotonic())

    def _start_checker(self, handle: TaskHandle) -> HealthChecker | None:
        health = self.spec.health
        if health is None:
            return None
        probe = make_probe(health, host=self.instance.address or self._host_ip,
                           ports=self.instance.ports, port_names=self.instance.port_names,
                           driver=self._driver, handle=handle)
        checker = HealthChecker(spec=health, probe=probe, clock=self._clock,
                                on_change=lambda t: self._health_changed(handle, t),
                                name=self.instance.id)
        checker.start()
        return checker

    def _health_changed(self, handle: TaskHandle, change: Transition) -> None:
        if self.handle is not handle or self._inner_stop is not None:
            return  # the process has ended or is being stopped: too late to matter
        assert self.spec.health is not None
        self._health = str(change.status)
        # pid again: the server takes a report's pid as it is, absent meaning none.
        if change.status == HealthStatus.HEALTHY:
            self._report(S.HEALTHY, change.reason, pid=handle.pid)
            return
        restart = self.spec.health.on_unhealthy == "restart"
        self._report(S.UNHEALTHY, change.reason + ("; restarting" if restart else ""),
                     pid=handle.pid)
        if restart:
            self._start_inner_stop(handle, "unhealthy", f"unhealthy: {change.reason}")

    def _start_inner_stop(self, handle: TaskHandle, kind: str, reason: str) -> None:
        self._inner_kind, self._inner_reason = kind, reason
        # The process's exit then wakes the lifecycle through `driver.wait`.
        self._inner_stop = asyncio.create_task(self._driver.stop(
            handle, signal=_signal_number(self.spec.stop_signal),
            timeout=self.spec.stop_timeout))

    async def _end_inner_stop(self) -> str | None:
        """Wait for a stop the runner started itself, if any; its kind, or None."""
        stop, self._inner_stop = self._inner_stop, None
        if stop is None:
            return None
        try:
            await stop
        except Exception as exc:  # the exit is known anyway; destroy kills what is left
            log.warning("instance %s: stopping the process (%s): %s",
                        self.instance.id, self._inner_reason, exc)
        return self._inner_kind

    # --- templates ------------------------------------------------------------------------

    def _open_templates(self) -> bool:
        if self._templates is not None:
            return True
        if self._catalog is None:
            return False
        inst = self.instance
        renderer = TemplateRenderer(
            templates=self.spec.templates, task_dir=self.dirs.task,
            instance={"id": inst.id, "app": inst.app, "service": inst.service,
                      "namespace": inst.namespace, "node": self._node,
                      "address": inst.address or self._host_ip, "ports": dict(inst.ports),
                      "version": inst.version},
            env=build_env(inst, self.spec, node=self._node, host_ip=self._host_ip,
                          task_dir=self.dirs.task))
        self._templates = InstanceTemplates(renderer=renderer, catalog=self._catalog,
                                            namespace=inst.namespace, clock=self._clock,
                                            name=inst.id, lock=self._files_lock)
        return True

    async def _close_templates(self) -> None:
        watch, self._template_watch = self._template_watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if self._templates is not None:
            self._templates.close()
            self._templates = None

    async def _render_templates(self) -> bool:
        """Before the first start: every template rendered. False if the instance must
        not start (reported)."""
        if not self.spec.templates:
            return True
        if not self._open_templates():
            self._report(S.FAILED, "templates need the service catalog, which this agent "
                                   "was not given")
            return False
        assert self._templates is not None
        count = len(self.spec.templates)
        self._report(S.FETCHING, f"rendering {count} template{'s' if count > 1 else ''}")
        shown = [""]

        def waiting(why: str) -> None:
            if why != shown[0]:
                shown[0] = why
                self._report(S.FETCHING, why)

        render = asyncio.ensure_future(self._templates.first_render(waiting))
        if await self._until_stop(render):
            self._report(S.STOPPED, self._stop_reason)
            return False
        exc = render.exception()
        if exc is not None:
            self._report(S.FAILED, str(exc) if isinstance(exc, TemplateError)
                         else f"rendering templates: {exc}")
            return False
        return True

    def _running_handle(self) -> TaskHandle | None:
        """The handle of a process that runs and that nothing is stopping yet."""
        waiter = self._waiter
        if self.handle is None or waiter is None or waiter.done() or \
                self._inner_stop is not None or self._stop.is_set():
            return None
        return self.handle

    async def _template_changed(self, actions: ChangeActions) -> None:
        what = ", ".join(actions.changed)
        handle = self._running_handle()
        if handle is None:
            log.info("instance %s: template %s changed; no process to tell",
                     self.instance.id, what, extra={"instance": self.instance.id})
            return
        if actions.restart is not None:
            reason = f"template {actions.restart} changed"
            self._report(self.state, f"{reason}: restarting", pid=handle.pid)
            self._start_inner_stop(handle, "template", reason)
            return
        sent = []
        for name in actions.signals:
            try:
                await self._driver.signal(handle, _signal_number(name))
                sent.append(name)
            except Exception as exc:
                log.warning("instance %s: cannot send %s after template %s changed: %s",
                            self.instance.id, name, what, exc,
                            extra={"instance": self.instance.id})
        if sent and self.handle is handle:
            self._report(self.state, f"template {what} changed: sent {', '.join(sent)}",
                         pid=handle.pid)
        elif not sent:
            log.info("instance %s: template %s changed", self.instance.id, what,
                     extra={"instance": self.instance.id})

    def _template_problem_seen(self, problem: str) -> None:
        """A re-render's errors ("" once it renders cleanly again): the old files stay, the
        process runs on, and the instance's reason says what is wrong."""
        if problem == self._template_problem:
            return
        self._template_problem = problem
        if problem:
            log.warning("instance %s: %s; keeping the previous file", self.instance.id,
                        problem, extra={"instance": self.instance.id,
                                        "template_error": problem})
        handle = self._running_handle()
        if handle is not None and self.state in (S.RUNNING, S.HEALTHY, S.UNHEALTHY):
            self._report(self.state, f"{problem} (keeping the previous file)" if problem
                         else "templates render again", pid=handle.pid)

    async def _prepare(self) -> bool:
        """Task and log dirs, rootfs, artifact. False if the instance must not start."""
        self.dirs.task.mkdir(parents=True, exist_ok=True)
        self.dirs.logs.mkdir(parents=True, exist_ok=True)
        rootfs = self.spec.isolation.rootfs
        if rootfs is not None:
            # Unpacked once per node and shared; `_config` names the same directory.
            self._report(S.FETCHING, f"fetching rootfs {rootfs[:19]}")
            unpack = asyncio.ensure_future(self._artifacts.rootfs(rootfs, self._artifact_max))
            if await self._until_stop(unpack):
                self._report(S.STOPPED, self._stop_reason)
                return False
            if (exc := unpack.exception()) is not None:
                self._report(S.FAILED, f"cannot prepare the rootfs: {exc}")
                return False
        digest = self.spec.artifact
        if digest is not None and not (self.dirs.root / ".unpacked").exists() and \
                not await self._unpack_artifact(digest):
            return False
        return await self._render_templates()

    async def _unpack_artifact(self, digest: str) -> bool:
        self._report(S.FETCHING, f"fetching artifact {digest[:19]}")
        try:
            fetch = asyncio.ensure_future(self._artifacts.obtain(digest))
            if await self._until_stop(fetch):
                self._report(S.STOPPED, self._stop_reason)
                return False
            blob, fetched = fetch.result()
            self._start_note = (
                f"artifact {digest[:19]} fetched ({format_size(blob.stat().st_size)})"
                if fetched else f"artifact {digest[:19]} already cached on this node")
            if self.dirs.task.exists():
                shutil.rmtree(self.dirs.task)
            await self._artifacts.unpack(digest, self.dirs.task, self._artifact_max)
            (self.dirs.root / ".unpacked").touch()
        except Exception as exc:
            self._report(S.FAILED, f"artifact {digest[:19]}: {exc}")
            return False
        return True

    async def _stop_task(self) -> None:
        delay = self.spec.shutdown_delay
        self._report(S.STOPPING, self._stop_reason if delay <= 0 else
                     f"{self._stop_reason}; stop signal in {delay:g}s (shutdown_delay)")
        assert self.handle is not None
        if delay > 0:
            await self._clock.sleep(delay)
        result = await self._driver.stop(self.handle, signal=_signal_number(self.spec.stop_signal),
                                         timeout=self.spec.stop_timeout)
        await self._release(self.handle)
        self.handle = None
        reason = self._stop_reason if result is None else \
            f"{self._stop_reason}; {result.reason}"
        self._report(S.STOPPED, reason,
                     exit_code=result.exit_code if result is not None else None)

