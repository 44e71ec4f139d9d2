"""Failed logins are throttled per client address, with a window that slides."""

from __future__ import annotations

import pytest

from modelmint.web.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_blocked_after_the_allowed_failures() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=clock)
    for _ in range(2):
        throttle.failed("10.0.0.1")
        assert throttle.retry_after("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == pytest.approx(60)


def test_other_addresses_are_not_blocked() -> None:
    throttle = LoginThrottle(max_failures=1, window_s=60, clock=Clock())
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is not None
    assert throttle.retry_after("10.0.0.2") is None


def test_the_block_lifts_when_the_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, window_s=60, clock=clock)
    throttle.failed("a")
    clock.now += 30
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(30)
    clock.now += 30
    # The first failure is 60 s old: one failure left in the window, so one more try.
    assert throttle.retry_after("a") is None
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(30)


def test_a_success_clears_the_address() -> None:
    throttle = LoginThrottle(max_failures=2, window_s=60, clock=Clock())
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") is None


def test_memory_stays_bounded_under_a_scan_of_addresses() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=1, window_s=600, max_addresses=100, clock=clock)
    for n in range(1000):
        clock.now += 0.01
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._failures) <= 100
    # The most recent failures are the ones kept.
    assert throttle.retry_after("10.0.3.231") is not None


@pytest.mark.parametrize("kwargs", [{"max_failures": 0}, {"window_s": 0}, {"max_addresses": 0}])
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoginThrottle(**kwargs)  # type: ignore[arg-type]
