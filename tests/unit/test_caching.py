"""The request path's read-through cache: expiry, single flight, reading ahead."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from modelmint.caching import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """What the cache reads: a value per key that tests change, and a count of reads.
    ``gate`` (when set) holds every read until the test opens it."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {"k": "v1"}
        self.reads = 0
        self.fail = False
        self.gate: threading.Event | None = None

    def load(self, key: str) -> str:
        if self.gate is not None:
            self.gate.wait(5)
        self.reads += 1
        if self.fail:
            raise RuntimeError("database down")
        return self.values[key]


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for what a background read does on its worker thread and then
    on the event loop."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the background read did not finish")


async def changed_behind_a_held_read(
    cache: TtlCache[str, str], clock: Clock, source: Source
) -> threading.Event:
    """ "k" cached as v1, then changed to v2 at the source, whose reads now wait for the
    test to open the gate it returns; the clock past half the ttl."""
    await cache.get("k")
    source.values["k"] = "v2"
    gate = source.gate = threading.Event()
    clock.now += 0.6
    return gate


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def cache(clock: Clock, source: Source) -> TtlCache[str, str]:
    return TtlCache(source.load, ttl=1.0, clock=clock)


async def test_an_entry_is_read_once_and_trusted_until_it_expires(
    cache: TtlCache[str, str], clock: Clock, source: Source
) -> None:
    assert await cache.get("k") == "v1"
    source.values["k"] = "v2"
    clock.now += 0.4
    assert await cache.get("k") == "v1"
    assert source.reads == 1
    clock.now += 0.7  # 1.1 s after the read began: expired
    assert await cache.get("k") == "v2"
    assert source.reads == 2


async def test_an_entry_used_after_half_its_ttl_is_reread_in_the_background(
    cache: TtlCache[str, str], clock: Clock, source: Source
) -> None:
    gate = await changed_behind_a_held_read(cache, clock, source)
    # Served from the cache at once, though a read is now under way.
    assert await asyncio.wait_for(cache.get("k"), 1) == "v1"
    assert await asyncio.wait_for(cache.get("k"), 1) == "v1"  # one read ahead, not two
    gate.set()
    await until(lambda: cache.peek("k") == "v2")
    assert source.reads == 2
    assert await cache.get("k") == "v2"
    # The new value counts its ttl from when its read began.
    clock.now += 0.9
    assert await cache.get("k") == "v2"
    await until(lambda: source.reads == 3)  # served at once, and read ahead again


async def test_a_value_is_never_served_past_its_ttl_while_a_read_ahead_hangs(
    cache: TtlCache[str, str], clock: Clock, source: Source
) -> None:
    gate = await changed_behind_a_held_read(cache, clock, source)
    assert await cache.get("k") == "v1"  # starts the read ahead, which hangs
    clock.now += 0.5  # now expired: the request waits for that same read
    waiting = asyncio.ensure_future(cache.get("k"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    gate.set()
    assert await asyncio.wait_for(waiting, 5) == "v2"
    assert source.reads == 2


async def test_a_failed_read_ahead_keeps_the_entry_until_it_expires_then_reports(
    cache: TtlCache[str, str], clock: Clock, source: Source
) -> None:
    await cache.get("k")
    source.fail = True
    clock.now += 0.6
    assert await cache.get("k") == "v1"
    await until(lambda: source.reads == 2 and not cache.reading("k"))
    assert await cache.get("k") == "v1"
    clock.now += 0.5
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get("k")


async def test_a_forgotten_entry_is_not_restored_by_a_read_begun_before(
    cache: TtlCache[str, str], clock: Clock, source: Source
) -> None:
    await cache.get("k")
    source.gate = threading.Event()
    clock.now += 0.6
    await cache.get("k")  # a read ahead begins, and reads the old value
    cache.forget("k")  # then this process changes the value
    source.gate.set()
    await until(lambda: not cache.reading("k"))
    source.gate = None
    source.values["k"] = "v2"
    assert await cache.get("k") == "v2"


async def test_concurrent_misses_share_one_read(cache: TtlCache[str, str], source: Source) -> None:
    source.gate = threading.Event()
    gets = [asyncio.ensure_future(cache.get("k")) for _ in range(5)]
    await asyncio.sleep(0.05)
    source.gate.set()
    assert await asyncio.gather(*gets) == ["v1"] * 5
    assert source.reads == 1
