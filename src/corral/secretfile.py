"""Private files: keys, tokens and credentials that only their owner may read.

Written whole or not at all (a temp file in the same folder, fsynced, renamed over the
target), created with mode 0600 from the start, so no other user ever sees a partial or a
readable copy, even for an instant. Used by the server (admin token, cluster CA, join
token), the agent (its key and credential) and `corral up` (the client config).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, data: bytes | str) -> None:
    """Atomically write `data` to `path` with mode 0600; parent folders are made 0700."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            # The mode of os.open is filtered by the umask and ignored for an existing file.
            os.fchmod(f.fileno(), 0o600)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
