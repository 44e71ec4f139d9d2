"""KeyCache: key lookups trusted for a TTL, found or not, with a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from modelmint.accounts.keys import KeyInfo, hash_secret
from modelmint.inference.key_cache import KeyCache

SECRET = "mm-secret-one"
OTHER = "mm-secret-two"


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class CountingLookup:
    """Stands in for the database: a table by digest, and the digests it was asked for."""

    def __init__(self) -> None:
        self.table: dict[str, KeyInfo] = {}
        self.calls: list[str] = []

    def __call__(self, digest: str) -> KeyInfo | None:
        self.calls.append(digest)
        return self.table.get(digest)


def info(key_id: str = "key_1", *, revoked: bool = False) -> KeyInfo:
    return KeyInfo(
        id=key_id,
        organization_id="org_1",
        prefix="mm-secret-o",
        models=None,
        rpm_limit=None,
        tpm_limit=None,
        expires_at=None,
        revoked=revoked,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lookup() -> CountingLookup:
    table = CountingLookup()
    table.table[hash_secret(SECRET)] = info()
    return table


@pytest.fixture
def cache(lookup: CountingLookup, clock: FakeClock) -> KeyCache:
    return KeyCache(lookup, ttl=30.0, clock=clock)


async def test_lookup_receives_the_digest_never_the_secret(
    cache: KeyCache, lookup: CountingLookup
) -> None:
    assert await cache.get(SECRET) == info()
    assert lookup.calls == [hash_secret(SECRET)]


async def test_hit_within_ttl_makes_no_lookup(
    cache: KeyCache, lookup: CountingLookup, clock: FakeClock
) -> None:
    await cache.get(SECRET)
    clock.now += 29.9
    assert await cache.get(SECRET) == info()
    assert await cache.get(SECRET) == info()
    assert len(lookup.calls) == 1


async def test_expired_entry_is_reread_and_sees_revocation(
    cache: KeyCache, lookup: CountingLookup, clock: FakeClock
) -> None:
    assert (await cache.get(SECRET)).revoked is False  # type: ignore[union-attr]
    lookup.table[hash_secret(SECRET)] = info(revoked=True)  # revoked by another process
    clock.now += 10
    assert (await cache.get(SECRET)).revoked is False  # type: ignore[union-attr]
    clock.now += 20  # 30 s after the first read: the entry is stale
    assert (await cache.get(SECRET)).revoked is True  # type: ignore[union-attr]
    assert len(lookup.calls) == 2


async def test_unknown_key_is_cached_as_missing(
    cache: KeyCache, lookup: CountingLookup, clock: FakeClock
) -> None:
    assert await cache.get(OTHER) is None
    assert await cache.get(OTHER) is None
    assert lookup.calls == [hash_secret(OTHER)]
    # A key created meanwhile is found once the negative entry expires.
    lookup.table[hash_secret(OTHER)] = info("key_2")
    clock.now += 30
    assert await cache.get(OTHER) == info("key_2")
    assert lookup.calls == [hash_secret(OTHER), hash_secret(OTHER)]


async def test_forget_drops_the_key_at_once(cache: KeyCache, lookup: CountingLookup) -> None:
    await cache.get(SECRET)
    lookup.table[hash_secret(SECRET)] = dataclasses.replace(info(), rpm_limit=5)
    cache.forget("key_1")
    assert (await cache.get(SECRET)).rpm_limit == 5  # type: ignore[union-attr]
    assert len(lookup.calls) == 2


async def test_forget_leaves_other_keys_cached(cache: KeyCache, lookup: CountingLookup) -> None:
    lookup.table[hash_secret(OTHER)] = info("key_2")
    await cache.get(SECRET)
    await cache.get(OTHER)
    cache.forget("key_2")
    cache.forget("key_unknown")
    await cache.get(SECRET)
    assert lookup.calls == [hash_secret(SECRET), hash_secret(OTHER)]


async def test_failed_lookup_is_not_cached(clock: FakeClock) -> None:
    calls = 0

    def flaky(digest: str) -> KeyInfo | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return info()

    flaky_cache = KeyCache(flaky, ttl=30.0, clock=clock)
    with pytest.raises(ConnectionError):
        await flaky_cache.get(SECRET)
    assert await flaky_cache.get(SECRET) == info()
    assert calls == 2


async def test_concurrent_misses_share_one_database_read(clock: FakeClock) -> None:
    import asyncio
    import threading

    release = threading.Event()
    lookup = CountingLookup()
    lookup.table[hash_secret(SECRET)] = info()

    def slow(digest: str) -> KeyInfo | None:
        release.wait(5)
        return lookup(digest)

    cache = KeyCache(slow, ttl=1.0, clock=clock)
    waiting = [asyncio.create_task(cache.get(SECRET)) for _ in range(50)]
    await asyncio.sleep(0)  # every task has reached the cache
    release.set()
    found = await asyncio.gather(*waiting)
    assert lookup.calls == [hash_secret(SECRET)]
    assert all(f == info() for f in found)


async def test_a_failed_read_fails_its_waiters_and_is_retried(clock: FakeClock) -> None:
    import asyncio

    attempts = []

    def broken(digest: str) -> KeyInfo | None:
        attempts.append(digest)
        if len(attempts) == 1:
            raise RuntimeError("database down")
        return info()

    cache = KeyCache(broken, ttl=1.0, clock=clock)
    results = await asyncio.gather(*(cache.get(SECRET) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await cache.get(SECRET) == info()
    assert len(attempts) == 2
