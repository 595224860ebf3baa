"""The `corral` command: one module per verb, each thin over `corral.client`."""

from __future__ import annotations

import typer

from corral.cli import (
    agent,
    apply,
    config,
    delete,
    deployment,
    dev,
    events,
    history,
    jobs,
    kill,
    logs,
    node,
    nodes,
    ps,
    restart,
    rollback,
    run,
    scale,
    server,
    services,
    sim,
    status,
    token,
    top,
    up,
)
from corral.cli import exec as exec_verb

__all__ = ["app", "main"]

app = typer.Typer(help="Corral: run a multi-service application on a cluster from one file.",
                  no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

app.command()(up.up)
app.command()(up.down)
app.command()(server.server)
app.command()(agent.agent)
app.command()(apply.apply)
app.command()(status.status)
app.command()(services.services)
app.command()(ps.ps)
app.command()(top.top)
app.command()(kill.kill)
app.command(name="exec")(exec_verb.exec_command)
app.command()(logs.logs)
app.command()(events.events)
app.command()(nodes.nodes)
app.command()(config.config)
app.command()(delete.delete)
app.command()(history.history)
app.command()(rollback.rollback)
app.command()(restart.restart)
app.command()(scale.scale)
app.command()(sim.sim)
app.command()(run.run)
app.add_typer(jobs.app, name="jobs")
app.add_typer(deployment.app, name="deployment")
app.add_typer(node.app, name="node")
app.add_typer(token.app, name="token")
app.add_typer(dev.app, name="dev")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
