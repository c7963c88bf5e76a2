"""The accounting process: the usage consumer, the node registry refresher, the pricer, and /metrics + /healthz.

One usage consumer per Redis the workers append usage records to: the home Redis (REDIS_URL) and each shard of
FAR_MESH_MODEL_REDIS (`protocol.redis_shards`). They write one ledger, whose unique request ids keep every record
stored once whichever consumer stores it; the registry refresher and the pricer use the home Redis, the pricer
reading each model's queue depth on the model's own.
"""

import asyncio
import logging
import signal

import asyncpg
import redis.asyncio as aioredis

from accounting import collector
from accounting.consumer import UsageConsumer
from accounting.pricer import keep_prices_moving, stop_pricing
from accounting.registry import keep_registry_fresh
from accounting.settings import AccountingSettings
from probes import serve_health_and_metrics
from protocol.redis_durability import check_redis_durability

log = logging.getLogger(__name__)


async def serve(settings: AccountingSettings) -> None:
    """Run until SIGTERM or SIGINT; the batch in hand is finished and acknowledged before returning."""
    redis = aioredis.Redis.from_url(str(settings.redis_url))
    await check_redis_durability(redis.config_get, require=settings.far_mesh_redis_require_durable)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(settings.postgres_url, timeout=10)

    placement = settings.redis_shards
    by_url = {url: aioredis.Redis.from_url(url) for url in placement.urls[1:]}
    shards = list(by_url.values())
    for shard in shards:
        await check_redis_durability(shard.config_get, require=settings.far_mesh_redis_require_durable)
    consumers = [UsageConsumer(r, connect, settings) for r in (redis, *shards)]
    queues = {model: by_url[url] for model, url in placement.by_model.items() if url in by_url}
    collector.tune_for_batches()

    def problems() -> list[str]:
        return [problem for c in consumers for problem in c.heartbeat.problems()]

    health = (
        serve_health_and_metrics(problems, settings.accounting_metrics_port, thread_name="accounting-health")
        if settings.accounting_metrics_port
        else None
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop_all, consumers)
    registry = asyncio.create_task(keep_registry_fresh(redis, connect, settings.accounting_snapshot_interval_s))
    loops = [registry]
    if settings.pricing_enabled:
        pricing = keep_prices_moving(
            redis,
            connect,
            settings.catalog,
            settings.pricing_policy,
            interval_s=settings.pricing_interval_s,
            owner=settings.accounting_consumer_name,
            queues=queues,
        )
        loops.append(asyncio.create_task(pricing))
    else:
        await stop_pricing(redis)
    for loop_task in loops:
        loop_task.add_done_callback(lambda task: _stop_if_failed(task, consumers))
    try:
        await _run_all(consumers)
    finally:
        for loop_task in loops:
            loop_task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for shard in shards:
            await shard.aclose()
        await redis.aclose()
        if health is not None:
            health.shutdown()
            health.server_close()


def _stop_all(consumers: list[UsageConsumer]) -> None:
    for consumer in consumers:
        consumer.stop()


async def _run_all(consumers: list[UsageConsumer]) -> None:
    """Run every consumer until each has stopped; one that fails stops the others, each finishing the batch in
    hand, and the process then exits with its error (and is restarted), as a lone consumer's failure always did."""
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    if any(task.done() and task.exception() is not None for task in tasks):
        _stop_all(consumers)
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _stop_if_failed(loop_task: "asyncio.Task[None]", consumers: list[UsageConsumer]) -> None:
    """The registry refresher and the pricer never return; if one dies, the process stops (and is restarted)
    rather than run on half-alive behind a healthy /healthz."""
    if not loop_task.cancelled() and loop_task.exception() is not None:
        log.error("a background loop of accounting died: %r; stopping", loop_task.exception())
        _stop_all(consumers)
