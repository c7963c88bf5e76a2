"""verifier.service on real Redis and PostgreSQL: entries it cannot verify are acknowledged, never retried
forever, and never convict anyone."""

import contextlib
import json

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from protocol import keys
from protocol.catalog import ModelSpec
from protocol.verification import RecordedSpan, RecordedStep, SpotCheck
from verifier.service import Verifier
from verifier.settings import VerifierSettings


async def verifier_on(redis_url: str, dsn: str, model: ModelSpec) -> tuple[Verifier, asyncpg.Pool]:
    settings = VerifierSettings.from_env(
        redis_url=redis_url,
        postgres_url=dsn,
        far_mesh_models=json.dumps([model.model_dump(mode="json")]),
        default_model_id=model.model_id,
    )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    redis = aioredis.Redis.from_url(redis_url)
    with contextlib.suppress(ResponseError):  # BUSYGROUP: another test made the group
        await redis.xgroup_create(keys.VERIFICATION_STREAM, keys.VERIFICATION_CONSUMER_GROUP, id="$", mkstream=True)
    return Verifier(settings, redis, pool), pool


async def pending(redis: aioredis.Redis) -> int:
    info = await redis.xpending(keys.VERIFICATION_STREAM, keys.VERIFICATION_CONSUMER_GROUP)
    return int(info["pending"])


async def test_malformed_and_unverifiable_checks_are_acknowledged_without_a_verdict(
    redis_url: str, migrated_postgres_dsn: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    verifier, pool = await verifier_on(redis_url, migrated_postgres_dsn, tiny_models[0])
    redis = verifier.redis
    wrong_width = SpotCheck(
        request_id="svc-wrong-width",
        model_id=tiny_models[0].model_id,
        reason="fraction",
        spans=(
            RecordedSpan(
                peer_id="QmWrongWidth",
                start_block=0,
                end_block=2,
                hidden_size=8,
                dtype="float32",
                steps=(RecordedStep(step=0, tokens=1, inputs_b64="AAAAAA==", outputs_b64="AAAAAA=="),),
            ),
        ),
    )
    unknown_model = wrong_width.model_copy(update={"request_id": "svc-unknown", "model_id": "not-in-catalog"})
    try:
        before = await pending(redis)
        entries = [
            {"other": "x"},
            wrong_width.to_stream_fields(),
            unknown_model.to_stream_fields(),
        ]
        for fields in entries:
            await redis.xadd(keys.VERIFICATION_STREAM, fields)  # type: ignore[arg-type]
        read = await redis.xreadgroup(
            keys.VERIFICATION_CONSUMER_GROUP, "svc-test", {keys.VERIFICATION_STREAM: ">"}, count=10
        )
        for entry_id, fields in [e for _, batch in read for e in batch]:
            await verifier.handle(entry_id, fields)
        assert await pending(redis) == before
        async with pool.acquire() as connection:
            verdicts = await connection.fetchval(
                "SELECT count(*) FROM far_verifications WHERE request_id IN ('svc-wrong-width', 'svc-unknown')"
            )
        assert verdicts == 0
    finally:
        await pool.close()
        await redis.aclose()
