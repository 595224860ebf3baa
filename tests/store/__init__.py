"""Store tests: `conformance.py` is the one suite every backend runs; `test_<backend>.py`
subclass it. This package file lets them import it and has pytest rewrite its asserts."""

import pytest

pytest.register_assert_rewrite("tests.store.conformance")
