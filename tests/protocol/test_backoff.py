"""The retry loops' shared backoff: fast first retry, doubling to a cap, back to the start after a success."""

import pytest

from protocol.backoff import Backoff


def test_each_failure_in_a_row_doubles_the_wait_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 0.5)
    assert [backoff.take() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_delay_s_names_the_wait_the_next_failure_takes_without_using_it() -> None:
    backoff = Backoff(0.05, 1.0)
    backoff.take()
    assert backoff.delay_s == backoff.delay_s == 0.1
    assert backoff.take() == 0.1


def test_a_success_starts_the_delays_over() -> None:
    backoff = Backoff(0.1, 5.0)
    backoff.take(), backoff.take()
    backoff.reset()
    assert backoff.take() == 0.1


async def test_sleep_waits_the_current_delay_then_doubles_it() -> None:
    backoff = Backoff(0.01, 1.0)
    await backoff.sleep()
    assert backoff.delay_s == 0.02


@pytest.mark.parametrize(("first_s", "cap_s"), [(0, 1), (-1, 1), (2, 1)])
def test_a_backoff_that_could_not_wait_or_never_caps_is_refused(first_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError, match="first_s <= cap_s"):
        Backoff(first_s, cap_s)
