"""workers.check_store and the verifier's side of it, on real Redis: the spot checks waiting for the verifier never
hold more bytes than WORKER_VERIFY_MAX_BYTES, whatever the flood of sampled requests; every check dropped is
counted with its reason, and leaves a small notice outside the budget so that its session is recorded as not
verified instead of held forever; a check the verifier finished is deleted and frees its room."""

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from protocol import keys
from protocol.verification import (
    UNVERIFIED_FIELD,
    VERIFICATION_BYTES_FIELD,
    VERIFICATION_FIELD,
    NotVerified,
    SpotCheck,
    read_entry,
)
from tests.verifier.helpers import MODEL, PEER_A, FakeServed, Replay, recorded_span, settings
from verifier.service import Verifier
from verifier.settings import VerifierSettings
from workers import metrics, spot_checks
from workers.check_store import bytes_held, publish_check
from workers.spot_checks import begin_trust


def dropped(cause: str) -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "far_mesh_worker_spot_checks_dropped_total", {"model_id": MODEL, "cause": cause}
    )
    return sample or 0.0


async def stream_bytes(redis: aioredis.Redis) -> int:
    """What the stream's checks really hold: the length of each entry's JSON."""
    entries = await redis.xrange(keys.VERIFICATION_STREAM)
    return sum(len(fields.get(VERIFICATION_FIELD.encode(), b"")) for _, fields in entries)


async def notices(redis: aioredis.Redis) -> list[NotVerified]:
    """The not-verified notices waiting in the stream, in order."""
    entries = await redis.xrange(keys.VERIFICATION_STREAM)
    return [
        NotVerified.model_validate_json(f[UNVERIFIED_FIELD.encode()])
        for _, f in entries
        if UNVERIFIED_FIELD.encode() in f
    ]


async def test_the_checks_waiting_never_hold_more_than_the_byte_budget_under_a_flood_of_sampled_requests(
    redis: aioredis.Redis,
) -> None:
    budget = 40_000
    config = settings(worker_verify_fraction=1.0, worker_verify_min_per_node_hour=0, worker_verify_max_bytes=budget)
    served = FakeServed([PEER_A])
    over_budget = dropped("over-budget")
    for i in range(60):  # each check about 4 kB: nine or so fit
        trust = await begin_trust(redis, f"flood-{i}", served, config)  # type: ignore[arg-type]
        assert trust.reason == "fraction"
        trust.recorder = Replay([recorded_span(PEER_A, payload_bytes=1500)])
        await trust.publish(redis, f"flood-{i}", MODEL)
        assert await stream_bytes(redis) <= budget
    published = await redis.xlen(keys.VERIFICATION_STREAM) - len(await notices(redis))
    assert 5 <= published < 60
    assert await bytes_held(redis) == await stream_bytes(redis)
    assert dropped("over-budget") - over_budget == 60 - published == len(await notices(redis))


async def test_a_run_records_nothing_while_the_store_is_full_and_counts_the_check_dropped(
    redis: aioredis.Redis,
) -> None:
    check = SpotCheck(request_id="fills", model_id=MODEL, reason="fraction", spans=(recorded_span(PEER_A, 1800),))
    budget = len(check.model_dump_json())
    assert await publish_check(redis, check, budget, now=1.0)
    assert await bytes_held(redis) == budget
    config = settings(worker_verify_fraction=1.0, worker_verify_min_per_node_hour=0, worker_verify_max_bytes=budget)
    store_full = dropped("store-full")
    trust = await begin_trust(redis, "req-after-full", FakeServed([PEER_A]), config)  # type: ignore[arg-type]
    assert trust.recorder is None and trust.reason is None
    assert dropped("store-full") - store_full == 1


async def test_a_check_the_verifier_finished_is_deleted_and_its_bytes_freed_once(
    redis: aioredis.Redis, redis_url: str, migrated_postgres_dsn: str
) -> None:
    unverifiable = "not-in-catalog"  # the verifier records it not verified without recomputing
    for n in range(2):
        check = SpotCheck(request_id=f"v-{n}", model_id=unverifiable, reason="fraction", spans=(recorded_span(PEER_A),))
        assert await publish_check(redis, check, 1_000_000, now=1.0)
    await redis.xgroup_create(keys.VERIFICATION_STREAM, keys.VERIFICATION_CONSUMER_GROUP, id="0")
    read = await redis.xreadgroup(keys.VERIFICATION_CONSUMER_GROUP, "t", {keys.VERIFICATION_STREAM: ">"}, count=1)
    ((entry_id, fields),) = [entry for _, entries in read for entry in entries]
    held = await bytes_held(redis)
    config = VerifierSettings.from_env(redis_url=redis_url, postgres_url=migrated_postgres_dsn)
    pool = await asyncpg.create_pool(migrated_postgres_dsn, min_size=1, max_size=1)
    try:
        verifier = Verifier(config, redis, pool)
        await verifier.handle(entry_id, fields)
        await verifier.handle(entry_id, fields)  # claimed back from a verifier that was only slow: subtracted once
    finally:
        await pool.close()
    assert await redis.xlen(keys.VERIFICATION_STREAM) == 1
    assert await bytes_held(redis) == held - int(fields[VERIFICATION_BYTES_FIELD.encode()]) == await stream_bytes(redis)


async def test_a_count_left_behind_by_a_deleted_stream_mends_at_the_next_check(redis: aioredis.Redis) -> None:
    await redis.set(keys.VERIFICATION_STREAM_BYTES, 10_000_000)  # the stream itself was deleted by hand
    check = SpotCheck(request_id="after", model_id=MODEL, reason="fraction", spans=(recorded_span(PEER_A),))
    assert await publish_check(redis, check, 100_000, now=1.0)
    assert await bytes_held(redis) == await stream_bytes(redis)


async def test_a_check_dropped_over_the_budget_or_refused_by_redis_leaves_a_notice_outside_the_budget(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usage record already says the session was sampled: without a notice its providers would wait forever
    for a verdict. The notice is admitted whatever the budget holds, and counts no bytes."""
    config = settings(worker_verify_fraction=1.0, worker_verify_min_per_node_hour=0, worker_verify_max_bytes=500)
    trust = await begin_trust(redis, "too-big", FakeServed([PEER_A]), config)  # type: ignore[arg-type]
    trust.recorder = Replay([recorded_span(PEER_A, payload_bytes=2000), recorded_span(PEER_A)])
    await trust.publish(redis, "too-big", MODEL)

    async def refused(*args: object, **kwargs: object) -> bool:
        raise RedisConnectionError("refused")

    refused_trust = await begin_trust(redis, "refused", FakeServed([PEER_A]), config)  # type: ignore[arg-type]
    refused_trust.recorder = Replay([recorded_span(PEER_A)])
    with monkeypatch.context() as patch:
        patch.setattr(spot_checks, "publish_check", refused)
        await refused_trust.publish(redis, "refused", MODEL)
    empty = await begin_trust(redis, "empty", FakeServed([PEER_A]), config)  # type: ignore[arg-type]
    empty.recorder = Replay([])
    await empty.publish(redis, "empty", MODEL)

    assert await notices(redis) == [
        NotVerified(request_id="too-big", model_id=MODEL, cause="over-budget", spans=2),
        NotVerified(request_id="refused", model_id=MODEL, cause="unpublished", spans=1),
        NotVerified(request_id="empty", model_id=MODEL, cause="nothing-recorded", spans=0),
    ]
    assert await bytes_held(redis) == 0
    for _, fields in await redis.xrange(keys.VERIFICATION_STREAM):
        assert len(fields[UNVERIFIED_FIELD.encode()]) < 200
        assert isinstance(read_entry(fields), NotVerified)
