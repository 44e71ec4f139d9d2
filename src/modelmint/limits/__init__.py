"""Request and token rate limits per API key."""

from modelmint.limits.local import LocalRateLimiter, RateLimiter, RateState

__all__ = ["LocalRateLimiter", "RateLimiter", "RateState"]
