"""In-process rate limits: token buckets and concurrency leases in this process's memory."""

from __future__ import annotations

import time
from collections.abc import Callable

from modelmint.accounts.keys import KeyInfo
from modelmint.limits.rules import (
    REFILL_WINDOW_S,
    Limit,
    Permit,
    limits_for,
    refused,
    tightest,
    window_after,
)

__all__ = ["LocalRateLimiter"]


class _Bucket:
    __slots__ = ("level", "limit", "stamp")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float, limit: int) -> None:
        if limit != self.limit:  # the limit changed: keep the share already used
            self.level = self.level * limit / self.limit
            self.limit = limit
        self.level = min(float(limit), self.level + (now - self.stamp) * limit / REFILL_WINDOW_S)
        self.stamp = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * REFILL_WINDOW_S / self.limit)


class LocalRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._leases: dict[str, set[str]] = {}

    def _bucket(self, limit: Limit, now: float) -> _Bucket:
        bucket = self._buckets.get((limit.scope, limit.kind))
        if bucket is None:
            bucket = self._buckets[limit.scope, limit.kind] = _Bucket(limit.limit, now)
        else:
            bucket.refill(now, limit.limit)
        return bucket

    async def admit(self, key: KeyInfo, lease: str) -> Permit:
        return self.admit_now(key, lease)

    def admit_now(self, key: KeyInfo, lease: str) -> Permit:
        """Check every limit first, then take from all: a refusal consumes nothing."""
        limits = limits_for(key)
        if not limits:
            return Permit(lease, limits)
        now = self._clock()
        for limit in limits:
            if limit.kind == "concurrent":
                if len(self._leases.get(limit.scope, ())) >= limit.limit:
                    raise refused(limit, 1.0)
                continue
            bucket = self._bucket(limit, now)
            need = 1.0 if limit.kind == "requests" else 1e-9  # tokens: just not empty
            if bucket.level < need:
                raise refused(limit, bucket.seconds_until(need))
        requests, tokens = [], []
        for limit in limits:
            if limit.kind == "concurrent":
                self._leases.setdefault(limit.scope, set()).add(lease)
            elif limit.kind == "requests":
                bucket = self._buckets[limit.scope, limit.kind]
                bucket.level -= 1
                requests.append(window_after(limit, bucket.level))
            else:
                tokens.append(window_after(limit, self._buckets[limit.scope, limit.kind].level))
        return Permit(lease, limits, tightest(requests), tightest(tokens))

    def release(self, permit: Permit, tokens: int) -> None:
        """End the request: free its leases and charge its tokens. Idempotent."""
        if permit.released:
            return
        permit.released = True
        for limit in permit.concurrent:
            held = self._leases.get(limit.scope)
            if held is not None:
                held.discard(permit.lease)
                if not held:
                    del self._leases[limit.scope]
        if tokens > 0:
            now = self._clock()
            for limit in permit.token_buckets:
                self._bucket(limit, now).level -= tokens
