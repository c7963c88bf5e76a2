"""The portal shows each model's current prices and their recent history as the pricer set them (#30): the swarm
list and a model's swarm page (with an SVG step chart, no script), their JSON twins, and onboarding's premium on
the least served blocks."""

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from accounting.pricer import reprice
from portal.app import create_app
from portal.settings import PortalSettings
from protocol import keys
from protocol.pricing import PricingPolicy
from tests.fixtures.ledger import unique_id
from tests.fixtures.portal import PORTAL_HOST
from tests.portal.helpers import publish_snapshot

MODEL = unique_id("test/priced")


@pytest.fixture
async def priced_portal(
    portal_settings: PortalSettings, redis: aioredis.Redis, migrated_postgres_dsn: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The portal selling MODEL, whose blocks 2-3 have one server and 32 jobs queued, priced by four ticks."""
    models = [{"model_id": MODEL, "completion_price_per_token_far": "0.0002", "prompt_price_per_token_far": "0.00001"}]
    settings = portal_settings.model_copy(update={"far_mesh_models": models, "default_model_id": MODEL})
    await publish_snapshot(redis, MODEL, 4, {"p1": (0, 4), "p2": (0, 2)})
    await redis.zadd(keys.queue_for(MODEL), {f"job-{n}": n for n in range(32)})
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        start = datetime.now(UTC) - timedelta(minutes=5)
        for tick in range(4):
            await reprice(
                redis, connection, settings.catalog, PricingPolicy(), now=start + timedelta(seconds=10 * tick)
            )
    finally:
        await connection.close()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{PORTAL_HOST}") as client:
            yield client


async def test_a_models_swarm_page_shows_its_current_prices_and_charts_their_history(
    priced_portal: httpx.AsyncClient,
) -> None:
    document = (await priced_portal.get(f"/api/swarm/{MODEL}")).json()
    prices, history = document["prices"], document["price_history"]
    # target 1 + 0.5 x 32/16 + (0.5 + 0.25) / 2 = 2.375: 1 -> 1.6875 -> 2.0312 -> 2.2031 -> 2.2890 (half even)
    assert [p["price_multiplier"] for p in history] == ["1.6875", "2.0312", "2.2031", "2.289"]
    assert prices["price_multiplier"] == "2.289" and Decimal(prices["completion_price_per_token_far"]) == Decimal(
        "0.0004578"
    )
    assert history[-1]["completion_price_per_token_far"] == prices["completion_price_per_token_far"]
    page = (await priced_portal.get(f"/swarm/{MODEL}")).text
    assert "0.0004578 FAR per generated token" in page and "×2.289 the catalogue price" in page
    chart = page.split('<div id="price-history">')[1].split("</div>")[0]
    assert chart.startswith("<svg") and chart.count('stroke-width="2"') == 4 and "<script" not in chart
    listing = {m["model_id"]: m for m in (await priced_portal.get("/api/swarm")).json()["models"]}
    assert listing[MODEL]["prices"] == prices
    assert "0.00002289 / 0.0004578 (×2.289)" in (await priced_portal.get("/swarm")).text


async def test_onboarding_shows_the_premium_on_the_least_served_blocks(priced_portal: httpx.AsyncClient) -> None:
    document = (await priced_portal.get(f"/api/onboarding?model_id={MODEL}")).json()
    assert document["suggested_blocks"]["start_block"] == 2 and document["suggested_premium"] == "1.5"
    page = (await priced_portal.get(f"/onboarding?model_id={MODEL}")).text
    assert "paid ×1.5" in page
    assert json.dumps(document)  # money and premiums as strings, JSON-ready
