"""Tests for corral.archive: reproducible packing, round trips, and hostile archives.

Hostile archives are built here with tarfile directly, so each one holds exactly the trick it
tests; every one must be refused by `inspect_archive` and by `safe_extract`, with the
offending member named, and must leave no file anywhere under the test's directory.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.archive import (
    ArchiveError,
    inspect_archive,
    pack_directory,
    parse_digest,
    safe_extract,
    sha256_file,
)

MiB = 1 << 20


def make_tree(root: Path) -> Path:
    (root / "static" / "css").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "app.py").write_text("print('hello')\n")
    (root / "run.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    (root / "run.sh").chmod(0o700)
    (root / "static" / "css" / "site.css").write_text("body {}\n")
    (root / "static" / "index.html").write_bytes(os.urandom(3000))
    (root / "static" / "home.html").symlink_to("index.html")
    (root / "css").symlink_to("static/css")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, object, int]]:
    """Every entry under root: kind, content or link target, and permission bits."""
    out: dict[str, tuple[str, object, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def every_path(root: Path) -> set[str]:
    return {
        (Path(d) / n).relative_to(root).as_posix()
        for d, ds, fs in os.walk(root)
        for n in ds + fs
    }


# --- helpers that build archives by hand ---------------------------------------------------


def file_member(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[
        tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special_member(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def dir_member(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def huge_declared(name: str, size: int) -> tuple[tarfile.TarInfo, None]:
    """A header claiming `size` bytes with no data behind it (addfile writes only the header)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info, None


# --- packing -------------------------------------------------------------------------------


def test_pack_twice_gives_identical_bytes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    a = pack_directory(src, tmp_path / "a.tar.gz")
    b = pack_directory(src, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert a == b
    assert a.digest == sha256_file(tmp_path / "a.tar.gz")
    assert a.size == (tmp_path / "a.tar.gz").stat().st_size


def test_digest_ignores_mtimes_owners_and_creation_order(tmp_path: Path) -> None:
    first = pack_directory(make_tree(tmp_path / "one"), tmp_path / "one.tar.gz")
    two = tmp_path / "two"
    two.mkdir()
    # Same tree, built in another order, with other times and a non-exec mode that differs
    # only in bits packing normalizes away.
    (two / "static").mkdir()
    (two / "static" / "index.html").write_bytes((tmp_path / "one/static/index.html").read_bytes())
    (two / "static" / "home.html").symlink_to("index.html")
    (two / "run.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    (two / "run.sh").chmod(0o751)
    (two / "app.py").write_text("print('hello')\n")
    (two / "app.py").chmod(0o600)
    (two / "static" / "css").mkdir()
    (two / "static" / "css" / "site.css").write_text("body {}\n")
    (two / "css").symlink_to("static/css")
    (two / "empty").mkdir()
    for p in [two / "app.py", two / "static" / "index.html", two / "static"]:
        os.utime(p, (1_000_000, 1_000_000))
    second = pack_directory(two, tmp_path / "two.tar.gz")
    assert first.digest == second.digest


def test_content_change_changes_digest(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    before = pack_directory(src, tmp_path / "a.tar.gz")
    (src / "run.sh").chmod(0o644)
    after = pack_directory(src, tmp_path / "b.tar.gz")
    assert before.digest != after.digest


def test_pack_headers_carry_no_time_owner_or_name(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "app.py").chmod(0o4755)
    out = tmp_path / "a.tar.gz"
    pack_directory(src, out)
    head = out.read_bytes()[:10]
    assert head[3] == 0, "gzip FLG must be clear: no FNAME, no FEXTRA"
    assert head[4:8] == b"\0\0\0\0", "gzip MTIME must be zero"
    with tarfile.open(out) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == "app.py"
    assert "static/css" in names and names.index("static") < names.index("static/css")
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        if m.isfile():
            assert m.mode in (0o644, 0o755)
        elif m.isdir():
            assert m.mode == 0o755
    modes = {m.name: m.mode for m in members}
    assert modes["app.py"] == 0o755  # setuid dropped, exec kept
    assert modes["static/css/site.css"] == 0o644


def test_pack_skips_pycache_and_git(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / "static" / "__pycache__").mkdir()
    pack_directory(src, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        names = tf.getnames()
    assert not [n for n in names if "__pycache__" in n or ".git" in n]
    assert "app.py" in names


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("out", "../outside"),
        ("static/up", "../../outside"),
        ("abs", "/etc/passwd"),
    ],
)
def test_pack_refuses_symlinks_leaving_the_tree(tmp_path: Path, link: str, target: str) -> None:
    src = make_tree(tmp_path / "src")
    (tmp_path / "outside").write_text("secret")
    (src / link).symlink_to(target)
    with pytest.raises(ArchiveError) as err:
        pack_directory(src, tmp_path / "a.tar.gz")
    assert link.rsplit("/", 1)[-1] in str(err.value)
    assert not (tmp_path / "a.tar.gz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pack_refuses_symlink_escaping_through_another_symlink(tmp_path: Path) -> None:
    # `t -> d/e/s/../..` looks inside, but `d/e/s` is the root, so `t` is two levels above.
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "s").symlink_to("../..")
    (src / "t").symlink_to("d/e/s/../..")
    with pytest.raises(ArchiveError, match=r"src/t: symlink target .* points outside"):
        pack_directory(src, tmp_path / "a.tar.gz")


def test_pack_refuses_fifo_naming_it(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    os.mkfifo(src / "static" / "pipe")
    with pytest.raises(ArchiveError, match="pipe: a fifo"):
        pack_directory(src, tmp_path / "a.tar.gz")
    assert not (tmp_path / "a.tar.gz").exists()


def test_pack_refuses_destination_inside_source(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    with pytest.raises(ArchiveError, match="inside"):
        pack_directory(src, src / "self.tar.gz")


def test_pack_refuses_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a directory"):
        pack_directory(tmp_path / "nope", tmp_path / "a.tar.gz")


# --- round trip ----------------------------------------------------------------------------


def test_pack_then_extract_gives_the_same_tree(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    info = pack_directory(src, tmp_path / "a.tar.gz")
    safe_extract(tmp_path / "a.tar.gz", tmp_path / "out", max_bytes=MiB)
    got = snapshot(tmp_path / "out")
    # Packing keeps only "executable or not": files become 0o755/0o644, directories 0o755.
    want = {
        rel: (kind, content, 0 if kind == "link" else 0o755 if kind == "dir" or mode & 0o111
              else 0o644)
        for rel, (kind, content, mode) in snapshot(src).items()
    }
    assert got == want
    assert got["run.sh"][2] == 0o755
    assert got["app.py"][2] == 0o644
    assert got["css"] == ("link", "static/css", 0)
    assert info.files == len(want)
    assert info.unpacked_size == sum(
        len(v[1]) for v in want.values() if v[0] == "file" and isinstance(v[1], bytes)
    )


def test_inspect_matches_pack(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    packed = pack_directory(src, tmp_path / "a.tar.gz")
    assert inspect_archive(tmp_path / "a.tar.gz", max_bytes=MiB) == packed


def test_extract_into_existing_empty_dir_keeps_its_mode(tmp_path: Path) -> None:
    pack_directory(make_tree(tmp_path / "src"), tmp_path / "a.tar.gz")
    dest = tmp_path / "task"
    dest.mkdir(mode=0o711)
    dest.chmod(0o711)
    safe_extract(tmp_path / "a.tar.gz", dest, max_bytes=MiB)
    assert (dest / "app.py").read_text() == "print('hello')\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o711


def test_extract_refuses_non_empty_destination(tmp_path: Path) -> None:
    pack_directory(make_tree(tmp_path / "src"), tmp_path / "a.tar.gz")
    dest = tmp_path / "task"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(ArchiveError, match="not empty"):
        safe_extract(tmp_path / "a.tar.gz", dest, max_bytes=MiB)
    assert every_path(dest) == {"keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "src", "task"]


def test_extract_refuses_destination_that_is_a_symlink(tmp_path: Path) -> None:
    pack_directory(make_tree(tmp_path / "src"), tmp_path / "a.tar.gz")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "task").symlink_to("elsewhere")
    with pytest.raises(ArchiveError, match="not a directory"):
        safe_extract(tmp_path / "a.tar.gz", tmp_path / "task", max_bytes=MiB)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert (tmp_path / "task").is_symlink()


def test_extract_accepts_dot_prefixed_names_and_hardlinks(tmp_path: Path) -> None:
    # What `tar -C dir -czf x.tar.gz .` writes: a "." entry and "./" prefixes.
    arch = write_tar(tmp_path / "a.tar.gz", [
        dir_member("."),
        dir_member("./bin"),
        file_member("./bin/tool", b"#!/bin/sh\n", mode=0o775),
        link_member("./bin/alias", "bin/tool", tarfile.LNKTYPE),
        file_member("./deep/implied/file", b"data"),
    ])
    safe_extract(arch, tmp_path / "out", max_bytes=MiB)
    out = tmp_path / "out"
    assert (out / "bin" / "alias").read_bytes() == b"#!/bin/sh\n"
    assert (out / "bin" / "alias").stat().st_ino == (out / "bin" / "tool").stat().st_ino
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
    assert (out / "deep" / "implied" / "file").read_bytes() == b"data"
    assert stat.S_IMODE((out / "deep").stat().st_mode) == 0o755


def test_symlink_pointing_inside_through_another_symlink_is_fine(tmp_path: Path) -> None:
    arch = write_tar(tmp_path / "a.tar.gz", [
        dir_member("d"),
        dir_member("d/e"),
        link_member("d/e/s", ".."),
        link_member("t", "d/e/s/e"),
    ])
    safe_extract(arch, tmp_path / "out", max_bytes=MiB)
    assert os.readlink(tmp_path / "out" / "t") == "d/e/s/e"


# --- hostile archives ----------------------------------------------------------------------

Members = list[tuple[tarfile.TarInfo, bytes | None]]


def _cases(tmp_path: Path) -> dict[str, tuple[Members, str, str]]:
    """Each case: the members, the member the error must name, and the reason it must give."""
    escaped = str(tmp_path / "evil")
    escapes = "escapes the artifact root"
    return {
        "absolute path": ([file_member(escaped)], escaped, "absolute path"),
        "dotdot escape": ([file_member("../../evil")], "../../evil", escapes),
        "dotdot in the middle": (
            [dir_member("a"), file_member("a/../../evil")], "a/../../evil", escapes),
        "symlink to /etc then a file through it": (
            [link_member("etc", "/etc"), file_member("etc/evil")], "etc", "is absolute"),
        "symlink out then a file through it": (
            [link_member("out", "../.."), file_member("out/evil")], "out", escapes),
        "file through an inside symlink": (
            [dir_member("b"), link_member("a", "b"), file_member("a/evil")], "a/evil",
            "goes through symlink member 'a'"),
        "symlink with absolute target": (
            [link_member("passwd", "/etc/passwd")], "passwd", "is absolute"),
        "symlink escaping relatively": (
            [dir_member("d"), link_member("d/up", "../../evil")], "d/up", escapes),
        "symlink escaping through another symlink": (
            [dir_member("d"), dir_member("d/e"), link_member("d/e/s", "../.."),
             link_member("t", "d/e/s/../..")], "t", escapes),
        "symlink loop": ([link_member("x", "y"), link_member("y", "x/z")], "x", "loops"),
        "hardlink escaping": (
            [link_member("h", "../../evil", tarfile.LNKTYPE)], "h", escapes),
        "hardlink absolute": (
            [link_member("h", "/etc/passwd", tarfile.LNKTYPE)], "h", "is absolute"),
        "hardlink to nothing": (
            [link_member("h", "missing", tarfile.LNKTYPE)], "h", "not an earlier regular file"),
        "hardlink to a symlink": (
            [link_member("s", "a"), file_member("a"), link_member("h", "s", tarfile.LNKTYPE)],
            "h", "not an earlier regular file"),
        "char device": ([special_member("null", tarfile.CHRTYPE)], "null", "device"),
        "block device": ([special_member("sda", tarfile.BLKTYPE)], "sda", "device"),
        "fifo": ([file_member("ok"), special_member("pipe", tarfile.FIFOTYPE)], "pipe", "fifo"),
        "duplicate member": ([file_member("a"), file_member("a", b"other")], "a", "duplicate"),
        "file under a file": (
            [file_member("a"), file_member("a/b")], "a/b", "parent 'a' is not a directory"),
        "symlink replacing a directory": (
            [file_member("a/b"), link_member("a", "/tmp")], "a", "replaces a directory"),
        "declared huge size": (
            [file_member("ok"), huge_declared("big", 10**12)], "big", "over the limit"),
        "cumulative size": (
            [file_member("one", b"\0" * (MiB // 2)), file_member("two", b"\0" * (MiB // 2)),
             file_member("three", b"\0" * 100)], "three", "over the limit"),
        "compression bomb": (
            [file_member("zeros", b"\0" * (8 * MiB))], "zeros", "over the limit"),
        "too many members": (
            [file_member(f"f{i:04d}", b"") for i in range(120)], "f0100",
            "more than 100 members"),
    }


CASES = sorted(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_inspect_refuses_hostile_archive(tmp_path: Path, case: str) -> None:
    members, culprit, reason = _cases(tmp_path)[case]
    arch = write_tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(ArchiveError) as err:
        inspect_archive(arch, max_bytes=MiB, max_files=100)
    assert str(err.value).startswith(f"member {culprit!r}: ")
    assert reason in str(err.value)
    assert every_path(tmp_path) == {"a.tar.gz"}


@pytest.mark.parametrize("case", CASES)
def test_extract_refuses_hostile_archive_and_writes_nothing(tmp_path: Path, case: str) -> None:
    members, culprit, reason = _cases(tmp_path)[case]
    arch = write_tar(tmp_path / "a.tar.gz", members)
    (tmp_path / "box").mkdir()
    dest = tmp_path / "box" / "out"
    with pytest.raises(ArchiveError) as err:
        safe_extract(arch, dest, max_bytes=MiB, max_files=100)
    assert str(err.value).startswith(f"member {culprit!r}: ")
    assert reason in str(err.value)
    assert not dest.exists()
    assert every_path(tmp_path) == {"a.tar.gz", "box"}


def test_failure_after_writing_started_leaves_nothing(tmp_path: Path) -> None:
    # A name the filesystem refuses (longer than NAME_MAX) passes the archive rules, so
    # the failure comes from the writing pass, after "ok" has been written to the temp dir.
    arch = write_tar(tmp_path / "a.tar.gz", [file_member("ok"), file_member("n" * 300)])
    assert inspect_archive(arch, max_bytes=MiB).files == 2
    (tmp_path / "box").mkdir()
    with pytest.raises(ArchiveError, match="cannot unpack"):
        safe_extract(arch, tmp_path / "box" / "out", max_bytes=MiB)
    assert every_path(tmp_path) == {"a.tar.gz", "box"}


def test_oversized_pax_header_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # tarfile reads a pax record into memory before it shows us the member; the budget on
    # decompressed bytes stops a record claiming megabytes of metadata.
    info, data = file_member("innocent")
    info.pax_headers = {"comment": "x" * (3 * MiB)}
    arch = write_tar(tmp_path / "a.tar.gz", [(info, data)])
    with pytest.raises(ArchiveError, match="bytes of data and metadata"):
        inspect_archive(arch, max_bytes=MiB)
    assert inspect_archive(arch, max_bytes=4 * MiB).files == 1


def test_many_members_default_limit_is_enforced(tmp_path: Path) -> None:
    arch = write_tar(tmp_path / "a.tar.gz", [file_member(f"f{i}", b"") for i in range(30)])
    with pytest.raises(ArchiveError, match="more than 20 members"):
        safe_extract(arch, tmp_path / "out", max_bytes=MiB, max_files=20)
    assert inspect_archive(arch, max_bytes=MiB).files == 30


def _valid_archive(tmp_path: Path) -> bytes:
    members: Members = [file_member(f"f{i}", os.urandom(4000)) for i in range(8)]
    return write_tar(tmp_path / "valid.tar.gz", members).read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "why"),
    [
        ("not gzip", lambda good: b"hello, this is not an archive" * 40, "not a gzip"),
        ("empty file", lambda good: b"", "not a gzip"),
        ("gzip but not tar", lambda good: gzip.compress(b"hello" * 300, mtime=0), "corrupt"),
        ("plain tar", lambda good: gzip.decompress(good), "not a gzip"),
        ("truncated in the middle", lambda good: good[: len(good) // 2], "truncated"),
        ("gzip trailer cut", lambda good: good[:-4], "truncated"),
        ("flipped byte", lambda good: good[:100] + bytes([good[100] ^ 0xFF]) + good[101:],
         "corrupt"),
    ],
)
def test_refuses_broken_input(
    tmp_path: Path, name: str, make: Callable[[bytes], bytes], why: str
) -> None:
    arch = tmp_path / "bad.tar.gz"
    arch.write_bytes(make(_valid_archive(tmp_path)))
    (tmp_path / "valid.tar.gz").unlink()
    with pytest.raises(ArchiveError, match=why):
        inspect_archive(arch, max_bytes=MiB)
    with pytest.raises(ArchiveError, match=why):
        safe_extract(arch, tmp_path / "out", max_bytes=MiB)
    assert every_path(tmp_path) == {"bad.tar.gz"}


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    "bad",
    ["", "sha256:", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha512:" + "a" * 64,
     "a" * 64, "sha256:" + "g" * 64, "sha256:" + "a" * 64 + "\n"],
)
def test_parse_digest_refuses_malformed(bad: str) -> None:
    with pytest.raises(ArchiveError, match="invalid digest"):
        parse_digest(bad)


def test_parse_digest_accepts_canonical_form() -> None:
    good = "sha256:" + "0123456789abcdef" * 4
    assert parse_digest(good) == good


# --- root filesystems (rootfs=True) --------------------------------------------------------


def make_rootfs(root: Path) -> Path:
    """A small tree with what real root filesystems have and artifacts may not."""
    for d in ("usr/bin", "usr/lib64", "etc", "dev", "run", "usr/lib/python3/__pycache__"):
        (root / d).mkdir(parents=True)
    (root / "usr/bin/dash").write_bytes(b"\x7fELF pretend")
    (root / "usr/bin/dash").chmod(0o755)
    (root / "usr/bin/git").write_bytes(b"git" * 1000)
    os.link(root / "usr/bin/git", root / "usr/bin/git-upload-pack")
    (root / "etc/marker").write_text("inside\n")
    (root / "usr/lib/python3/__pycache__/x.pyc").write_bytes(b"\0")
    (root / "bin").symlink_to("usr/bin")
    (root / "lib64").symlink_to("/usr/lib64")
    (root / "usr/bin/sh").symlink_to("/bin/dash")
    (root / "etc/up").symlink_to("../../../../outside")
    (root / "etc/loop").symlink_to("loop")
    os.mkfifo(root / "run/initctl")
    return root


def test_rootfs_pack_keeps_links_skips_specials_and_round_trips(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_rootfs(tmp_path / "rootfs")
    monkeypatch.chdir(src / "run")  # a socket path must fit in sun_path: bind a short one
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
    specials = 2
    if os.geteuid() == 0:
        os.mknod(src / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        specials += 1
    with pytest.raises(ArchiveError):
        pack_directory(src, tmp_path / "artifact.tar.gz")
    info = pack_directory(src, tmp_path / "a.tar.gz", rootfs=True)
    again = pack_directory(src, tmp_path / "b.tar.gz", rootfs=True)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert info == again
    assert info.skipped == specials
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["usr/bin/git-upload-pack"].islnk()
    assert members["usr/bin/git-upload-pack"].linkname == "usr/bin/git"
    assert "usr/lib/python3/__pycache__/x.pyc" in members
    assert not {"run/initctl", "run/sock", "dev/null"} & set(members)

    inspected = inspect_archive(tmp_path / "a.tar.gz", max_bytes=MiB, rootfs=True)
    assert inspected == dataclasses.replace(info, skipped=0)
    with pytest.raises(ArchiveError, match=r"member 'etc/up': symlink target .* escapes"):
        inspect_archive(tmp_path / "a.tar.gz", max_bytes=MiB)

    out = tmp_path / "out"
    assert safe_extract(tmp_path / "a.tar.gz", out, max_bytes=MiB, rootfs=True).files == info.files
    assert os.readlink(out / "lib64") == "/usr/lib64"
    assert os.readlink(out / "usr/bin/sh") == "/bin/dash"
    assert os.readlink(out / "etc/up") == "../../../../outside"
    assert os.readlink(out / "etc/loop") == "loop"
    assert (out / "usr/bin/git-upload-pack").stat().st_ino == (out / "usr/bin/git").stat().st_ino
    assert stat.S_IMODE((out / "usr/bin/dash").stat().st_mode) == 0o755
    assert (out / "etc/marker").read_text() == "inside\n"
    assert sorted(p.name for p in (out / "run").iterdir()) == []
    assert sorted(p.name for p in (out / "dev").iterdir()) == []
    assert not (tmp_path / "outside").exists()


def test_rootfs_unpacks_a_plain_tar(tmp_path: Path) -> None:
    # `docker export` writes an uncompressed tar; only a rootfs accepts one.
    arch = tmp_path / "rootfs.tar"
    with tarfile.open(arch, "w", format=tarfile.GNU_FORMAT) as tf:
        for member, data in [dir_member("./"), dir_member("./etc"),
                             file_member("./etc/os-release", b"ID=tiny\n"),
                             link_member("./sh", "/bin/busybox")]:
            tf.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(ArchiveError, match="not a gzip-compressed tar archive"):
        inspect_archive(arch, max_bytes=MiB)
    info = safe_extract(arch, tmp_path / "out", max_bytes=MiB, rootfs=True)
    assert info.digest == sha256_file(arch)
    assert (tmp_path / "out/etc/os-release").read_bytes() == b"ID=tiny\n"
    assert os.readlink(tmp_path / "out/sh") == "/bin/busybox"
    cut = tmp_path / "cut.tar"
    # In a header, at a header's start, in a file's data, just before the end marker.
    for length in (700, 1024, 1800, 2560):
        cut.write_bytes(arch.read_bytes()[:length])
        with pytest.raises(ArchiveError, match="truncated"):
            safe_extract(cut, tmp_path / "out2", max_bytes=MiB, rootfs=True)
    cut.write_bytes(b"plain text, not a tar" * 30)
    with pytest.raises(ArchiveError, match=r"not a tar archive \(plain or gzip-compressed\)"):
        inspect_archive(cut, max_bytes=MiB, rootfs=True)
    assert not (tmp_path / "out2").exists()


def test_rootfs_skips_device_nodes_and_fifos_counting_them(tmp_path: Path) -> None:
    arch = write_tar(tmp_path / "a.tar.gz", [
        dir_member("dev"),
        special_member("dev/null", tarfile.CHRTYPE),
        special_member("dev/sda", tarfile.BLKTYPE),
        special_member("run-fifo", tarfile.FIFOTYPE),
        file_member("dev/.keep", b""),
    ])
    assert inspect_archive(arch, max_bytes=MiB, rootfs=True).skipped == 3
    info = safe_extract(arch, tmp_path / "out", max_bytes=MiB, rootfs=True)
    assert (info.skipped, info.files) == (3, 5)
    assert every_path(tmp_path / "out") == {"dev", "dev/.keep"}


# What an artifact refuses but a rootfs takes: its links resolve inside the container.
ROOTFS_ALLOWS = ["block device", "char device", "fifo", "symlink escaping relatively",
                 "symlink escaping through another symlink", "symlink loop",
                 "symlink with absolute target"]


def _rootfs_cases(tmp_path: Path) -> dict[str, tuple[Members, str, str]]:
    """The hostile cases a rootfs must still refuse: those that would write outside the
    tree or through a link, with the member they now fail at."""
    cases = {k: v for k, v in _cases(tmp_path).items() if k not in ROOTFS_ALLOWS}
    cases["symlink to /etc then a file through it"] = (
        [link_member("etc", "/etc"), file_member("etc/evil")], "etc/evil",
        "goes through symlink member 'etc'")
    cases["symlink out then a file through it"] = (
        [link_member("out", "../.."), file_member("out/evil")], "out/evil",
        "goes through symlink member 'out'")
    cases["directory through an absolute symlink"] = (
        [link_member("usr", "/usr"), dir_member("usr/lib")], "usr/lib",
        "goes through symlink member 'usr'")
    cases["file under a device node"] = (
        [special_member("null", tarfile.CHRTYPE), file_member("null/x")], "null/x",
        "parent 'null' is not a directory")
    cases["device node replacing a directory"] = (
        [file_member("d/x"), special_member("d", tarfile.CHRTYPE)], "d",
        "replaces a directory")
    cases["hardlink to a device node"] = (
        [special_member("null", tarfile.CHRTYPE), link_member("h", "null", tarfile.LNKTYPE)],
        "h", "not an earlier regular file")
    return cases


ROOTFS_CASES = sorted(_rootfs_cases(Path("/x")))


@pytest.mark.parametrize("case", ROOTFS_CASES)
def test_rootfs_still_refuses_writes_outside_or_through_links(tmp_path: Path, case: str) -> None:
    members, culprit, reason = _rootfs_cases(tmp_path)[case]
    arch = write_tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(ArchiveError) as err:
        inspect_archive(arch, max_bytes=MiB, max_files=100, rootfs=True)
    assert str(err.value).startswith(f"member {culprit!r}: ")
    assert reason in str(err.value)
    (tmp_path / "box").mkdir()
    with pytest.raises(ArchiveError) as err:
        safe_extract(arch, tmp_path / "box" / "out", max_bytes=MiB, max_files=100, rootfs=True)
    assert str(err.value).startswith(f"member {culprit!r}: ")
    assert every_path(tmp_path) == {"a.tar.gz", "box"}


@pytest.mark.parametrize("case", ROOTFS_ALLOWS)
def test_rootfs_accepts_links_an_artifact_refuses(tmp_path: Path, case: str) -> None:
    members, _, _ = _cases(tmp_path)[case]
    arch = write_tar(tmp_path / "a.tar.gz", members)
    out = tmp_path / "out"
    safe_extract(arch, out, max_bytes=MiB, rootfs=True)
    for info, _ in members:
        path = out / info.name
        if info.issym():
            assert os.readlink(path) == info.linkname
        elif info.ischr() or info.isblk() or info.isfifo():
            assert not os.path.lexists(path)


def test_rootfs_extraction_never_follows_an_absolute_symlink(tmp_path: Path) -> None:
    # The link names a real directory of this host: writing through it would land there.
    target = tmp_path / "host-dir"
    target.mkdir()
    arch = write_tar(tmp_path / "a.tar.gz", [
        link_member("etc", str(target)), file_member("etc/passwd", b"root::0:0::/:/bin/sh\n"),
    ])
    with pytest.raises(ArchiveError, match="goes through symlink member 'etc'"):
        safe_extract(arch, tmp_path / "out", max_bytes=MiB, rootfs=True)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "out").exists()
