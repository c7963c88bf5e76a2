"""`/healthz` fails when the consumer loop stops turning, and only then; `/metrics` is served beside it."""

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
import yaml

from accounting.consumer import UsageConsumer
from accounting.settings import AccountingSettings
from probes import HEALTH_PATH, Heartbeat, serve_health_and_metrics
from protocol import keys
from tests.accounting.helpers import consumer_settings, running_consumer
from tests.fixtures.ledger import unique_id, usage_record


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_healthz_answers_503_once_the_heartbeat_is_older_than_the_limit() -> None:
    heartbeat = Heartbeat(stale_after_s=0.3)
    server = serve_health_and_metrics(heartbeat.problems, 0, host="127.0.0.1")
    port = server.server_port
    try:
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        time.sleep(0.4)  # the event loop itself blocked: the thread still answers, and says it is stale
        status, body = await asyncio.to_thread(get, port, "/healthz")
        assert status == 503 and "event loop silent" in body
        heartbeat.beat()
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
        status, body = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200 and "far_accounting_records_consumed" in body
    finally:
        server.shutdown()
        server.server_close()


async def test_an_idle_consumer_keeps_beating_while_its_reads_come_back_empty(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    async with running_consumer(
        migrated_postgres_dsn, redis_url, redis, accounting_liveness_s=0.5, accounting_batch_wait_ms=50
    ) as consumer:
        for _ in range(10):  # 1.5 s of empty stream: three times the limit
            await asyncio.sleep(0.15)
            assert consumer.heartbeat.alive()


async def test_a_consumer_waiting_for_the_ledger_is_alive_not_stuck(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    async def refused() -> asyncpg.Connection:
        raise OSError("connection refused")

    settings = consumer_settings(
        migrated_postgres_dsn, redis_url, accounting_liveness_s=0.5, accounting_retry_max_s=0.2
    )
    consumer = UsageConsumer(redis, refused, settings)
    await redis.xadd(keys.USAGE_STREAM, usage_record(unique_id("req"), {unique_id("peer"): 1}).to_stream_fields())
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(8):
            await asyncio.sleep(0.15)
            assert consumer.heartbeat.alive()
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


def test_the_deployments_probes_ask_healthz_and_tolerate_no_more_than_the_liveness_limit() -> None:
    manifest = Path(__file__).parents[2] / "deploy/k8s/base/accounting.yaml"
    deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        HEALTH_PATH
    }
    liveness = container["livenessProbe"]
    limit = AccountingSettings.model_fields["accounting_liveness_s"].default
    # A stale loop is restarted within a few probe periods of going stale, not kept alive by a lenient probe.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= limit
