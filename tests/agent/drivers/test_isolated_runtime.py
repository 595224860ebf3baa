"""What the runtime-based drivers share (`IsolatedRuntime`): a runtime that reports a
signal death as exit code 128+N (bwrap, tini) is turned back into that signal."""

from __future__ import annotations

import pytest

from corral.agent.cgroups import NoCgroups
from corral.agent.drivers.oci import OciDriver
from corral.agent.drivers.sandbox import SandboxDriver
from corral.agent.drivers.supervised import IsolatedRuntime


@pytest.mark.parametrize("driver", [
    OciDriver(cgroups=NoCgroups("test"), probe=False),
    SandboxDriver(cgroups=NoCgroups("test"), probe=False),
], ids=["oci", "sandbox"])
def test_signals_reported_as_codes_are_signals_again(driver: IsolatedRuntime) -> None:
    assert driver._returncode(137) == -9
    assert driver._returncode(143) == -15
    assert driver._returncode(3) == 3
    assert driver._returncode(128) == 128
    assert driver._returncode(-9) == -9
