"""The same rate-limit rules held by the in-process limiter and by the Redis one."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import RateLimited
from modelmint.limits import LocalRateLimiter, RateLimiter
from modelmint.limits.redis_limiter import RedisRateLimiter
from modelmint.observability.metrics import RATE_LIMIT_FALLBACKS


@pytest.fixture(params=["local", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "local":
        yield LocalRateLimiter()
        return
    limiter = RedisRateLimiter(request.getfixturevalue("redis_url"))
    yield limiter
    await limiter.close()


def key(**limits: Any) -> KeyInfo:
    """A key with fresh ids, so Redis counters of other tests never interfere."""
    fields: dict[str, Any] = {"rpm_limit": None, "tpm_limit": None, **limits}
    return KeyInfo(
        id="key_" + secrets.token_hex(6),
        organization_id=limits.pop("organization_id", "org_" + secrets.token_hex(6)),
        prefix="mm-test",
        models=None,
        expires_at=None,
        revoked=False,
        **{k: v for k, v in fields.items() if k != "organization_id"},
    )


async def settle(limiter: RateLimiter) -> None:
    """Wait until background releases (Redis) have run."""
    if isinstance(limiter, RedisRateLimiter):
        await limiter.flush()


async def test_requests_per_minute_burst_then_refusal(limiter: RateLimiter) -> None:
    k = key(rpm_limit=3)
    permits = [await limiter.admit(k, f"r{i}") for i in range(3)]
    assert [p.requests.remaining for p in permits if p.requests] == [2, 1, 0]
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(k, "r3")
    assert caught.value.code == "requests_per_minute_exceeded"
    assert 19 < caught.value.retry_after <= 20


async def test_concurrency_leases_are_held_until_released(limiter: RateLimiter) -> None:
    k = key(max_concurrent=2)
    first = await limiter.admit(k, "a")
    await limiter.admit(k, "b")
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(k, "c")
    assert caught.value.code == "concurrent_requests_exceeded"
    limiter.release(first, 0)
    limiter.release(first, 0)  # releasing twice frees one slot only
    await settle(limiter)
    await limiter.admit(k, "c")
    with pytest.raises(RateLimited):
        await limiter.admit(k, "d")


async def test_an_organisation_limit_is_shared_by_its_keys(limiter: RateLimiter) -> None:
    org = "org_" + secrets.token_hex(6)
    one, two = key(organization_id=org, org_rpm_limit=2), key(organization_id=org, org_rpm_limit=2)
    await limiter.admit(one, "a")
    await limiter.admit(two, "b")
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(one, "c")
    assert "organisation" in caught.value.message


async def test_a_refusal_takes_nothing_from_the_other_limits(limiter: RateLimiter) -> None:
    k = key(rpm_limit=5, max_concurrent=1)
    held = await limiter.admit(k, "a")  # 4 requests left, the only slot taken
    for i in range(3):
        with pytest.raises(RateLimited):
            await limiter.admit(k, f"refused{i}")
    limiter.release(held, 0)
    await settle(limiter)
    permit = await limiter.admit(k, "b")
    assert permit.requests is not None and permit.requests.remaining == 3


async def test_tokens_are_charged_at_release(limiter: RateLimiter) -> None:
    k = key(tpm_limit=100)
    permit = await limiter.admit(k, "a")
    limiter.release(permit, 500)
    await settle(limiter)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(k, "b")
    assert caught.value.code == "tokens_per_minute_exceeded"
    assert 239 < caught.value.retry_after <= 240  # -400 back to 0 at 100/min


async def test_two_redis_limiters_share_one_budget_under_concurrency(redis_url: str) -> None:
    # A generous timeout: on a loaded CI machine a call past the 0.5 s default falls back
    # to each process's own budget (by design), which is not what this test is about.
    a = RedisRateLimiter(redis_url, timeout_s=10.0)
    b = RedisRateLimiter(redis_url, timeout_s=10.0)
    k = key(rpm_limit=50)
    fallbacks = RATE_LIMIT_FALLBACKS._value.get()

    async def attempt(limiter: RedisRateLimiter, i: int) -> bool:
        try:
            await limiter.admit(k, f"r{i}")
        except RateLimited:
            return False
        return True

    try:
        results = await asyncio.gather(*(attempt(a if i % 2 else b, i) for i in range(200)))
    finally:
        await a.close()
        await b.close()
    assert RATE_LIMIT_FALLBACKS._value.get() == fallbacks
    assert sum(results) == 50


async def test_leases_of_a_dead_process_expire(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url, lease_ttl_s=0.3)
    k = key(max_concurrent=1)
    try:
        await limiter.admit(k, "held-by-a-process-that-died")  # never released
        with pytest.raises(RateLimited):
            await limiter.admit(k, "next")
        deadline = time.monotonic() + 5
        while True:
            try:
                await limiter.admit(k, "next")
                break
            except RateLimited:
                assert time.monotonic() < deadline, "the lease never expired"
                await asyncio.sleep(0.05)
    finally:
        await limiter.close()


async def test_without_redis_limits_fall_back_to_this_process() -> None:
    dead = RedisRateLimiter("redis://127.0.0.1:1/0")  # nothing listens on port 1
    before = RATE_LIMIT_FALLBACKS._value.get()
    k = key(rpm_limit=1)
    try:
        permit = await dead.admit(k, "a")
        assert permit.origin == "local"
        with pytest.raises(RateLimited):
            await dead.admit(k, "b")
    finally:
        dead.release(permit, 0)
        await dead.close()
    assert RATE_LIMIT_FALLBACKS._value.get() == before + 2
