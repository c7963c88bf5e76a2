"""/openapi.json describes the real routes, and Schemathesis, run over every operation it lists against a real
gateway, finds it telling the truth in both directions: no schema-valid request refused, no schema-violating one
accepted, every response (SSE events included) as documented, no server error."""

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import redis

from gateway.app import create_app
from gateway.settings import GatewaySettings
from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.requests import SamplingOptions
from tests.fixtures.gateway import (
    MODEL_ID,
    OTHER_MODEL_ID,
    SyntheticWorker,
    issue_key_sync,
    snapshot,
    start_gateway,
    stop_gateway,
)

SCHEMATHESIS = Path(sys.executable).parent / "st"
MAX_EXAMPLES = 15
"""Per operation and phase: enough to cover every field's bounds and types, small enough for CI's 2 cores."""
CONFIG = """
# Every check Schemathesis has, on every operation, with no exception (`--checks all` on the command line would
# override the statuses below, so they are set here).
checks.enabled = true
# Every response, a stream's included, ends within GATEWAY_STREAM_DEADLINE_S (2 s here).
checks.max_response_time = 8

# 413 is documented on every operation that takes a body: the body limit is a size in bytes (stated in the
# document's description and its 413 response), which JSON Schema cannot state, so a schema-valid body over it
# is refused as documented and a schema-violating one over it is refused too. Each list is Schemathesis's
# default plus 413.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


async def test_the_document_lists_every_route_and_method_the_app_serves(
    gateway_url: str, gateway_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    app = create_app(GatewaySettings.from_env(**{k.lower(): v for k, v in gateway_env.items()}))
    served = {(route.path, method.lower()) for route in app.routes for method in route.methods - {"HEAD"}}  # type: ignore[attr-defined]
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == served
    generate = document["paths"]["/inference/generate"]["post"]
    assert {"401", "403", "404", "409", "413", "422", "429", "503"} <= set(generate["responses"])
    schema = document["components"]["schemas"]["GenerateRequest"]
    assert set(schema["properties"]) == {
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "user_wallet",
        "request_id",
        "model_id",
        "provider",
        *SamplingOptions.model_fields,
    }


class _Swarm:
    """Keeps both models' snapshots fresh and answers their jobs (the synthetic worker), in a thread of its own."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self._redis_url)
        # No pause between tokens: the coverage phase asks for every bound, max_tokens and n at their largest
        # included, and a 2 ms pause per token made this test wait on the worker for most of its 50 s.
        workers = [SyntheticWorker(client, model_id, token_delay_s=0) for model_id in (MODEL_ID, OTHER_MODEL_ID)]
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        while not self._stop.is_set():
            for model_id in (MODEL_ID, OTHER_MODEL_ID):
                await client.hset(keys.SWARM_SNAPSHOTS, model_id, snapshot(model_id).model_dump_json())  # type: ignore[misc]
            await asyncio.sleep(0.5)
        for task in [*tasks, *(t for w in workers for t in w.tasks)]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()

    def __enter__(self) -> "_Swarm":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def test_the_error_event_lists_every_code_a_stream_may_end_with(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    error_body = schemas[schemas["ErrorEvent"]["properties"]["error"]["$ref"].rpartition("/")[2]]
    codes = schemas[error_body["properties"]["code"]["$ref"].rpartition("/")[2]]
    assert codes["type"] == "string" and set(codes["enum"]) == {code.value for code in StreamErrorCode}
    assert {"no_route", "stream_lost", "stream_deadline"} <= set(codes["enum"])


def test_schemathesis_finds_the_document_true_for_every_operation_with_all_checks(
    gateway_env: dict[str, str], redis_url: str, migrated_postgres_dsn: str, tmp_path: Path
) -> None:
    with redis.Redis.from_url(redis_url) as sync_redis:
        sync_redis.flushdb()
    env = {
        **gateway_env,
        "GATEWAY_MAX_BODY_BYTES": str(64 * 1024),  # the default: a body over it is 413, as documented
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000000",
        "GATEWAY_MAX_CONCURRENT_STREAMS": "1000",
        "GATEWAY_STREAM_DEADLINE_S": "2",
        "LOG_LEVEL": "WARNING",
    }
    process, url = start_gateway(env, tmp_path / "gateway.log")
    try:
        key = issue_key_sync(migrated_postgres_dsn)
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        with _Swarm(redis_url):
            result = subprocess.run(
                [
                    str(SCHEMATHESIS),
                    "--config-file",
                    str(config),
                    "run",
                    f"{url}/openapi.json",
                    "--header",
                    f"Authorization: Bearer {key}",
                    "--max-examples",
                    str(MAX_EXAMPLES),
                    "--request-timeout",
                    "10",
                    "--seed",
                    "17",
                    "--no-color",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
                cwd=tmp_path,  # Schemathesis keeps its cache (.schemathesis/) in the working directory
            )
    finally:
        stop_gateway(process)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[report.find("FAILURES") :][:6000]
