"""A worker process: one arq `Worker` per served model's queue, all in one event loop, sharing the clients.

Each model's Petals client is opened once at start-up and used by every concurrent job of that model; a
client whose DHT connection died is replaced. Beside the queues, the process publishes swarm snapshots,
samples queue depths and serves Prometheus metrics and `/healthz`.
"""

import asyncio
import logging
import os
import signal
import socket
import threading
from contextlib import suppress

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mesh.client import ClientLimits, open_client
from mesh.dht_node import bootstrap_listens
from mesh.peer_pings import measure_peers
from mesh.snapshot import read_swarm_snapshot
from probes import serve_health_and_metrics
from protocol import keys
from protocol.backoff import Backoff
from protocol.peer_measurements import read_measurements, write_measurements
from protocol.redis_durability import check_redis_durability
from workers import metrics
from workers.generate import WorkerContext
from workers.health import HEARTBEAT_INTERVAL_S, FleetHealth
from workers.queue_worker import QueueWorker
from workers.served_model import ServedModel
from workers.settings import WorkerSettings

logger = logging.getLogger(__name__)

QUEUE_SAMPLE_INTERVAL_S = 1.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 5.0
DHT_WAIT_LOG_EVERY_S = 10.0


def client_limits(settings: WorkerSettings) -> ClientLimits:
    return ClientLimits(
        max_retries=settings.worker_petals_max_retries,
        connect_timeout=settings.worker_petals_connect_timeout_s,
        request_timeout=settings.worker_petals_request_timeout_s,
        min_backoff=min(0.5, settings.worker_petals_max_backoff_s),
        max_backoff=settings.worker_petals_max_backoff_s,
    )


async def serve(
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
    await check_redis_durability(redis.config_get, require=settings.far_mesh_redis_require_durable)
    shards = await _open_shards(settings)
    tasks: list[asyncio.Task[None]] = []
    workers: dict[str, QueueWorker] = {}
    retiring: dict[QueueWorker, asyncio.Task[None]] = {}
    """Queue workers that lost Redis, finishing the jobs they run before they close."""
    http_server = None
    try:
        if not await _wait_for_dht(settings.initial_peers, stop):
            return
        for spec in settings.served_models:
            served[spec.model_id] = await asyncio.to_thread(
                ServedModel.open,
                spec,
                settings.initial_peers,
                limits=client_limits(settings),
                max_jobs=settings.worker_max_jobs,
            )
            logger.info("client connected model=%s blocks=%d", spec.model_id, served[spec.model_id].num_blocks)
        context = WorkerContext(redis=redis, settings=settings, served=served, worker_id=worker_id, shards=shards)
        health = FleetHealth(served)
        if settings.worker_metrics_port:
            http_server = serve_health_and_metrics(
                health.check,
                settings.worker_metrics_port,
                host=settings.worker_metrics_host,
                registry=metrics.REGISTRY,
                thread_name="worker-http",
            )
        tasks = [asyncio.create_task(_consume(context, model_id, workers, retiring)) for model_id in served]
        tasks += [
            asyncio.create_task(_publish_snapshots(settings, served, redis)),
            asyncio.create_task(_sample_queues(context)),
            asyncio.create_task(_beat(health)),
        ]
        logger.info(
            "worker started id=%s models=%s queues=%s max_jobs=%d metrics_port=%d",
            worker_id,
            ",".join(served),
            ",".join(keys.queue_for(m) for m in served),
            settings.worker_max_jobs,
            settings.worker_metrics_port,
        )
        if ready is not None:
            ready.set()
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopped}:
            task.result()  # a queue loop that died takes the process down with its error
    finally:
        for retirement in retiring.values():
            retirement.cancel()
        for worker in [*workers.values(), *retiring]:
            try:
                await _close_queue(worker)
            # Redis gone, or this stop itself cancelled: either way the rest of the shutdown must still run.
            except (Exception, asyncio.CancelledError) as exc:
                logger.warning("queue close failed queue=%s error=%r", worker.queue_name, exc)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if http_server is not None:
            http_server.shutdown()
            http_server.server_close()
        for model in served.values():
            await asyncio.to_thread(model.close)
        for shard in {id(s): s for s in shards.values()}.values():
            await shard.aclose()
        await redis.aclose()
        logger.info("worker stopped id=%s", worker_id)


async def _open_shards(settings: WorkerSettings) -> dict[str, aioredis.Redis]:
    """One connection pool per Redis a served model lives on other than the home one (FAR_MESH_MODEL_REDIS),
    shared by the models on it: model id -> its Redis."""
    shards = settings.redis_shards
    by_url: dict[str, aioredis.Redis] = {}
    for spec in settings.served_models:
        url = shards.url_for(spec.model_id)
        if url != shards.home and url not in by_url:
            by_url[url] = aioredis.Redis.from_url(url)
            await check_redis_durability(by_url[url].config_get, require=settings.far_mesh_redis_require_durable)
    return {
        spec.model_id: by_url[shards.url_for(spec.model_id)]
        for spec in settings.served_models
        if not shards.is_home(spec.model_id)
    }


async def _close_queue(worker: QueueWorker) -> None:
    """Cancel the queue's running jobs (arq puts them back; another worker resumes them), then close it.

    arq's own close gathers the jobs it cancelled and re-raises the first cancellation, before it closes its Redis
    pool: the pool's connections were then left to the garbage collector. The jobs are awaited and forgotten here
    first, so its close has nothing left to re-raise."""
    worker.handle_sig(signal.SIGUSR1)
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    await worker.close()


async def _wait_for_dht(initial_peers: list[str], stop: asyncio.Event) -> bool:
    """Wait until the DHT bootstrap accepts connections (False: stopped first).

    Processes started together (a Procfile under honcho, pods of one rollout) come up in any order; a worker that
    failed to join a bootstrap still starting would exit, and honcho would stop every other process with it.
    """
    backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
    logged_at: float | None = None
    loop = asyncio.get_running_loop()
    while not await asyncio.to_thread(bootstrap_listens, initial_peers):
        if logged_at is None or loop.time() - logged_at >= DHT_WAIT_LOG_EVERY_S:
            logger.info("worker waiting for the DHT bootstrap at %s (FAR_MESH_DHT_BOOTSTRAP)", ",".join(initial_peers))
            logged_at = loop.time()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=backoff.take())
        if stop.is_set():
            return False
    return True


async def _consume(
    context: WorkerContext,
    model_id: str,
    current: dict[str, QueueWorker],
    retiring: dict[QueueWorker, "asyncio.Task[None]"],
) -> None:
    """Consume one model's queue for as long as the fleet runs, outliving Redis outages.

    arq's loop ends with a connection error when Redis goes away; left alone, the worker would stay up yet
    consume nothing once Redis is back. A fresh arq worker is started instead, with a capped backoff. The old
    one is not closed at once, which would cancel its running jobs: they ride out the outage and, once Redis
    is back, end their streams (with a bill) themselves.
    """
    backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
    while True:
        worker = current[model_id] = QueueWorker(context, model_id)
        started = asyncio.get_running_loop().time()
        try:
            await worker.async_run()
            return
        except (RedisError, OSError) as exc:
            logger.warning(
                "queue lost Redis queue=%s error=%r; retrying in %.1fs", worker.queue_name, exc, backoff.delay_s
            )
        retiring[worker] = asyncio.create_task(_retire(worker, retiring))
        await backoff.sleep()
        if asyncio.get_running_loop().time() - started > RECONNECT_MAX_S:  # it ran well: start the delays over
            backoff.reset()


async def _retire(worker: QueueWorker, retiring: dict[QueueWorker, "asyncio.Task[None]"]) -> None:
    """Close `worker` once the jobs it runs have ended."""
    try:
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        with suppress(Exception):
            await worker.close()
    finally:
        retiring.pop(worker, None)


async def _beat(health: FleetHealth) -> None:
    """Prove to `/healthz` that the event loop still runs."""
    while True:
        health.beat()
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


async def _publish_snapshots(settings: WorkerSettings, served: dict[str, ServedModel], redis: aioredis.Redis) -> None:
    """Every interval: replace dead or suspect clients, then publish each model's swarm as the DHT shows it."""
    while True:
        for model in served.values():
            try:
                if reason := model.needs_new_client():
                    logger.warning("replacing the client of model=%s: %s", model.model_id, reason)
                    client = await asyncio.to_thread(
                        open_client, model.spec, settings.initial_peers, limits=client_limits(settings)
                    )
                    model.replace_client(client)
                    logger.info("client reconnected model=%s", model.model_id)
                if model.retired_clients and (closed := await asyncio.to_thread(model.close_retired)):
                    logger.info("closed %d replaced client(s) of model=%s", closed, model.model_id)
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
            try:  # what buyers' `provider.sort` ranks routes by (workers.route_preferences)
                previous = await read_measurements(redis, model.model_id)  # other workers' speeds, carried over
                measured = await model.run_blocking(
                    measure_peers, model.model.transformer.h.sequence_manager, model.peer_speeds, previous
                )
                await write_measurements(redis, model.model_id, measured)
            except Exception as exc:
                logger.warning("peer measurement failed model=%s error=%r", model.model_id, exc)
        await asyncio.sleep(settings.worker_snapshot_interval_s)


async def _sample_queues(context: WorkerContext) -> None:
    while True:
        for model_id in context.served:
            with suppress(aioredis.RedisError):
                depth = await context.redis_for(model_id).zcard(keys.queue_for(model_id))
                metrics.QUEUE_DEPTH.labels(model_id).set(depth)
        await asyncio.sleep(QUEUE_SAMPLE_INTERVAL_S)
