"""Runs admitted batches on capacity interactive requests leave: dispatches lines, collects their answers, and
writes each batch's output and error files.

One gateway replica runs batches at a time (`keys.BATCH_RUNNER_LOCK`, renewed every pass; a replica that dies
hands over within the lock's lifetime). Every pass it:

1. **Collects** each dispatched line whose token stream has its ending: the answer is rendered exactly as the
   endpoint renders a non-streaming response (`gateway.openai_api`) and saved once, with its count, in one script
   (`BatchStore.save_result`).
2. **Dispatches** further lines of a model only while nothing waits in that model's queue (every queued job is
   already in some worker's hands), no interactive request of that model has run for GATEWAY_BATCH_YIELD_S, and
   fewer than GATEWAY_BATCH_MAX_IN_FLIGHT of its batch lines run. So an interactive request never queues behind
   a batch line, at most that many of a worker fleet's slots (WORKER_MAX_JOBS each) hold batch lines,
   and interactive traffic stops batch dispatch within one pass: batch lines fill the time interactive buyers
   leave idle. What they still take from an interactive request that arrives while they run is the swarm
   servers' compute until they end (a line is never preempted); `bench/bench_batch.py` measures interactive
   first-token latency with and without a batch running.
3. **Finishes** a batch with nothing left running: all lines done, cancelled, or past its 24 h window.

Exactly once: a line's request id is derived from its batch and index (`batch_store.line_request_id`). The
runner records a line as pending before it dispatches it, and dispatching is the interactive path's own:
`SET owner:<id> NX`, then the arq job under that id. A runner that dies anywhere in between leaves a pending line
that its successor watches and enqueues again while its stream has not started: arq refuses a job id it holds
(queued, running, or its result kept), and a job that ran has a stream, so no line runs twice.
From there on the worker's fenced stream, its recovery of a dead worker's job and the ledger's one session per
request id make the line one billed session however many workers die under it.
"""

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.balances import InsufficientBalance
from gateway.batch_store import OUTPUT_PURPOSE, BatchStore, StoredBatch, shown
from gateway.openai_api import ResponseShape
from gateway.openai_errors import error_type
from gateway.state import GatewayState
from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.events import DATA_FIELD, FINAL_KINDS, KIND_FIELD, DoneEvent, TokenEvent
from protocol.jobs import GenerateJob, enqueue_generate
from protocol.ownership import RequestOwner

log = logging.getLogger(__name__)

LOCK_S = 10.0
"""How long the runner's lock outlives its last renewal: the longest a dead runner's batches wait."""
POLL_S = 0.2
"""Between passes: how soon a line's ending is collected and its slot handed to the next line."""
STOP_TIMEOUT_S = 5.0
"""How long a stopping gateway waits for the runner's pass under way."""
REDISPATCH_AFTER_S = 5.0
"""A pending line with no stream this long after its dispatch is enqueued again (idempotently)."""
QUEUE_LOOK = 64
"""Queued jobs looked at to decide whether any waits; a queue longer than this has a backlog anyway."""

_LEAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_WAITING = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local waiting = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then waiting = waiting + 1 end
end
return waiting
"""
"""Jobs in a model's arq queue that no worker has taken (arq keeps a job in the queue while it runs, marked by
its in-progress key)."""


@dataclass(frozen=True)
class Line:
    """One admitted line, as `gateway.batch_api` stored it."""

    custom_id: str
    chat: bool
    most_far: Decimal
    job: GenerateJob

    @classmethod
    def parse(cls, raw: str) -> "Line":
        data = json.loads(raw)
        return cls(data["custom_id"], data["chat"], Decimal(data["most_far"]), GenerateJob.model_validate(data["job"]))


class BatchRunner:
    def __init__(self, state: GatewayState, *, poll_s: float = POLL_S) -> None:
        self.state = state
        self.redis = state.redis
        self.settings = state.settings
        self.store = BatchStore(state.redis, file_ttl_s=state.settings.gateway_batch_file_ttl_s)
        self.poll_s = poll_s
        self.me = uuid.uuid4().hex
        self._lines: dict[tuple[str, int], Line] = {}
        self._interactive_seen: dict[str, float] = {}
        """Per model: when the runner last saw an interactive request running."""
        self._stopping = asyncio.Event()

    async def run_forever(self) -> None:
        """Passes every `poll_s` until `stop()`: a pass is never cancelled halfway through its Redis commands (a
        gateway's shutdown once waited forever on a runner cancelled inside one)."""
        while not self._stopping.is_set():
            try:
                if await self._lead():
                    await self.run_once()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("batch runner: redis unavailable (%s); retrying", type(exc).__name__)
            except Exception:
                log.exception("batch runner pass failed; retrying")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_s)

    async def stop(self, task: "asyncio.Task[None]", timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End `task` (running `run_forever`) once its pass is done, then hand the lock back; a pass stuck longer
        than `timeout_s` (Redis unreachable) is cancelled."""
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            log.warning("batch runner: its pass did not end within %g s at shutdown; cancelling it", timeout_s)
            task.cancel()
        await self.release()

    async def _lead(self) -> bool:
        led = await self.redis.eval(_LEAD, 1, keys.BATCH_RUNNER_LOCK, self.me, str(int(LOCK_S * 1000)))  # type: ignore[misc]
        return bool(led)

    async def release(self) -> None:
        """Hand the lock back at shutdown, so another replica runs batches at its next pass, not after LOCK_S."""
        try:
            await self.redis.eval(_RELEASE, 1, keys.BATCH_RUNNER_LOCK, self.me)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("batch runner: could not release its lock (%s); it lapses", type(exc).__name__)

    async def run_once(self) -> None:
        """One pass: collect, dispatch, finish, over every active batch."""
        batches: list[tuple[str, StoredBatch]] = []
        for batch_id in await self.store.active():
            stored = await self.store.stored(batch_id)
            if stored is None:
                await self.redis.srem(keys.BATCHES_ACTIVE, batch_id)  # type: ignore[misc]
                continue
            batches.append((batch_id, await self._collect(batch_id, stored)))
        running: Counter[str] = Counter()
        for batch_id, stored in batches:
            for index in stored.pending:
                running[(await self._line(batch_id, index)).job.model_id] += 1
        now = time.time()
        for batch_id, stored in batches:
            total = stored.meta["request_counts"]["total"]
            stopped = stored.cancel_at is not None or now >= stored.meta["expires_at"]
            if stopped and stored.pending:
                await self._stop_running(batch_id, stored)
            if not stopped and stored.cursor < total:
                stored = await self._dispatch(batch_id, stored, running)
            if not stored.pending and (stopped or stored.cursor >= total):
                await self._finish(batch_id, stored, now)

    async def _stop_running(self, batch_id: str, stored: StoredBatch) -> None:
        """Cancel a stopped batch's running lines, as a client's cancel does: each ends with what it delivered,
        billed, and its answer (cut short) is in the output file."""
        reason = "batch cancelled" if stored.cancel_at is not None else "batch expired"
        for index in stored.pending:
            job = (await self._line(batch_id, index)).job
            shard = self.state.shard(job.model_id).redis  # where the line's worker looks for its cancel flag
            await shard.set(keys.cancel_flag(job.request_id), reason, ex=keys.TOKEN_STREAM_TTL_S, nx=True)

    def _redis_of(self, line: Line) -> aioredis.Redis:
        """The Redis holding `line`'s token stream and cancel flag: its model's (`protocol.redis_shards`)."""
        return self.state.shard(line.job.model_id).redis

    async def _line(self, batch_id: str, index: int) -> Line:
        line = self._lines.get((batch_id, index))
        if line is None:
            raw = await self.store.line(batch_id, index)
            if raw is None:
                raise LookupError(f"batch {batch_id} has no line {index}")
            line = self._lines[(batch_id, index)] = Line.parse(raw)
        return line

    async def _collect(self, batch_id: str, stored: StoredBatch) -> StoredBatch:
        pending = dict(stored.pending)
        for index, dispatched_at in stored.pending.items():
            line = await self._line(batch_id, index)
            result = await self._answer(line, dispatched_at)
            if result is None:
                if time.time() - dispatched_at > REDISPATCH_AFTER_S and not await self._redis_of(line).exists(
                    keys.token_stream(line.job.request_id)
                ):
                    # Not started yet, or a runner died between recording the line and enqueueing it: enqueue
                    # again. arq refuses a job id it holds queued, running or with its result kept, and a job
                    # that ran has a stream, so this enqueues only a job that never was.
                    await self._enqueue(line, owner_taken=False)
                continue
            text, ok = result
            await self.store.save_result(batch_id, index, text, ok=ok)
            del pending[index]
            self._lines.pop((batch_id, index), None)
        if pending != stored.pending:
            await self.store.save_progress(batch_id, stored.meta, stored.cursor, pending)
            return StoredBatch(stored.meta, stored.owner, stored.cancel_at, stored.cursor, pending)
        return stored

    async def _answer(self, line: Line, dispatched_at: float) -> tuple[str, bool] | None:
        """The line's output (True) or error (False) line once its stream has ended; None while it runs."""
        request_id = line.job.request_id
        stream = keys.token_stream(request_id)
        shard = self._redis_of(line)
        last = await shard.xrevrange(stream, count=1)
        if not last or last[0][1].get(KIND_FIELD) not in FINAL_KINDS:
            if time.time() - dispatched_at > self.settings.gateway_stream_deadline_s:
                await shard.set(keys.cancel_flag(request_id), "batch line deadline", ex=keys.TOKEN_STREAM_TTL_S)
                message = f"the request did not finish within {self.settings.gateway_stream_deadline_s:g} s; cancelled"
                return _error_line(line, 504, "timeout", message), False
            return None
        tokens: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        kind = ""
        for _, fields in await shard.xrange(stream):
            kind = fields[KIND_FIELD]
            if kind == TokenEvent.kind:
                tokens.append(json.loads(fields[DATA_FIELD]))
            elif kind in FINAL_KINDS:
                final = json.loads(fields[DATA_FIELD])
                break
        if kind == DoneEvent.kind:
            shape = ResponseShape(
                chat=line.chat, request_id=request_id, model=line.job.model_id, tool_use=line.job.tool_use
            )
            response = {"status_code": 200, "request_id": request_id, "body": shape.complete(tokens, final)}
            return _result_line(line, response, None), True
        error = final["error"]
        status = {StreamErrorCode.PROMPT_TOO_LONG: 400, StreamErrorCode.ROUTE_UNSATISFIABLE: 409}.get(
            error["code"], 502
        )
        return _error_line(line, status, error["code"], error["message"]), False

    async def _dispatch(self, batch_id: str, stored: StoredBatch, running: Counter[str]) -> StoredBatch:
        cursor, pending = stored.cursor, dict(stored.pending)
        total = stored.meta["request_counts"]["total"]
        waiting: dict[str, int] = {}
        while cursor < total:
            line = await self._line(batch_id, cursor)
            model_id = line.job.model_id
            if model_id not in waiting:  # looked at every pass, so interactive requests are seen while lines run
                busy = await self._interactive_recently(model_id)
                waiting[model_id] = busy + int(
                    await self.state.shard(model_id).redis.eval(  # type: ignore[misc]
                        _WAITING, 1, keys.queue_for(model_id), keys.ARQ_IN_PROGRESS_PREFIX, str(QUEUE_LOOK)
                    )
                )
            if waiting[model_id] > 0 or running[model_id] >= self.settings.gateway_batch_max_in_flight:
                break
            # write-ahead: a runner that dies after this only watches the line, never dispatches it afresh
            pending[cursor] = time.time()
            await self.store.save_progress(batch_id, stored.meta, cursor + 1, pending)
            if not await self._start(batch_id, cursor, line):
                del pending[cursor]
                await self.store.save_progress(batch_id, stored.meta, cursor + 1, pending)
            else:
                running[model_id] += 1
            cursor += 1
        return StoredBatch(stored.meta, stored.owner, stored.cancel_at, cursor, pending)

    async def _interactive_recently(self, model_id: str) -> bool:
        """Whether some gateway relayed an interactive request of `model_id` within GATEWAY_BATCH_YIELD_S: batch
        lines are not followed by clients, so `keys.active_requests` holds only interactive ones."""
        now = time.time()
        if await self.redis.zcount(keys.active_requests(model_id), int(now * 1000), "+inf"):
            self._interactive_seen[model_id] = now
        return now - self._interactive_seen.get(model_id, 0.0) < self.settings.gateway_batch_yield_s

    async def _start(self, batch_id: str, index: int, line: Line) -> bool:
        """Enqueue the line's job as the interactive path does; False when it cannot run (its error is saved)."""
        job = line.job
        balances = self.state.balances
        if balances is not None and job.user_wallet is not None:
            try:
                await balances.hold(job.user_wallet, job.request_id, line.most_far)
            except InsufficientBalance as exc:
                await self.store.save_result(batch_id, index, _error_line(line, 402, exc.code, exc.message), ok=False)
                return False
        await self._enqueue(line, owner_taken=True)
        return True

    async def _enqueue(self, line: Line, *, owner_taken: bool) -> None:
        """Claim the line's request id (`SET owner NX`) and enqueue its job under it. `owner_taken`: a first
        dispatch, which enqueues only if it took the owner key; a re-dispatch enqueues either way (arq's job id
        keeps it from running twice)."""
        job = line.job
        owner = RequestOwner(job.api_key_id or "", job.model_id).encode()
        took = await self.redis.set(keys.request_owner(job.request_id), owner, nx=True, ex=keys.REQUEST_OWNER_TTL_S)
        if took or not owner_taken:
            await enqueue_generate(
                self.state.shard(job.model_id).arq, job.model_copy(update={"enqueued_at": time.time()})
            )

    async def _finish(self, batch_id: str, stored: StoredBatch, now: float) -> None:
        meta = shown(stored)
        total = meta["request_counts"]["total"]
        status = "completed"
        if stored.cancel_at is not None:
            status = "cancelled"
        elif stored.cursor < total:
            status = "expired"
        output, errors = [], []
        completed = failed = 0
        for index, result in enumerate(await self.store.results(batch_id, total)):
            if result is None:
                line = await self._line(batch_id, index)
                message = f"the batch was {status} before this request ran"
                errors.append(_result_line(line, None, {"code": f"batch_{status}", "message": message}))
                continue
            data = json.loads(result)
            if data["response"] is not None and data["response"]["status_code"] == 200:
                output.append(result)
                completed += 1
            else:
                errors.append(result)
                failed += 1
        at = int(now)
        counts = {"total": total, "completed": completed, "failed": failed}
        meta |= {"status": status, "finalizing_at": at, f"{status}_at": at, "request_counts": counts}
        for field, name, lines in (("output_file_id", "output", output), ("error_file_id", "error", errors)):
            if lines:
                text = "\n".join(lines) + "\n"
                made = await self.store.put_file(stored.owner, f"{batch_id}_{name}.jsonl", OUTPUT_PURPOSE, text)
                meta[field] = made["id"]
        await self.store.finish(batch_id, meta)
        for key in [k for k in self._lines if k[0] == batch_id]:
            del self._lines[key]
        log.info("batch finished batch_id=%s status=%s completed=%d failed=%d", batch_id, status, completed, failed)


def _line_id(request_id: str) -> str:
    return f"batch_req_{request_id}"


def _error_line(line: Line, status: int, code: str, message: str) -> str:
    body = {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}
    response = {"status_code": status, "request_id": line.job.request_id, "body": body}
    return _result_line(line, response, None)


def _result_line(line: Line, response: dict[str, Any] | None, error: dict[str, str] | None) -> str:
    """One line of an output or error file, in OpenAI's shape."""
    return json.dumps(
        {"id": _line_id(line.job.request_id), "custom_id": line.custom_id, "response": response, "error": error}
    )
