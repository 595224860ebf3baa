"""The contract between the agent's instance runner and the isolation drivers.

A driver starts one instance's command, reports how it ended, signals and stops it, reads
its usage and cleans up after it. Every driver (`process`, `sandbox`/bubblewrap,
`oci`/runc) implements `Driver`, states what it can do in `Capabilities`, and passes
the same conformance tests. Records here are plain data so a `TaskHandle` can be saved as
JSON and handed back to the driver after an agent restart (adoption).

Also here, because every driver needs them the same way: `expand_vars` (`${PORT_HTTP}` in
command arguments), `parse_signal` (spec signal names) and `exit_result` (the exit reason
shown to users).

Neighbours: `drivers/__init__.py` (the registry), `drivers/process.py`, `agent/cgroups.py`,
`agent/logs.py`; the runner (`agent/`) is the only caller.
"""

from __future__ import annotations

import json
import re
import signal as signals
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from corral.model.application import IsolationSpec, Resources
from corral.model.units import format_size

__all__ = [
    "Capabilities", "Driver", "DriverError", "ExitResult", "JSONScalar", "TaskConfig",
    "TaskHandle", "Usage", "exit_result", "expand_vars", "parse_signal", "signal_name",
]

JSONScalar = str | int | float | bool | None


class DriverError(Exception):
    """The driver could not do what was asked; the message is meant for users."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    signals: bool
    exec: bool  # can run a command inside an instance (`exec_command`: health checks, exec)
    fs_isolation: bool
    network_isolation: bool
    oom_detection: bool
    resource_limits: bool
    # True when stop and destroy reach every process of the instance, double-forked and
    # setsid'ed ones included (a cgroup); False when only the process group is reached.
    kills_all_processes: bool
    notes: str = ""  # what a user should know, e.g. that limits are not enforced


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskConfig:
    """What to run for one instance. `env` is the whole environment (the runner builds PATH,
    PORT_*, CORRAL_*); `log_dir` receives `stdout.log` and `stderr.log`."""

    instance_id: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    task_dir: Path
    log_dir: Path
    resources: Resources = field(default_factory=Resources)
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 5.0
    isolation: IsolationSpec = field(default_factory=IsolationSpec)
    # Where the driver keeps this instance's runtime files (supervisor state, exit status,
    # OCI bundle); survives an agent restart. None: `log_dir.parent / "run"`.
    run_dir: Path | None = None
    # A user rootfs directory (already unpacked) for drivers that can use one (`oci`).
    rootfs: Path | None = None

    @property
    def state_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else self.log_dir.parent / "run"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHandle:
    """A started instance. `data` is the driver's own state (cgroup names, process start
    time...), JSON scalars only, so `dataclasses.asdict(handle)` can be saved and the handle
    rebuilt with `TaskHandle(**saved)`."""

    driver: str
    instance_id: str
    pid: int
    started_at: float
    data: dict[str, JSONScalar] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"driver": self.driver, "instance_id": self.instance_id,
                           "pid": self.pid, "started_at": self.started_at,
                           "data": self.data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TaskHandle:
        raw = json.loads(text)
        return cls(driver=str(raw["driver"]), instance_id=str(raw["instance_id"]),
                   pid=int(raw["pid"]), started_at=float(raw["started_at"]),
                   data=dict(raw.get("data", {})))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitResult:
    exit_code: int | None  # None when killed by a signal or when the status is unknown
    signal: int | None
    oom_killed: bool
    reason: str  # "exited with code 1", "killed by signal 9 (SIGKILL)", "oom-killed (...)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    cpu_seconds: float  # since start, all processes of the instance
    memory: int  # bytes
    pids: int


@runtime_checkable
class Driver(Protocol):
    """One isolation technology. Methods are called from the agent's event loop; each
    instance has one handle; `destroy` is always called last and may be called again."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def available(self) -> str:
        """"" when the driver can run instances on this node, else why not."""
        ...

    async def start(self, config: TaskConfig) -> TaskHandle:
        """Start the command; returns once it runs. Raises `DriverError` if it cannot."""
        ...

    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Until the instance's main process has ended; may be called several times."""
        ...

    async def recover(self, handle: TaskHandle) -> bool:
        """Re-attach to an instance an earlier agent process started (`handle` read back
        from JSON). True when it still runs or its exit status was recorded while no agent
        watched (`wait` then returns it); False when nothing is known of it (the caller then
        calls `destroy`)."""
        ...

    async def signal(self, handle: TaskHandle, sig: int) -> None:
        """Send `sig` to the main process; nothing if it has ended."""
        ...

    async def stop(self, handle: TaskHandle, *, signal: int,
                   timeout: float) -> ExitResult | None:
        """Send `signal` to every process of the instance, SIGKILL them all after `timeout`,
        return when none is left: the exit result, or None if the driver cannot know it
        (an instance it did not start itself)."""
        ...

    async def usage(self, handle: TaskHandle) -> Usage | None:
        """Current usage, or None once the instance is gone."""
        ...

    async def destroy(self, handle: TaskHandle) -> None:
        """Kill whatever is left and release everything (cgroups, log files); idempotent."""
        ...


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_vars(args: tuple[str, ...], env: Mapping[str, str]) -> tuple[str, ...]:
    """`${NAME}` in each argument replaced by `env[NAME]`; unknown names are left as they
    are, so a `${X}` meant for a shell inside the command still reaches it."""
    def one(arg: str) -> str:
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), arg)

    return tuple(one(a) for a in args)


def parse_signal(name: str | int) -> int:
    """`SIGTERM`, `TERM`, `term` or `15` -> 15. Raises ValueError naming the input."""
    if isinstance(name, int):
        return signals.Signals(name).value
    text = name.strip().upper()
    if text.isdigit():
        try:
            return signals.Signals(int(text)).value
        except ValueError:
            pass
    else:
        text = text if text.startswith("SIG") else f"SIG{text}"
        if text in signals.Signals.__members__:
            return signals.Signals[text].value
    raise ValueError(f"unknown signal {name!r}; expected a name such as SIGTERM or SIGHUP")


def signal_name(sig: int) -> str:
    """`9` -> `SIGKILL`."""
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def exit_result(returncode: int, *, oom_killed: bool = False,
                memory_limit: int | None = None) -> ExitResult:
    """The result for a wait status as Python reports it (negative: killed by that signal).
    `oom_killed` is the driver's finding from its cgroup."""
    if returncode < 0:
        code, sig = None, -returncode
    else:
        code, sig = returncode, None
    if oom_killed:
        limit = f" (memory limit {format_size(memory_limit)})" if memory_limit else ""
        reason = f"oom-killed{limit}"
    elif sig is not None:
        reason = f"killed by signal {sig} ({signal_name(sig)})"
    else:
        reason = f"exited with code {code}"
    return ExitResult(exit_code=code, signal=sig, oom_killed=oom_killed, reason=reason)
