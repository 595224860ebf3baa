"""`corral apply -f app.yaml [--plan] [--detach] [--timeout 5m] [--json]`

Validates the file locally (every error at once, with lines), packs and uploads each
`artifact:` directory and `isolation.rootfs` directory or tarball (content-addressed, so an
unchanged one is not sent again), shows what changes, applies, then follows the instances
until every service runs its desired count, with progress. Exits 1 if an instance fails
to start or cannot be placed, 2 if the file is invalid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from corral.archive import ArchiveError, ArtifactInfo, pack_directory, safe_extract
from corral.cli.common import call
from corral.cli.output import EXIT_FAILED, EXIT_USAGE, console, die, err_console, print_json, table
from corral.client import Client
from corral.model.application import ApplicationSpec, JobSpec, ServiceSpec
from corral.model.codec import to_data
from corral.model.units import parse_duration
from corral.spec import SpecError, load_spec_file

__all__ = ["apply", "wait_for_app"]

RUNNING = ("running", "healthy")


# A root filesystem may be given as a tarball (what `docker export` or `tar -C dir -c .`
# writes); it is unpacked and packed again so its digest depends only on the tree.
_ROOTFS_TARBALLS = (".tar", ".tar.gz", ".tgz")
# Bounds for unpacking the user's own tarball on their machine: generous, since the server
# applies its own limit to what is uploaded.
_LOCAL_MAX_BYTES = 1 << 40
_LOCAL_MAX_FILES = 10_000_000

_Spec = TypeVar("_Spec", ServiceSpec, JobSpec)


def _pack(src: Path, archive: Path, kind: str) -> ArtifactInfo:
    if kind == "artifact":
        return pack_directory(src, archive)
    if src.is_dir():
        return pack_directory(src, archive, rootfs=True)
    with tempfile.TemporaryDirectory(prefix="corral-rootfs-") as tmp:
        unpacked = safe_extract(src, Path(tmp) / "rootfs", max_bytes=_LOCAL_MAX_BYTES,
                                max_files=_LOCAL_MAX_FILES, rootfs=True)
        packed = pack_directory(Path(tmp) / "rootfs", archive, rootfs=True)
    return dataclasses.replace(packed, skipped=unpacked.skipped)


async def _upload_artifacts(client: Client, spec: ApplicationSpec, base: Path,
                            quiet: bool) -> ApplicationSpec:
    """Each `artifact` directory and `isolation.rootfs` (a directory or a tarball) packed,
    uploaded unless the server has it, and replaced by its digest."""
    cache: dict[tuple[Path, str], str] = {}

    async def upload(value: str | None, field: str, kind: str) -> str | None:
        if value is None or value.startswith("sha256:"):
            return value
        src = (base / value).resolve()
        if kind == "artifact" and not src.is_dir():
            die(f"{field}: {value!r} is not a directory (looked at {src})", EXIT_USAGE)
        tarball = src.is_file() and src.name.endswith(_ROOTFS_TARBALLS)
        if kind == "rootfs" and not (src.is_dir() or tarball):
            die(f"{field}: {value!r} is not a directory or a .tar, .tar.gz or .tgz file "
                f"(looked at {src})", EXIT_USAGE)
        if (src, kind) not in cache:
            with tempfile.TemporaryDirectory(prefix="corral-pack-") as tmp:
                archive = Path(tmp) / f"{kind}.tar.gz"
                try:
                    info = await asyncio.to_thread(_pack, src, archive, kind)
                except ArchiveError as exc:
                    die(f"{field}: {exc}", EXIT_USAGE)
                if info.skipped and not quiet:
                    err_console.print(f"{field}: left out {info.skipped} device nodes, fifos "
                                      "and sockets (runc gives each container its own /dev)")
                if not await client.artifact_exists(info.digest, kind=kind):
                    if not quiet:
                        err_console.print(f"uploading {value} ({info.files} files, "
                                          f"{info.size} bytes) as {info.digest[:19]}")
                    await client.upload_artifact(info.digest, archive, kind=kind)
                cache[src, kind] = info.digest
        return cache[src, kind]

    async def resolve(s: _Spec, where: str) -> _Spec:
        rootfs = await upload(s.isolation.rootfs, f"{where}.isolation.rootfs", "rootfs")
        return dataclasses.replace(
            s, artifact=await upload(s.artifact, f"{where}.artifact", "artifact"),
            isolation=dataclasses.replace(s.isolation, rootfs=rootfs))

    services = {n: await resolve(s, f"services.{n}") for n, s in spec.services.items()}
    jobs = {n: await resolve(j, f"jobs.{n}") for n, j in spec.jobs.items()}
    return dataclasses.replace(spec, services=services, jobs=jobs)


def _print_diff(result: dict[str, Any]) -> None:
    verb = "created" if result["created"] else ("updated" if result["changed"] else "unchanged")
    console.print(f"application [bold]{result['name']}[/bold] ({result['namespace']}) "
                  f"version {result['version']}: {verb}")
    rows = []
    for c in result["diff"]:
        before, after = c["instances"]
        count = f"{before} -> {after}" if c["kind"] == "service" else ""
        rows.append((c["kind"], c["name"], c["change"], count, ", ".join(c["fields"])))
    if rows:
        table(("KIND", "NAME", "CHANGE", "INSTANCES", "FIELDS"), rows)


def _failures(app: dict[str, Any], since: float) -> list[str]:
    problems = []
    for inst in app["instances"]:
        if inst["desired"] != "run":
            continue
        if inst["state"] == "failed" and inst["updated_at"] >= since:
            problems.append(f"{inst['service']}/{inst['id']}: failed: {inst['reason']}")
        if inst["state"] == "pending" and inst["reason"] not in ("", "waiting for placement"):
            problems.append(f"{inst['service']}/{inst['id']}: pending: {inst['reason']}")
    return problems


def _progress(app: dict[str, Any]) -> dict[str, tuple[int, int, bool]]:
    """service -> (ready, desired, settled): every wanted instance of the current version is
    ready (running for `update.min_healthy_time`) and nothing old is still stopping."""
    out = {}
    for row in app["services"]:
        mine = [i for i in app["instances"] if i["service"] == row["service"]]
        live = [i for i in mine if i["desired"] == "run"]
        leftovers = [i for i in mine if i["desired"] == "stop"]
        out[row["service"]] = (row["ready"], row["desired"],
                               row["ready"] == row["desired"] == len(live) and not leftovers)
    return out


async def wait_for_app(client: Client, name: str, namespace: str, *, timeout: float,
                       since: float, show: bool) -> tuple[bool, list[str], dict[str, Any]]:
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[state]}"), console=err_console,
                  disable=not show, transient=False) as progress:
        tasks: dict[str, Any] = {}
        while True:
            app = await client.get_app(name, namespace)
            for svc, (running, desired, settled) in _progress(app).items():
                if svc not in tasks:
                    tasks[svc] = progress.add_task(svc, total=max(desired, 1), state="")
                states = sorted({i["state"] for i in app["instances"] if i["service"] == svc
                                 and i["desired"] == "run" and i["state"] not in RUNNING})
                progress.update(tasks[svc], completed=running, total=max(desired, 1),
                                state="ready" if settled else ", ".join(states))
            problems = _failures(app, since)
            if problems:
                return False, problems, app
            if all(s for _, _, s in _progress(app).values()):
                return True, [], app
            if time.monotonic() > deadline:
                return False, [f"timed out after {timeout:g}s"], app
            await asyncio.sleep(0.25)


def apply(
    file: Path = typer.Option(..., "-f", "--file", help="Application spec (YAML or JSON)."),
    plan: bool = typer.Option(False, "--plan", help="Show what would change; apply nothing."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not wait for instances."),
    timeout: str = typer.Option("5m", help="How long to wait for instances to run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Apply an application spec: show the diff, then follow it until it runs."""
    try:
        spec = load_spec_file(file)
    except SpecError as exc:
        die(f"invalid application spec\n{exc}", EXIT_USAGE)
    except OSError as exc:
        die(f"cannot read {file}: {exc.strerror}", EXIT_USAGE)
    try:
        wait_s = parse_duration(timeout)
    except ValueError as exc:
        die(f"--timeout: {exc}", EXIT_USAGE)

    async def run(client: Client) -> tuple[dict[str, Any], bool, list[str], dict[str, Any] | None]:
        resolved = await _upload_artifacts(client, spec, file.resolve().parent,
                                           quiet=as_json)
        started = time.time() - 1
        result: dict[str, Any] = await client.apply(to_data(resolved), dry_run=plan)
        if not as_json:
            _print_diff(result)
        if plan or detach:
            return result, True, [], None
        ok, problems, app = await wait_for_app(client, spec.name, spec.namespace,
                                               timeout=wait_s, since=started, show=not as_json)
        return result, ok, problems, app

    result, ok, problems, app = call(run)
    if as_json:
        out = dict(result)
        if app is not None:
            out["ok"] = ok
            out["problems"] = problems
            out["services"] = app["services"]
        print_json(out)
    elif app is not None:
        if ok:
            console.print(f"[green]{spec.name} is running[/green]: " + ", ".join(
                f"{r['service']} {r['running']}/{r['desired']}" for r in app["services"]))
        else:
            for p in problems:
                err_console.print(f"[red]{p}[/red]")
    if not ok:
        raise SystemExit(EXIT_FAILED)
