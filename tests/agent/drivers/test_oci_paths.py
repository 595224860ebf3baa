"""Paths inside a user rootfs resolve as the container sees them, never onto host files."""

from __future__ import annotations

from pathlib import Path

from corral.agent.drivers.oci import _read_text, _resolve_in_root


def test_absolute_links_restart_at_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "real" / "shadow").write_text("inside\n")
    (root / "etc" / "passwd").symlink_to("/real/shadow")
    resolved = _resolve_in_root(root, "/etc/passwd")
    assert resolved == root / "real" / "shadow"
    assert _read_text(resolved) == "inside\n"


def test_a_link_to_the_host_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to("/")  # the image says etc is its own root
    resolved = _resolve_in_root(root, "/etc/passwd")
    assert resolved == root / "passwd"  # not the host's /etc/passwd
    assert _read_text(resolved) == ""  # missing inside the image


def test_dotdot_cannot_climb_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("g:x:5:\n")
    (root / "etc" / "alias").symlink_to("../../../../etc/group")
    assert _resolve_in_root(root, "/etc/alias") == root / "etc" / "group"


def test_link_loops_give_up(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "a").symlink_to("b")
    (root / "etc" / "b").symlink_to("a")
    assert _resolve_in_root(root, "/etc/a") is None
    assert _read_text(None) == ""
