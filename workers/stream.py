"""Writing one request's token stream so that, whatever crashes, it holds each token once and one ending.

Only the run holding the request's lease (`keys.job_lease`) may write, and only onto the stream it left:
every write is a Lua script that checks the lease and the stream's length first. Another holder, or more
entries than this run wrote, means a successor took over (this run must stop and leave the job to it); fewer
entries than it wrote means Redis lost data under it (the run must end the stream with an error rather than
continue a stream whose start is gone). A lease that merely lapsed (a stall longer than its TTL) while the
stream is exactly as this run left it is taken back, together with arq's in-progress key, so a slow step never
makes the job claimable by a second worker while its first run is still alive.

The token script also checks the cancel flag in the same round trip, and pushes the route of the step that made
the token onto the request's served steps (`protocol.served_steps`) in the same atomic call, so a run that takes
the request over credits every billed token's nodes; the finishing script appends the done or error event and the
usage record together, and only if the stream has no ending yet (one usage record per request, ever), and deletes
the served steps it has paid. Each write refreshes the request's owner key after the stream's own TTL (restoring
it if it was lost), so ownership outlives the stream it guards.
"""

import json
import logging
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import Enum

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol import keys
from protocol.events import DATA_FIELD, KIND_FIELD, StreamEvent, TokenEvent, decode_event, encode_event
from protocol.ownership import RequestOwner
from protocol.served_steps import ServedStep
from protocol.usage import UsageRecord

logger = logging.getLogger(__name__)

_NO_LIMIT = 2**53
"""A stream length no request reaches: the bound used when a write need not match the stream's length."""

# The scripts name the stream's fields and the token kind through these Lua literals, made from protocol.events
# once at import (a JSON string of these names is a Lua string literal).
_KIND, _DATA, _TOKEN = (json.dumps(word) for word in (KIND_FIELD, DATA_FIELD, TokenEvent.kind))

# KEYS: lease, in-progress, stream, owner, ... ARGV: run, lease ms, least and most stream entries expected,
# owner value ('' when unknown), owner TTL s, ...
_FENCE = """
local function fence()
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= ARGV[1] then return -1 end
  local length = redis.call('XLEN', KEYS[3])
  if length > tonumber(ARGV[4]) then return -1 end
  if length < tonumber(ARGV[3]) then return -2 end
  if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  end
  return 1
end
local function ends_with_this_entry()
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  return #last > 0 and last[1][2][4] == ARGV[8]
end
local function keep_owner()
  if ARGV[5] ~= '' and not redis.call('SET', KEYS[4], ARGV[5], 'NX', 'EX', ARGV[6]) then
    redis.call('EXPIRE', KEYS[4], ARGV[6])
  end
end
"""

# KEYS[5]: the served steps.
_ACQUIRE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {redis.call('XRANGE', KEYS[3], '-', '+'), redis.call('EXISTS', KEYS[4]), redis.call('LRANGE', KEYS[5], 0, -1)}
"""

_RENEW = (
    _FENCE
    + """
local fenced = fence()
if fenced == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
end
return fenced
"""
)

# KEYS[5]: cancel flag, KEYS[6]: served steps. ARGV[7], ARGV[8]: the entry's kind and data; ARGV[9]: the stream's
# TTL; ARGV[10]: the served step that made the token ('' for none). A token already last on the stream while this
# run still holds the lease was written by a call of this run whose reply was lost (a retry through a Redis
# outage): it counts as written, and its step was pushed with it, so it is not pushed again. (Once the lease has
# lapsed, nothing tells this run's entry from the same token written by a run that took over and died: the run
# stops as superseded, and its job is claimed again.) A token written renews the lease and arq's in-progress key as
# a renewal does (fenced the same way), so a run whose tokens flow needs no renewal round trips of its own
# (`TokenStreamWriter.lease_renewed_within`).
_APPEND_TOKEN = (
    _FENCE
    + f"""
local fenced = fence()
if fenced == -1 and redis.call('GET', KEYS[1]) == ARGV[1] and ends_with_this_entry() then return 1 end
if fenced ~= 1 then return fenced end
if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('XADD', KEYS[3], '*', {_KIND}, ARGV[7], {_DATA}, ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[9])
if ARGV[10] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[10])
  redis.call('EXPIRE', KEYS[6], ARGV[9])
end
keep_owner()
return 1
"""
)

# KEYS[5]: usage stream, KEYS[6]: served steps (paid by this usage record, so deleted with it). ARGV[7..9] as
# for a token; ARGV[10], ARGV[11]: the usage entry's field and value. The same ending already last on the stream,
# its lease released, was written by a retried call of this run: looked at before fence(), which would take the
# released lease back when the stream's length is not bounded (a state-lost ending) and then find an ending last.
_FINISH = (
    _FENCE
    + f"""
if not redis.call('GET', KEYS[1]) and ends_with_this_entry() then return 1 end
local fenced = fence()
if fenced ~= 1 then return fenced end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == {_KIND} and fields[i + 1] ~= {_TOKEN} then return 0 end
  end
end
redis.call('XADD', KEYS[3], '*', {_KIND}, ARGV[7], {_DATA}, ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[9])
if ARGV[10] ~= '' then redis.call('XADD', KEYS[5], '*', ARGV[10], ARGV[11]) end
redis.call('DEL', KEYS[6])
keep_owner()
redis.call('DEL', KEYS[1])
return 1
"""
)

_SCRIPTS = {"acquire": _ACQUIRE, "renew": _RENEW, "append_token": _APPEND_TOKEN, "finish": _FINISH}

# KEYS[1]: the owner key. ARGV: its value, its TTL s. keep_owner() on its own, for an owner on another Redis.
_KEEP_OWNER = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class Written(Enum):
    """What a fenced write (or lease renewal) found."""

    WRITTEN = 1
    """Done: a token or ending appended, or the lease renewed."""
    CANCELLED = 0
    """A token: the cancel flag is set, nothing was written. An ending: the stream already had one."""
    SUPERSEDED = -1
    """Another run owns the request now; this one must stop without writing and leave the job to it."""
    STATE_LOST = -2
    """The stream holds fewer entries than this run wrote: Redis lost data. Only an ending may still be written."""


@dataclass(frozen=True)
class StreamSoFar:
    """What earlier runs of a request left on its stream."""

    token_ids: tuple[int, ...]
    texts: tuple[str, ...]
    final: StreamEvent | None
    choices: tuple[int, ...] = ()
    """The choice of each token (0 for a request of one choice); empty when there are no tokens."""
    cost_far: Decimal = Decimal(0)
    """The running cost the last delivered token showed the client."""
    cancelled: bool = False
    """The cancel flag was set when the stream was read."""
    served_steps: tuple[ServedStep, ...] = ()
    """The routes of the steps that made the tokens (earlier runs' work, which whoever ends the request pays)."""

    @classmethod
    def parse(cls, entries: list[tuple[bytes, dict[bytes, bytes]]], *, cancelled: bool) -> "StreamSoFar":
        ids: list[int] = []
        texts: list[str] = []
        choices: list[int] = []
        final: StreamEvent | None = None
        cost = Decimal(0)
        for _entry_id, fields in entries:
            event = decode_event(fields)
            if isinstance(event, TokenEvent):
                ids.append(event.token_id)
                texts.append(event.token)
                choices.append(event.choice or 0)
                cost = event.cost_far
            else:
                final = event
        return cls(
            token_ids=tuple(ids),
            texts=tuple(texts),
            final=final,
            choices=tuple(choices),
            cost_far=cost,
            cancelled=cancelled,
        )


class TokenStreamWriter:
    """The fenced writer of one request's stream; `run_id` identifies this run (worker id + attempt)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        request_id: str,
        run_id: str,
        *,
        lease_ttl_s: float,
        owner: RequestOwner | None = None,
        home: aioredis.Redis | None = None,
    ) -> None:
        """`redis` holds the request's stream (its model's shard, `protocol.redis_shards`); `home` the request's
        owner key, budgets and balances: `redis` unless the model lives on a shard of its own."""
        self.redis = redis
        self.home = home if home is not None else redis
        self.request_id = request_id
        self.run_id = run_id
        self._lease_ms = max(1, int(lease_ttl_s * 1000))
        self._owner = owner.encode() if owner is not None else ""
        self._written = 0
        """Entries this run found on the stream or appended to it: what every fenced write expects to find."""
        self._token_sent_at: float | None = None
        """When (monotonic) the last token call answered WRITTEN was sent: its script renewed the lease no earlier."""
        self._keys = [
            keys.job_lease(request_id),
            keys.job_in_progress(request_id),
            keys.token_stream(request_id),
            keys.request_owner(request_id),
        ]
        self._cancel_flag = keys.cancel_flag(request_id)
        self._served_steps = keys.served_steps(request_id)
        self._scripts = {name: redis.register_script(source) for name, source in _SCRIPTS.items()}
        self._keep_owner_home = (
            self.home.register_script(_KEEP_OWNER) if self.home is not redis and self._owner else None
        )

    async def keep_owner_at_home(self) -> None:
        """On a shard, the scripts keep a copy of the owner key beside the stream, but the gateway reads the home
        Redis's: it is refreshed there when a run takes the request and when it ends it, so ownership outlives
        the stream there too (a run is shorter than the key's TTL: WORKER_JOB_TIMEOUT_S is far below it).
        Best effort: a home Redis away for the moment leaves the TTL the gateway or an earlier run set."""
        if self._keep_owner_home is None:
            return
        try:
            await self._keep_owner_home(
                keys=[keys.request_owner(self.request_id)], args=[self._owner, keys.REQUEST_OWNER_TTL_S]
            )
        except (OSError, RedisError) as exc:
            logger.warning("owner key not refreshed request_id=%s error=%r", self.request_id, exc)

    async def _fenced(self, script: str, extra_keys: list[str], least: int, most: int, *args: str | int) -> Written:
        fence_args: list[str | int] = [self.run_id, self._lease_ms, least, most, self._owner, keys.REQUEST_OWNER_TTL_S]
        result = await self._scripts[script](keys=[*self._keys, *extra_keys], args=[*fence_args, *args])
        return Written(int(result))

    async def acquire(self) -> StreamSoFar:
        """Take the lease (arq already gave this run the job), shorten arq's in-progress key to it, and read what
        earlier runs delivered (their token ids let a recovering run re-prefill exactly): one round trip."""
        lease, in_progress, stream, _ = self._keys
        request_id = self.request_id
        stream_keys = [lease, in_progress, stream, keys.cancel_flag(request_id), keys.served_steps(request_id)]
        raw_entries, cancelled, raw_steps = await self._scripts["acquire"](
            keys=stream_keys, args=[self.run_id, self._lease_ms]
        )
        entries = [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in raw_entries]
        self._written = len(entries)
        await self.keep_owner_at_home()
        so_far = StreamSoFar.parse(entries, cancelled=bool(cancelled))
        return replace(so_far, served_steps=tuple(ServedStep.decode(raw) for raw in raw_steps))

    async def renew(self) -> Written:
        """Extend the lease (taking it back if it lapsed while the stream stayed as this run left it).

        One token write may be in flight meanwhile, so one entry more than this run has counted is still its own.
        The pool thread writes tokens while a renewal travels (`workers.pipelined_writes`): should its count move on
        meanwhile, a renewal that found more entries than it was told of found this run's own, and looks again.
        """
        while True:
            counted = self._written
            renewed = await self._fenced("renew", [self._cancel_flag], counted, counted + 1)
            if renewed is not Written.SUPERSEDED or self._written == counted:
                return renewed

    async def append_token(self, event: TokenEvent, step: ServedStep | None = None) -> Written:
        """Append `event` and, in the same atomic call, `step` (the route that made it) to the served steps."""
        script_keys, args = self.token_call(event, step)
        sent_at = time.monotonic()
        written = Written(int(await self._scripts["append_token"](keys=script_keys, args=args)))
        if written is Written.WRITTEN:
            self.token_written(sent_at)
        return written

    def token_call(self, event: TokenEvent, step: ServedStep | None = None) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of the token script (`append_token`) for `event`: the same call whether the
        event loop makes it or the pool thread does (`workers.pipelined_writes`)."""
        fields = encode_event(event)
        script_keys = [*self._keys, self._cancel_flag, self._served_steps]
        fence_args: list[str | int] = [self.run_id, self._lease_ms, self._written, self._written, self._owner]
        return script_keys, [
            *fence_args,
            keys.REQUEST_OWNER_TTL_S,
            fields[KIND_FIELD],
            fields[DATA_FIELD],
            keys.TOKEN_STREAM_TTL_S,
            step.encode() if step is not None else "",
        ]

    def token_script(self) -> tuple[str, str]:
        """The token script's SHA-1 and source, for a caller that sends it over a connection of its own."""
        script = self._scripts["append_token"]
        return str(script.sha), str(script.script)

    def token_written(self, sent_at: float) -> None:
        """A token call sent at `sent_at` (monotonic) answered WRITTEN: the stream holds one more entry of this run's,
        and the lease was renewed when the call ran, no earlier than `sent_at`."""
        self._written += 1
        self._token_sent_at = sent_at

    def lease_renewed_within(self, seconds: float) -> bool:
        """Whether a token this run wrote renewed the lease less than `seconds` ago (by the send's clock, which is
        never later than the script's: the lease may have been renewed later, never earlier). Only answered writes
        count, so a write still unanswered is as if not sent."""
        sent_at = self._token_sent_at
        return sent_at is not None and time.monotonic() - sent_at < seconds

    async def finish(self, event: StreamEvent, usage: UsageRecord | None, *, state_lost: bool = False) -> Written:
        """Append the ending and the usage record atomically; CANCELLED when the stream already has an ending.

        `usage` is None only for a request whose job payload is lost or invalid: nothing to bill it to.
        `state_lost`: the stream lost entries under this run, which ends it anyway (unless another run owns it).
        """
        fields = encode_event(event)
        ((usage_field, usage_value),) = usage.to_stream_fields().items() if usage is not None else (("", ""),)
        least, most = (0, _NO_LIMIT) if state_lost else (self._written, self._written)
        finished = await self._fenced(
            "finish",
            [keys.USAGE_STREAM, keys.served_steps(self.request_id)],
            least,
            most,
            fields[KIND_FIELD],
            fields[DATA_FIELD],
            keys.TOKEN_STREAM_TTL_S,
            usage_field,
            usage_value,
        )
        if finished is Written.WRITTEN:
            await self.keep_owner_at_home()
        return finished
