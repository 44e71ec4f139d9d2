"""LocalRateLimiter: per-key RPM and TPM token buckets, driven by a fake clock."""

from __future__ import annotations

import pytest

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import RateLimited
from modelmint.limits import LocalRateLimiter, RateState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(key_id: str = "key_a", *, rpm: int | None = None, tpm: int | None = None) -> KeyInfo:
    return KeyInfo(
        id=key_id,
        organization_id="org_a",
        prefix="mm-abcdefgh",
        models=None,
        rpm_limit=rpm,
        tpm_limit=tpm,
        expires_at=None,
        revoked=False,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> LocalRateLimiter:
    return LocalRateLimiter(clock=clock)


def test_rpm_allows_a_full_burst_then_refuses_with_retry_after(
    limiter: LocalRateLimiter,
) -> None:
    k = key(rpm=3)
    remaining = [limiter.admit(k).remaining_requests for _ in range(3)]
    assert remaining == [2, 1, 0]
    with pytest.raises(RateLimited) as caught:
        limiter.admit(k)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "requests_per_minute_exceeded"
    # An empty bucket of 3/min refills one request every 20 s.
    assert error.retry_after == pytest.approx(20.0)
    assert error.message == "request rate limit of 3 per minute reached; retry in 20 s"


def test_rpm_refills_with_time(limiter: LocalRateLimiter, clock: FakeClock) -> None:
    k = key(rpm=3)
    for _ in range(3):
        limiter.admit(k)
    clock.advance(15)
    with pytest.raises(RateLimited) as caught:
        limiter.admit(k)
    assert caught.value.retry_after == pytest.approx(5.0)
    clock.advance(5)
    assert limiter.admit(k).remaining_requests == 0
    with pytest.raises(RateLimited):
        limiter.admit(k)


def test_refill_never_exceeds_the_limit(limiter: LocalRateLimiter, clock: FakeClock) -> None:
    k = key(rpm=3)
    limiter.admit(k)
    clock.advance(3600)
    assert limiter.admit(k).remaining_requests == 2


def test_refused_request_does_not_consume(limiter: LocalRateLimiter, clock: FakeClock) -> None:
    k = key(rpm=1)
    limiter.admit(k)
    for _ in range(5):
        with pytest.raises(RateLimited):
            limiter.admit(k)
    clock.advance(60)
    assert limiter.admit(k).remaining_requests == 0


def test_tpm_settle_drives_the_bucket_negative_and_blocks_until_refilled(
    limiter: LocalRateLimiter, clock: FakeClock
) -> None:
    k = key(tpm=100)
    state = limiter.admit(k)
    assert (state.limit_tokens, state.remaining_tokens) == (100, 100)
    limiter.settle(k, 150)  # the answer cost more than the bucket held: level -50
    with pytest.raises(RateLimited) as caught:
        limiter.admit(k)
    assert caught.value.code == "tokens_per_minute_exceeded"
    assert caught.value.status_code == 429
    # From -50 to 1 at 100 tokens/min: 51 tokens take 30.6 s.
    assert caught.value.retry_after == pytest.approx(30.6)
    clock.advance(30)  # level back at exactly 0: still refused
    with pytest.raises(RateLimited) as caught:
        limiter.admit(k)
    assert caught.value.retry_after == pytest.approx(0.6)
    clock.advance(3)  # level 5
    assert limiter.admit(k).remaining_tokens == 5


def test_tpm_admits_while_any_token_is_left(limiter: LocalRateLimiter) -> None:
    k = key(tpm=100)
    limiter.settle(k, 99)
    assert limiter.admit(k).remaining_tokens == 1
    limiter.settle(k, 1)
    with pytest.raises(RateLimited):
        limiter.admit(k)


def test_settle_ignores_zero_tokens_and_keys_without_tpm(limiter: LocalRateLimiter) -> None:
    k = key(tpm=10)
    limiter.settle(k, 0)
    limiter.settle(k, -5)
    assert limiter.admit(k).remaining_tokens == 10
    unlimited = key("key_u")
    limiter.settle(unlimited, 10**9)
    assert limiter.admit(unlimited) == RateState()


def test_keys_have_independent_buckets(limiter: LocalRateLimiter) -> None:
    a, b = key("key_a", rpm=1, tpm=10), key("key_b", rpm=1, tpm=10)
    limiter.admit(a)
    limiter.settle(a, 50)
    with pytest.raises(RateLimited):
        limiter.admit(a)
    state = limiter.admit(b)
    assert (state.remaining_requests, state.remaining_tokens) == (0, 10)


def test_a_raised_limit_keeps_the_used_share(limiter: LocalRateLimiter) -> None:
    limiter.admit(key(rpm=10))
    limiter.admit(key(rpm=10))  # 8 of 10 left
    # The key's limit was raised in the database: the bucket keeps its 80 % share.
    assert limiter.admit(key(rpm=20)).remaining_requests == 15


def test_header_values_after_admission(limiter: LocalRateLimiter) -> None:
    state = limiter.admit(key(rpm=60, tpm=1000))
    assert state.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
    }
    assert limiter.admit(key("key_r", rpm=5)).headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
    }


def test_key_without_limits_is_never_limited_and_sends_no_headers(
    limiter: LocalRateLimiter,
) -> None:
    k = key()
    for _ in range(1000):
        state = limiter.admit(k)
    assert state.headers() == {}
