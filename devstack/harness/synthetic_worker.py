"""A worker's part played without a model, for gateway tests and benchmarks that measure the gateway alone.

It pops generate jobs from a model's arq queue and appends real token/done/error events to each job's Redis
stream. The prompt steers it: "slow ..." emits a token every 50 ms, "hold ..." keeps going until cancelled,
"flood ..." too, as fast as it can with 2 kB tokens, "fail ..." ends with an error event (no_route) after two tokens,
"unroutable ..." with route_unsatisfiable before any, as a worker ends a request its provider preferences cannot route.
"""

import asyncio

import redis.asyncio as aioredis
from arq.jobs import deserialize_job

from devstack.harness.gateway import MODEL_ID
from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.events import DoneEvent, ErrorBody, ErrorEvent, TokenEvent, encode_event
from protocol.jobs import GenerateJob
from workers.budget_settlement import settle_reservation


def prompt_tokens_of(job: GenerateJob) -> int:
    """The synthetic tokenizer: one token per word of the prompt."""
    return len(job.prompt.split())


class SyntheticWorker:
    """What a worker does to Redis for each job, with canned tokens; records the jobs it took."""

    def __init__(self, redis: aioredis.Redis, model_id: str = MODEL_ID, token_delay_s: float = 0.002) -> None:
        self.redis = redis
        self.queue = keys.queue_for(model_id)
        self.token_delay_s = token_delay_s
        self.jobs: list[GenerateJob] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            popped = await self.redis.bzpopmin(self.queue, timeout=0.05)
            if not popped:
                continue
            job_id = popped[1].decode()
            raw = await self.redis.get(keys.arq_job(job_id))
            job = GenerateJob.model_validate(deserialize_job(raw).args[0])
            self.jobs.append(job)
            task = asyncio.create_task(self.answer(job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def answer(self, job: GenerateJob) -> None:
        stream = keys.token_stream(job.request_id)
        flood = job.prompt.startswith("flood")
        delay = 0.05 if job.prompt.startswith("slow") else 0.0 if flood else self.token_delay_s
        hold = job.prompt.startswith("hold") or flood
        index, prompt_tokens = 0, prompt_tokens_of(job)
        while hold or index < job.max_tokens:
            if await self.redis.exists(keys.cancel_flag(job.request_id)):
                await self._end(job, stream, index, "cancelled")
                return
            unroutable = job.prompt.startswith("unroutable")
            if unroutable or (job.prompt.startswith("fail") and index == 2):
                code, message = (
                    (
                        StreamErrorCode.ROUTE_UNSATISFIABLE,
                        "no server the request's provider preferences allow holds blocks 2..3",
                    )
                    if unroutable
                    else (StreamErrorCode.NO_ROUTE, "no server holds block 2")
                )
                billed = 0 if job.answered_whole else index  # as a worker bills it (workers.ending.ending_of)
                error = ErrorEvent(
                    error=ErrorBody(code=code, message=message),
                    request_id=job.request_id,
                    tokens_generated=billed,
                    total_cost_far=job.cost_far(prompt_tokens, billed),
                )
                await self.redis.xadd(stream, encode_event(error))  # type: ignore[arg-type]
                return
            event = TokenEvent(
                token=f" tok{index}" + ("x" * 2000 if flood else ""),
                request_id=job.request_id,
                index=index,
                token_id=index + 5,
                tokens_generated=index + 1,
                cost_far=job.cost_far(prompt_tokens, index + 1),
            )
            await self.redis.xadd(stream, encode_event(event))  # type: ignore[arg-type]
            index += 1
            await asyncio.sleep(delay)
        await self._end(job, stream, index, "length")

    async def _end(self, job: GenerateJob, stream: str, tokens: int, reason: str) -> None:
        done = DoneEvent(
            request_id=job.request_id,
            status="cancelled" if reason == "cancelled" else "completed",
            finish_reason=reason,
            prompt_tokens=prompt_tokens_of(job),
            tokens_generated=tokens,
            total_cost_far=job.cost_far(prompt_tokens_of(job), tokens),
        )
        await self.redis.xadd(stream, encode_event(done))  # type: ignore[arg-type]
        await self.redis.expire(stream, keys.TOKEN_STREAM_TTL_S)
        await settle_reservation(self.redis, job, done.total_cost_far)  # as a worker does once the ending is written
