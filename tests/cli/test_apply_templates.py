"""`corral apply`'s local check of template sources: each must be a file of its service's
artifact directory, found before anything is packed or uploaded."""

from __future__ import annotations

from pathlib import Path

from corral.cli.apply import template_source_problems
from corral.model.application import ApplicationSpec
from corral.model.codec import from_data

DIGEST = "sha256:" + "ab" * 32


def spec(artifact: str, *sources: str) -> ApplicationSpec:
    templates = [{"source": s, "destination": f"out{i}"} for i, s in enumerate(sources)]
    return from_data(ApplicationSpec, {"name": "app", "services": {
        "lb": {"command": ["run"], "artifact": artifact, "templates": templates},
        "plain": {"command": ["run"]}}})


def test_sources_must_be_files_of_the_artifact_directory(tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    (lb / "conf").mkdir(parents=True)
    (lb / "conf" / "up.j2").write_text("x")
    (lb / "inside.j2").symlink_to("conf/up.j2")
    (tmp_path / "secret.j2").write_text("x")
    (lb / "outside.j2").symlink_to(tmp_path / "secret.j2")
    problems = template_source_problems(
        spec("./lb", "conf/up.j2", "./inside.j2", "nope.j2", "conf", "outside.j2"), tmp_path)
    assert problems == [
        f"services.lb.templates[2].source: 'nope.j2' is not a file in the artifact directory "
        f"./lb (looked at {lb / 'nope.j2'})",
        f"services.lb.templates[3].source: 'conf' is not a file in the artifact directory "
        f"./lb (looked at {lb / 'conf'})",
        f"services.lb.templates[4].source: 'outside.j2' leads outside the artifact directory "
        f"./lb (to {tmp_path / 'secret.j2'})",
    ]


def test_a_digest_artifact_or_a_missing_directory_is_left_to_others(tmp_path: Path) -> None:
    assert template_source_problems(spec(DIGEST, "nope.j2"), tmp_path) == []
    assert template_source_problems(spec("./missing", "nope.j2"), tmp_path) == []
