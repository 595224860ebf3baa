"""The rules every archive member must pass, for `corral.archive`.

`Checker` is fed the members of one archive in order and raises `ArchiveError` naming the
first member that breaks a rule. `corral.archive` runs it when it inspects, unpacks or packs
an archive; nothing here reads or writes a file.

Two modes:

* an artifact (the default): a tree unpacked into a task directory, which the host reads
  and writes. No absolute names, no `..`, links that stay inside the root (symlinks checked
  lexically and then resolved through all the archive's symlinks), no device, fifo or
  sparse members.
* a root filesystem (`rootfs=True`): a tree an instance runs in. Its symlinks are resolved
  inside the container at run time, where `/` is the tree's root, so absolute targets and
  `..` are normal (`bin/sh -> /bin/busybox`, `lib64 -> usr/lib64`) and are not checked;
  nothing on the host follows them while unpacking. Device nodes and fifos are skipped and
  counted rather than refused: images carry a few, and runc makes its own /dev.

Both modes keep the rules that protect the unpacking itself: member names are relative and
without `..`, no member is written through a symlink or under a file, a hard link names an
earlier regular file of the archive, no duplicates, bounded total size and member count.
"""

from __future__ import annotations

import enum
import tarfile
from collections.abc import Iterator
from tarfile import TarInfo

__all__ = ["ArchiveError", "Checker", "Kind", "member_error", "normalize", "parents"]

# Linux gives up after 40 symlink traversals in one lookup; resolving targets inside the
# archive uses the same bound, counted per lookup so a fan of links cannot go exponential.
_MAX_LINK_FOLLOWS = 40
_REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_SPECIAL_TYPES = frozenset({tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE})


class ArchiveError(Exception):
    """An archive or a directory cannot be packed, trusted or unpacked; the message says why."""


class Kind(enum.Enum):
    DIR = "directory"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hard link"
    SPECIAL = "special file"  # a device node or fifo in a rootfs: admitted, never written


class _Unresolvable(Exception):
    """A symlink target that escapes the root or loops; the argument says which."""


def member_error(name: str, why: str) -> ArchiveError:
    return ArchiveError(f"member {name!r}: {why}")


def normalize(raw: str) -> str:
    """Return the member's path relative to the root ('' for the root itself), or raise.

    `./a//b/` becomes `a/b`, because tar run as `tar -C dir .` writes such names; `..` is
    refused outright, even where it would stay inside, so no later step has to reason about it.
    """
    if "\x00" in raw:
        raise member_error(raw, "name contains a NUL byte")
    if raw.startswith("/"):
        raise member_error(raw, "absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise member_error(raw, "path escapes the artifact root")
    return "/".join(parts)


def parents(name: str) -> Iterator[str]:
    """Yield `a`, `a/b` for `a/b/c`: every proper ancestor, shallowest first."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class Checker:
    """Every rule an archive member must pass, fed one member at a time in archive order.

    Order matters: tar extracts in order, so `a -> /tmp` followed by `a/x` would write
    through the link. Any member under an earlier symlink or file is refused, and so is a
    non-directory member that replaces a directory earlier members were placed in.
    For an artifact, symlink targets are checked twice: lexically when seen (a quick,
    well-named error), and in `finish` by resolving them through all the archive's symlinks
    the way the kernel would, since `t -> d/s/../..` with `d/s -> ..` escapes although it
    looks inside. A rootfs skips both (see the module docstring).
    """

    def __init__(self, *, max_bytes: int, max_files: int, rootfs: bool = False) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.rootfs = rootfs
        self.members = 0
        self.total = 0
        self.skipped = 0  # special files of a rootfs, admitted but not to be written
        self._kinds: dict[str, Kind] = {}
        self._implied_dirs: set[str] = set()
        self._symlinks: dict[str, str] = {}

    def admit(self, m: TarInfo) -> tuple[str, Kind] | None:
        """Check one member; return its normalized name and kind, or None for a member that
        is not to be written (the root entry, a skipped special file)."""
        self.members += 1
        if self.members > self.max_files:
            raise member_error(m.name, f"archive has more than {self.max_files} members")
        name = normalize(m.name)
        kind = self._kind_of(m)
        if name == "":
            if kind is not Kind.DIR:
                raise member_error(m.name, "the archive root must be a directory")
            return None
        if name in self._kinds:
            raise member_error(m.name, "duplicate member")
        if kind is not Kind.DIR and name in self._implied_dirs:
            raise member_error(m.name,
                               f"a {kind.value} replaces a directory earlier members are in")
        for parent in parents(name):
            parent_kind = self._kinds.get(parent)
            if parent_kind is Kind.SYMLINK:
                raise member_error(m.name, f"path goes through symlink member {parent!r}")
            if parent_kind is not None and parent_kind is not Kind.DIR:
                raise member_error(m.name, f"parent {parent!r} is not a directory")
        if kind is Kind.FILE:
            if m.size < 0:
                raise member_error(m.name, "negative size")
            self.total += m.size
            if self.total > self.max_bytes:
                raise member_error(
                    m.name,
                    f"size {m.size} brings the unpacked total over the limit of "
                    f"{self.max_bytes} bytes",
                )
        elif kind is Kind.SYMLINK:
            self._check_symlink(m.name, name, m.linkname)
            self._symlinks[name] = m.linkname
        elif kind is Kind.HARDLINK:
            self._check_hardlink(m.name, m.linkname)
        self._kinds[name] = kind
        self._implied_dirs.update(parents(name))
        if kind is Kind.SPECIAL:
            self.skipped += 1
            return None
        return name, kind

    def finish(self) -> None:
        """Resolve every symlink through the others; raise if one escapes or loops."""
        if self.rootfs:
            return  # resolved in the container, where `/` is the tree's root
        for name, target in self._symlinks.items():
            try:
                self._resolve(name.split("/")[:-1], target, [0])
            except _Unresolvable as exc:
                raise member_error(name, f"symlink target {target!r} {exc}") from None

    def _kind_of(self, m: TarInfo) -> Kind:
        if m.type in _REGULAR_TYPES:
            return Kind.FILE
        if m.type == tarfile.DIRTYPE:
            return Kind.DIR
        if m.type == tarfile.SYMTYPE:
            return Kind.SYMLINK
        if m.type == tarfile.LNKTYPE:
            return Kind.HARDLINK
        if self.rootfs and m.type in _SPECIAL_TYPES:
            return Kind.SPECIAL
        if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            raise member_error(m.name, "device nodes are not allowed")
        if m.type == tarfile.FIFOTYPE:
            raise member_error(m.name, "fifos are not allowed")
        raise member_error(m.name, f"unsupported member type {m.type!r}")

    def _check_symlink(self, raw: str, name: str, target: str) -> None:
        if target == "":
            raise member_error(raw, "symlink target is empty")
        if "\x00" in target:
            raise member_error(raw, "symlink target contains a NUL byte")
        if self.rootfs:
            return
        if target.startswith("/"):
            raise member_error(raw, f"symlink target {target!r} is absolute")
        depth = name.count("/")
        for part in target.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise member_error(raw,
                                       f"symlink target {target!r} escapes the artifact root")
            elif part not in ("", "."):
                depth += 1

    def _check_hardlink(self, raw: str, target: str) -> None:
        if target.startswith("/"):
            raise member_error(raw, f"hard link target {target!r} is absolute")
        if ".." in target.split("/"):
            raise member_error(raw, f"hard link target {target!r} escapes the artifact root")
        # Only a link to a regular file already written is meaningful, and it is the only
        # case where linking by name cannot reach through a symlink or outside the root.
        source = normalize(target)
        if self._kinds.get(source) not in (Kind.FILE, Kind.HARDLINK):
            raise member_error(raw, f"hard link target {target!r} is not an earlier regular file")

    def _resolve(self, start: list[str], target: str, follows: list[int]) -> list[str]:
        parts = list(start)
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    raise _Unresolvable("escapes the artifact root")
                parts.pop()
                continue
            parts.append(comp)
            link = self._symlinks.get("/".join(parts))
            if link is not None:
                follows[0] += 1
                if follows[0] > _MAX_LINK_FOLLOWS:
                    raise _Unresolvable("loops")
                parts = self._resolve(parts[:-1], link, follows)
        return parts
