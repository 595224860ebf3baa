"""The per-instance supervisor ("shim", in the spirit of conmon and containerd-shim).

One small Python process per instance sits between the agent and the instance's command,
so that the instance outlives the agent: it holds the command's stdout and stderr pipes and
writes them to the logs, it is the command's parent and so collects its exit status, and it
records that status in a file. An agent that restarts finds the shim (or its record) through
the instance's state dir and adopts the instance again; no pipe, no parent relationship
ties the instance to the agent process.

The agent starts it in a new session with `<python> -S -I` (no site-packages, no
environment: ~10 ms and ~3 MB of private memory), importing this module from its cached
bytecode (see `drivers/supervised.py`); `<python> -S -I <this file> <state_dir>
[<report_fd>]` works as well. Either way it puts the dir that contains `corral` on
`sys.path` itself, and may import only the standard library and `agent/logfile.py`:
every import costs every instance start time and memory.

```
 read <state_dir>/shim.json -> write shim.pid -> spawn the command (new session, stdin
 /dev/null, stdout/stderr pipes, signals default)
   -> [main_pid_file set: pump until that child exits 0, then read the main pid from the
       file: a detached runtime's container init, adopted by us as subreaper]
   -> write child.pid -> "ok <main> <ticks> <child> <ticks>" on report_fd, closed
   -> pump both pipes into the LogWriters until the main process has ended
   -> drain what is readable -> write exit.json -> exit 0
 failure before the report: "error <text>" on report_fd, exit 1 (nothing recorded)
```

The shim stops when the main process ends, not at end of file on the pipes: a daemonised
grandchild may hold them open forever. It ignores SIGHUP, SIGINT, SIGPIPE and SIGTERM (the
agent stops instances, never their shim; SIGKILL still works) and sets no parent-death
signal. `shim.json` (written by the agent):
`{"argv": [...], "env": {...}, "cwd": str, "log_dir": str, "log_max_bytes": int,
"log_keep": int, "main_pid_file": str | null}`; `exit.json` (written atomically):
`{"status": raw wait status, "exit_code": int | null, "signal": int | null, "time": float,
"pid": main pid, "shim_pid": int}`.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any

    from corral.agent.logfile import LogWriter
else:
    # The C modules under `signal` and `json`: the Python wrappers import enum and re,
    # which cost every instance start ~8 ms and ~1.1 MB (measured here); the shim needs
    # neither the enums nor the regular expressions.
    import _signal as signal

__all__ = ["CONFIG", "EXIT", "PIDFILE_CHILD", "PIDFILE_SHIM", "main", "read_start_ticks"]

CONFIG = "shim.json"
EXIT = "exit.json"
PIDFILE_SHIM = "shim.pid"
PIDFILE_CHILD = "child.pid"
_IGNORED = (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGTERM)
# Ignored signals stay ignored across exec: the command starts with every signal at its
# default, whatever the shim ignores and whatever the agent inherited (a background job of
# a shell ignores SIGINT and SIGQUIT; Python ignores SIGPIPE and SIGXFSZ).
_CHILD_DEFAULTS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
_READ = 64 * 1024
# After the main process ended, what is still readable is logged, up to this much per pipe:
# a leftover daemon writing without pause must not keep the shim alive.
_DRAIN_LIMIT = 4 * 1024 * 1024
_PR_SET_CHILD_SUBREAPER = 36


def read_start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (zombies included), or None if there is
    no such process: with the pid, an identity that survives pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the command name, which may itself contain spaces and parentheses.
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def write_atomic(path: str, text: str, *, durable: bool) -> None:
    """Readers see the old file or the new one, never a part. `durable`: also on disk
    before returning (fsync of the file and of the directory entry)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class _Pump:
    """Copies the command's pipes into its logs while waiting for one process to end."""

    def __init__(self, writers: dict[int, LogWriter]) -> None:
        self._writers = writers  # read end of a pipe -> its log
        self._open = set(writers)
        self._poll = select.poll()
        for fd in writers:
            self._poll.register(fd, select.POLLIN)
        # Wait statuses of children reaped but not asked for yet. Everything is kept until
        # the main process is known (in main_pid_file mode it may end before we read its
        # pid); after that, only the main process's (a subreaper adopts strangers' orphans).
        self.statuses: dict[int, int] = {}
        self.keep_only: int | None = None

    def until_exit(self, pid: int) -> int:
        """Pump until `pid`, a child of ours, has ended; its wait status."""
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # kernel before 5.3: look every 100 ms instead
            pidfd = None
        if pidfd is not None:
            self._poll.register(pidfd, select.POLLIN)
        # Adopted orphans (subreaper) do not wake us: reap them at least once a second.
        timeout = 100 if pidfd is None else 1000
        try:
            self._reap()
            while pid not in self.statuses:
                ended = False
                for fd, _ in self._poll.poll(timeout):
                    if fd == pidfd:
                        ended = True
                    else:
                        self._read(fd)
                self._reap()
                if ended and pid not in self.statuses:
                    # Ended, yet not ours to reap: its status is lost to us.
                    raise ChildProcessError(f"process {pid} is not a child of the shim")
        finally:
            if pidfd is not None:
                self._poll.unregister(pidfd)
                os.close(pidfd)
        return self.statuses.pop(pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.keep_only is None or pid == self.keep_only:
                self.statuses[pid] = status

    def _read(self, fd: int) -> bool:
        """One read of `fd` into its log; False at end of file (the pipe is then closed)."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._poll.unregister(fd)
            self._open.discard(fd)
            os.close(fd)
            return False
        try:
            self._writers[fd].write(data)
        except OSError as exc:  # disk full: lose output rather than the exit status
            print(f"corral shim: cannot write a log: {exc}", file=sys.stderr)
        return True

    def drain(self) -> None:
        """What the pipes hold now, then close them."""
        for fd in sorted(self._open):
            os.set_blocking(fd, False)
            budget = _DRAIN_LIMIT
            while budget > 0 and fd in self._open and self._read(fd):
                budget -= _READ
        self.close()

    def close(self) -> None:
        for fd in sorted(self._open):
            self._poll.unregister(fd)
            os.close(fd)
        self._open.clear()
        for writer in self._writers.values():
            try:
                writer.close()
            except OSError as exc:
                print(f"corral shim: cannot write a log: {exc}", file=sys.stderr)


def _which(command: str, path: str) -> str:
    if "/" in command:
        return command
    for d in path.split(os.pathsep):
        candidate = os.path.join(d or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "not found in PATH", command)


def _spawn(config: dict[str, Any], out_w: int, err_w: int) -> int:
    argv = [str(a) for a in config["argv"]]
    env = {str(k): str(v) for k, v in config["env"].items()}
    path = _which(argv[0], env.get("PATH", os.defpath))
    # posix_spawn (vfork-like, no Python code in the child) has no chdir: move there for
    # the spawn only, so the shim itself never keeps the task dir busy.
    os.chdir(str(config["cwd"]))
    try:
        return os.posix_spawn(path, argv, env, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ], setsid=True, setsigdef=_CHILD_DEFAULTS)
    finally:
        os.chdir("/")


def _set_subreaper() -> None:
    """Become the parent of orphaned descendants, so a detached runtime's container init
    is ours to wait for. ctypes only here: ~0.1 MB, and only the shims that need it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _read_pid(path: str) -> int:
    with open(path) as f:
        text = f.read().strip()
    if not text.isdigit():
        raise ValueError(f"{path} holds {text[:40]!r}, not a pid")
    return int(text)


def _report(fd: int, message: str) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, (message.replace("\n", " ") + "\n").encode())
    except OSError:  # the agent gave up waiting (and killed the child's group)
        pass
    finally:
        os.close(fd)


def _load_json(text: str) -> Any:
    """`json.loads` without importing `json` (see the imports): the same C scanner."""
    try:
        import _json
    except ImportError:  # an interpreter without the C accelerator
        import json

        return json.loads(text)

    class Context:
        strict = True
        object_hook = object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = float  # NaN, Infinity: never written by the agent

    value, end = _json.make_scanner(Context())(text, len(text) - len(text.lstrip()))  # type: ignore[arg-type]
    if text[end:].strip():
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value


def _exit_record(status: int, *, pid: int) -> str:
    """exit.json's text: a flat object of numbers and nulls, keys sorted (no `json`)."""
    fields = {
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "pid": pid, "shim_pid": os.getpid(),
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "status": status, "time": time.time(),
    }
    body = ", ".join(f'"{k}": {"null" if v is None else repr(v)}' for k, v in fields.items())
    return "{" + body + "}\n"


def _lower_oom_score() -> None:
    """The shim must survive a node-wide OOM (the kernel would pick it over nothing
    smaller); set after the spawn, since children inherit the value. Root only."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    if len(argv) not in (2, 3):
        print("usage: shim.py STATE_DIR [REPORT_FD]", file=sys.stderr)
        return 2
    state_dir = os.path.abspath(argv[1])
    report_fd = int(argv[2]) if len(argv) == 3 else -1
    if report_fd >= 0:
        os.set_inheritable(report_fd, False)  # the command must not hold the agent's pipe
    from corral.agent.logfile import LogWriter  # after __main__ has set up sys.path

    try:
        with open(os.path.join(state_dir, CONFIG)) as f:
            config: dict[str, Any] = _load_json(f.read())
        write_atomic(os.path.join(state_dir, PIDFILE_SHIM),
                     f"{os.getpid()} {read_start_ticks(os.getpid())}\n", durable=False)
        main_pid_file = config.get("main_pid_file")
        if main_pid_file:
            _set_subreaper()
        writers = {}
        pipes = []
        for stream in ("stdout", "stderr"):
            r, w = os.pipe()
            pipes.append(w)
            writers[r] = LogWriter(config["log_dir"], stream,
                                   max_bytes=int(config["log_max_bytes"]),
                                   keep=int(config["log_keep"]))
        try:
            child = _spawn(config, pipes[0], pipes[1])
        finally:
            for w in pipes:
                os.close(w)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        name = exc.filename if isinstance(exc, OSError) and exc.filename else ""
        _report(report_fd, f"error {name}{': ' if name else ''}{detail}")
        return 1
    _lower_oom_score()
    pump = _Pump(writers)
    child_ticks = read_start_ticks(child)
    main_pid, main_ticks = child, child_ticks
    try:
        if main_pid_file:
            status = pump.until_exit(child)
            if status != 0:
                raise ValueError(f"{config['argv'][0]} {_describe(status)} before the main "
                                 "process started (see the instance's stderr log)")
            main_pid = _read_pid(str(main_pid_file))
            main_ticks = read_start_ticks(main_pid)
        pump.keep_only = main_pid
        write_atomic(os.path.join(state_dir, PIDFILE_CHILD), f"{main_pid} {main_ticks}\n",
                     durable=False)
    except (OSError, ValueError) as exc:
        pump.drain()
        _report(report_fd, f"error {exc}")
        return 1
    _report(report_fd, f"ok {main_pid} {main_ticks} {child} {child_ticks}")
    try:
        status = pump.until_exit(main_pid)
        pump.drain()
    except ChildProcessError as exc:  # main_pid_file named a process we did not adopt
        print(f"corral shim: {exc}; its exit status is unknown", file=sys.stderr)
        pump.close()
        return 1
    except Exception:  # a bug here must not lose the exit status: stop logging, keep waiting
        import traceback

        traceback.print_exc()
        pump.close()
        status = _wait_blocking(main_pid, pump)
    write_atomic(os.path.join(state_dir, EXIT), _exit_record(status, pid=main_pid),
                 durable=True)
    return 0


def _wait_blocking(pid: int, pump: _Pump) -> int:
    if pid in pump.statuses:
        return pump.statuses[pid]
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


if __name__ == "__main__":
    # `python -S -I`: neither site-packages nor this script's dir is on sys.path; the dir
    # holding the `corral` package is three levels up (src/corral/agent/shim.py).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    sys.exit(main(sys.argv))
