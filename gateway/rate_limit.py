"""Per-API-key request rate limit: a sliding one-minute window in Redis, shared by every replica."""

import time
import uuid

import redis.asyncio as aioredis

from protocol import keys

WINDOW_MS = 60_000

# KEYS: the key's window. ARGV: now_ms, window_ms, limit, a unique member. Returns 0 (allowed) or ms to wait.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + tonumber(ARGV[2]) - tonumber(ARGV[1]))
"""


class RateLimiter:
    """`take` one request from an API key's budget of `per_minute`."""

    def __init__(self, redis: aioredis.Redis, *, per_minute: int) -> None:
        self._per_minute = per_minute
        self._take = redis.register_script(_TAKE)

    async def take(self, api_key_id: str, *, per_minute: int | None = None) -> float:
        """0 when the request may start, else the seconds until it could; `per_minute` overrides the default
        for a key with a limit of its own."""
        now_ms = int(time.time() * 1000)
        limit = per_minute or self._per_minute
        wait_ms = await self._take(
            keys=[keys.rate_limit(api_key_id)], args=[now_ms, WINDOW_MS, limit, uuid.uuid4().hex]
        )
        return int(wait_ms) / 1000.0
