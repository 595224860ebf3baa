"""The frames of `corral exec` on its websockets (CLI -> server -> agent, relayed unchanged).

```
client -> agent   text   {"command": [...], "tty": false, "rows": 0, "cols": 0,
                          "term": "xterm"}                 first frame, exactly once
                  binary b"\\x00" + bytes                   stdin
                  text   {"type": "resize", "rows", "cols"} window size (with a tty)
                  text   {"type": "eof"}                    stdin ended (no tty)
agent -> client   binary b"\\x01" + bytes / b"\\x02" + bytes  stdout / stderr (a tty: 1 only)
                  text   {"type": "exit", "code": N}        then a normal close (1000)
                  text   {"type": "error", "message": M}    then close 4000 + HTTP status
```
One byte of channel in front of each binary frame, as Kubernetes' `channel.k8s.io` does.
The exit code is the command's, or 128 + N when signal N killed it (the shell's rule).
A refusal (bad token, unknown instance, not running, bad command) is a close code
4000 + the HTTP status that would have said the same, so the CLI maps it to its usual exit
codes.

Neighbours: `server/exec.py` (the relay), `agent/exec_session.py` (runs the command),
`client/remote.py` (the CLI's end).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLOSE_BASE", "STDERR", "STDIN", "STDOUT", "ExecRequest", "ProtocolError", "close_code",
    "data_frame", "error_frame", "exit_code_of", "exit_frame", "parse_request",
    "split_frame", "status_of",
]

STDIN, STDOUT, STDERR = 0, 1, 2
CLOSE_BASE = 4000
_MAX_ARGS = 1024
_MAX_SIZE = 10_000


class ProtocolError(Exception):
    """A frame that does not follow the protocol; the message says what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecRequest:
    command: tuple[str, ...]
    tty: bool = False
    rows: int = 0
    cols: int = 0
    term: str = ""

    def to_text(self) -> str:
        return json.dumps({"command": list(self.command), "tty": self.tty, "rows": self.rows,
                           "cols": self.cols, "term": self.term})


def _size(raw: Any, name: str) -> int:
    if raw is None:
        return 0
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= _MAX_SIZE:
        raise ProtocolError(f"{name} must be an integer from 0 to {_MAX_SIZE}")
    return raw


def parse_request(text: str) -> ExecRequest:
    """The first frame; raises ProtocolError saying what is wrong with it."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"the first frame must be JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("the first frame must be a JSON object")
    command = raw.get("command")
    if not isinstance(command, list) or not command or len(command) > _MAX_ARGS or \
            not all(isinstance(a, str) and "\0" not in a for a in command) or not command[0]:
        raise ProtocolError("command must be a non-empty list of strings (the program "
                            "first), without NUL characters")
    tty = raw.get("tty", False)
    term = raw.get("term") or ""
    if not isinstance(tty, bool) or not isinstance(term, str) or len(term) > 64:
        raise ProtocolError("tty must be true or false and term a short string")
    return ExecRequest(command=tuple(command), tty=tty, rows=_size(raw.get("rows"), "rows"),
                       cols=_size(raw.get("cols"), "cols"), term=term)


def data_frame(channel: int, data: bytes) -> bytes:
    return bytes((channel,)) + data


def split_frame(frame: bytes) -> tuple[int, bytes]:
    if not frame:
        raise ProtocolError("empty binary frame")
    return frame[0], frame[1:]


def exit_frame(code: int) -> str:
    return json.dumps({"type": "exit", "code": code})


def error_frame(message: str) -> str:
    return json.dumps({"type": "error", "message": message})


def exit_code_of(returncode: int) -> int:
    """A process's return code as a shell reports it: 128 + N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def close_code(status: int) -> int:
    return CLOSE_BASE + status


def status_of(code: int | None) -> int | None:
    """The HTTP status a close code stands for (None: not a refusal)."""
    if code is not None and CLOSE_BASE + 400 <= code < CLOSE_BASE + 600:
        return code - CLOSE_BASE
    return None
