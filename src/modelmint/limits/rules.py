"""Which limits apply to a request, and how their state is reported.

A key may carry its own limits and share its organisation's. Each limit is one of:
requests per minute and tokens per minute (token buckets that hold up to ``limit``
and refill at ``limit / 60`` a second: a full minute's allowance may burst, then the
steady rate applies), or concurrent requests (leases held while a request runs).
Tokens are settled after the answer, when the exact count is known: admission only
needs a non-empty token bucket, and the real cost may take it below zero, which then
holds back the next requests until it has refilled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import RateLimited

__all__ = [
    "Limit",
    "Permit",
    "Window",
    "format_reset",
    "limits_for",
    "refused",
    "tightest",
    "window_after",
]

Kind = Literal["requests", "tokens", "concurrent"]
REFILL_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # "key:<id>" or "org:<id>": the name of the counter, shared cluster-wide
    kind: Kind
    limit: int

    @property
    def owner(self) -> str:
        return "organisation" if self.scope.startswith("org:") else "API key"


@dataclass(frozen=True, slots=True)
class Window:
    """A bucket's state after admission, for the ``x-ratelimit-*`` headers."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


@dataclass(slots=True)
class Permit:
    """An admitted request: the leases it holds and the buckets its tokens are owed to."""

    lease: str
    limits: tuple[Limit, ...]
    requests: Window | None = None
    tokens: Window | None = None
    # Which limiter holds the counters: "local", or "redis" for cluster-wide ones.
    origin: str = "local"
    released: bool = field(default=False)

    @property
    def concurrent(self) -> tuple[Limit, ...]:
        return tuple(limit for limit in self.limits if limit.kind == "concurrent")

    @property
    def token_buckets(self) -> tuple[Limit, ...]:
        return tuple(limit for limit in self.limits if limit.kind == "tokens")

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out[f"x-ratelimit-limit-{name}"] = str(window.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(window.remaining)
                out[f"x-ratelimit-reset-{name}"] = format_reset(window.reset_s)
        return out


def limits_for(key: KeyInfo) -> tuple[Limit, ...]:
    found: list[Limit] = []
    for scope, rpm, tpm, concurrent in (
        (f"key:{key.id}", key.rpm_limit, key.tpm_limit, key.max_concurrent),
        (
            f"org:{key.organization_id}",
            key.org_rpm_limit,
            key.org_tpm_limit,
            key.org_max_concurrent,
        ),
    ):
        if rpm is not None:
            found.append(Limit(scope, "requests", rpm))
        if tpm is not None:
            found.append(Limit(scope, "tokens", tpm))
        if concurrent is not None:
            found.append(Limit(scope, "concurrent", concurrent))
    return tuple(found)


def window_after(limit: Limit, level: float) -> Window:
    """The header view of a bucket left at ``level`` (requests already taken off)."""
    full_in = max(0.0, (limit.limit - level) * REFILL_WINDOW_S / limit.limit)
    return Window(limit.limit, max(0, math.floor(level)), full_in)


def tightest(windows: list[Window]) -> Window | None:
    return min(windows, key=lambda w: (w.remaining, -w.reset_s)) if windows else None


def refused(limit: Limit, wait_s: float) -> RateLimited:
    """The 429 for ``limit``, in OpenAI's words, with the wait until it admits again."""
    wait_s = max(wait_s, 0.001)
    if limit.kind == "concurrent":
        return RateLimited(
            f"{limit.owner} already has {limit.limit} requests in progress; retry when one "
            "finishes",
            retry_after=wait_s,
            code="concurrent_requests_exceeded",
        )
    what = "request" if limit.kind == "requests" else "token"
    return RateLimited(
        f"{limit.owner} {what} rate limit of {limit.limit} per minute reached; retry in "
        f"{math.ceil(wait_s)} s",
        retry_after=wait_s,
        code=f"{limit.kind}_per_minute_exceeded",
    )


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
