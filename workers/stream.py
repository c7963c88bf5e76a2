"""Writing one request's token stream so that, whatever crashes, it holds each token once and one ending.

Only the worker holding the request's lease (`keys.job_lease`) may write: every write is a Lua script that
checks the lease first, so a worker that stalled and lost its lease to another can no longer add tokens. The
token script also checks the cancel flag in the same round trip, and the finishing script appends the done
or error event and the usage record together, and only if the stream has no ending yet: one usage record
per request, ever. The lease also shortens arq's in-progress key, so a dead worker's job is picked up by
another worker as soon as the lease lapses, instead of after the job timeout.
"""

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from protocol import keys
from protocol.events import StreamEvent, TokenEvent, decode_event, encode_event
from protocol.usage import UsageRecord

_ACQUIRE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {redis.call('XRANGE', KEYS[3], '-', '+'), redis.call('EXISTS', KEYS[4])}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

_APPEND_TOKEN = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('XADD', KEYS[1], '*', 'kind', ARGV[2], 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

_FINISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'kind' and fields[i + 1] ~= 'token' then return 0 end
  end
end
redis.call('XADD', KEYS[1], '*', 'kind', ARGV[2], 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then redis.call('XADD', KEYS[3], '*', ARGV[5], ARGV[6]) end
redis.call('DEL', KEYS[2])
return 1
"""


_SCRIPTS = {"acquire": _ACQUIRE, "renew": _RENEW, "append_token": _APPEND_TOKEN, "finish": _FINISH}


class Appended(Enum):
    WRITTEN = 1
    CANCELLED = 0
    """The cancel flag is set; nothing was written."""
    LEASE_LOST = -1
    """Another worker owns the request now; this one must stop without writing."""


@dataclass(frozen=True)
class StreamSoFar:
    """What earlier runs of a request left on its stream."""

    token_ids: tuple[int, ...]
    texts: tuple[str, ...]
    final: StreamEvent | None
    cost_far: Decimal = Decimal(0)
    """The running cost the last delivered token showed the client."""
    cancelled: bool = False
    """The cancel flag was set when the stream was read."""

    @classmethod
    def parse(cls, entries: list[tuple[bytes, dict[bytes, bytes]]], *, cancelled: bool) -> "StreamSoFar":
        ids: list[int] = []
        texts: list[str] = []
        final: StreamEvent | None = None
        cost = Decimal(0)
        for _entry_id, fields in entries:
            event = decode_event(fields)
            if isinstance(event, TokenEvent):
                ids.append(event.token_id)
                texts.append(event.token)
                cost = event.cost_far
            else:
                final = event
        return cls(token_ids=tuple(ids), texts=tuple(texts), final=final, cost_far=cost, cancelled=cancelled)


class TokenStreamWriter:
    """The fenced writer of one request's stream; `owner` identifies this run (worker id + attempt)."""

    def __init__(self, redis: aioredis.Redis, request_id: str, owner: str, *, lease_ttl_s: float) -> None:
        self.request_id = request_id
        self.owner = owner
        self._lease_ms = max(1, int(lease_ttl_s * 1000))
        self._stream = keys.token_stream(request_id)
        self._lease = keys.job_lease(request_id)
        self._in_progress = in_progress_key_prefix + request_id
        self._scripts = {name: redis.register_script(source) for name, source in _SCRIPTS.items()}

    async def _run(self, script: str, keys: list[str], *args: str | int) -> int:
        return int(await self._scripts[script](keys=keys, args=[self.owner, *args]))

    async def acquire(self) -> StreamSoFar:
        """Take the lease (arq already gave this run the job), shorten arq's in-progress key to it, and read what
        earlier runs delivered (their token ids let a recovering run re-prefill exactly): one round trip."""
        stream_keys = [self._lease, self._in_progress, self._stream, keys.cancel_flag(self.request_id)]
        raw_entries, cancelled = await self._scripts["acquire"](keys=stream_keys, args=[self.owner, self._lease_ms])
        entries = [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in raw_entries]
        return StreamSoFar.parse(entries, cancelled=bool(cancelled))

    async def renew(self) -> bool:
        """Extend the lease; False when another run has taken it over."""
        return await self._run("renew", [self._lease, self._in_progress], self._lease_ms) == 1

    async def append_token(self, event: TokenEvent) -> Appended:
        fields = encode_event(event)
        result = await self._run(
            "append_token",
            [self._stream, self._lease, keys.cancel_flag(self.request_id)],
            fields["kind"],
            fields["data"],
            keys.TOKEN_STREAM_TTL_S,
        )
        return Appended(result)

    async def finish(self, event: StreamEvent, usage: UsageRecord | None) -> bool:
        """Append the ending and the usage record atomically; False when another run already finished.

        `usage` is None only for a request whose job payload is lost or invalid: nothing to bill it to.
        """
        fields = encode_event(event)
        ((usage_field, usage_value),) = usage.to_stream_fields().items() if usage is not None else (("", ""),)
        result = await self._run(
            "finish",
            [self._stream, self._lease, keys.USAGE_STREAM],
            fields["kind"],
            fields["data"],
            keys.TOKEN_STREAM_TTL_S,
            usage_field,
            usage_value,
        )
        return result == 1
