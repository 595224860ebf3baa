"""Driver tests: `conformance.py` is the one suite every driver runs; `test_<driver>.py`
subclass it. This package file lets them import it and has pytest rewrite its asserts."""

import pytest

pytest.register_assert_rewrite("tests.agent.drivers.conformance")
