"""`corral exec [-i] [-t] ID -- CMD...`: run a command inside a running instance (its
namespaces, cgroups, user and environment), stdin, stdout and stderr streamed over a
websocket through the server to the instance's agent, and exit with the command's exit
code (128 + N when signal N killed it).

Stdin is sent when it is not a terminal (`echo hi | corral exec ID -- cat`) or with `-i`;
otherwise the command reads end-of-file at once. `-t` asks for a terminal on the agent
side: the local terminal goes to raw mode (restored on exit), its window size is sent and
followed (SIGWINCH); `-it` is the interactive shell.

Errors keep the CLI's exit codes (`cli/output.py`): 4 no such instance, 2 bad usage or
the instance does not run, 3 the server cannot be reached, 1 anything else; so a
command's own exit code is only ambiguous with those when the command itself exits 1-4.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator

import typer

from corral.cli.common import call
from corral.cli.output import EXIT_USAGE, die
from corral.client import Client
from corral.client.remote import ExecSession, open_exec
from corral.exec_protocol import STDERR, ExecRequest

__all__ = ["exec_command"]

_READ = 64 * 1024


@contextlib.contextmanager
def _raw(fd: int | None) -> Iterator[None]:
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """On a daemon thread: blocking reads of fd 0 (a terminal, a pipe or a regular file
    alike), handed to the loop; b"" at end of file. A daemon, so a read still blocked on a
    terminal never holds the process at exit."""
    while True:
        try:
            data = os.read(0, _READ)
        except OSError:
            data = b""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, data)
        except RuntimeError:  # the loop has closed: the command is over
            return
        if not data:
            return


async def _session(session: ExecSession, *, send_stdin: bool, tty_fd: int | None) -> int:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def feed() -> None:
        while data := await queue.get():
            await session.send_stdin(data)
        await session.send_eof()

    feeder: asyncio.Task[None] | None = None
    if send_stdin:
        threading.Thread(target=_read_stdin, args=(loop, queue), daemon=True,
                         name="stdin").start()
        feeder = asyncio.create_task(feed())
    else:
        await session.send_eof()
    resizes: set[asyncio.Task[None]] = set()
    if tty_fd is not None:
        def resized() -> None:
            size = os.get_terminal_size(tty_fd)
            task = loop.create_task(session.resize(size.lines, size.columns))
            resizes.add(task)
            task.add_done_callback(resizes.discard)
        loop.add_signal_handler(signal.SIGWINCH, resized)
    try:
        async for channel, data in session.output():
            out = sys.stderr if channel == STDERR else sys.stdout
            out.buffer.write(data)
            out.buffer.flush()
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
        if tty_fd is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
    return session.exit_code if session.exit_code is not None else 1


def exec_command(
    instance: str = typer.Argument(..., help="The instance's id (`corral ps`)."),
    command: list[str] = typer.Argument(..., help="The command and its arguments, after --."),
    stdin: bool = typer.Option(False, "-i", "--stdin",
                               help="Send stdin even when it is a terminal."),
    terminal: bool = typer.Option(False, "-t", "--tty",
                                  help="A terminal for the command (-it: interactive)."),
) -> None:
    """Run a command inside a running instance; exits with its exit code."""
    if not command:
        die("give the command after --: corral exec ID -- CMD [ARGS...]", EXIT_USAGE)
    stdin_is_tty = os.isatty(0)
    tty_fd = 0 if terminal and stdin_is_tty else None
    rows = cols = 0
    if terminal:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(0 if stdin_is_tty else 1)
            rows, cols = size.lines, size.columns
    request = ExecRequest(command=tuple(command), tty=terminal, rows=rows, cols=cols,
                          term=os.environ.get("TERM", "") if terminal else "")
    send_stdin = stdin or not stdin_is_tty

    async def run(client: Client) -> int:
        async with open_exec(client.config, instance, request) as session:
            with _raw(tty_fd):
                return await _session(session, send_stdin=send_stdin, tty_fd=tty_fd)

    raise SystemExit(call(run))
