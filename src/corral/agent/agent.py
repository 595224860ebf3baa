"""The node agent: registers its node, keeps its lease alive, watches the server for the
instances assigned to it, and reconciles them locally by running one `Runner` each.

It talks only to the server API, never to the store. Reconciliation is level-triggered:
each answer of the watch gives the full list of what should exist on this node (merged
from the changes it carries, `client/assignments.py`), so a missed change is corrected by
the next answer.

```
 start -> recover handle.json files -> clean other stale cgroups -> register
       -> [watch assignments -> reconcile runners (adopting recovered instances)]*
                                    ^  heartbeat 404 (lease expired) |
                                    +--------------------------------+
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.agent.artifacts import ArtifactCache
from corral.agent.catalog import CatalogWatcher
from corral.agent.drivers.base import Driver, TaskHandle
from corral.agent.metrics import UsageSample
from corral.agent.reporter import NodeReporter
from corral.agent.retention import DEFAULT_LOG_RETENTION, expired_dirs
from corral.agent.runner import InstanceDirs, Runner, StartObserver, job_service_spec
from corral.client.assignments import merge_assignments
from corral.client.heartbeats import retry_delay
from corral.client.http import ApiError, Client, Unreachable
from corral.clock import Clock
from corral.model.application import ApplicationSpec, ServiceSpec
from corral.model.codec import from_data
from corral.model.instance import DesiredState, Instance, InstanceState
from corral.model.node import DEFAULT_PORT_RANGE

__all__ = ["Agent", "AgentConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    name: str
    address: str
    data_dir: Path
    cpu: float
    memory: int
    labels: dict[str, str] = field(default_factory=dict)
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    reserved_ports: tuple[int, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    agent_url: str = ""
    artifact_max_bytes: int = 512 * 1024 * 1024
    poll_wait: float = 30.0
    # How long an ended instance's directory (its logs) is kept (`agent/retention.py`).
    log_retention: float = DEFAULT_LOG_RETENTION


class Agent:
    def __init__(self, *, config: AgentConfig, client: Client, drivers: dict[str, Driver],
                 default_driver: str, driver_status: dict[str, str], clock: Clock,
                 all_drivers: dict[str, Driver] | None = None,
                 observe_start: StartObserver | None = None) -> None:
        self.config = config
        self._client = client
        self._drivers = drivers  # usable: what new instances start with
        # Every driver built, usable or not: an instance an earlier agent started with a
        # driver that is unusable now must still be adopted or cleaned up by it.
        self._handlers = {**(all_drivers or {}), **drivers}
        self._default_driver = default_driver
        self._driver_status = driver_status
        self._clock = clock
        self.runners: dict[str, Runner] = {}
        self._finished: set[str] = set()
        self._stop_reported: set[str] = set()  # no runner, asked to stop: reported stopped
        self._specs: dict[tuple[str, str, int], ApplicationSpec] = {}
        self._recovered: dict[str, TaskHandle] = {}
        self._orphans: set[asyncio.Task[None]] = set()
        self._usage: dict[str, tuple[float, float]] = {}  # id -> (cpu seconds, monotonic)
        # The latest `sample_usage`, by instance id: what `/metrics` shows (agent/metrics.py).
        self.latest_usage: dict[str, UsageSample] = {}
        self._observe_start = observe_start
        self.reports = NodeReporter(client, config.name)  # every instance's status reports
        self._lease_id = 0
        self._ttl = 10.0
        self._heartbeat_interval = self._ttl / 3
        self._last_contact = clock.monotonic()
        self._registered = asyncio.Event()
        self.artifacts = ArtifactCache(config.data_dir / "artifacts",
                                       fetch=self._fetch_artifact)
        # One long poll per namespace for every runner with templates (agent/catalog.py).
        self.catalog = CatalogWatcher(self._fetch_catalog, clock=clock, wait=config.poll_wait)

    async def recover_local(self) -> frozenset[str]:
        """Before registering: find the instances an earlier agent process left running
        (their `handle.json`), ask their driver to re-attach, and forget what it cannot.
        Returns the ids recovered; their cgroups must survive the stale-group cleanup."""
        root = self.config.data_dir / "instances"
        for path in sorted(root.glob("*/handle.json")) if root.exists() else ():
            try:
                handle = TaskHandle.from_json(path.read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable handle %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            driver = self._handlers.get(handle.driver)
            if driver is not None and await driver.recover(handle):
                self._recovered[handle.instance_id] = handle
                log.info("recovered instance %s (pid %d)", handle.instance_id, handle.pid,
                         extra={"instance": handle.instance_id})
                continue
            if driver is not None:
                with contextlib.suppress(Exception):
                    await driver.destroy(handle)
            path.unlink(missing_ok=True)
        return frozenset(self._recovered)

    async def _fetch_artifact(self, digest: str, dest: Path) -> None:
        await self._client.download_artifact(digest, dest)

    async def _fetch_catalog(self, namespace: str, digest: str | None,
                             wait: float | None) -> dict[str, Any]:
        answer: dict[str, Any] = await self._client.services(namespace=namespace,
                                                             digest=digest, wait=wait)
        return answer

    def dirs(self, instance_id: str) -> InstanceDirs:
        return InstanceDirs(self.config.data_dir / "instances" / instance_id)

    async def register(self) -> None:
        body: dict[str, Any] = {
            "name": self.config.name, "address": self.config.address,
            "agent_url": self.config.agent_url,
            "capacity": {"cpu": self.config.cpu, "memory": self.config.memory},
            "labels": self.config.labels, "port_range": list(self.config.port_range),
            "reserved_ports": list(self.config.reserved_ports),
            "drivers": self._driver_status, "default_driver": self._default_driver,
            # What users should know about a usable driver (e.g. limits not enforced
            # without cgroups) shows with the node: `corral nodes --json`.
            "attributes": {**self.config.attributes, **{
                f"driver.{name}.notes": d.capabilities.notes
                for name, d in sorted(self._drivers.items()) if d.capabilities.notes}},
        }
        delay = 0.2
        while True:
            try:
                answer = await self._client.register_node(body)
                self._lease_id = int(answer["lease_id"])
                self._heartbeat_interval = float(answer["heartbeat_interval"])
                self._ttl = float(answer["ttl"])
                self._last_contact = self._clock.monotonic()
                self._registered.set()
                log.info("registered node %s", self.config.name)
                return
            except (Unreachable, ApiError) as exc:
                log.warning("cannot register yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def heartbeat_loop(self) -> None:
        retry: float | None = None  # set while heartbeats fail (client/heartbeats.py)
        while True:
            await self._registered.wait()
            await asyncio.sleep(self._heartbeat_interval if retry is None else retry)
            try:
                answer = await self._client.heartbeat(self.config.name, self._lease_id)
                retry = None
                self._heartbeat_interval = float(answer.get("heartbeat_interval",
                                                            self._heartbeat_interval))
                self._ttl = float(answer.get("ttl", self._ttl))
                self._last_contact = self._clock.monotonic()
            except ApiError as exc:
                retry = retry_delay(retry, self._heartbeat_interval) if exc.status >= 500 \
                    else None
                if exc.status == 404:
                    self._registered.clear()
                    await self.register()
                else:
                    # 401: this node's identity was revoked. Instances keep running until
                    # the disconnect rule stops them; the server has replaced them.
                    log.error("heartbeat refused (%d): %s", exc.status, exc.message)
            except Unreachable as exc:
                retry = retry_delay(retry, self._heartbeat_interval)
                log.warning("heartbeat failed, again in %.0f s: %s", retry, exc)

    async def watch_loop(self) -> None:
        """Follow this node's assignments on a watch (one streamed answer per change),
        asking again from the last index when the server ends it."""
        index = 0
        delay = 0.2
        assigned: dict[str, Instance] = {}
        while True:
            await self._registered.wait()
            try:
                async for answer in self._client.watch_node_instances(
                        self.config.name, index=index, wait=self.config.poll_wait,
                        changes=True):
                    delay = 0.2
                    assigned, complete = merge_assignments(
                        assigned, answer, lambda data: from_data(Instance, data))
                    index = int(answer["index"]) if complete else 0
                    log.debug("assignments at index %d: %d instances, %d changed", index,
                              len(assigned), len(answer["instances"]))
                    await self.reconcile(list(assigned.values()))
                    if not complete:
                        break  # this cache and the server disagree: the whole list again
            except (Unreachable, ApiError) as exc:
                log.warning("watch failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _spec_for(self, inst: Instance) -> ServiceSpec | None:
        key = (inst.namespace, inst.app, inst.version)
        spec = self._specs.get(key)
        if spec is None:
            answer = await self._client.app_version(inst.app, inst.version, inst.namespace)
            spec = self._specs[key] = from_data(ApplicationSpec, answer["spec"])
        if inst.kind == "job":
            job = spec.jobs.get(inst.service)
            return None if job is None else job_service_spec(job)
        return spec.services.get(inst.service)

    async def reconcile(self, instances: list[Instance]) -> None:
        wanted = {i.id: i for i in instances}
        for iid in [i for i, r in self.runners.items() if r.done]:
            self._finished.add(iid)
            del self.runners[iid]
        for inst in instances:
            runner = self.runners.get(inst.id)
            if inst.desired == DesiredState.STOP:
                if runner is not None:
                    runner.request_stop()
                elif (inst.state not in (InstanceState.STOPPED, InstanceState.LOST)
                      and inst.id not in self._stop_reported):
                    # Through the node's queue, after any report of it still queued; once:
                    # the answers go on listing it until the report lands.
                    self._stop_reported.add(inst.id)
                    self.reports.report(inst.id, {"state": str(InstanceState.STOPPED),
                                                  "reason": "stop requested",
                                                  "restarts": inst.restarts})
                continue
            if inst.kind == "job" and inst.state in (InstanceState.EXITED,
                                                     InstanceState.FAILED):
                # A job's instance that ended runs no more (an agent restarted before the
                # job controller marked it stopped must not run it again).
                continue
            if runner is None and inst.id not in self._finished:
                await self._start_runner(inst)
        for iid, runner in self.runners.items():
            if iid not in wanted:
                runner.request_stop()
        for iid in [i for i in self._recovered if i not in wanted]:
            # Left running by an earlier agent, no longer assigned here: stop it.
            self._orphans.add(asyncio.create_task(self._stop_orphan(self._recovered.pop(iid))))
        self._finished &= set(wanted)
        self._stop_reported &= set(wanted)

    async def _stop_orphan(self, handle: TaskHandle) -> None:
        driver = self._handlers[handle.driver]
        try:
            await driver.stop(handle, signal=signal.SIGTERM, timeout=10.0)
        finally:
            await driver.destroy(handle)
            self.dirs(handle.instance_id).handle.unlink(missing_ok=True)
            log.info("stopped unassigned instance %s", handle.instance_id)

    async def _start_runner(self, inst: Instance) -> None:
        reporter = self.reports.instance(inst.id)
        try:
            spec = await self._spec_for(inst)
        except (Unreachable, ApiError) as exc:
            await reporter.close()
            log.warning("instance %s: cannot fetch its spec yet: %s", inst.id, exc)
            return
        driver_name = inst.driver or self._default_driver
        driver = self._drivers.get(driver_name)
        if spec is None or driver is None:
            reason = (f"{inst.kind} {inst.service} not in version {inst.version}"
                      if spec is None
                      else f"driver {driver_name} is not available on this node")
            reporter.report(state=str(InstanceState.FAILED), reason=reason)
            await reporter.flush()
            await reporter.close()
            self._finished.add(inst.id)
            return
        adopt = self._recovered.pop(inst.id, None)
        if adopt is not None and adopt.driver != driver_name:
            driver = self._handlers[adopt.driver]
        runner = Runner(instance=inst, spec=spec, driver=driver, reporter=reporter,
                        artifacts=self.artifacts, dirs=self.dirs(inst.id), clock=self._clock,
                        node=self.config.name, host_ip=self.config.address,
                        artifact_max_bytes=self.config.artifact_max_bytes, adopt=adopt,
                        catalog=self.catalog, observe_start=self._observe_start)
        self.runners[inst.id] = runner
        runner.start()

    def running(self, instance_id: str) -> tuple[Driver, TaskHandle] | None:
        """The driver and handle of an instance whose process runs here now (for the
        agent API: signals, exec, processes)."""
        runner = self.runners.get(instance_id)
        handle = runner.handle if runner is not None and not runner.done else None
        if handle is None:
            return None
        return self._handlers[handle.driver], handle

    async def gc_loop(self, interval: float = 300.0) -> None:
        """Remove the dirs (task, logs) of instances that ended more than `log_retention`
        ago or that the server no longer knows (`agent/retention.py`)."""
        while True:
            await asyncio.sleep(min(interval, max(self.config.log_retention / 4, 1.0)))
            await self.collect_garbage()

    async def collect_garbage(self) -> list[str]:
        """One pass of `gc_loop`; the ids whose dirs were removed."""
        known: set[str] | None
        try:
            known = {i["id"] for i in await self._client.list_instances(
                node=self.config.name, all=True)}
        except (Unreachable, ApiError):
            known = None
        root = self.config.data_dir / "instances"
        live = {i for i, r in self.runners.items() if not r.done} | set(self._recovered)
        changed = {p.name: _last_change(p) for p in root.iterdir()} if root.exists() else {}
        gone = expired_dirs(changed, now=self._clock.now(),
                            retention=self.config.log_retention, live=live, known=known)
        for item in gone:
            shutil.rmtree(root / item.instance, ignore_errors=True)
            log.info("removed the dir of instance %s (%s)", item.instance, item.why,
                     extra={"instance": item.instance})
        return [item.instance for item in gone]

    def runners_alive(self) -> bool:
        return any(not r.done for r in self.runners.values())

    async def shutdown(self, *, stop_instances: bool) -> None:
        """On agent exit: stop every instance if asked (`corral up` does on Ctrl-C), else
        leave them running for the next agent process to adopt."""
        if stop_instances:
            for runner in self.runners.values():
                runner.request_stop()
            tasks = [r.task for r in self.runners.values() if r.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=60)
        await asyncio.gather(*(r.detach() for r in self.runners.values()))
        await self.reports.flush(timeout=5.0)
        await self.reports.close()
        await self.catalog.close()

    async def disconnect_loop(self, interval: float = 1.0) -> None:
        """Partition safety: once the server has not been reached for longer than the
        heartbeat TTL, it has marked this node down and replaced its instances elsewhere;
        stop those whose service says `on_disconnect: stop`, so that two copies never run
        for longer than the TTL."""
        while True:
            await asyncio.sleep(interval)
            silent = self._clock.monotonic() - self._last_contact
            if silent <= self._ttl:
                continue
            for runner in self.runners.values():
                if runner.spec.on_disconnect == "stop" and not runner.done:
                    runner.request_stop(f"lost contact with the server for {silent:.0f}s "
                                        f"(heartbeat TTL {self._ttl:g}s)")

    async def usage_loop(self, interval: float = 10.0) -> None:
        """Every `interval`: cpu (cores, averaged since the last sample) and memory of each
        running instance, from its cgroup, sent in one request. Kept in the server's
        memory, not its store: it is a gauge, not state."""
        while True:
            await self._registered.wait()
            report = await self.sample_usage()
            # Sent even when empty: the server then forgets samples of stopped instances.
            with contextlib.suppress(Unreachable, ApiError):
                await self._client.report_usage(self.config.name, report)
            await asyncio.sleep(interval)

    async def sample_usage(self) -> dict[str, dict[str, float | int | None]]:
        report: dict[str, dict[str, float | int | None]] = {}
        latest: dict[str, UsageSample] = {}
        now = self._clock.monotonic()
        for iid, runner in list(self.runners.items()):
            handle = runner.handle
            if handle is None:
                continue
            u = await self._handlers[handle.driver].usage(handle)
            if u is None:
                continue
            prev = self._usage.get(iid)
            self._usage[iid] = (u.cpu_seconds, now)
            cpu = None
            if prev is not None and now > prev[1] and u.cpu_seconds >= prev[0]:
                cpu = (u.cpu_seconds - prev[0]) / (now - prev[1])
            report[iid] = {"cpu": cpu, "memory": u.memory, "pids": u.pids}
            latest[iid] = UsageSample(cpu=cpu, cpu_seconds=u.cpu_seconds, memory=u.memory,
                                      pids=u.pids)
        for iid in set(self._usage) - set(self.runners):
            del self._usage[iid]
        self.latest_usage = latest
        return report


def _last_change(path: Path) -> float:
    """The newest modification time of an instance dir, its logs dir and its log files."""
    newest = 0.0
    for p in (path, path / "logs"):
        try:
            newest = max(newest, p.stat().st_mtime)
            if p.name == "logs":
                newest = max([newest, *(e.stat().st_mtime for e in os.scandir(p))])
        except OSError:
            continue
    return newest
