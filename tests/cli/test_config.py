"""`corral config`: writes the client config (0600), keeps what is not given, never shows
the token, refuses files that are not a token or a certificate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def corral(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_CONFIG_DIR"] = str(config_dir)
    return subprocess.run([sys.executable, "-m", "corral.cli.main", "config", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_config_writes_and_shows_without_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    r = corral(tmp_path / "cfg", "--addr", "https://10.9.9.9:7070/", "--token-file",
               str(token), "--ca-cert", str(ca), "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["addr"] == "https://10.9.9.9:7070" and shown["token"] == "set"
    assert "s3cret" not in r.stdout
    path = tmp_path / "cfg" / "corral.env"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "CORRAL_TOKEN=s3cret-token" in path.read_text()
    # only the address changes; token and CA stay
    r = corral(tmp_path / "cfg", "--addr", "https://10.9.9.8:7070", "--json")
    assert json.loads(r.stdout)["cacert"] == str(ca.resolve())
    assert "CORRAL_TOKEN=s3cret-token" in path.read_text()


def test_config_refuses_what_is_not_a_token_or_a_certificate(tmp_path: Path) -> None:
    not_token = tmp_path / "notes.txt"
    not_token.write_text("two words\nand lines\n")
    r = corral(tmp_path / "cfg", "--token-file", str(not_token))
    assert r.returncode == 2 and "does not hold a token" in r.stderr
    r = corral(tmp_path / "cfg", "--ca-cert", str(tmp_path / "missing.crt"))
    assert r.returncode == 2 and "no CA certificate" in r.stderr
    assert not (tmp_path / "cfg" / "corral.env").exists()
