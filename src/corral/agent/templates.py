"""An instance's `templates`: Jinja2 files from its artifact, rendered from the service
catalog into its task dir, and rendered again whenever the catalog changes.

```
 artifact (unpacked in task/)   catalog (agent/catalog.py, one long poll per namespace)
        |  source                     |  services, service()
        v                             v
   TemplateRenderer.render(catalogs) -- bytes differ from task/<destination>? --> write
        |                                                              (temp + rename)
        v
   RenderResult(changed, errors) --> actions_for(changed) --> runner: restart | signal | -
```

`TemplateRenderer` is synchronous and does the file work; it runs in a thread
(`asyncio.to_thread`) so a large template never stalls the agent's loop. It renders every
template first and writes afterwards, so a pass cut short (a template asked for a catalog
not fetched yet: `NeedCatalog`) has written nothing and loses no change. A file is written
only when its bytes differ from what is on disk, and the catalog is in one canonical order
(`canonical_catalog`), so an unchanged catalog never rewrites a file or restarts anything.

`InstanceTemplates` is the runner's side: it subscribes to the catalogs the templates
read, renders them all before the first start (`first_render`, which raises
`TemplateError` with the file and line of the first error), then re-renders on each catalog
change (`watch`), coalescing changes that arrive within `coalesce` seconds, and hands the
runner what to do (`ChangeActions`: one restart at most, or de-duplicated signals).

Paths. `source` is relative to the artifact (the task dir it is unpacked into), may go
through symlinks that stay inside it, and is read through directory descriptors opened
with O_NOFOLLOW along the resolved path, so a link swapped in meanwhile (the task dir is
the instance's to write) makes the read fail rather than leave the task dir. `destination`
is written the same way, with no symlink followed at all: the instance cannot make the agent
write outside its task dir. Jinja runs in an `ImmutableSandboxedEnvironment` (a sandbox
that also refuses to mutate lists and dicts: the catalog objects are shared by every
instance of the node) with `StrictUndefined` (a typo is an error, not an empty string).

Neighbours: `agent/runner.py` (the only user), `agent/catalog.py`, `model/application.py`
`TemplateSpec`, `spec/checks.py` (the same path rules at apply time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.agent.catalog import Catalog, CatalogWatcher, Subscription
from corral.clock import Clock
from corral.model.application import TemplateSpec

__all__ = [
    "ChangeActions", "InstanceTemplates", "NeedCatalog", "RenderResult", "TemplateError",
    "TemplateRenderer", "actions_for", "read_source", "relative_parts", "write_if_changed",
]

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 1 << 20
MAX_OUTPUT_BYTES = 16 << 20
MAX_NAMESPACES = 8
_FILE_MODE = 0o644


class TemplateError(Exception):
    """A template cannot be rendered or written; the message names the file (and line)."""


class NeedCatalog(Exception):  # a request to the caller, not an error
    """Rendering needs the catalog of `namespace`, which the caller has not fetched yet."""

    def __init__(self, namespace: str) -> None:
        super().__init__(namespace)
        self.namespace = namespace


# --- paths ----------------------------------------------------------------------------------

def relative_parts(path: str, what: str) -> tuple[str, ...]:
    """`conf/./a.conf` -> ("conf", "a.conf"). Refuses what could leave the directory it is
    relative to: absolute, `~`, `..` anywhere, or nothing at all."""
    if path.startswith(("/", "~")):
        raise TemplateError(f"{what} {path!r} must be a relative path")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts:
        raise TemplateError(f"{what} {path!r} names no file")
    if ".." in parts:
        raise TemplateError(f"{what} {path!r} must not contain '..'")
    return parts


def _open_dir(root: str, parts: Sequence[str], *, create: bool) -> int:
    """A descriptor of root/parts, each step opened relative to the last with O_NOFOLLOW:
    a symlink (or a non-directory) anywhere on the way is an OSError, never followed."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            step = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=fd)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_source(root: Path, source: str) -> str:
    """The text of `source`, relative to `root` (the artifact). Symlinks are followed only
    while they stay inside `root`."""
    parts = relative_parts(source, "source")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if not real.startswith(real_root + os.sep):
        raise TemplateError(f"source {source!r} leads outside the artifact (to {real})")
    inner = os.path.relpath(real, real_root).split(os.sep)
    try:
        dir_fd = _open_dir(real_root, inner[:-1], create=False)
        try:
            fd = os.open(inner[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except FileNotFoundError:
        raise TemplateError(f"source {source!r} is not in the artifact") from None
    except OSError as exc:
        raise TemplateError(f"source {source!r}: cannot open it ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TemplateError(f"source {source!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise TemplateError(f"source {source!r} is larger than {MAX_SOURCE_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise TemplateError(f"source {source!r} is not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None


def write_if_changed(root: Path, destination: str, data: bytes) -> bool:
    """Write `data` to root/destination (temp file + rename, mode 0644) unless it holds
    exactly these bytes already; True if written. Missing directories are created; no
    symlink is followed, the destination's own included (it is replaced, not written
    through)."""
    parts = relative_parts(destination, "destination")
    name = parts[-1]
    try:
        dir_fd = _open_dir(os.path.realpath(root), parts[:-1], create=True)
    except OSError as exc:
        raise TemplateError(f"destination {destination!r}: a directory on its path is a "
                            f"symlink or not a directory ({exc.strerror})") from None
    try:
        if _read_current(dir_fd, name, len(data)) == data:
            return False
        tmp = f".{name}.corral-tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     _FILE_MODE, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), _FILE_MODE)  # whatever the agent's umask
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    except OSError as exc:
        raise TemplateError(f"destination {destination!r}: cannot write it "
                            f"({exc.strerror or exc})") from None
    finally:
        os.close(dir_fd)
    return True


def _read_current(dir_fd: int, name: str, size: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError:
        return None  # missing, or a symlink: replaced either way
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(size + 1)


# --- rendering ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class RenderResult:
    changed: tuple[TemplateSpec, ...]  # written because their bytes changed, in spec order
    errors: tuple[str, ...]  # one message per template that could not be rendered or written
    namespaces: frozenset[str]  # catalogs the templates read


class TemplateRenderer:
    """Renders one instance's templates. `instance` is the `instance` variable of the
    templates (id, app, service, namespace, node, address, ports, version); `env` the
    instance's environment."""

    def __init__(self, *, templates: Sequence[TemplateSpec], task_dir: Path,
                 instance: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.templates = tuple(templates)
        self._root = task_dir
        self._instance = {k: instance[k] for k in sorted(instance)}
        self._env = dict(sorted(env.items()))
        self._names: set[str] = set()
        self._jinja = ImmutableSandboxedEnvironment(
            loader=jinja2.FunctionLoader(self._load), undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True, autoescape=False, cache_size=0)

    def _load(self, name: str) -> tuple[str, str, Callable[[], bool]]:
        # Also for `{% include %}` and `{% import %}`: relative to the artifact, same rules.
        text = read_source(self._root, name)
        self._names.add(name)
        return text, name, lambda: False

    def render(self, catalogs: Mapping[str, Catalog]) -> RenderResult:
        """Render every template from `catalogs` (namespace -> catalog), then write those
        whose bytes changed. Raises `NeedCatalog` (before writing anything) when a template
        reads a namespace missing from `catalogs`."""
        used: set[str] = set()
        outputs: list[tuple[TemplateSpec, bytes]] = []
        errors: list[str] = []
        for template in self.templates:
            try:
                outputs.append((template, self.render_one(template, catalogs, used)))
            except TemplateError as exc:
                errors.append(str(exc))
        changed = []
        for template, data in outputs:
            try:
                if write_if_changed(self._root, template.destination, data):
                    changed.append(template)
            except TemplateError as exc:
                errors.append(f"template {template.source}: {exc}")
        return RenderResult(changed=tuple(changed), errors=tuple(errors),
                            namespaces=frozenset(used))

    def render_one(self, template: TemplateSpec, catalogs: Mapping[str, Catalog],
                   used: set[str] | None = None) -> bytes:
        used = set() if used is None else used
        try:
            compiled = self._jinja.get_template(template.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {exc.name or template.source} line {exc.lineno}: "
                                f"{exc.message}") from None
        context = self._context(catalogs, used)
        chunks: list[str] = []
        size = 0
        try:
            for chunk in compiled.generate(**context):
                size += len(chunk)
                if size > MAX_OUTPUT_BYTES:
                    raise TemplateError(f"template {template.source}: output larger than "
                                        f"{MAX_OUTPUT_BYTES} bytes")
                chunks.append(chunk)
        except (TemplateError, NeedCatalog):
            raise
        except jinja2.TemplateSyntaxError as exc:  # an included template's
            raise TemplateError(f"template {exc.name or template.source} line {exc.lineno}: "
                                f"{exc.message}") from None
        except Exception as exc:
            raise TemplateError(self._describe(exc, template.source)) from None
        return "".join(chunks).encode()

    def _describe(self, exc: Exception, source: str) -> str:
        # Jinja rewrites the traceback so that template frames carry the template's name
        # and line: the innermost one is where it went wrong (an include's, maybe).
        name, line = source, None
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename in self._names:
                name, line = filename, tb.tb_lineno
            tb = tb.tb_next
        if isinstance(exc, jinja2.TemplateError) and exc.message:
            message = exc.message
        else:
            message = f"{type(exc).__name__}: {exc}"
        return f"template {name} line {line}: {message}" if line else \
            f"template {name}: {message}"

    def _context(self, catalogs: Mapping[str, Catalog], used: set[str]) -> dict[str, Any]:
        own_ns, own_app = str(self._instance["namespace"]), str(self._instance["app"])
        own = catalogs.get(own_ns)
        if own is None:
            raise NeedCatalog(own_ns)
        used.add(own_ns)
        services = {str(e["service"]): e["instances"] for e in own["services"]
                    if e.get("app") == own_app}

        def service(name: str, app: str | None = None,
                    namespace: str | None = None) -> list[Any]:
            ns, app_name = namespace or own_ns, app or own_app
            catalog = catalogs.get(ns)
            if catalog is None:
                raise NeedCatalog(ns)
            used.add(ns)
            for entry in catalog["services"]:
                if entry.get("app") == app_name and entry.get("service") == name:
                    return list(entry["instances"])
            if (ns, app_name) == (own_ns, own_app):
                # A typo in the template's own app: an error, as an undefined name is.
                raise jinja2.UndefinedError(
                    f"service({name!r}): app {own_app} has no service {name!r} (it has: "
                    f"{', '.join(sorted(services)) or 'none'})")
            return []  # another app's: it may not be deployed yet

        return {"services": services, "service": service, "instance": self._instance,
                "env": self._env}


# --- what a change does ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeActions:
    """What the runner does after a re-render: restart (naming the first template that asks
    for it; signals are then moot), or send each signal once; `noop` templates add nothing."""

    changed: tuple[str, ...]  # destinations written
    restart: str | None = None
    signals: tuple[str, ...] = ()


def _signal_name(name: str) -> str:
    bare = name.strip().upper()
    return bare if bare.startswith("SIG") else f"SIG{bare}"


def actions_for(changed: Sequence[TemplateSpec]) -> ChangeActions:
    destinations = tuple(t.destination for t in changed)
    for template in changed:
        if template.on_change == "restart":
            return ChangeActions(changed=destinations, restart=template.destination)
    signals: list[str] = []
    for template in changed:
        if template.on_change.startswith("signal:"):
            name = _signal_name(template.on_change.removeprefix("signal:"))
            if name not in signals:
                signals.append(name)
    return ChangeActions(changed=destinations, signals=tuple(signals))


# --- the runner's side ----------------------------------------------------------------------

class InstanceTemplates:
    """One instance's templates kept rendered from the catalogs they read."""

    def __init__(self, *, renderer: TemplateRenderer, catalog: CatalogWatcher,
                 namespace: str, clock: Clock, name: str = "",
                 coalesce: float = 0.5, lock: asyncio.Lock | None = None) -> None:
        self._renderer = renderer
        self._catalog = catalog
        self._clock = clock
        self._name = name
        self._coalesce = coalesce
        # Held while files are written; the runner holds it while it starts the process, so
        # a process never starts during a write it would then miss the action of.
        self._lock = lock or asyncio.Lock()
        self._wake = asyncio.Event()
        self._subs: dict[str, Subscription] = {}
        self._subscribe(namespace)

    def _subscribe(self, namespace: str) -> None:
        if namespace not in self._subs:
            self._subs[namespace] = self._catalog.subscribe(namespace, self._wake)

    def close(self) -> None:
        for sub in self._subs.values():
            sub.close()
        self._subs.clear()

    def waiting_reason(self) -> str:
        missing = [(ns, s.error) for ns, s in sorted(self._subs.items()) if s.latest is None]
        errors = "; ".join(f"{ns}: {err}" for ns, err in missing if err)
        names = ", ".join(ns for ns, _ in missing)
        return f"waiting for the service catalog of namespace {names}" + \
            (f" ({errors})" if errors else "")

    async def render(self) -> RenderResult:
        """One pass over every template, fetching the catalogs they turn out to read."""
        for _ in range(MAX_NAMESPACES + 1):
            catalogs = {ns: await sub.catalog() for ns, sub in list(self._subs.items())}
            try:
                async with self._lock:
                    return await asyncio.to_thread(self._renderer.render, catalogs)
            except NeedCatalog as need:
                if len(self._subs) >= MAX_NAMESPACES:
                    break
                self._subscribe(need.namespace)
        raise TemplateError(f"templates read more than {MAX_NAMESPACES} namespaces")

    async def first_render(self, waiting: Callable[[str], None]) -> RenderResult:
        """Render every template before the first start. Raises `TemplateError` with the
        errors; calls `waiting(reason)` every 5 s while a catalog has not come."""
        job = asyncio.ensure_future(self.render())
        try:
            while not job.done():
                tick = asyncio.ensure_future(self._clock.sleep(5.0))
                try:
                    await asyncio.wait({job, tick}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    tick.cancel()
                if not job.done():
                    waiting(self.waiting_reason())
        except asyncio.CancelledError:
            job.cancel()
            raise
        result = job.result()
        if result.errors:
            raise TemplateError("; ".join(result.errors))
        self._wake.clear()  # what woke it so far is what was just rendered
        return result

    async def watch(self, apply: Callable[[ChangeActions], Awaitable[None]],
                    problem: Callable[[str], None]) -> None:
        """Until cancelled: on each catalog change, wait `coalesce` for more, render, report
        the errors (`problem`, "" once there are none; the old files are kept) and hand
        the changes to `apply`."""
        while True:
            await self._wake.wait()
            await self._clock.sleep(self._coalesce)
            self._wake.clear()
            try:
                result = await self.render()
            except TemplateError as exc:
                problem(str(exc))
                continue
            except Exception:  # a bug must not end re-rendering for good
                log.exception("instance %s: rendering templates failed", self._name)
                await self._clock.sleep(5.0)
                self._wake.set()
                continue
            problem("; ".join(result.errors))
            if result.changed:
                await apply(actions_for(result.changed))
