"""What workers measure of each server is kept in Redis under the model's key, with a TTL, and read back whole."""

import redis.asyncio as aioredis

from protocol import keys
from protocol.peer_measurements import PeerMeasurement, read_measurements, write_measurements


async def test_measurements_merge_per_peer_expire_and_an_entry_that_does_not_parse_is_skipped(
    redis: aioredis.Redis,
) -> None:
    near = PeerMeasurement(rtt_s=0.01, throughput=20.0, inference_rps=500.0, measured_at=1.0)
    down = PeerMeasurement(reachable=False, measured_at=1.0)
    await write_measurements(redis, "m", {"near": near})
    await write_measurements(redis, "m", {"down": down})
    await write_measurements(redis, "m", {})
    await redis.hset(keys.peer_measurements("m"), "garbled", "{not json")  # type: ignore[misc]
    assert await read_measurements(redis, "m") == {"near": near, "down": down}
    assert 0 < await redis.ttl(keys.peer_measurements("m")) <= keys.PEER_MEASUREMENTS_TTL_S
    assert await read_measurements(redis, "other") == {}


def test_a_reader_ignores_fields_a_newer_writer_adds_and_the_measured_speed_round_trips() -> None:
    timed = PeerMeasurement(measured_at=1.0, decode_s_per_block=0.02, decode_measured_at=1.0)
    assert PeerMeasurement.model_validate_json(timed.model_dump_json()) == timed
    newer = PeerMeasurement.model_validate({"measured_at": 1.0, "prefill_s_per_block_token": 0.001})
    assert newer == PeerMeasurement(measured_at=1.0)
