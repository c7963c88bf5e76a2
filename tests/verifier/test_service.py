"""verifier.service on real Redis and PostgreSQL: entries it cannot verify are acknowledged, never retried
forever, and their sessions recorded as not verified (so they are paid as unsampled ones, not held forever); what
the worker recorded wrong convicts nobody, while a reply that cannot be verified convicts its server with the
cause."""

import asyncio
import contextlib
import json

import asyncpg
import pytest
import redis.asyncio as aioredis
import torch
from redis.exceptions import ResponseError

from mesh.session import tensor_b64
from protocol import keys
from protocol.catalog import ModelSpec
from protocol.verification import NotVerified, RecordedSpan, RecordedStep, SpotCheck
from tests.fixtures.ledger import unique_id
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


async def test_checks_that_cannot_be_judged_are_acknowledged_without_a_verdict_and_recorded_as_not_verified(
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
                announced_dtype="float32",
                steps=(
                    RecordedStep(
                        step=0,
                        tokens=1,
                        inputs_dtype="float32",
                        inputs_b64="AAAAAA==",
                        outputs_dtype="float32",
                        outputs_b64="AAAAAA==",
                    ),
                ),
            ),
        ),
    )
    unknown_model = wrong_width.model_copy(update={"request_id": "svc-unknown", "model_id": "not-in-catalog"})
    try:
        before = await pending(redis)
        entries = [
            {"other": "x"},
            {"check": json.dumps({"request_id": "svc-malformed", "spans": "not a list"})},
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
            unverified = await connection.fetch(
                "SELECT request_id, model_id, cause, spans FROM far_unverified_sessions "
                "WHERE request_id LIKE 'svc-%' ORDER BY request_id"
            )
        assert verdicts == 0
        model = tiny_models[0].model_id
        assert [tuple(row) for row in unverified] == [
            ("svc-malformed", None, "malformed", 0),
            ("svc-unknown", "not-in-catalog", "unknown-model", 1),
            ("svc-wrong-width", model, "recording-unusable", 1),
        ]
    finally:
        await pool.close()
        await redis.aclose()


async def test_a_reply_that_cannot_be_verified_convicts_its_server_and_a_bad_record_of_the_worker_convicts_nobody(
    redis_url: str, migrated_postgres_dsn: str, tiny_models: tuple[ModelSpec, ...]
) -> None:
    """Span 0's server replied in bytes that are no tensor: a mismatch with its cause, slashed and counted like
    any. Span 1's inputs, which the worker wrote, do not decode: no verdict, and its server keeps its standing;
    the check is acknowledged either way (it used to be dropped whole, so any cheat could switch checks off)."""
    verifier, pool = await verifier_on(redis_url, migrated_postgres_dsn, tiny_models[0])
    redis = verifier.redis
    hidden = verifier.runner_for(tiny_models[0].model_id).hidden_size  # type: ignore[union-attr]
    request_id, garbler, innocent = unique_id("svc-garbled"), unique_id("QmGarbler"), unique_id("QmInnocent")
    row = tensor_b64(torch.randn(1, hidden))
    step = RecordedStep(
        step=0, tokens=1, inputs_dtype="float32", inputs_b64=row, outputs_dtype="bfloat16", outputs_b64="AAAA"
    )
    garbled = RecordedSpan(
        peer_id=garbler, start_block=0, end_block=2, hidden_size=hidden, announced_dtype="bfloat16", steps=(step,)
    )
    unreadable_inputs = garbled.model_copy(
        update={
            "peer_id": innocent,
            "start_block": 2,
            "end_block": 4,
            "steps": (step.model_copy(update={"inputs_b64": "AAAA", "outputs_b64": row, "outputs_dtype": "float32"}),),
        }
    )
    check = SpotCheck(
        request_id=request_id, model_id=tiny_models[0].model_id, reason="fraction", spans=(garbled, unreadable_inputs)
    )
    try:
        before = await pending(redis)
        await redis.xadd(keys.VERIFICATION_STREAM, check.to_stream_fields())  # type: ignore[arg-type]
        read = await redis.xreadgroup(
            keys.VERIFICATION_CONSUMER_GROUP, "svc-test", {keys.VERIFICATION_STREAM: ">"}, count=10
        )
        for entry_id, fields in [e for _, batch in read for e in batch]:
            await verifier.handle(entry_id, fields)
        assert await pending(redis) == before
        async with pool.acquire() as connection:
            verdicts = await connection.fetch(
                "SELECT span_index, node_id, verdict, cause, first_bad_step, max_error FROM far_verifications "
                "WHERE request_id = $1",
                request_id,
            )
            standing = await connection.fetch(
                "SELECT node_id, verified_ok, verified_mismatches FROM far_nodes WHERE node_id = ANY($1)",
                [garbler, innocent],
            )
        assert [tuple(v) for v in verdicts] == [(0, garbler, "mismatch", "undecodable", 0, float("inf"))]
        assert [tuple(s) for s in standing] == [(garbler, 0, 1)]
    finally:
        await pool.close()
        await redis.aclose()


async def test_an_entry_that_cannot_be_handled_is_set_aside_and_the_verifier_goes_on_with_the_next(
    redis_url: str, migrated_postgres_dsn: str, tiny_models: tuple[ModelSpec, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream is anyone's to write: an entry that fails the same way each time once stopped the verifier at
    every start (a step past int4, JSON nested past the parser's depth), and the checks behind it waited for good."""
    verifier, pool = await verifier_on(redis_url, migrated_postgres_dsn, tiny_models[0])
    redis = verifier.redis

    def breaks(check: SpotCheck) -> None:
        raise RuntimeError("a recomputation that fails the same way every time")

    monkeypatch.setattr(verifier, "recompute", breaks)
    poison, after = unique_id("svc-poison"), unique_id("svc-after")
    step = RecordedStep(
        step=0, tokens=1, inputs_dtype="float32", inputs_b64="", outputs_dtype="float32", outputs_b64=""
    )
    span = RecordedSpan(
        peer_id="QmX", start_block=0, end_block=2, hidden_size=8, announced_dtype="float32", steps=(step,)
    )
    check = SpotCheck(request_id=poison, model_id=tiny_models[0].model_id, reason="fraction", spans=(span,))
    notice = NotVerified(request_id=after, model_id=tiny_models[0].model_id, cause="over-budget", spans=1)
    stop = asyncio.Event()
    try:
        await redis.xadd(keys.VERIFICATION_STREAM, check.to_stream_fields())  # type: ignore[arg-type]
        await redis.xadd(keys.VERIFICATION_STREAM, notice.to_stream_fields())  # type: ignore[arg-type]
        running = asyncio.create_task(verifier.run(stop))
        for _ in range(100):  # the pool's one connection is the verifier's between two looks
            query = "SELECT request_id, cause FROM far_unverified_sessions WHERE request_id = ANY($1)"
            causes = dict(await pool.fetch(query, [poison, after]))
            if len(causes) == 2 or running.done():
                break
            await asyncio.sleep(0.1)
        assert not running.done(), "the verifier stopped"
        assert causes == {poison: "malformed", after: "over-budget"}
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await pool.close()
        await redis.aclose()
