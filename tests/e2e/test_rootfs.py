"""A user brings a root filesystem: `isolation: {driver: oci, rootfs: ./rootfs.tar}` applied
through the real `corral` command runs the instance inside that tree.

The rootfs is built here from the host's own `dash` and `sleep` and the libraries `ldd`
lists, laid out as a merged-/usr distribution with relative and absolute symlinks, and
written as an uncompressed tarball (what `docker export` writes). The instance proves
where it runs: it prints a file only the rootfs has, and finds no `/usr/bin/python3`,
which the host (and the default `oci` view of the host's /usr) has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from corral.testing.cluster import LocalCluster

pytestmark = pytest.mark.e2e

MARKER = "corral-rootfs-e2e-marker"
_PROGRAMS = ("dash", "sleep")


def _libraries(program: str) -> list[Path]:
    """The absolute paths `ldd` names for `program` (its loader included)."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    return [Path(p) for p in re.findall(r"(/\S+) \(0x", out)]


def _place(root: Path, host_path: Path) -> None:
    """Copy `host_path`'s content to its real path in `root`; where the host reaches it
    through links `root` does not mirror, add an absolute symlink, resolved inside."""
    real = Path(os.path.realpath(host_path))
    dest = root / real.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(real, dest)
    alias = root / host_path.relative_to("/")
    alias.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(alias):
        alias.symlink_to(real)


def build_rootfs(root: Path) -> None:
    for d in ("usr/bin", "usr/lib", "etc"):
        (root / d).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as runc images have it
    (root / "lib").symlink_to("usr/lib")
    for name in _PROGRAMS:
        host = shutil.which(name)
        assert host is not None
        shutil.copy2(os.path.realpath(host), root / "usr/bin" / name)
        for lib in _libraries(host):
            _place(root, lib)
    (root / "usr/bin/sh").symlink_to("/bin/dash")  # absolute: resolved in the container
    (root / "etc/marker").write_text(f"{MARKER}\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    os.mkfifo(root / "etc/initctl")  # skipped on the way, not refused


def write_tarball(root: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tf:
        tf.add(root, arcname=".")


def _skip_unless_oci(cluster: LocalCluster) -> None:
    missing = [p for p in (*_PROGRAMS, "ldd") if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on the host to build a rootfs")
    nodes = cluster.corral_json("nodes")
    why = nodes[0]["drivers"].get("oci", "not reported by the agent")
    if why:
        pytest.skip(f"the oci driver is unavailable on this node: {why}")


def _instances(cluster: LocalCluster, app: str) -> list[dict[str, Any]]:
    return list(cluster.corral_json("ps", app))


def test_instance_runs_in_the_rootfs_the_user_brings(cluster: LocalCluster,
                                                     tmp_path: Path) -> None:
    _skip_unless_oci(cluster)
    build_rootfs(tmp_path / "tree")
    write_tarball(tmp_path / "tree", tmp_path / "rootfs.tar")
    spec = tmp_path / "tiny.yaml"
    spec.write_text("""
name: tiny
services:
  box:
    instances: 2
    command:
      - /bin/sh
      - -c
      - |
        read m < /etc/marker
        echo "marker=$m"
        if [ -e /usr/bin/python3 ]; then echo "host python visible"; else echo "no python3"; fi
        exec sleep 1000
    resources: {cpu: 0.05, memory: 64MiB}
    isolation: {driver: oci, rootfs: ./rootfs.tar}
""")
    applied = cluster.corral("apply", "-f", str(spec), "--timeout", "90s")
    assert applied.returncode == 0, applied.stdout + applied.stderr + cluster.logs()
    assert "left out 1 device nodes, fifos and sockets" in applied.stderr
    assert "uploading ./rootfs.tar" in applied.stderr

    insts = _instances(cluster, "tiny")
    assert len(insts) == 2 and {i["state"] for i in insts} == {"running"}, insts
    stored = cluster.api(lambda c: c.get_app("tiny"))["spec"]["services"]["box"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", stored["isolation"]["rootfs"])

    def both_printed() -> str | None:
        out = cluster.corral("logs", "tiny").stdout
        return out if out.count(f"marker={MARKER}") == 2 else None

    out = cluster.wait_for(both_printed, 30, "both instances' output")
    assert "no python3" in out and "host python visible" not in out

    # One unpacked tree on the node, shared by both instances.
    cache = cluster.data_dir / "agent" / "artifacts" / "rootfs"
    trees = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(trees) == 1
    assert os.readlink(trees[0] / "usr/bin/sh") == "/bin/dash"
    assert not (trees[0] / "etc/initctl").exists()

    # Applying the same file again uploads nothing and changes nothing.
    again = cluster.corral("apply", "-f", str(spec), "--timeout", "30s", check=True)
    assert "uploading" not in again.stderr
    assert "unchanged" in again.stdout

    ids = [i["id"] for i in insts]
    deleted = cluster.corral("delete", "tiny", "--json", check=True)
    assert json.loads(deleted.stdout)["status"] == "deleted"
    runc_root = Path("/run/corral") / cluster.cgroup_parent.replace("/", "-") / "runc"
    for inst_id in ids:
        container = f"{cluster.cgroup_parent.replace('/', '-')}-{inst_id}"
        assert not (runc_root / container).exists()
        for ctl in ("memory", "pids", "cpu"):
            assert not (Path("/sys/fs/cgroup") / ctl / cluster.cgroup_parent / inst_id).exists()
    assert cluster.corral("status", "tiny").returncode == 4


def test_rootfs_that_is_not_a_tree_or_tarball_is_refused(cluster: LocalCluster,
                                                         tmp_path: Path) -> None:
    (tmp_path / "rootfs.zip").write_bytes(b"PK\x03\x04")
    spec = tmp_path / "bad.yaml"
    spec.write_text("""
name: badroot
services:
  box:
    command: [/bin/sh, -c, "exit 0"]
    isolation: {driver: oci, rootfs: ./rootfs.zip}
""")
    result = cluster.corral("apply", "-f", str(spec))
    assert result.returncode == 2
    assert "services.box.isolation.rootfs: './rootfs.zip' is not a directory or a .tar" in \
        result.stderr
    assert cluster.corral("status", "badroot").returncode == 4
