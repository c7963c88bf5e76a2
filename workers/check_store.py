"""Where spot checks wait for the verifier: a Redis stream bounded in bytes, not in entries.

A check holds every recorded span's hidden states, so its size follows the model's width, the session's length and
the number of spans: a cap by count bounds nothing, and Redis runs `noeviction`, so checks piling up behind a slow
(or absent) verifier would end in refused writes of the token and usage streams that bill people. Each entry
therefore carries the length of its JSON, and one script adds the entry and its length to
`keys.VERIFICATION_STREAM_BYTES` only when the total stays within WORKER_VERIFY_MAX_BYTES; otherwise the check is
dropped unverified (the caller counts it, and sends a small notice outside the budget instead, `publish_notice`, so
the session is recorded as not verified rather than held forever for a verdict). The same script stamps the nodes
whose spans the check holds, so a node counts as checked only once a check of its work is actually waiting for the
verifier. The verifier deletes each entry once its verdicts are committed and subtracts its length
(`verifier.service`): the budget bounds what waits unverified, and a stream found empty resets the count, so a count
left wrong (a stream deleted by hand) mends itself.
"""

import json

import redis.asyncio as aioredis

from protocol import keys
from protocol.verification import VERIFICATION_BYTES_FIELD, VERIFICATION_FIELD, NotVerified, SpotCheck

_CHECK, _BYTES = (json.dumps(word) for word in (VERIFICATION_FIELD, VERIFICATION_BYTES_FIELD))

# KEYS: stream, bytes held, last-sampled hash. ARGV: budget, check JSON, now, peers to stamp...
_PUBLISH = f"""
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if held < 0 or redis.call('XLEN', KEYS[1]) == 0 then
  held = 0
  redis.call('SET', KEYS[2], 0)
end
local size = string.len(ARGV[2])
if held + size > tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', {_CHECK}, ARGV[2], {_BYTES}, size)
redis.call('INCRBY', KEYS[2], size)
for i = 4, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], ARGV[3]) end
return 1
"""


async def store_full(redis: aioredis.Redis, budget: int) -> bool:
    """Whether the checks waiting already hold the whole budget: a run then records nothing (copying hidden
    states that could never be published would only cost the worker memory)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.VERIFICATION_STREAM_BYTES)
        pipe.xlen(keys.VERIFICATION_STREAM)
        held, length = await pipe.execute()
    return int(length) > 0 and int(held or 0) >= budget


async def publish_check(redis: aioredis.Redis, check: SpotCheck, budget: int, now: float) -> bool:
    """Add `check` to the stream and stamp its spans' nodes sampled at `now`, unless the checks waiting would then
    hold more than `budget` bytes; False when it was dropped for that. Raises what Redis raises."""
    peers = sorted({span.peer_id for span in check.spans})
    publish = redis.register_script(_PUBLISH)
    names = [keys.VERIFICATION_STREAM, keys.VERIFICATION_STREAM_BYTES, keys.VERIFIED_NODES]
    added = await publish(keys=names, args=[budget, check.model_dump_json(), repr(now), *peers])
    return bool(added)


async def publish_notice(redis: aioredis.Redis, notice: NotVerified) -> None:
    """Tell the verifier that a sampled session's check was not handed over (`notice.cause`), so that it records
    the session as not verified and its providers are paid as for an unsampled one. Always admitted, outside the
    byte budget: a notice is about a hundred bytes, one per dropped sampled session, where the budget bounds
    checks of hidden states (an entry without a length counts 0 when the verifier deletes it). Raises what Redis
    raises."""
    await redis.xadd(keys.VERIFICATION_STREAM, notice.to_stream_fields())  # type: ignore[arg-type]


async def bytes_held(redis: aioredis.Redis) -> int:
    """The bytes of checks waiting for the verifier, as counted."""
    return int(await redis.get(keys.VERIFICATION_STREAM_BYTES) or 0)
