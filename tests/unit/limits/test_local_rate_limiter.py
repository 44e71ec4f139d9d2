"""LocalRateLimiter: token buckets and leases per key and organisation, on a fake clock."""

from __future__ import annotations

import pytest

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import RateLimited
from modelmint.limits import LocalRateLimiter, format_reset


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(
    key_id: str = "key_a",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrent: int | None = None,
    org_rpm: int | None = None,
) -> KeyInfo:
    return KeyInfo(
        id=key_id,
        organization_id="org_a",
        prefix="mm-abcdefgh",
        models=None,
        rpm_limit=rpm,
        tpm_limit=tpm,
        expires_at=None,
        revoked=False,
        max_concurrent=concurrent,
        org_rpm_limit=org_rpm,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> LocalRateLimiter:
    return LocalRateLimiter(clock=clock)


def remaining_requests(limiter: LocalRateLimiter, k: KeyInfo, lease: str = "r") -> int:
    permit = limiter.admit_now(k, lease)
    assert permit.requests is not None
    return permit.requests.remaining


def test_rpm_allows_a_full_burst_then_refuses_with_retry_after(limiter: LocalRateLimiter) -> None:
    k = key(rpm=3)
    assert [remaining_requests(limiter, k) for _ in range(3)] == [2, 1, 0]
    with pytest.raises(RateLimited) as caught:
        limiter.admit_now(k, "r")
    assert caught.value.code == "requests_per_minute_exceeded"
    # An empty bucket of 3/min refills one request every 20 s.
    assert caught.value.retry_after == pytest.approx(20.0)
    assert (
        caught.value.message == "API key request rate limit of 3 per minute reached; retry in 20 s"
    )


def test_rpm_refills_with_time(limiter: LocalRateLimiter, clock: FakeClock) -> None:
    k = key(rpm=3)
    for _ in range(3):
        limiter.admit_now(k, "r")
    clock.advance(15)
    with pytest.raises(RateLimited) as caught:
        limiter.admit_now(k, "r")
    assert caught.value.retry_after == pytest.approx(5.0)
    clock.advance(5)
    assert remaining_requests(limiter, k) == 0


def test_refill_never_exceeds_the_limit(limiter: LocalRateLimiter, clock: FakeClock) -> None:
    k = key(rpm=3)
    limiter.admit_now(k, "r")
    clock.advance(3600)
    assert remaining_requests(limiter, k) == 2


def test_tokens_settled_after_the_answer_can_drive_the_bucket_negative(
    limiter: LocalRateLimiter, clock: FakeClock
) -> None:
    k = key(tpm=100)
    permit = limiter.admit_now(k, "r")
    assert permit.tokens is not None and (permit.tokens.limit, permit.tokens.remaining) == (
        100,
        100,
    )
    limiter.release(permit, 150)  # the answer cost more than the bucket held: level -50
    with pytest.raises(RateLimited) as caught:
        limiter.admit_now(k, "r2")
    assert caught.value.code == "tokens_per_minute_exceeded"
    # From -50 back above 0 at 100 tokens/min takes 30 s.
    assert caught.value.retry_after == pytest.approx(30.0, abs=1e-3)
    clock.advance(33)  # level +5
    permit = limiter.admit_now(k, "r3")
    assert permit.tokens is not None and permit.tokens.remaining == 5


def test_headers_report_the_tightest_limit_and_its_reset(
    limiter: LocalRateLimiter, clock: FakeClock
) -> None:
    k = key(rpm=60, tpm=1000, org_rpm=10)
    permit = limiter.admit_now(k, "r")
    assert permit.headers() == {
        # The organisation's 10/min is tighter than the key's 60/min.
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "0ms",
    }


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0ms"), (0.02, "20ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s")]
)
def test_reset_durations_read_like_openais(seconds: float, shown: str) -> None:
    assert format_reset(seconds) == shown


def test_a_raised_limit_keeps_the_used_share(limiter: LocalRateLimiter) -> None:
    limiter.admit_now(key(rpm=10), "a")
    limiter.admit_now(key(rpm=10), "b")  # 8 of 10 left
    assert remaining_requests(limiter, key(rpm=20)) == 15  # 80 % of 20, minus this one


def test_a_key_without_limits_is_never_limited_and_sends_no_headers(
    limiter: LocalRateLimiter,
) -> None:
    for i in range(1000):
        permit = limiter.admit_now(key(), f"r{i}")
    assert permit.headers() == {}
