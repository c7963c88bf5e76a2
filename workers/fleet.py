"""A worker process: one arq `Worker` per served model's queue, all in one event loop, sharing the clients.

Each model's Petals client is opened once at start-up and used by every concurrent job of that model; a
client whose DHT connection died is replaced. Beside the queues, the process publishes swarm snapshots,
samples queue depths and serves Prometheus metrics.
"""

import asyncio
import logging
import os
import signal
import socket
import threading
from contextlib import suppress

import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.worker import Worker, func
from prometheus_client import start_http_server

from mesh.client import ClientLimits, open_client
from mesh.snapshot import read_swarm_snapshot
from protocol import keys
from protocol.jobs import GENERATE_FUNCTION
from workers import metrics
from workers.generate import WorkerContext, generate
from workers.served_model import ServedModel
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

QUEUE_SAMPLE_INTERVAL_S = 1.0


def client_limits(settings: WorkerSettings) -> ClientLimits:
    return ClientLimits(
        max_retries=settings.far_mesh_petals_max_retries,
        connect_timeout=settings.far_mesh_petals_connect_timeout_s,
        request_timeout=settings.far_mesh_petals_request_timeout_s,
        min_backoff=min(0.5, settings.far_mesh_petals_max_backoff_s),
        max_backoff=settings.far_mesh_petals_max_backoff_s,
    )


async def run_fleet(
    settings: WorkerSettings,
    stop: asyncio.Event | None = None,
    *,
    ready: threading.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT arrives); running jobs are handed back to the queue.

    `ready` is set once every queue is being consumed (tests and benchmarks run the fleet in a thread).
    """
    stop = stop or asyncio.Event()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    served: dict[str, ServedModel] = {}
    redis = aioredis.Redis.from_url(str(settings.redis_url))
    tasks: list[asyncio.Task[None]] = []
    workers: list[Worker] = []
    metrics_server = None
    try:
        for spec in settings.served_models:
            served[spec.model_id] = await asyncio.to_thread(
                ServedModel.open,
                spec,
                settings.initial_peers,
                limits=client_limits(settings),
                max_jobs=settings.far_mesh_worker_max_jobs,
            )
            logger.info("client connected model=%s blocks=%d", spec.model_id, served[spec.model_id].num_blocks)
        context = WorkerContext(redis=redis, settings=settings, served=served, worker_id=worker_id)
        workers = [_queue_worker(settings, context, model_id) for model_id in served]
        if settings.far_mesh_worker_metrics_port:
            metrics_server, _ = start_http_server(
                settings.far_mesh_worker_metrics_port,
                addr=settings.far_mesh_worker_metrics_host,
                registry=metrics.REGISTRY,
            )
        tasks = [asyncio.create_task(w.async_run()) for w in workers]
        tasks += [
            asyncio.create_task(_publish_snapshots(settings, served, redis)),
            asyncio.create_task(_sample_queues(served, redis)),
        ]
        logger.info(
            "worker started id=%s models=%s queues=%s max_jobs=%d metrics_port=%d",
            worker_id,
            ",".join(served),
            ",".join(keys.queue_for(m) for m in served),
            settings.far_mesh_worker_max_jobs,
            settings.far_mesh_worker_metrics_port,
        )
        if ready is not None:
            ready.set()
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopped}:
            task.result()  # a queue loop that died takes the process down with its error
    finally:
        for worker in workers:
            await worker.close()  # cancels running jobs: arq puts them back, another worker resumes them
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if metrics_server is not None:
            metrics_server.shutdown()
        for model in served.values():
            await asyncio.to_thread(model.close)
        await redis.aclose()
        logger.info("worker stopped id=%s", worker_id)


def _queue_worker(settings: WorkerSettings, context: WorkerContext, model_id: str) -> Worker:
    return Worker(
        functions=[
            func(
                generate,
                name=GENERATE_FUNCTION,
                max_tries=settings.far_mesh_job_max_tries,
                timeout=settings.far_mesh_job_timeout_s,
            )
        ],
        queue_name=keys.queue_for(model_id),
        redis_settings=RedisSettings.from_dsn(str(settings.redis_url)),
        poll_delay=settings.far_mesh_poll_delay_s,
        max_jobs=settings.far_mesh_worker_max_jobs,
        keep_result=300,
        handle_signals=False,
        ctx={"worker": context},
    )


async def _publish_snapshots(settings: WorkerSettings, served: dict[str, ServedModel], redis: aioredis.Redis) -> None:
    """Every interval: reconnect dead clients, then publish each model's swarm as the DHT shows it."""
    while True:
        for model in served.values():
            try:
                if not model.connected():
                    logger.warning("client disconnected model=%s; reconnecting", model.model_id)
                    client = await asyncio.to_thread(
                        open_client, model.spec, settings.initial_peers, limits=client_limits(settings)
                    )
                    await asyncio.to_thread(model.replace_client, client)
                    logger.info("client reconnected model=%s", model.model_id)
                snapshot = await model.run_blocking(
                    read_swarm_snapshot,
                    model.client.dht,
                    model.model_id,
                    model.dht_prefix,
                    model.num_blocks,
                )
                await redis.hset(keys.SWARM_SNAPSHOTS, model.model_id, snapshot.model_dump_json())  # type: ignore[misc]
            except Exception as exc:  # one bad round must not stop the next: the gateway shows staleness
                logger.warning("snapshot failed model=%s error=%r", model.model_id, exc)
        await asyncio.sleep(settings.far_mesh_snapshot_interval_s)


async def _sample_queues(served: dict[str, ServedModel], redis: aioredis.Redis) -> None:
    while True:
        for model_id in served:
            with suppress(aioredis.RedisError):
                depth = await redis.zcard(keys.queue_for(model_id))
                metrics.QUEUE_DEPTH.labels(model_id).set(depth)
        await asyncio.sleep(QUEUE_SAMPLE_INTERVAL_S)
