"""The agent's Prometheus metrics (`GET /metrics` on the agent's HTTP port, behind the same
token as its other routes; `agent/api.py`). One `prometheus_client` registry per agent,
never the process-global one.

Measured as things happen:
- `corral_agent_driver_start_seconds{driver}` how long `driver.start` took (a histogram),
  and `corral_agent_driver_start_failures_total{driver}` the starts that raised; the
  runner reports both through the `observe_start` callback the agent hands it.
Read when scraped (`render`), from the agent's state:
- `corral_agent_runners{state}` the runners by the state they last reported (every state,
  zeros included, so a dashboard sees a state drop to 0).
- per instance, labels `namespace`, `app`, `service`, `instance` (the instance id):
  `corral_instance_cpu_cores` (averaged between the last two usage samples),
  `corral_instance_cpu_seconds_total`, `corral_instance_memory_bytes` from the latest usage
  sample (`Agent.sample_usage`, every `--usage-interval`: a scrape never reads the cgroups
  itself, so scrapes do not shift the agent's averaging window), and
  `corral_instance_restarts_total` for every runner.
  The label `instance` is the one Prometheus gives every target: a plain scrape config
  stores ours as `exported_instance`; `honor_labels: true` keeps it as `instance` (the
  agent-wide series, which do not carry it, keep the target's).

Neighbours: `agent/agent.py` keeps the usage samples and passes `observe_start` to each
`Runner`; `agent/main.py` creates one `AgentMetrics` and gives `render` to the API.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.agent.runner import Runner
from corral.model.instance import InstanceState

__all__ = ["AgentMetrics", "MetricsSource", "UsageSample"]

_START = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_INSTANCE_LABELS = ("namespace", "app", "service", "instance")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageSample:
    """One instance's usage at the agent's latest sample."""

    cpu: float | None  # cores, averaged since the previous sample; None on the first
    cpu_seconds: float  # since the process started, all its processes
    memory: int  # bytes
    pids: int


class MetricsSource(Protocol):
    """What `render` reads of the agent (`Agent`)."""

    @property
    def runners(self) -> Mapping[str, Runner]: ...

    @property
    def latest_usage(self) -> Mapping[str, UsageSample]: ...


class _Snapshot(Collector):
    """Hands the registry the families `render` computed just before."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.starts = Histogram(
            "corral_agent_driver_start_seconds", "How long the driver took to start an "
            "instance's process, by driver.", ("driver",), buckets=_START,
            registry=self.registry)
        self.start_failures = PromCounter(
            "corral_agent_driver_start_failures", "Starts the driver refused or failed, "
            "by driver.", ("driver",), registry=self.registry)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def observe_start(self, driver: str, seconds: float, ok: bool) -> None:
        """The runner's observer around `driver.start` (`Runner(observe_start=...)`)."""
        if ok:
            self.starts.labels(driver).observe(seconds)
        else:
            self.start_failures.labels(driver).inc()

    def render(self, source: MetricsSource) -> bytes:
        """The text format, with the agent's runners and latest usage sample read now."""
        self._snapshot.families = families(source)
        try:
            return generate_latest(self.registry)
        finally:
            self._snapshot.families = []


def families(source: MetricsSource) -> list[Metric]:
    """The series read at scrape time, sorted by instance id (deterministic output)."""
    runners = sorted(source.runners.items())
    usage = source.latest_usage
    by_state = Counter(str(r.state) for _, r in runners)
    states = GaugeMetricFamily("corral_agent_runners", "Runners (instances this agent "
                               "supervises) by the state they last reported.",
                               labels=("state",))
    for state in InstanceState:
        states.add_metric((state.value,), by_state.get(state.value, 0))
    cores = GaugeMetricFamily("corral_instance_cpu_cores", "CPU used, in cores, averaged "
                              "between the last two usage samples.", labels=_INSTANCE_LABELS)
    cpu_seconds = CounterMetricFamily("corral_instance_cpu_seconds", "CPU time used since "
                                      "the process started.", labels=_INSTANCE_LABELS)
    memory = GaugeMetricFamily("corral_instance_memory_bytes", "Memory used at the latest "
                               "usage sample.", labels=_INSTANCE_LABELS)
    restarts = CounterMetricFamily("corral_instance_restarts", "Times the instance's process "
                                   "was restarted.", labels=_INSTANCE_LABELS)
    for iid, runner in runners:
        inst = runner.instance
        labels = (inst.namespace, inst.app, inst.service, iid)
        restarts.add_metric(labels, runner.restarts)
        sample = usage.get(iid)
        if sample is None:
            continue
        if sample.cpu is not None:
            cores.add_metric(labels, sample.cpu)
        cpu_seconds.add_metric(labels, sample.cpu_seconds)
        memory.add_metric(labels, sample.memory)
    return [states, cores, cpu_seconds, memory, restarts]
