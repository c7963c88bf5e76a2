"""The swarm snapshot: what a worker saw of one model's swarm in the DHT, published for the other processes.

Workers write the latest snapshot of each model into the hash `keys.SWARM_SNAPSHOTS`. The gateway serves
/mesh/status and /models from it (and says "disconnected" when it is stale); accounting upserts the node
registry from it; the portal draws its swarm map from it. They all read it with `read_swarm_snapshots` /
`read_swarm_snapshot`, so a malformed or stale snapshot means the same thing to each. Block ranges are
[start_block, end_block), as Petals reports them.
"""

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol import keys
from protocol.catalog import ModelId
from protocol.wallet import Wallet

log = logging.getLogger(__name__)

SNAPSHOT_MAX_AGE_S = 60.0
"""A snapshot older than this describes a swarm nobody is watching; readers treat it as unknown."""


class ServerSnapshot(BaseModel):
    """One Petals server as the DHT announces it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peer_id: str = Field(min_length=1, max_length=128)
    public_name: str | None = None
    wallet: Wallet | None = Field(default=None, description="Parsed from the public name the node launcher sets")
    start_block: int = Field(ge=0)
    end_block: int = Field(ge=1)
    throughput: float = Field(ge=0, allow_inf_nan=False, description="Tokens/s the server announces")
    state: str = Field(description="online, joining or offline")
    cache_tokens_left: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _span_is_not_empty(self) -> Self:
        if self.end_block <= self.start_block:
            raise ValueError(f"end_block {self.end_block} must exceed start_block {self.start_block}")
        return self

    @property
    def online(self) -> bool:
        return self.state == "online"


class SwarmSnapshot(BaseModel):
    """One model's swarm at `taken_at`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: ModelId
    dht_prefix: str
    num_blocks: int = Field(ge=1)
    taken_at: AwareDatetime
    servers: tuple[ServerSnapshot, ...] = ()

    @property
    def block_coverage(self) -> list[int]:
        """How many online servers hold each block."""
        coverage = [0] * self.num_blocks
        for server in self.servers:
            if server.online:
                for block in range(server.start_block, min(server.end_block, self.num_blocks)):
                    coverage[block] += 1
        return coverage

    @property
    def healthy(self) -> bool:
        """True when every block has at least one online server, i.e. a full route exists."""
        return all(self.block_coverage)

    @property
    def active_nodes(self) -> int:
        return sum(1 for s in self.servers if s.online)

    def is_fresh(self, now: datetime, max_age_s: float = SNAPSHOT_MAX_AGE_S) -> bool:
        return now - self.taken_at <= timedelta(seconds=max_age_s)


def _parsed(model_id: bytes | str, raw: bytes | str) -> SwarmSnapshot | None:
    """The snapshot stored under `model_id`, or None (logged) when it is malformed: one bad writer never stops a
    reader."""
    try:
        return SwarmSnapshot.model_validate_json(raw)
    except ValidationError as exc:
        name = model_id.decode(errors="replace") if isinstance(model_id, bytes) else model_id
        log.warning("ignoring malformed swarm snapshot model_id=%s errors=%d", name, exc.error_count())
        return None


async def read_swarm_snapshots(redis: Any, *, fresh_only: bool) -> dict[str, SwarmSnapshot]:
    """Every model's latest snapshot by model id (`redis` is a `redis.asyncio.Redis`); malformed ones are skipped.

    `fresh_only` drops the stale ones: the gateway must not sell a swarm nobody watches. The portal shows stale
    ones as stale, and accounting's registry still learns from them (older facts never overwrite newer ones).
    """
    stored: dict[bytes | str, bytes | str] = await redis.hgetall(keys.SWARM_SNAPSHOTS)
    now = datetime.now(UTC)
    snapshots: dict[str, SwarmSnapshot] = {}
    for model_id, raw in stored.items():
        snapshot = _parsed(model_id, raw)
        if snapshot is not None and (not fresh_only or snapshot.is_fresh(now)):
            snapshots[snapshot.model_id] = snapshot
    return snapshots


async def read_swarm_snapshot(redis: Any, model_id: str) -> SwarmSnapshot | None:
    """`model_id`'s snapshot if it is fresh and well-formed, else None (`redis` is a `redis.asyncio.Redis`)."""
    raw: bytes | str | None = await redis.hget(keys.SWARM_SNAPSHOTS, model_id)
    snapshot = None if raw is None else _parsed(model_id, raw)
    return snapshot if snapshot is not None and snapshot.is_fresh(datetime.now(UTC)) else None
