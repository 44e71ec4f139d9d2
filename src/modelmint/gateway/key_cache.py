"""API key lookups served from memory.

An entry, found or not, is trusted for ``ttl`` seconds and then re-read, so a
key revoked in any process stops working within that delay everywhere, and the
request path reaches the database at most once per key per ``ttl``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from modelmint.accounts.keys import KeyInfo, hash_secret

__all__ = ["KeyCache"]

# Bounds memory when someone sprays random keys at us.
_MAX_ENTRIES = 100_000


class KeyCache:
    def __init__(
        self,
        lookup: Callable[[str], KeyInfo | None],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[KeyInfo | None, float]] = {}
        # One database read per key at a time: when an entry expires under load, every
        # request of that key waits for the same read instead of each starting its own.
        self._reading: dict[str, asyncio.Future[KeyInfo | None]] = {}

    async def get(self, secret: str) -> KeyInfo | None:
        digest = hash_secret(secret)
        now = self._clock()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        reading = self._reading.get(digest)
        if reading is not None:
            return await asyncio.shield(reading)
        reading = self._reading[digest] = asyncio.get_running_loop().create_future()
        try:
            info = await asyncio.to_thread(self._lookup, digest)
        except BaseException as exc:
            reading.set_exception(exc)
            reading.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._reading[digest]
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (info, now)
        reading.set_result(info)
        return info

    def forget(self, key_id: str) -> None:
        """Drop a key at once (this process revoked or changed it)."""
        for digest, (info, _) in list(self._entries.items()):
            if info is not None and info.id == key_id:
                del self._entries[digest]
