"""Where the CLI finds the server: `CORRAL_ADDR` and `CORRAL_TOKEN` from the environment,
else from `<config dir>/corral/corral.env` (written by `corral up`, mode 0600), where the
config dir is `$XDG_CONFIG_HOME` or `~/.config`. `CORRAL_CONFIG_DIR` overrides the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClientConfig", "config_path", "load_config", "write_config"]

DEFAULT_ADDR = "http://127.0.0.1:7070"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    addr: str
    token: str


def config_path() -> Path:
    folder = os.environ.get("CORRAL_CONFIG_DIR")
    if folder:
        return Path(folder) / "corral.env"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "corral" / "corral.env"


def _read(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values


def load_config(*, addr: str | None = None, token: str | None = None) -> ClientConfig:
    saved = _read(config_path())
    return ClientConfig(
        addr=(addr or os.environ.get("CORRAL_ADDR") or saved.get("CORRAL_ADDR")
              or DEFAULT_ADDR).rstrip("/"),
        token=token or os.environ.get("CORRAL_TOKEN") or saved.get("CORRAL_TOKEN") or "",
    )


def write_config(config: ClientConfig) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"CORRAL_ADDR={config.addr}\nCORRAL_TOKEN={config.token}\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
