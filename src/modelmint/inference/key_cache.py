"""API key lookups served from memory (see ``modelmint.caching``).

A key revoked in any process stops working within ``ttl`` everywhere, and the
request path reaches the database at most once per key per ``ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelmint.accounts.keys import KeyInfo, hash_secret
from modelmint.caching import TtlCache

__all__ = ["KeyCache"]


class KeyCache:
    def __init__(
        self,
        lookup: Callable[[str], KeyInfo | None],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Entries are keyed by the secret's hash: plaintext keys never sit in memory.
        self._cache: TtlCache[str, KeyInfo | None] = TtlCache(lookup, ttl=ttl, clock=clock)

    async def get(self, secret: str) -> KeyInfo | None:
        return await self._cache.get(hash_secret(secret))

    def forget(self, key_id: str) -> None:
        """Drop a key at once (this process revoked or changed it)."""
        self._cache.forget_where(lambda info: info is not None and info.id == key_id)
