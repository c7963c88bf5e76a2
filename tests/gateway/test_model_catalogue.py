"""The model lists say what each model is (family, parameters, context length, license) beside its prices, from
the model's FAR_MESH_MODELS entry; a field its entry does not give is null, never guessed (#27)."""

from typing import Any

import httpx

from devstack.harness.gateway import OTHER_MODEL_FACTS
from tests.fixtures.gateway import MODEL_ID, OTHER_MODEL_ID

UNSAID = dict.fromkeys(OTHER_MODEL_FACTS)


async def test_models_and_v1_models_say_what_each_model_is(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        models = {m["model_id"]: m for m in (await client.get("/models")).json()["models"]}
        openai = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}

    for listed in (models, openai):
        assert {k: listed[OTHER_MODEL_ID][k] for k in OTHER_MODEL_FACTS} == OTHER_MODEL_FACTS
        assert {k: listed[MODEL_ID][k] for k in OTHER_MODEL_FACTS} == UNSAID


async def test_the_api_document_describes_what_the_model_lists_say(gateway_url: str) -> None:
    paths = httpx.get(f"{gateway_url}/openapi.json").json()["paths"]

    def items(path: str, field: str) -> dict[str, Any]:
        schema: dict[str, Any] = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        return schema["properties"][field]["items"]  # type: ignore[no-any-return]

    for listed in (items("/models", "models"), items("/v1/models", "data")):
        assert set(OTHER_MODEL_FACTS) <= set(listed["required"]) and set(OTHER_MODEL_FACTS) <= set(listed["properties"])
