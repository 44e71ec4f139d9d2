"""In-process token buckets: requests per minute and tokens per minute, per API key.

A bucket holds up to ``limit`` units and refills at ``limit / 60`` units a second,
so a key may burst its whole minute's allowance and then runs at the steady rate.
Tokens are settled after the answer, when the exact count is known: a request is
admitted while the token bucket is not empty, and its real cost may take the
bucket below zero, which then delays the next request until it refills.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import RateLimited

__all__ = ["LocalRateLimiter", "RateLimiter", "RateState"]


@dataclass(frozen=True, slots=True)
class RateState:
    """What the ``x-ratelimit-*`` headers report after admission."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
        return out


class RateLimiter(Protocol):
    def admit(self, key: KeyInfo) -> RateState: ...

    def settle(self, key: KeyInfo, tokens: int) -> None: ...


class _Bucket:
    __slots__ = ("level", "limit", "stamp")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.level = float(limit)
        self.stamp = now

    def refill(self, now: float, limit: int) -> None:
        if limit != self.limit:  # the key's limit changed: keep the used share
            self.level = self.level * limit / self.limit
            self.limit = limit
        self.level = min(float(limit), self.level + (now - self.stamp) * limit / 60.0)
        self.stamp = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60.0 / self.limit)


class LocalRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def _bucket(self, table: dict[str, _Bucket], key_id: str, limit: int, now: float) -> _Bucket:
        bucket = table.get(key_id)
        if bucket is None:
            bucket = table[key_id] = _Bucket(limit, now)
        else:
            bucket.refill(now, limit)
        return bucket

    def admit(self, key: KeyInfo) -> RateState:
        now = self._clock()
        state: dict[str, int | None] = {}
        if key.tpm_limit is not None:
            tokens = self._bucket(self._tokens, key.id, key.tpm_limit, now)
            if tokens.level <= 0:
                wait = tokens.seconds_until(1)
                raise RateLimited(
                    f"token rate limit of {key.tpm_limit} per minute reached; retry in "
                    f"{math.ceil(wait)} s",
                    retry_after=wait,
                    code="tokens_per_minute_exceeded",
                )
            state.update(limit_tokens=key.tpm_limit, remaining_tokens=max(0, int(tokens.level)))
        if key.rpm_limit is not None:
            requests = self._bucket(self._requests, key.id, key.rpm_limit, now)
            if requests.level < 1:
                wait = requests.seconds_until(1)
                raise RateLimited(
                    f"request rate limit of {key.rpm_limit} per minute reached; retry in "
                    f"{math.ceil(wait)} s",
                    retry_after=wait,
                    code="requests_per_minute_exceeded",
                )
            requests.level -= 1
            state.update(limit_requests=key.rpm_limit, remaining_requests=int(requests.level))
        return RateState(**state)

    def settle(self, key: KeyInfo, tokens: int) -> None:
        if key.tpm_limit is None or tokens <= 0:
            return
        bucket = self._bucket(self._tokens, key.id, key.tpm_limit, self._clock())
        bucket.level -= tokens
