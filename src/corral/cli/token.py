"""`corral token create|list|revoke`: join tokens, what a new machine needs to join the
cluster (`corral agent --join URL --token ID.SECRET --ca-cert-hash sha256:...`). Admin
token needed.

`create` prints the token once (the server keeps only its hash) and the join command;
`--ttl 24h` by default, `--ttl 0` never expires. `revoke ID` refuses further joins with it;
nodes that joined with it keep their own credentials (`corral node revoke NODE`).
"""

from __future__ import annotations

import time
from typing import Any

import typer

from corral.cli.common import call
from corral.cli.output import EXIT_USAGE, ago, console, die, print_json, table
from corral.client import load_config
from corral.model.units import parse_duration

__all__ = ["app"]

app = typer.Typer(help="Make, list and revoke join tokens.", no_args_is_help=True)


def _until(when: float | None) -> str:
    return "never" if when is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(when))


@app.command()
def create(
    ttl: str = typer.Option("24h", "--ttl", help="How long it can be used (0: forever)."),
    description: str = typer.Option("", "--description", help="A note for `token list`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Make a join token and print the command a new machine joins with."""
    try:
        seconds = parse_duration(ttl) if ttl not in ("0", "") else 0.0
    except ValueError as exc:
        die(f"--ttl: {exc}", EXIT_USAGE)
    answer: dict[str, Any] = call(lambda c: c.create_token(ttl=seconds,
                                                           description=description))
    command = (f"corral agent --join {load_config().addr} --token {answer['token']} "
               f"--ca-cert-hash {answer['ca_cert_hash']}")
    if as_json:
        print_json({**answer, "join_command": command})
        return
    console.print(f"join token {answer['id']} (valid until {_until(answer['expires_at'])}; "
                  "shown only now):")
    console.print(answer["token"])
    console.print("On a new machine (use the address it reaches this server at):")
    console.print(f"  {command}")


@app.command("list")
def list_tokens(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every join token: id, state, expiry, description (never the secret)."""
    tokens: list[dict[str, Any]] = call(lambda c: c.list_tokens())
    if as_json:
        print_json(tokens)
        return
    table(["ID", "STATE", "EXPIRES", "AGE", "DESCRIPTION"],
          [(t["id"], t["state"], _until(t["expires_at"]), ago(t["created_at"]),
            t["description"]) for t in tokens])


@app.command()
def revoke(token_id: str = typer.Argument(..., help="Token id (the part before the dot)."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Refuse every further join with a token."""
    answer: dict[str, Any] = call(lambda c: c.revoke_token(token_id.split(".", 1)[0]))
    if as_json:
        print_json(answer)
    else:
        console.print(f"join token {answer['id']}: {answer['state']}")
