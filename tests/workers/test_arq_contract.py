"""The arq surface `workers.queue_worker` is built on, pinned: an arq upgrade that changes any of it fails here,
naming what changed, before a behaviour test fails for reasons nobody can see (docs/architecture.md, "The queue")."""

import dataclasses
import inspect

import pytest
from arq import connections, constants, jobs, utils, worker
from arq.connections import RedisSettings

OVERRIDDEN = {
    "main": ["self"],
    "_poll_iteration": ["self"],
    "start_jobs": ["self", "job_ids"],
    "run_job": ["self", "job_id", "score"],
    "_release_sem_dec_counter_on_complete": ["self"],
    "finish_job": [
        "self",
        "job_id",
        "finish",
        "result_data",
        "result_timeout_s",
        "keep_result_forever",
        "incr_score",
        "keep_in_progress",
    ],
    "finish_failed_job": ["self", "job_id", "result_data"],
    "async_run": ["self"],
    "close": ["self"],
}
"""Worker methods the queue worker overrides or calls, with the parameters it passes."""
ATTRIBUTES = [
    "sem",
    "job_counter",
    "max_jobs",
    "tasks",
    "_pool",
    "queue_name",
    "poll_delay_s",
    "health_check_key",
    "job_deserializer",
    "in_progress_timeout_s",
]
"""Worker state the queue worker reads or sets."""


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_each_worker_method_the_queue_worker_relies_on_keeps_its_parameters(name: str) -> None:
    method = getattr(worker.Worker, name, None)
    assert method is not None, f"arq.worker.Worker.{name} is gone: workers/queue_worker.py overrides or calls it"
    parameters = list(inspect.signature(method).parameters)
    assert parameters == OVERRIDDEN[name], f"arq.worker.Worker.{name} now takes {parameters}"


@pytest.mark.parametrize("name", ATTRIBUTES)
async def test_each_worker_attribute_the_queue_worker_uses_still_exists(name: str) -> None:
    """Async: arq's Worker takes the running event loop, where outside one it would make a loop nothing closes."""

    async def job(ctx: dict[str, object]) -> None:
        return None

    arq_worker = worker.Worker(
        functions=[worker.func(job, name="job")], redis_settings=RedisSettings(), handle_signals=False
    )
    assert hasattr(arq_worker, name), f"arq.worker.Worker instances have no {name!r} any more"


def test_the_job_result_and_helpers_the_queue_worker_reads_are_unchanged() -> None:
    fields = {f.name for f in dataclasses.fields(jobs.JobResult)}
    assert {"success", "result", "args", "job_try"} <= fields, f"arq.jobs.JobResult fields are now {sorted(fields)}"
    assert constants.in_progress_key_prefix == "arq:in-progress:"
    assert callable(jobs.deserialize_result) and issubclass(jobs.SerializationError, Exception)
    assert issubclass(worker.JobExecutionFailed, Exception) and callable(utils.timestamp_ms)


def test_the_job_writer_the_enqueue_script_uses_is_unchanged() -> None:
    """`protocol.jobs.enqueue_generate` writes arq's job itself (one script instead of arq's three round trips)."""
    parameters = list(inspect.signature(jobs.serialize_job).parameters)
    assert parameters == ["function_name", "args", "kwargs", "job_try", "enqueue_time_ms", "serializer"], parameters
    pool = inspect.signature(connections.ArqRedis.__init__).parameters
    assert {"job_serializer", "expires_extra_ms"} <= pool.keys(), f"arq.connections.ArqRedis now takes {list(pool)}"
