"""`corral config [--addr URL] [--token-file F] [--ca-cert F] [--json]`: point the CLI at a
cluster (what `corral up` does for a local one): writes `CORRAL_ADDR`, `CORRAL_TOKEN` and
`CORRAL_CACERT` to the user's config (mode 0600), keeping what is not given. Without
options it shows the current settings (never the token itself)."""

from __future__ import annotations

from pathlib import Path

import typer

from corral.cli.output import EXIT_USAGE, console, die, print_json
from corral.client import ClientConfig, load_config, write_config
from corral.client.config import config_path

__all__ = ["config"]


def config(
    addr: str = typer.Option(None, "--addr", help="Server URL, e.g. https://10.0.0.5:7070."),
    token_file: Path = typer.Option(None, "--token-file", help="File holding the admin token."),
    ca_cert: Path = typer.Option(None, "--ca-cert",
                                 help="The cluster CA (<server data>/pki/ca.crt)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show or set where the CLI finds the cluster."""
    current = load_config()
    if addr or token_file or ca_cert:
        try:
            token = token_file.read_text().strip() if token_file else current.token
        except OSError as exc:
            die(f"cannot read {token_file}: {exc.strerror}", EXIT_USAGE)
        if token_file and (not token or any(ch.isspace() for ch in token)):
            die(f"{token_file} does not hold a token (one word, as in "
                "<server data>/admin-token)", EXIT_USAGE)
        if ca_cert and not ca_cert.is_file():
            die(f"no CA certificate at {ca_cert}", EXIT_USAGE)
        current = ClientConfig(addr=(addr or current.addr).rstrip("/"), token=token,
                               cacert=str(ca_cert.resolve()) if ca_cert else current.cacert)
        write_config(current)
    shown = {"addr": current.addr, "token": "set" if current.token else "missing",
             "cacert": current.cacert or None, "file": str(config_path())}
    if as_json:
        print_json(shown)
    else:
        for key, value in shown.items():
            console.print(f"{key}: {value if value is not None else '-'}")
