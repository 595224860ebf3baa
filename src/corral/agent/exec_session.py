"""One `corral exec` on this node: run a command inside a running instance (its namespaces,
cgroups, user, environment and cwd, as the driver's `exec_command` says, the same path
command health checks take) and stream it over a channel (the websocket the server
relays; frames in `corral/exec_protocol.py`).

Without a tty the command gets three pipes: stdin frames are written to it, an `eof`
frame closes its stdin, stdout and stderr come back on channels 1 and 2. With a tty it gets
a pseudo-terminal as stdin, stdout and stderr and as its controlling terminal (`setsid
--ctty`, util-linux), of the window size the client sent and resizes; `TERM` is the
client's. Either way the command leads a session of its own, so a client that leaves kills
the whole session (SIGKILL), and its processes are in the instance's cgroups, so stopping
the instance stops them too.

Once the command has exited, what it wrote is forwarded for up to `DRAIN` seconds more (a
background child that keeps the output open does not hold the session), then the exit
frame goes out.

Neighbours: `agent/api.py` (the websocket endpoint), `drivers/supervised.py`
(`exec_command`), `server/exec.py` (the relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import termios
from collections.abc import Callable
from typing import Protocol

from corral.agent.drivers.supervised import Command
from corral.exec_protocol import (
    STDERR,
    STDIN,
    STDOUT,
    ExecRequest,
    ProtocolError,
    data_frame,
    exit_code_of,
    exit_frame,
    split_frame,
)

__all__ = ["DRAIN", "Channel", "run_exec"]

DRAIN = 2.0
_READ = 64 * 1024


class Channel(Protocol):
    async def receive(self) -> bytes | str | None:
        """The next frame, or None once the peer has gone."""
        ...

    async def send(self, frame: bytes | str) -> None: ...


def _set_size(fd: int, rows: int, cols: int) -> None:
    if rows > 0 and cols > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_exec(channel: Channel, command: Command, request: ExecRequest) -> int:
    """Run `command`, streaming it over `channel`, until it exits (returns its exit code,
    already sent as the exit frame) or the peer leaves (the session is killed; returns
    -1). Raises OSError when the command cannot be started."""
    env = dict(command.env)
    if request.tty:
        env["TERM"] = request.term or env.get("TERM", "xterm")
        return await _run_tty(channel, command, env, request)
    return await _run_pipes(channel, command, env)


async def _run_pipes(channel: Channel, command: Command, env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *command.argv, env=env, cwd=str(command.cwd), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin

    async def pump(reader: asyncio.StreamReader, number: int) -> None:
        while chunk := await reader.read(_READ):
            await channel.send(data_frame(number, chunk))

    def write(data: bytes) -> None:
        if not stdin.is_closing():
            stdin.write(data)

    def eof() -> None:
        if not stdin.is_closing():
            stdin.close()

    outputs = [asyncio.create_task(pump(proc.stdout, STDOUT)),
               asyncio.create_task(pump(proc.stderr, STDERR))]
    return await _supervise(channel, proc, outputs, write=write, eof=eof, resize=None)


async def _run_tty(channel: Channel, command: Command, env: dict[str, str],
                   request: ExecRequest) -> int:
    setsid = shutil.which("setsid")
    if setsid is None:
        raise OSError("setsid (util-linux) is needed for a terminal (-t) and is not "
                      "installed")
    master, slave = pty.openpty()
    try:
        _set_size(slave, request.rows, request.cols)
        # --wait: were setsid to fork (it does when it leads a process group), it would
        # otherwise exit 0 at once.
        proc = await asyncio.create_subprocess_exec(
            setsid, "--ctty", "--wait", *command.argv, env=env, cwd=str(command.cwd),
            stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, _READ)
        except OSError:  # EIO: every holder of the terminal's other end has closed it
            data = b""
        if not data:
            loop.remove_reader(master)
        chunks.put_nowait(data)

    async def pump() -> None:
        while data := await chunks.get():
            await channel.send(data_frame(STDOUT, data))

    def write(data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(master, data)

    loop.add_reader(master, readable)
    try:
        return await _supervise(channel, proc, [asyncio.create_task(pump())], write=write,
                                eof=lambda: None,
                                resize=lambda rows, cols: _set_size(master, rows, cols))
    finally:
        loop.remove_reader(master)
        os.close(master)


async def _supervise(channel: Channel, proc: asyncio.subprocess.Process,
                     outputs: list[asyncio.Task[None]], *, write: Callable[[bytes], None],
                     eof: Callable[[], None],
                     resize: Callable[[int, int], None] | None) -> int:
    """Feed the client's frames to the command until it exits or the client leaves."""
    async def inputs() -> None:
        while True:
            frame = await channel.receive()
            if frame is None:
                return  # the client left
            if isinstance(frame, bytes):
                number, data = split_frame(frame)
                if number == STDIN and data:
                    write(data)
                continue
            try:
                message = json.loads(frame)
            except ValueError:
                raise ProtocolError("control frames must be JSON") from None
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "eof":
                eof()
            elif kind == "resize" and resize is not None:
                rows, cols = message.get("rows"), message.get("cols")
                if isinstance(rows, int) and isinstance(cols, int) and \
                        0 < rows < 10_000 and 0 < cols < 10_000:
                    resize(rows, cols)

    reader = asyncio.create_task(inputs())
    waiter = asyncio.create_task(proc.wait())
    try:
        await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the client left (or broke the protocol): end the session
            _kill_session(proc.pid)
            await waiter
            return -1
        _, late = await asyncio.wait(outputs, timeout=DRAIN)
        for task in late:
            task.cancel()
        code = exit_code_of(waiter.result())
        await channel.send(exit_frame(code))
        return code
    finally:
        for task in [reader, *outputs]:
            task.cancel()
        await asyncio.gather(reader, *outputs, return_exceptions=True)
        if proc.returncode is None:
            _kill_session(proc.pid)
            await proc.wait()
