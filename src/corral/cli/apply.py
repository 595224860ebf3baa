"""`corral apply -f app.yaml [--plan] [--detach] [--timeout 5m] [--json]`

Validates the file locally (every error at once, with lines; each template's `source`
must be a file of its service's artifact directory), packs and uploads each
`artifact:` directory and `isolation.rootfs` directory or tarball (content-addressed, so an
unchanged one is not sent again), shows what changes, applies, then follows each
deployment the apply started (and the instances of the other services) with progress
until it is done (`cli/follow.py`). Exits
1 if a deployment fails (saying why, and which auto-revert started), an instance of
another service fails to start or cannot be placed, or on `--timeout`; 2 if the file is
invalid. Canaries waiting for a promotion end the wait (exit 0, with a note).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import typer

from corral.archive import ArchiveError, ArtifactInfo, pack_directory, safe_extract
from corral.cli.common import call
from corral.cli.follow import Outcome, finish, follow, wait_seconds
from corral.cli.output import EXIT_USAGE, console, die, err_console, table
from corral.client import Client
from corral.model.application import ApplicationSpec, JobSpec, ServiceSpec
from corral.model.codec import to_data
from corral.spec import SpecError, load_spec_file

__all__ = ["apply"]


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


def template_source_problems(spec: ApplicationSpec, base: Path) -> list[str]:
    """`templates[i].source` files missing from their service's local artifact directory
    (`path: message` each). A digest artifact cannot be looked into: its agent says."""
    problems = []
    for name, service in spec.services.items():
        artifact = service.artifact
        if not service.templates or artifact is None or artifact.startswith("sha256:"):
            continue
        root = (base / artifact).resolve()
        if not root.is_dir():
            continue  # the upload says so
        for i, template in enumerate(service.templates):
            path = (root / template.source).resolve()
            if not path.is_relative_to(root):
                problem = f"{template.source!r} leads outside the artifact directory " \
                          f"{artifact} (to {path})"
            elif not path.is_file():
                problem = f"{template.source!r} is not a file in the artifact directory " \
                          f"{artifact} (looked at {path})"
            else:
                continue
            problems.append(f"services.{name}.templates[{i}].source: {problem}")
    return problems


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
    problems = template_source_problems(spec, file.resolve().parent)
    if problems:
        die("invalid application spec\n" + "\n".join(f"{file}: {p}" for p in problems),
            EXIT_USAGE)
    wait_s = wait_seconds(timeout)

    async def run(client: Client) -> tuple[dict[str, Any], Outcome | None]:
        resolved = await _upload_artifacts(client, spec, file.resolve().parent,
                                           quiet=as_json)
        started = time.time() - 1
        result: dict[str, Any] = await client.apply(to_data(resolved), dry_run=plan)
        if not as_json:
            _print_diff(result)
        if plan or detach:
            return result, None
        outcome = await follow(client, spec.name, spec.namespace, result["deployments"],
                               timeout=wait_s, since=started, show=not as_json)
        return result, outcome

    result, outcome = call(run)
    finish(result, outcome, as_json=as_json,
           summary=f"[green]{spec.name} version {result['version']} is running[/green]")
