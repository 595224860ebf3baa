"""Artifact archives: pack a directory deterministically, validate and unpack one safely.

An artifact is the directory a spec names (`artifact: ./web`). The CLI packs it with
`pack_directory` into a gzip-compressed tar whose bytes depend only on the tree's names,
contents, symlink targets and exec bits, so its sha256 is a content address: packing an
unchanged tree gives the same digest and never causes a new deployment. The server runs
`inspect_archive` on every upload before storing it under that digest; each agent fetches the
blob once per node (`corral.agent.artifacts`) and unpacks it into a task directory with
`safe_extract`. A root filesystem (`isolation.rootfs`) travels the same way, with
`rootfs=True` everywhere: the rules of `corral.archive_check` for a rootfs, no directory
left out when packing, hard links kept as links, and an uncompressed tar accepted as input
(what `docker export` writes).

Archives come from the network, so reading one assumes hostile input. One member checker
(`archive_check.Checker`) holds every rule: no absolute names, no `..`, no device, fifo or
sparse members, links that stay inside the root, no member written through a symlink or a
file, bounded total size and member count. `inspect_archive` runs it without writing
anything; `safe_extract` runs it first and then again in the pass that writes, so a file
swapped between the two passes gains nothing. The writer opens every directory with
O_NOFOLLOW relative to its parent's descriptor and creates files with O_EXCL, so even a rule
missed here cannot make it write through a link (a rootfs's absolute symlinks included);
everything goes to a temporary directory beside the destination that is renamed into place
only when the whole archive has been read and checked.

tarfile's own extraction (even with `filter="data"`) is not used: it decides per member, after
earlier members are on disk, and it resolves paths through the filesystem rather than through
the descriptors this module controls.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from tarfile import TarInfo
from typing import BinaryIO, Protocol

from corral.archive_check import ArchiveError, Checker, Kind, member_error, normalize

__all__ = [
    "ArchiveError",
    "ArtifactInfo",
    "inspect_archive",
    "pack_directory",
    "parse_digest",
    "safe_extract",
    "sha256_file",
]

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 16
_SKIP_DIRS = frozenset({"__pycache__", ".git"})
# Decompressed bytes that are not file data (tar headers, pax records, padding) are allowed
# this much plus a per-member allowance; a pax header claiming gigabytes hits this bound
# instead of being read into memory.
_METADATA_SLACK = 1 << 20
_METADATA_PER_MEMBER = 8192  # room for pax records of a PATH_MAX name and link target
_FILE_MODE = 0o644
_EXEC_MODE = 0o755
_DIR_MODE = 0o755
_TAR_MAGIC_AT = 257  # "ustar" in the first header of a POSIX (and GNU) tar


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactInfo:
    """What packing or inspecting an archive found.

    `size` is the archive's own length in bytes (what is uploaded and stored), `files` the
    number of members of any kind (what `max_files` bounds), `unpacked_size` the sum of the
    regular files' sizes (what `max_bytes` bounds), `skipped` the device nodes, fifos and
    sockets a rootfs had, left out (runc gives a container its own /dev).
    """

    digest: str
    size: int
    files: int
    unpacked_size: int
    skipped: int = 0


def sha256_file(path: Path) -> str:
    """Return the `sha256:<hex>` digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def parse_digest(s: str) -> str:
    """Return `s` if it is a `sha256:` digest of 64 lowercase hex digits, else raise."""
    if not isinstance(s, str) or not _DIGEST_RE.fullmatch(s):
        raise ArchiveError(f"invalid digest {s!r}: expected 'sha256:' and 64 lowercase hex digits")
    return s


# --- reading -------------------------------------------------------------------------------------

class _HashingReader:
    """Raw archive bytes on their way to gzip (or tarfile): hashed and counted in one pass."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.sha.update(data)
        self.count += len(data)
        return data

    def seek(self, pos: int, /) -> int:
        # gzip only seeks to rewind, which reading front to back never asks for.
        raise io.UnsupportedOperation("not seekable")


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _BudgetReader:
    """Decompressed bytes on their way to tarfile, refused past `limit`.

    The stream is handed to tarfile in its sequential `r|` mode, so skipping a member's data
    means decompressing it; the budget keeps that, and tarfile's reading of header records
    it never shows us, proportional to what the checker has admitted.
    """

    def __init__(self, inner: _Source, limit: int) -> None:
        self._inner = inner
        self.limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(f"archive holds more than {self.limit} bytes of data and metadata")
        return data

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("read-only")

    def tell(self) -> int:
        return self.count

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("not seekable")

    def close(self) -> None:
        pass


_OnMember = Callable[[tarfile.TarFile, TarInfo, str, Kind], None]


def _is_gzip(raw: BinaryIO, path: Path, *, plain_ok: bool) -> bool:
    """True for a gzip stream, False for a plain tar (only if `plain_ok`); else raise.
    Leaves `raw` at its start."""
    head = raw.read(_TAR_MAGIC_AT + 5)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return True
    if plain_ok and head[_TAR_MAGIC_AT:] == b"ustar":
        return False
    what = "a tar archive (plain or gzip-compressed)" if plain_ok else \
        "a gzip-compressed tar archive"
    raise ArchiveError(f"{path.name}: not {what}")


def _scan(path: Path, checker: Checker, on_member: _OnMember | None) -> ArtifactInfo:
    """Read the archive once, in order, checking each member and handing it to `on_member`."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the ExitStack below
    except OSError as exc:
        raise ArchiveError(f"cannot open archive {path}: {exc.strerror}") from exc
    with contextlib.ExitStack() as stack:
        stack.enter_context(raw)
        compressed = _is_gzip(raw, path, plain_ok=checker.rootfs)
        hashing = _HashingReader(raw)
        tar_bytes: _Source = hashing
        if compressed:
            tar_bytes = stack.enter_context(gzip.GzipFile(fileobj=hashing, mode="rb"))
        budget = _BudgetReader(tar_bytes, checker.max_bytes + _METADATA_SLACK)
        try:
            tf = stack.enter_context(tarfile.open(fileobj=budget, mode="r|"))
            while (m := tf.next()) is not None:
                admitted = checker.admit(m)
                budget.limit = (
                    checker.max_bytes + _METADATA_SLACK + _METADATA_PER_MEMBER * checker.members
                )
                if admitted is not None and on_member is not None:
                    try:
                        on_member(tf, m, *admitted)
                    except OSError as exc:
                        # ELOOP/ENOTDIR here mean a link was met where the checker saw none.
                        raise member_error(
                            m.name, f"cannot unpack: {exc.strerror or exc}") from exc
            checker.finish()
            end = tf.offset
            # Read to the end so gzip checks its CRC and length: a truncated or corrupted
            # upload fails here even when the tar end-of-archive marker came through.
            while budget.read(_CHUNK):
                pass
            # tarfile ends quietly at a short or missing header as well as at the zero
            # block that marks the end; only the marker leaves a whole block after `end`.
            # Without it, a plain tar was cut short (gzip's own check covers the other).
            if budget.count < end + tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker")
            while hashing.read(_CHUNK):
                pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ArchiveError(f"{path.name}: corrupt or truncated archive: {exc}") from exc
    return ArtifactInfo(
        digest=f"sha256:{hashing.sha.hexdigest()}",
        size=hashing.count,
        files=checker.members,
        unpacked_size=checker.total,
        skipped=checker.skipped,
    )


def inspect_archive(path: Path, *, max_bytes: int, max_files: int = 100_000,
                    rootfs: bool = False) -> ArtifactInfo:
    """Validate an archive without extracting it; raise `ArchiveError` naming the culprit.
    `rootfs`: check it as a root filesystem (see `corral.archive_check`)."""
    return _scan(path, Checker(max_bytes=max_bytes, max_files=max_files, rootfs=rootfs), None)


# --- writing -------------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Writer:
    """Creates members under a root directory descriptor without ever following a link.

    Each directory is opened relative to its parent with O_NOFOLLOW, so a symlink anywhere
    on the way fails with ELOOP/ENOTDIR instead of being traversed. The last parent opened
    is kept, since archives list a directory's entries together.
    """

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._cached: tuple[str, int] | None = None

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, rel: str) -> int:
        fd = os.dup(self._root_fd)
        try:
            for part in rel.split("/") if rel else ():
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, _DIR_MODE, dir_fd=fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(next_fd, _DIR_MODE)  # mkdir's mode is cut by the umask
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent_fd(self, parent: str) -> int:
        if self._cached is not None and self._cached[0] == parent:
            return self._cached[1]
        self.close()
        fd = self._open_dir(parent)
        self._cached = (parent, fd)
        return fd

    def __call__(self, tf: tarfile.TarFile, m: TarInfo, name: str, kind: Kind) -> None:
        # The checker has normalized `name`; refusing `..` again keeps this class safe alone.
        if name.startswith("/") or {"", ".", ".."} & set(name.split("/")):
            raise member_error(m.name, "path escapes the artifact root")
        parent, _, base = name.rpartition("/")
        if kind is Kind.DIR:
            os.fchmod(self._parent_fd(name), _DIR_MODE)
            return
        dir_fd = self._parent_fd(parent)
        if kind is Kind.SYMLINK:
            os.symlink(m.linkname, base, dir_fd=dir_fd)
        elif kind is Kind.HARDLINK:
            src_parent, _, src_base = normalize(m.linkname).rpartition("/")
            src_fd = self._open_dir(src_parent)
            try:
                os.link(src_base, base, src_dir_fd=src_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            finally:
                os.close(src_fd)
        else:
            self._write_file(tf, m, base, dir_fd)

    def _write_file(self, tf: tarfile.TarFile, m: TarInfo, base: str, dir_fd: int) -> None:
        data = tf.extractfile(m)
        if data is None:
            raise member_error(m.name, "no data for a regular file")
        fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as out:
            while chunk := data.read(_CHUNK):
                out.write(chunk)
            os.fchmod(out.fileno(), _EXEC_MODE if m.mode & 0o111 else _FILE_MODE)


def safe_extract(path: Path, dest: Path, *, max_bytes: int, max_files: int = 100_000,
                 rootfs: bool = False) -> ArtifactInfo:
    """Check the archive, then unpack it so that `dest` appears complete or not at all.

    `dest` may be missing or an empty directory (it keeps its mode); anything else is refused.
    Files get mode 0o755 if the archive gave them any exec bit, else 0o644; directories 0o755;
    owners are not kept. `rootfs`: unpack it as a root filesystem (see `corral.archive_check`;
    special files are skipped and counted in the result).
    """
    info = inspect_archive(path, max_bytes=max_bytes, max_files=max_files, rootfs=rootfs)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        dest_mode = _DIR_MODE
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise ArchiveError(f"destination {dest} exists and is not a directory")
        if any(os.scandir(dest)):
            raise ArchiveError(f"destination {dest} is not empty")
        dest_mode = stat.S_IMODE(st.st_mode)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as exc:
        raise ArchiveError(f"cannot create a directory beside {dest}: {exc.strerror}") from exc
    try:
        root_fd = os.open(tmp, _DIR_FLAGS)
        writer = _Writer(root_fd)
        try:
            _scan(path, Checker(max_bytes=max_bytes, max_files=max_files, rootfs=rootfs),
                  writer)
            os.fchmod(root_fd, dest_mode)
        finally:
            writer.close()
            os.close(root_fd)
        try:
            # rename(2) atomically replaces an empty directory and fails on a non-empty one,
            # so a destination filled in the meantime is never merged into.
            os.rename(tmp, dest)
        except OSError as exc:
            raise ArchiveError(f"cannot move the unpacked tree to {dest}: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# --- packing -------------------------------------------------------------------------------------

def _tarinfo(name: str, kind: Kind, *, mode: int, size: int = 0, target: str = "") -> TarInfo:
    info = TarInfo(name)
    info.type = {
        Kind.DIR: tarfile.DIRTYPE,
        Kind.FILE: tarfile.REGTYPE,
        Kind.SYMLINK: tarfile.SYMTYPE,
        Kind.HARDLINK: tarfile.LNKTYPE,
    }[kind]
    info.mode = mode
    info.size = size
    info.linkname = target
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _walk(root: Path, rel: str = "", *, skip: frozenset[str] = _SKIP_DIRS
          ) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Yield (relative name, path, lstat) depth-first, siblings sorted by name.

    The order depends only on names, never on the filesystem's directory order, which is one
    of the things that make the archive bytes reproducible.
    """
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and entry.name in skip:
            continue
        yield name, Path(entry.path), st
        if is_dir:
            yield from _walk(root, name, skip=skip)


def _check_source_symlink(root_real: str, path: Path) -> str:
    target = os.readlink(path)
    if os.path.isabs(target):
        raise ArchiveError(f"{path}: symlink target {target!r} is absolute; use a relative one")
    real = os.path.realpath(path)
    if real != root_real and not real.startswith(root_real + os.sep):
        raise ArchiveError(f"{path}: symlink target {target!r} points outside {root_real}")
    return target


def _is_special(mode: int) -> bool:
    return not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode) or stat.S_ISREG(mode))


def pack_directory(src: Path, dest: Path, *, rootfs: bool = False) -> ArtifactInfo:
    """Pack `src` into a reproducible tar.gz at `dest` and return its digest and counts.

    Entries are sorted, owners and times zeroed, modes reduced to 0o755/0o644, and the gzip
    header carries neither a name nor a time, so the same tree always gives the same bytes.
    `__pycache__` and `.git` directories are left out; symlinks must stay inside `src`;
    fifos, sockets and devices are refused. `dest` is written beside itself and renamed.

    `rootfs`: pack `src` as a root filesystem: nothing is left out, symlink targets are kept
    as they are (they resolve inside the container), files hard-linked to each other stay
    linked (a rootfs has many, git's or perl's), and fifos, sockets and devices are skipped
    and counted in `skipped`.
    """
    if not src.is_dir():
        raise ArchiveError(f"{src}: not a directory")
    root_real = os.path.realpath(src)
    if Path(os.path.realpath(dest)).is_relative_to(root_real):
        raise ArchiveError(f"{dest}: the archive cannot be written inside {src}")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    checker = Checker(max_bytes=2**63, max_files=2**63, rootfs=rootfs)
    links: dict[tuple[int, int], str] = {}
    skipped = 0
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
        ) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, path, st in _walk(src, skip=frozenset() if rootfs else _SKIP_DIRS):
                if rootfs and _is_special(st.st_mode):
                    skipped += 1
                    continue
                info = _pack_entry(tf, root_real, name, path, st, rootfs=rootfs, links=links)
                checker.admit(info)
            checker.finish()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return ArtifactInfo(
        digest=sha256_file(dest),
        size=dest.stat().st_size,
        files=checker.members,
        unpacked_size=checker.total,
        skipped=skipped,
    )


def _pack_entry(tf: tarfile.TarFile, root_real: str, name: str, path: Path,
                st: os.stat_result, *, rootfs: bool, links: dict[tuple[int, int], str]
                ) -> TarInfo:
    """Add one entry. `links` maps (device, inode) of a multiply-linked file packed so far
    to its name; only a rootfs uses it, so an artifact's bytes stay what they always were."""
    if stat.S_ISDIR(st.st_mode):
        info = _tarinfo(name, Kind.DIR, mode=_DIR_MODE)
        tf.addfile(info)
        return info
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path) if rootfs else _check_source_symlink(root_real, path)
        info = _tarinfo(name, Kind.SYMLINK, mode=0o777, target=target)
        tf.addfile(info)
        return info
    if not stat.S_ISREG(st.st_mode):
        what = ("a fifo" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device node" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        raise ArchiveError(f"{path}: {what} cannot be packed")
    first = links.get((st.st_dev, st.st_ino)) if rootfs and st.st_nlink > 1 else None
    if first is not None:
        info = _tarinfo(name, Kind.HARDLINK, mode=_FILE_MODE, target=first)
        tf.addfile(info)
        return info
    # Opened without following links and re-checked, so a file swapped for a link or a
    # fifo between the directory scan and the read is refused rather than packed.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise ArchiveError(f"{path}: changed while packing")
        mode = _EXEC_MODE if fst.st_mode & 0o111 else _FILE_MODE
        info = _tarinfo(name, Kind.FILE, mode=mode, size=fst.st_size)
        try:
            tf.addfile(info, f)
        except OSError as exc:
            raise ArchiveError(f"{path}: changed while packing ({exc})") from exc
    if rootfs and fst.st_nlink > 1:
        links[(fst.st_dev, fst.st_ino)] = name
    return info
