"""Rate limits per API key and per organisation: requests/min, tokens/min, concurrency.

In-process by default; cluster-wide through Redis when ``MODELMINT_REDIS_URL`` is set.
"""

from typing import Protocol

from modelmint.accounts.keys import KeyInfo
from modelmint.limits.local import LocalRateLimiter
from modelmint.limits.rules import Limit, Permit, Window, format_reset, limits_for

__all__ = [
    "Limit",
    "LocalRateLimiter",
    "Permit",
    "RateLimiter",
    "Window",
    "format_reset",
    "limits_for",
]


class RateLimiter(Protocol):
    async def admit(self, key: KeyInfo, lease: str) -> Permit:
        """Admit a request or raise RateLimited; the lease names it until released."""

    def release(self, permit: Permit, tokens: int) -> None:
        """The request ended: free its concurrency leases and charge its tokens.

        Not awaited: it runs where a cancelled request can no longer wait."""
