"""Where the CLI finds the server: `CORRAL_ADDR`, `CORRAL_TOKEN` and `CORRAL_CACERT` from
the environment, else from `<config dir>/corral/corral.env` (written by `corral up`, mode
0600), where the config dir is `$XDG_CONFIG_HOME` or `~/.config`. `CORRAL_CONFIG_DIR`
overrides the folder.

`CORRAL_CACERT` is the PEM file of the cluster CA (`<server data>/pki/ca.crt`): the server's
certificate must chain to it. Without it, an `https://` server is checked against the
system's CAs (a server behind a proxy with a public certificate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.secretfile import write_private

__all__ = ["DEFAULT_ADDR", "ClientConfig", "config_path", "load_config", "write_config"]

DEFAULT_ADDR = "https://127.0.0.1:7070"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    addr: str
    token: str
    cacert: str = ""  # the CA's PEM file; "": the system's CAs


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


def load_config(*, addr: str | None = None, token: str | None = None,
                cacert: str | None = None) -> ClientConfig:
    saved = _read(config_path())

    def pick(given: str | None, name: str) -> str:
        return given or os.environ.get(name) or saved.get(name) or ""

    return ClientConfig(addr=(pick(addr, "CORRAL_ADDR") or DEFAULT_ADDR).rstrip("/"),
                        token=pick(token, "CORRAL_TOKEN"), cacert=pick(cacert, "CORRAL_CACERT"))


def write_config(config: ClientConfig) -> Path:
    path = config_path()
    lines = [f"CORRAL_ADDR={config.addr}", f"CORRAL_TOKEN={config.token}"]
    if config.cacert:
        lines.append(f"CORRAL_CACERT={config.cacert}")
    write_private(path, "\n".join(lines) + "\n")
    return path
