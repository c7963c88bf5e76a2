"""The portal's swarm pages say what each model is, as the catalogue (FAR_MESH_MODELS) says it (#27)."""

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from portal.app import create_app
from portal.settings import PortalSettings
from tests.fixtures.portal import PORTAL_HOST
from tests.portal.helpers import publish_snapshot

SOLD = {
    "model_id": "test/smol",
    "family": "SmolLM2 (Llama architecture)",
    "parameters": 134_515_008,
    "context_length": 8192,
    "license": "Apache-2.0",
}


@pytest.fixture
async def catalogue_portal(portal_settings: PortalSettings, redis: object) -> AsyncIterator[httpx.AsyncClient]:
    """The portal of `portal_client`, selling one model whose entry says what it is."""
    settings = PortalSettings.from_env(
        **portal_settings.model_dump(exclude={"far_mesh_models", "default_model_id"}),
        far_mesh_models=json.dumps([SOLD]),
        default_model_id=SOLD["model_id"],
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{PORTAL_HOST}") as client:
            yield client


async def test_the_swarm_pages_say_family_parameters_context_and_license(
    catalogue_portal: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    await publish_snapshot(redis, "test/smol", 4, {"peer-a": (0, 4)})
    await publish_snapshot(redis, "test/unsold", 4, {"peer-b": (0, 4)})

    listing = {m["model_id"]: m for m in (await catalogue_portal.get("/api/swarm")).json()["models"]}
    one = (await catalogue_portal.get("/api/swarm/test/smol")).json()

    assert SOLD.items() <= listing["test/smol"].items() and SOLD.items() <= one.items()
    assert {k: listing["test/unsold"][k] for k in ("family", "parameters", "context_length", "license")} == {
        "family": None,
        "parameters": None,
        "context_length": None,
        "license": None,
    }
    for path in ("/swarm", "/swarm/test/smol"):
        page = (await catalogue_portal.get(path)).text
        assert all(said in page for said in ("SmolLM2 (Llama architecture)", "134,515,008", "8192", "Apache-2.0"))
