"""Cluster-wide rate limits in Redis: every gateway process shares one budget per key.

Admission is one Lua script: it refills every bucket the request touches from Redis's
own clock, checks them all, and only then takes from all of them, atomically, so
concurrent requests on any number of processes can never overrun a limit together.
Concurrency is counted with leases (a sorted set of request ids scored by expiry), so
the slots of a process that died come back when its leases expire.

If Redis cannot be reached, admission falls back to this process's own limits and
counts the fallback in a metric, rather than refusing every request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelmint.accounts.keys import KeyInfo
from modelmint.limits.local import LocalRateLimiter
from modelmint.limits.rules import Limit, Permit, limits_for, refused, tightest, window_after
from modelmint.observability.metrics import RATE_LIMIT_FALLBACKS

__all__ = ["RedisRateLimiter"]

log = logging.getLogger(__name__)

# Refill shared by both scripts: level and stamp in a hash; a changed limit keeps the share
# already used. Numbers go back to Python as strings: Redis truncates Lua floats.
_REFILL = """
local function refill(key, limit, now)
  local state = redis.call('HMGET', key, 'level', 'stamp', 'limit')
  local level, stamp, old = tonumber(state[1]), tonumber(state[2]), tonumber(state[3])
  if level == nil then return limit end
  if old ~= nil and old ~= limit then level = level * limit / old end
  return math.min(limit, level + math.max(0, now - stamp) * limit / 60)
end
local function store(key, level, limit, now)
  redis.call('HSET', key, 'level', tostring(level), 'stamp', tostring(now), 'limit', limit)
  -- Idle past the time it takes to refill, a bucket is full: let Redis forget it.
  redis.call('EXPIRE', key, math.ceil((limit - level) * 60 / limit) + 2)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# KEYS: one per limit. ARGV: lease, lease ttl, then kind and limit per key.
_ADMIT = (
    _REFILL
    + """
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local levels = {}
for i = 1, #KEYS do
  local kind, limit = ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  if kind == 'concurrent' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) >= limit then return {'0', tostring(i), '1'} end
    levels[i] = 0
  else
    local level = refill(KEYS[i], limit, now)
    local need = 1
    if kind == 'tokens' then need = 0.000001 end
    if level < need then
      return {'0', tostring(i), tostring((need - level) * 60 / limit)}
    end
    levels[i] = level
  end
end
local out = {'1'}
for i = 1, #KEYS do
  local kind, limit = ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  if kind == 'concurrent' then
    redis.call('ZADD', KEYS[i], now + ttl, lease)
    redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + 60)
  else
    if kind == 'requests' then levels[i] = levels[i] - 1 end
    store(KEYS[i], levels[i], limit, now)
  end
  out[#out + 1] = tostring(levels[i])
end
return out
"""
)

# KEYS: one per limit. ARGV: lease, tokens, then kind and limit per key.
_RELEASE = (
    _REFILL
    + """
local lease, tokens = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS do
  local kind, limit = ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  if kind == 'concurrent' then
    redis.call('ZREM', KEYS[i], lease)
  elseif kind == 'tokens' and tokens > 0 then
    store(KEYS[i], refill(KEYS[i], limit, now) - tokens, limit, now)
  end
end
return 1
"""
)


def _redis_key(limit: Limit) -> str:
    return f"modelmint:limit:{limit.scope}:{limit.kind}"


def _argv(limits: tuple[Limit, ...], first: str, second: float | int) -> list[Any]:
    argv: list[Any] = [first, second]
    for limit in limits:
        argv += [limit.kind, limit.limit]
    return argv


class RedisRateLimiter:
    def __init__(self, url: str, *, lease_ttl_s: float = 600.0, timeout_s: float = 0.5) -> None:
        # Short timeouts: a slow Redis must not stall every request; we fall back instead.
        self._redis = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._admit_script = self._redis.register_script(_ADMIT)
        self._release_script = self._redis.register_script(_RELEASE)
        self._lease_ttl_s = lease_ttl_s
        self._local = LocalRateLimiter()
        self._pending: set[asyncio.Task[None]] = set()

    async def admit(self, key: KeyInfo, lease: str) -> Permit:
        limits = limits_for(key)
        if not limits:
            return Permit(lease, limits)
        try:
            result = await self._admit_script(
                keys=[_redis_key(limit) for limit in limits],
                args=_argv(limits, lease, self._lease_ttl_s),
            )
        except RedisError as exc:
            RATE_LIMIT_FALLBACKS.inc()
            log.warning("redis unreachable, limiting in this process only: %s", exc)
            return self._local.admit_now(key, lease)
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in result]
        if values[0] != "1":
            raise refused(limits[int(values[1]) - 1], float(values[2]))
        requests, tokens = [], []
        for limit, level in zip(limits, values[1:], strict=True):
            if limit.kind == "requests":
                requests.append(window_after(limit, float(level)))
            elif limit.kind == "tokens":
                tokens.append(window_after(limit, float(level)))
        return Permit(lease, limits, tightest(requests), tightest(tokens), origin="redis")

    def release(self, permit: Permit, tokens: int) -> None:
        if permit.origin != "redis":
            self._local.release(permit, tokens)
            return
        if permit.released:
            return
        permit.released = True
        # Not awaited: release runs where a cancelled request can no longer wait.
        task = asyncio.get_running_loop().create_task(self._release(permit, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, permit: Permit, tokens: int) -> None:
        try:
            await self._release_script(
                keys=[_redis_key(limit) for limit in permit.limits],
                args=_argv(permit.limits, permit.lease, max(0, tokens)),
            )
        except RedisError as exc:
            # The lease expires by itself; the tokens go uncharged against the limit.
            log.warning("could not release a rate-limit permit in redis: %s", exc)

    async def flush(self) -> None:
        """Wait for the releases still on their way to Redis."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await self._redis.aclose()
