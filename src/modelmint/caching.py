"""A small read-through cache for the request path: entries live ``ttl`` seconds.

An entry, found or not, is trusted for ``ttl`` seconds and then re-read, so a
change made by any process (a revoked key, a new plan) is seen everywhere within
that delay, and the request path reaches the database at most once per entry per
``ttl``. Reads are single-flight: when an entry expires under load, every request
for it awaits the same read instead of each starting its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["TtlCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Bounds memory when someone sprays random keys at us.
_MAX_ENTRIES = 100_000


class TtlCache(Generic[K, V]):
    def __init__(
        self,
        load: Callable[[K], V],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load  # blocking (a database read): runs on a worker thread
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[K, tuple[V, float]] = {}
        self._reading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        reading = self._reading.get(key)
        if reading is not None:
            return await asyncio.shield(reading)
        reading = self._reading[key] = asyncio.get_running_loop().create_future()
        try:
            value = await asyncio.to_thread(self._load, key)
        except BaseException as exc:
            reading.set_exception(exc)
            reading.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._reading[key]
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (value, now)
        reading.set_result(value)
        return value

    def forget_where(self, match: Callable[[V], bool]) -> None:
        """Drop the entries whose value matches (this process changed what they hold)."""
        for key, (value, _) in list(self._entries.items()):
            if match(value):
                del self._entries[key]

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
