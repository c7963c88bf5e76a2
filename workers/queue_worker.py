"""One model's queue consumer: arq's `Worker`, made to end every request it gives up on and to free jobs fast.

arq ends a job it gives up on (tries spent, payload expired, run timed out or raised) by deleting it, which
leaves the request's client waiting on a stream that never ends; here each such job's stream gets its error
event (and its usage record) first. arq also marks a taken job in progress for job timeout + 10 s before the
job's code runs; here that mark starts as short as the lease the job then renews, so a worker that dies
between taking a job and its first lease write delays the job by one lease TTL, not by the job timeout.

A job is claimed in one round trip (a script doing what arq's WATCH/MULTI claim does in four), and polling
is only the fallback: a worker claims a job as soon as its enqueuer publishes its id on the model's wake-up
channel (`protocol.jobs.enqueue_generate`), so the poll can be slow and cost neither CPU nor first-token time.
"""

import asyncio
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.jobs import JobResult, SerializationError, deserialize_result
from arq.utils import timestamp_ms
from arq.worker import Function, JobExecutionFailed, Worker, func
from redis.exceptions import RedisError

from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.events import ErrorBody
from protocol.jobs import GENERATE_FUNCTION
from workers.ending import RunEnd
from workers.generate import WorkerContext, generate

logger = logging.getLogger(__name__)

_ARQ_JOB_START = "%6.2fs → %s(%s)%s"
"""arq's log line for a job it starts; its third argument is the job's arguments."""


class _WithoutJobArguments(logging.Filter):
    """arq logs the arguments of every job it starts; a generate job's argument holds the prompt, which a log
    must never carry."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _ARQ_JOB_START and isinstance(record.args, tuple) and len(record.args) == 4:
            record.args = (*record.args[:2], "...", record.args[3])
        return True


logging.getLogger("arq.worker").addFilter(_WithoutJobArguments())

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return tonumber(score)
"""
"""Mark a queued, due job in progress unless another worker has; returns its queue score, or 0 if not taken."""


class QueueWorker(Worker):
    def __init__(self, context: WorkerContext, model_id: str, **kwargs: Any) -> None:
        settings = context.settings
        function: Function = func(
            generate,
            name=GENERATE_FUNCTION,
            max_tries=settings.worker_job_max_tries,
            timeout=settings.worker_job_timeout_s,
        )
        super().__init__(
            functions=[function],
            queue_name=keys.queue_for(model_id),
            redis_settings=RedisSettings.from_dsn(settings.redis_shards.url_for(model_id)),
            poll_delay=settings.worker_poll_delay_s,
            max_jobs=settings.worker_max_jobs,
            keep_result=300,  # the ending hooks below read why a job failed from its result
            handle_signals=False,
            ctx={"worker": context, "model_id": model_id},
            **kwargs,
        )
        self.context = context
        self.model_id = model_id
        self.in_progress_timeout_s = settings.worker_lease_ttl_s
        self._polling = asyncio.Lock()
        self._woken = asyncio.Event()
        self._room_wanted = False
        """A look at the queue found this worker full: the next job to end wakes the poller."""
        self._announced: list[bytes] = []
        """The jobs announced on the wake-up channel since the poller last woke."""
        self._backlog_possible = True
        """Jobs may wait in the queue that this worker has not taken: it was full when one came, or it has not looked
        yet. Then a wake-up looks at the queue, oldest first, rather than claiming only what was announced."""
        self._redis = context.redis_for(model_id)
        """The Redis of this model's queue (`protocol.redis_shards`): its claims and its wake-up channel."""
        self._claim = self._redis.register_script(_CLAIM)

    async def main(self) -> None:
        helpers = [
            asyncio.create_task(self._listen_for_wake_ups(), name=f"wake-ups:{self.queue_name}"),
            asyncio.create_task(self._poll_when_woken(), name=f"woken-polls:{self.queue_name}"),
        ]
        try:
            await super().main()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)  # lets the pubsub connection close

    async def _poll_iteration(self) -> None:
        async with self._polling:  # arq's poll loop and the wake-ups take turns
            if self.job_counter >= self.max_jobs:  # arq looks at nothing then: a job may be left waiting
                self._room_wanted = True
            await super()._poll_iteration()
            if self.job_counter < self.max_jobs:  # it took every job due and still has room: nothing waits
                self._backlog_possible = False

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start each job this worker has room for (arq's own claim takes four round trips)."""
        lease_ms = int(self.in_progress_timeout_s * 1000)
        for raw_id in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self._room_wanted = self._backlog_possible = True
                self.sem.release()
                return
            self.job_counter += 1
            job_id = raw_id.decode()
            if (running := self.tasks.get(job_id)) is not None and not running.done():
                # Its lease lapsed while its run stalled (a busy machine), but the run still goes on here: a
                # second run in this process would race the first, and arq keys its tasks by job id.
                self.job_counter -= 1
                self.sem.release()
                continue
            claim_keys = [keys.job_in_progress(job_id), self.queue_name]
            score = int(await self._claim(keys=claim_keys, args=[job_id, timestamp_ms(), lease_ms]))
            if not score:  # running elsewhere, finished, or deferred by a retry
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._room_wanted:  # a slot is free: a job waiting behind a full worker starts now, not at the next poll
            self._room_wanted = False  # (otherwise every job that ended cost a look at the queue: #32)
            self._woken.set()

    async def _poll_when_woken(self) -> None:
        """Per burst of wake-ups, claim the jobs announced, one round trip each (a look at the queue would be one
        more, on the way to every request's first token: #32); while jobs may wait behind them, or for a slot that
        freed, look at the queue instead, so that the oldest job due starts first."""
        while True:
            await self._woken.wait()
            self._woken.clear()
            announced, self._announced = self._announced, []
            if self._pool is None:  # arq's own start-up has not finished yet: its first poll looks at the queue
                continue
            if announced and not self._backlog_possible:
                async with self._polling:
                    await self.start_jobs(announced)
            else:
                await self._poll_iteration()

    async def _listen_for_wake_ups(self) -> None:
        """Each job announced on the model's channel wakes the poller; while the channel is lost, polling remains."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.queue_wake(self.model_id))
                    async for message in pubsub.listen():
                        data = message["data"]  # a claim only: the claim script takes ids that are queued and due
                        self._announced.append(data if isinstance(data, bytes) else str(data).encode())
                        self._woken.set()
            except (RedisError, OSError) as exc:
                logger.warning("wake-up channel lost queue=%s error=%r", self.queue_name, exc)
                await asyncio.sleep(self.poll_delay_s)

    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None, *args: Any, **kwargs: Any) -> None:
        if finish and result_data is not None:
            if self._superseded(result_data):
                return  # the job, its queue entry and its in-progress key now belong to the run that took over
            await self._end_if_failed(job_id, result_data)
        await super().finish_job(job_id, finish, result_data, *args, **kwargs)

    def _superseded(self, result_data: bytes) -> bool:
        try:
            result = deserialize_result(result_data, deserializer=self.job_deserializer)
        except SerializationError:
            return False
        return result.success and result.result == RunEnd.SUPERSEDED

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        await self._end_if_failed(job_id, result_data)
        await super().finish_failed_job(job_id, result_data)

    async def _end_if_failed(self, job_id: str, result_data: bytes | None) -> None:
        result: JobResult | None = None
        if result_data is not None:
            try:
                result = deserialize_result(result_data, deserializer=self.job_deserializer)
            except SerializationError:
                pass
        if result is not None and result.success:
            return
        payload = result.args[0] if result is not None and result.args else None
        try:
            await self.context.end_abandoned(job_id, payload, self._error_for(result), self.model_id)
        except Exception as exc:  # arq must still retire the job; the gateway's own deadline then ends the stream
            logger.error("could not end request request_id=%s error=%r", job_id, exc)

    def _error_for(self, result: JobResult | None) -> ErrorBody:
        """Why arq gave the job up, read from the job's own state (its tries, its payload), never from text."""
        settings = self.context.settings
        reason = result.result if result is not None else None
        if isinstance(reason, TimeoutError):
            message = f"the request ran longer than the job timeout ({settings.worker_job_timeout_s:g} s)"
            return ErrorBody(code=StreamErrorCode.JOB_TIMEOUT, message=message + "; ask for fewer tokens or retry")
        if result is not None and result.job_try > settings.worker_job_max_tries:
            message = f"the request's workers stopped {settings.worker_job_max_tries} times while running it"
            return ErrorBody(code=StreamErrorCode.RETRIES_EXHAUSTED, message=message + "; retry it later")
        if result is not None and not result.args and isinstance(reason, JobExecutionFailed):
            # arq found no payload under the job's key: it expired before any worker took the job
            message = "the request waited in the queue too long; retry it"
            return ErrorBody(code=StreamErrorCode.JOB_EXPIRED, message=message)
        detail = type(reason).__name__ if isinstance(reason, BaseException) else "unknown reason"
        message = f"the worker failed running the request ({detail}); retry it"
        return ErrorBody(code=StreamErrorCode.WORKER_ERROR, message=message)
