"""What workers measure of each server of a model, kept in Redis so a buyer's `provider.sort` ranks routes by it.

Latency is measured, never guessed: every snapshot interval each worker pings every server of each model it
serves (the Petals client's own ping aggregator) and writes the round trips beside the throughput each server
announces, under `keys.peer_measurements(model_id)` with a TTL. Speed is measured too: the seconds per block of
each decode step the worker's own sessions ran on a server (`mesh.peer_speed`), which `sort: throughput` ranks by
instead of the throughput a server announces (a claim). A worker ranking routes prefers its own fresh figures and
falls back on these for servers it has not measured itself (docs/routing.md). Readers ignore fields they do not
know, so a worker writing a newer record never breaks an older one reading it.
"""

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol import keys


class PeerMeasurement(BaseModel):
    """One server as one worker measured it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rtt_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Round trip from the worker, seconds; None: unanswered"
    )
    reachable: bool = Field(default=True, description="False when the last ping got no answer")
    throughput: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="The server's announced throughput (Petals' RPS): a claim, kept for readers, never ranked by",
    )
    inference_rps: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="The server's announced inference steps per second"
    )
    measured_at: float = Field(description="Unix seconds of the measurement")
    decode_s_per_block: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Smoothed seconds per block of a one-token step through the server, as workers timed it "
        "(round trip included); None: no worker stepped through it lately",
    )
    decode_measured_at: float | None = Field(
        default=None, description="Unix seconds of the last step behind `decode_s_per_block`"
    )


async def write_measurements(redis: Any, model_id: str, measured: Mapping[str, PeerMeasurement]) -> None:
    """Merge `measured` into the model's hash and push its expiry back, in one round trip (`redis` is a
    `redis.asyncio.Redis`: the protocol names the keys and the record, and imports no Redis client)."""
    if not measured:
        return
    key = keys.peer_measurements(model_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={peer: m.model_dump_json() for peer, m in measured.items()})
        pipe.expire(key, keys.PEER_MEASUREMENTS_TTL_S)
        await pipe.execute()


async def read_measurements(redis: Any, model_id: str) -> dict[str, PeerMeasurement]:
    """Every server's latest measurement; an entry that does not parse (a newer writer's) is skipped."""
    raw: Mapping[bytes | str, bytes | str] = await redis.hgetall(keys.peer_measurements(model_id))
    measured = {}
    for peer, value in raw.items():
        try:
            measured[peer.decode() if isinstance(peer, bytes) else peer] = PeerMeasurement.model_validate(
                json.loads(value)
            )
        except (ValueError, ValidationError):
            continue
    return measured
