"""Requests streaming to clients right now, over every replica: leases in Redis sorted sets.

Each client connection holds a slot (score = expiry, ms) in `keys.active_streams(api_key_id)`: a key's
concurrent-stream limit counts connections, so re-attaching to a request it already follows takes another slot.
Each followed request is also in `keys.active_requests(model_id)` (the `active_sessions` /mesh/status reports,
and the proof that some client still follows it). The process serving a connection renews both; a crashed
replica's entries simply expire, and so does a slot admitted for a response that never started. A client that
disconnects before the end keeps its request for a grace period: if it reconnects (any replica) the job runs on,
else it is cancelled.
"""

import asyncio
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from protocol import keys

log = logging.getLogger(__name__)

# KEYS: streams set, requests set. ARGV: now_ms, expiry_ms, max streams, connection id, request id.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class FollowedRequest:
    """A request some client follows, and the API key it is billed to."""

    api_key_id: str
    model_id: str
    request_id: str
    max_streams: int | None = field(default=None, compare=False)
    """The API key's own concurrent-stream limit, which every connection following the request counts against;
    None: the gateway's (GATEWAY_MAX_CONCURRENT_STREAMS)."""

    @property
    def keys(self) -> tuple[str, str]:
        return keys.active_streams(self.api_key_id), keys.active_requests(self.model_id)


@dataclass(frozen=True, slots=True)
class Slot:
    """One client connection to `followed`'s stream: the unit of a key's concurrent-stream limit."""

    followed: FollowedRequest
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Inflight:
    """This process's slots; `renew_forever` keeps them alive, `release` ends one."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        lease_s: float,
        cancel_grace_s: float,
        request_redis: Callable[[str], aioredis.Redis] | None = None,
    ) -> None:
        """`redis` is the home Redis (slots and leases); `request_redis(model_id)` the one holding that model's
        cancel flags (`protocol.redis_shards`), the home Redis unless given."""
        self._redis = redis
        self._request_redis = request_redis or (lambda _model_id: redis)
        self._lease_ms = int(lease_s * 1000)
        self._grace_s = cancel_grace_s
        self._local: set[Slot] = set()
        self._followers: Counter[FollowedRequest] = Counter()
        self._admit = redis.register_script(_ADMIT)
        self._pending: set[asyncio.Task[None]] = set()

    async def admit(self, followed: FollowedRequest, max_streams: int) -> Slot | None:
        """A slot for one more connection following `followed`; None when its API key already holds `max_streams`."""
        slot = Slot(followed)
        now = _now_ms()
        admitted = await self._admit(
            keys=list(followed.keys),
            args=[now, now + self._lease_ms, max_streams, slot.connection_id, followed.request_id],
        )
        return slot if admitted else None

    def attach(self, slot: Slot) -> None:
        """The connection is being served: renew its slot until `release`."""
        self._local.add(slot)
        self._followers[slot.followed] += 1

    async def release(self, slot: Slot, *, finished: bool, client_left: bool) -> None:
        """One connection ended: free its slot; stop following the request if the stream finished, or start the grace
        if the client left and no other connection here follows the request."""
        followed = slot.followed
        self._local.discard(slot)
        self._followers[followed] -= 1
        followed_here = self._followers[followed] > 0
        if not followed_here:
            del self._followers[followed]
        streams_key, requests_key = followed.keys
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(streams_key, slot.connection_id)
                if finished and not followed_here:
                    pipe.zrem(requests_key, followed.request_id)
                elif client_left and not followed_here:
                    pipe.zadd(requests_key, {followed.request_id: _now_ms() + int(self._grace_s * 1000)}, xx=True)
                await pipe.execute()
        except (OSError, aioredis.RedisError) as exc:  # no longer renewed, the slot expires within one lease
            log.warning("slot release failed request_id=%s: %s", followed.request_id, type(exc).__name__)
        if client_left and not finished and not followed_here:
            task = asyncio.create_task(self._cancel_unless_reattached(followed))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        # else (neither): this replica is shutting down; the lease expires unless the client reconnects elsewhere

    async def cancel(self, followed: FollowedRequest, reason: str) -> None:
        """Ask the request's worker to stop; it ends the stream with a cancelled event, billing what it delivered."""
        _, requests_key = followed.keys
        shard = self._request_redis(followed.model_id)
        if shard is self._redis:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.cancel_flag(followed.request_id), reason, ex=keys.TOKEN_STREAM_TTL_S)
                pipe.zrem(requests_key, followed.request_id)
                await pipe.execute()
        else:  # the flag where the request's worker looks for it, the lease where admission counts it
            await shard.set(keys.cancel_flag(followed.request_id), reason, ex=keys.TOKEN_STREAM_TTL_S)
            await self._redis.zrem(requests_key, followed.request_id)
        log.info("request cancelled request_id=%s reason=%s", followed.request_id, reason)

    async def _cancel_unless_reattached(self, followed: FollowedRequest) -> None:
        await asyncio.sleep(self._grace_s)
        try:
            score = await self._redis.zscore(keys.active_requests(followed.model_id), followed.request_id)
            if score is not None and score > _now_ms():
                return  # a client is following it again, here or on another replica
            await self.cancel(followed, "client disconnected")
        except (OSError, aioredis.RedisError) as exc:
            log.warning("could not cancel request_id=%s: %s", followed.request_id, type(exc).__name__)

    async def renew_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not self._local:
                continue
            expiry = _now_ms() + self._lease_ms
            members: dict[str, dict[str, int]] = defaultdict(dict)
            for slot in self._local:
                streams_key, requests_key = slot.followed.keys
                members[streams_key][slot.connection_id] = expiry
                members[requests_key][slot.followed.request_id] = expiry
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
