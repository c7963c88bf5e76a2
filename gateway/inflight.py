"""Requests streaming to clients right now, over every replica: leases in Redis sorted sets.

Each relayed request holds a lease (score = expiry, ms) in `keys.active_streams(api_key_id)` (bounds a key's
concurrent streams) and in `keys.active_requests(model_id)` (the `active_sessions` /mesh/status reports). The
process relaying it renews the lease; a crashed replica's leases simply expire. A client that disconnects before
the end keeps its lease for a grace period: if it reconnects (any replica) the job runs on, else it is cancelled.
"""

import asyncio
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis

from protocol import keys

log = logging.getLogger(__name__)

# KEYS: streams set, requests set. ARGV: now_ms, expiry_ms, max streams, request id.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    api_key_id: str
    model_id: str
    request_id: str

    @property
    def keys(self) -> tuple[str, str]:
        return keys.active_streams(self.api_key_id), keys.active_requests(self.model_id)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Inflight:
    """This process's leases; `renew_forever` keeps them alive, `release` ends one."""

    def __init__(self, redis: aioredis.Redis, *, lease_s: float, cancel_grace_s: float) -> None:
        self._redis = redis
        self._lease_ms = int(lease_s * 1000)
        self._grace_s = cancel_grace_s
        self._local: Counter[Lease] = Counter()
        self._admit = redis.register_script(_ADMIT)
        self._pending: set[asyncio.Task[None]] = set()

    async def admit(self, lease: Lease, max_streams: int) -> bool:
        """Take a stream slot for `lease` (a request already holding one always may); False when the key is full."""
        now = _now_ms()
        admitted = await self._admit(
            keys=list(lease.keys), args=[now, now + self._lease_ms, max_streams, lease.request_id]
        )
        return bool(admitted)

    def attach(self, lease: Lease) -> None:
        self._local[lease] += 1

    async def release(self, lease: Lease, *, finished: bool, client_left: bool) -> None:
        """One connection of `lease` ended: free the slot if the stream finished, start the grace if the client left."""
        self._local[lease] -= 1
        if self._local[lease] > 0:
            return
        del self._local[lease]
        streams_key, requests_key = lease.keys
        if finished:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(streams_key, lease.request_id)
                pipe.zrem(requests_key, lease.request_id)
                await pipe.execute()
        elif client_left:
            deadline = _now_ms() + int(self._grace_s * 1000)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(streams_key, {lease.request_id: deadline}, xx=True)
                pipe.zadd(requests_key, {lease.request_id: deadline}, xx=True)
                await pipe.execute()
            task = asyncio.create_task(self._cancel_unless_reattached(lease))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        # else: this replica is shutting down; the lease expires unless the client reconnects elsewhere

    async def _cancel_unless_reattached(self, lease: Lease) -> None:
        await asyncio.sleep(self._grace_s)
        streams_key, requests_key = lease.keys
        try:
            score = await self._redis.zscore(streams_key, lease.request_id)
            if score is not None and score > _now_ms():
                return  # a client is following it again, here or on another replica
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.cancel_flag(lease.request_id), "client disconnected", ex=keys.TOKEN_STREAM_TTL_S)
                pipe.zrem(streams_key, lease.request_id)
                pipe.zrem(requests_key, lease.request_id)
                await pipe.execute()
            log.info("request cancelled request_id=%s reason=client-disconnected", lease.request_id)
        except (OSError, aioredis.RedisError) as exc:
            log.warning("could not cancel request_id=%s: %s", lease.request_id, type(exc).__name__)

    async def renew_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not self._local:
                continue
            expiry = _now_ms() + self._lease_ms
            members: dict[str, dict[str, int]] = defaultdict(dict)
            for lease in self._local:
                for key in lease.keys:
                    members[key][lease.request_id] = expiry
            try:  # one ZADD per API key and per model, however many streams: renewal never stalls the loop
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, scores in members.items():
                        pipe.zadd(key, scores)
                        pipe.pexpireat(key, expiry + self._lease_ms)
                    await pipe.execute()
            except (OSError, aioredis.RedisError) as exc:
                log.warning("lease renewal failed: %s", type(exc).__name__)

    async def active_sessions(self, model_id: str) -> int:
        return int(await self._redis.zcount(keys.active_requests(model_id), _now_ms(), "+inf"))

    async def drain_pending(self) -> None:
        """Let cancellations already scheduled finish (at shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
