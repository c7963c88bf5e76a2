"""A model's current prices, as the pricer last set them: written to Redis by accounting, read by the gateway.

The pricer (`accounting.pricer`) stores one `LivePrice` per model in the hash `keys.LIVE_PRICES`. The gateway
quotes and fixes on each admitted job the live prices of a fresh entry whose catalogue prices are the ones it
sells at; otherwise (no pricer, a pricer stopped for `LIVE_PRICE_MAX_AGE_S`, or a catalogue changed since the
entry was written) it falls back to the catalogue's prices, so a stopped pricer never pins a surge price.
"""

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from protocol import keys
from protocol.catalog import ModelCatalog, ModelId, ModelSpec
from protocol.money import FarAmount
from protocol.pricing import MAX_BLOCKS

log = logging.getLogger(__name__)

LIVE_PRICE_MAX_AGE_S = 300.0
"""A live price older than this was set by a pricer that stopped; readers quote the catalogue price instead."""
PRICE_HISTORY_POINTS = 96
"""Steps of each model's price kept in Redis for /models (the ledger's `far_model_prices` keeps them all)."""


class LivePrice(BaseModel):
    """One model's prices at `priced_at`, and the facts the formula saw (for /models and the price history)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: ModelId
    multiplier: Decimal = Field(gt=0, decimal_places=4, allow_inf_nan=False)
    prompt_price_per_token_far: FarAmount
    completion_price_per_token_far: FarAmount
    catalogue_prompt_price_far: FarAmount
    catalogue_completion_price_far: FarAmount
    queue_depth: int = Field(ge=0)
    thinnest_block_servers: int = Field(ge=0)
    priced_at: AwareDatetime
    block_premium_bps: tuple[int, ...] = Field(
        default=(),
        max_length=MAX_BLOCKS,
        description="Each block's weight in its providers' shares, in basis points (protocol.pricing)",
    )

    def is_fresh(self, now: datetime, max_age_s: float = LIVE_PRICE_MAX_AGE_S) -> bool:
        return now - self.priced_at <= timedelta(seconds=max_age_s)


class PricePoint(BaseModel):
    """One step of a model's price: from `priced_at` on, until the next step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priced_at: AwareDatetime
    multiplier: Decimal = Field(gt=0, decimal_places=4, allow_inf_nan=False)
    prompt_price_per_token_far: FarAmount
    completion_price_per_token_far: FarAmount

    @classmethod
    def of(cls, price: LivePrice) -> "PricePoint":
        return cls(
            priced_at=price.priced_at,
            multiplier=price.multiplier,
            prompt_price_per_token_far=price.prompt_price_per_token_far,
            completion_price_per_token_far=price.completion_price_per_token_far,
        )

    def listed(self) -> dict[str, str]:
        """As /models lists it: strings, as every amount on the wire, with the prices under the names they are
        quoted by."""
        prices = Prices(
            prompt_price_per_token_far=self.prompt_price_per_token_far,
            completion_price_per_token_far=self.completion_price_per_token_far,
            multiplier=self.multiplier,
        )
        return {"priced_at": self.priced_at.isoformat(), **prices.quote()}


class Prices(BaseModel):
    """What a token of a model costs right now: the prices the gateway fixes on a job it admits."""

    model_config = ConfigDict(frozen=True)

    prompt_price_per_token_far: FarAmount
    completion_price_per_token_far: FarAmount
    multiplier: Decimal = Decimal(1)
    block_premium_bps: tuple[int, ...] = ()
    """Fixed on the job with the prices: how each block's work weighs in its providers' shares (none: at par)."""

    def quote(self) -> dict[str, str]:
        """As the routes quote prices: decimal strings, the completion price under both its names."""
        completion = format(self.completion_price_per_token_far, "f")
        return {
            "price_per_token_far": completion,
            "prompt_price_per_token_far": format(self.prompt_price_per_token_far, "f"),
            "completion_price_per_token_far": completion,
            "price_multiplier": format(self.multiplier.normalize(), "f"),  # "1.5", not the pricer's "1.5000"
        }


def catalogue_prices(catalog: ModelCatalog, spec: ModelSpec) -> Prices:
    """`spec`'s catalogue prices, multiplier 1."""
    return Prices(
        prompt_price_per_token_far=catalog.prompt_price_of(spec),
        completion_price_per_token_far=catalog.price_of(spec),
    )


def current_prices(catalog: ModelCatalog, spec: ModelSpec, live: LivePrice | None, now: datetime) -> Prices:
    """The live prices when `live` is fresh and priced from the catalogue prices in force, else the catalogue's."""
    base = catalogue_prices(catalog, spec)
    if (
        live is None
        or not live.is_fresh(now)
        or live.catalogue_prompt_price_far != base.prompt_price_per_token_far
        or live.catalogue_completion_price_far != base.completion_price_per_token_far
    ):
        return base
    return Prices(
        prompt_price_per_token_far=live.prompt_price_per_token_far,
        completion_price_per_token_far=live.completion_price_per_token_far,
        multiplier=live.multiplier,
        block_premium_bps=live.block_premium_bps,
    )


def _parsed(model_id: bytes | str, raw: bytes | str) -> LivePrice | None:
    try:
        return LivePrice.model_validate_json(raw)
    except ValidationError as exc:
        name = model_id.decode(errors="replace") if isinstance(model_id, bytes) else model_id
        log.warning("ignoring malformed live price model_id=%s errors=%d", name, exc.error_count())
        return None


async def read_live_price(redis: Any, model_id: str) -> LivePrice | None:
    """`model_id`'s stored live price (fresh or not), or None (`redis` is a `redis.asyncio.Redis`)."""
    raw: bytes | str | None = await redis.hget(keys.LIVE_PRICES, model_id)
    return None if raw is None else _parsed(model_id, raw)


async def read_live_prices(redis: Any) -> dict[str, LivePrice]:
    """Every model's stored live price by model id; malformed entries are skipped."""
    stored: dict[bytes | str, bytes | str] = await redis.hgetall(keys.LIVE_PRICES)
    prices = {}
    for model_id, raw in stored.items():
        price = _parsed(model_id, raw)
        if price is not None:
            prices[price.model_id] = price
    return prices


async def prices_now(redis: Any, catalog: ModelCatalog, spec: ModelSpec) -> Prices:
    """What `spec` costs right now: one HGET."""
    return current_prices(catalog, spec, await read_live_price(redis, spec.model_id), datetime.now(UTC))


async def all_prices_now(redis: Any, catalog: ModelCatalog) -> dict[str, Prices]:
    """What each catalogue model costs right now: one HGETALL."""
    live, now = await read_live_prices(redis), datetime.now(UTC)
    return {spec.model_id: current_prices(catalog, spec, live.get(spec.model_id), now) for spec in catalog.models}


async def read_price_histories(redis: Any, model_ids: list[str]) -> dict[str, list[PricePoint]]:
    """Each model's latest price steps, oldest first (one pipeline); malformed points are skipped."""
    async with redis.pipeline(transaction=False) as pipe:
        for model_id in model_ids:
            pipe.lrange(keys.price_history(model_id), 0, PRICE_HISTORY_POINTS - 1)
        stored: list[list[bytes | str]] = await pipe.execute()
    histories: dict[str, list[PricePoint]] = {}
    for model_id, raws in zip(model_ids, stored, strict=True):
        points = []
        for raw in reversed(raws):
            try:
                points.append(PricePoint.model_validate_json(raw))
            except ValidationError:
                log.warning("ignoring a malformed price point model_id=%s", model_id)
        histories[model_id] = points
    return histories
