"""A failed heartbeat is retried soon, backing off to the interval, never later."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral.client.heartbeats import FIRST_RETRY, retry_delay


def test_retries_back_off_from_one_second_to_the_interval() -> None:
    delays, retry = [], None
    for _ in range(10):
        retry = retry_delay(retry, 200.0)
        delays.append(retry)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 200.0, 200.0]
    # three failures in a row use a few seconds of a 600 s TTL, not 600 s
    assert sum(delays[:3]) == 7.0


@given(st.floats(min_value=0.01, max_value=3600), st.lists(st.none(), max_size=30))
def test_a_retry_never_waits_longer_than_the_interval(interval: float, failures: list[None]
                                                      ) -> None:
    retry = None
    for _ in failures:
        retry = retry_delay(retry, interval)
        assert 0 < retry <= interval
    if failures:
        assert retry == min(interval, FIRST_RETRY * 2 ** (len(failures) - 1))
