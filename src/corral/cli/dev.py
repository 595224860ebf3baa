"""`corral dev cluster [--hosts N]`: the multi-host test topology, by hand. One server and
N-1 agents, each on its own network namespace host on a private bridge (the harness of
tests/cluster, `corral.testing.hosts.NetnsCluster`), running until Ctrl-C (or SIGTERM),
which tears everything down: processes, instances, cgroups, namespaces, files.

The hosts' addresses are only reachable from inside the namespaces: the command prints how
to run `corral` in the client namespace, and how to partition and heal a host.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import sys
import time
from types import FrameType

import typer

from corral.cli.output import EXIT_FAILED, EXIT_USAGE, console, die, err_console, print_json
from corral.testing.hosts import AgentSpec, NetnsCluster
from corral.testing.netns import enter_argv, unavailable_reason

__all__ = ["app", "dev_cluster"]

app = typer.Typer(help="Development helpers: a multi-host cluster on this machine.",
                  no_args_is_help=True)


def _labels(values: list[str], agents: int) -> dict[int, dict[str, str]]:
    """`hostK:key=value` flags -> labels per agent index (1..agents); default `zone=a`,
    `zone=b`, ... as in the tests."""
    labels = {k: {"zone": chr(ord("a") + (k - 1) % 26)} for k in range(1, agents + 1)}
    for value in values:
        host, _, pair = value.partition(":")
        key, sep, val = pair.partition("=")
        index = host.removeprefix("host")
        if not sep or not key or not index.isdigit() or not 1 <= int(index) <= agents:
            die(f"--label expects hostK:key=value with K in 1..{agents}, got {value!r}",
                EXIT_USAGE)
        labels[int(index)][key] = val
    return labels


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def dev_cluster(
    hosts: int = typer.Option(4, "--hosts", help="Hosts in all: host0 runs the server, "
                                                 "host1..N-1 an agent each."),
    node_ttl: float = typer.Option(3.0, "--node-ttl", help="Server's heartbeat TTL (s)."),
    cpu: str = typer.Option(None, "--cpu", help="Cores each agent offers (default: all)."),
    memory: str = typer.Option(None, "--memory", help="Memory each agent offers."),
    label: list[str] = typer.Option([], "--label", help="hostK:key=value, repeatable "
                                                        "(default zone=a, b, c, ...)."),
    keep_files: bool = typer.Option(False, "--keep-files",
                                    help="Keep data dirs and logs after Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print where things are as JSON."),
) -> None:
    """Run a server and agents on network-namespace hosts until Ctrl-C."""
    if not 2 <= hosts <= 250:
        die("--hosts: 2 to 250 (a server and at least one agent)", EXIT_USAGE)
    reason = unavailable_reason()
    if reason:
        die(reason, EXIT_FAILED)
    labels = _labels(label, hosts - 1)
    specs = [AgentSpec(labels=labels[k], cpu=cpu, memory=memory) for k in range(1, hosts)]
    # SIGTERM and a closed terminal tear down as Ctrl-C does; SIGINT is set too, since a
    # shell starts background jobs with it ignored and `kill -INT` should still work.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    cluster = NetnsCluster(specs, node_ttl=node_ttl, keep_files=keep_files)
    try:
        with cluster:
            _show(cluster, as_json)
            _watch(cluster)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, AssertionError) as exc:
        die(str(exc), EXIT_FAILED)
    err_console.print("cluster stopped; hosts removed" +
                      (f" (files kept in {cluster.root})" if keep_files else ""))


app.command("cluster")(dev_cluster)


def _show(cluster: NetnsCluster, as_json: bool) -> None:
    info = cluster.describe()
    corral = shutil.which("corral") or f"{sys.executable} -m corral.cli.main"
    enter = " ".join(shlex.quote(a) for a in enter_argv(cluster.client_netns))
    info["use"] = f"{enter} env CORRAL_CONFIG_DIR={info['config_dir']} {corral} nodes"
    info["partition"] = f"ip -n {cluster.switch.netns} link set hK down"
    info["heal"] = f"ip -n {cluster.switch.netns} link set hK up"
    if as_json:
        print_json(info)
        sys.stdout.flush()
        return
    for host in info["hosts"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(host["labels"].items()))
        console.print(f"{host['name']:<7} {host['address']:<11} {host['role']:<6} "
                      f"netns {host['netns']:<18} {labels}")
    console.print(f"\nserver {info['server']}; logs in {cluster.root / 'logs'}\n"
                  f"use it (from the client namespace):\n  {info['use']}\n"
                  f"a shell there: {enter} env CORRAL_CONFIG_DIR={info['config_dir']} bash\n"
                  f"partition / heal host K: {info['partition']} / up\n"
                  "Ctrl-C stops everything.")


def _watch(cluster: NetnsCluster) -> None:
    """Until interrupted; says once when a host's process ends (it is not restarted: a
    developer may have killed it on purpose)."""
    reported: set[str] = set()
    while True:
        time.sleep(1)
        for host in cluster.hosts:
            if host.proc is not None and host.proc.poll() is not None and \
                    host.name not in reported:
                reported.add(host.name)
                err_console.print(f"{host.name}: its process exited "
                                  f"{host.proc.returncode}; see {host.log}")
