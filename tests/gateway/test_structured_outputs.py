"""response_format at the gateway: compiled at admission (a schema the engine refuses is a 400 naming where,
before any swarm time), then carried on the job for the worker to enforce."""

from typing import Any

import httpx
import openai
import pytest

from protocol.structured import JsonObjectFormat, JsonSchemaFormat
from protocol.swarm import SwarmSnapshot
from tests.fixtures.gateway import MODEL_ID, IssueKey, SyntheticWorker

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "tags"],
    "additionalProperties": False,
}


def json_schema(schema: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": strict}}


def openai_client(gateway_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0, timeout=10)


async def test_a_response_format_travels_with_the_job(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Who?"}],
            max_tokens=2,
            response_format=json_schema(PERSON),  # type: ignore[arg-type]
        )
        await client.completions.create(
            model=MODEL_ID, prompt="x", max_tokens=1, extra_body={"response_format": {"type": "json_object"}}
        )
        await client.completions.create(
            model=MODEL_ID, prompt="x", max_tokens=1, extra_body={"response_format": {"type": "text"}}
        )
    chat, completion, text = synthetic_worker.jobs
    assert isinstance(chat.response_format, JsonSchemaFormat)
    assert chat.response_format.json_schema.schema_ == PERSON and chat.response_format.json_schema.strict
    assert completion.response_format == JsonObjectFormat(type="json_object")
    assert text.response_format is None


async def test_a_strict_schema_with_a_keyword_the_engine_cannot_enforce_is_a_400_naming_where(
    gateway_url: str, healthy_swarm: SwarmSnapshot, synthetic_worker: SyntheticWorker, issue_key: IssueKey
) -> None:
    schema = {**PERSON, "properties": {**PERSON["properties"], "tags": {"type": "array", "uniqueItems": True}}}
    key, _ = await issue_key()
    async with openai_client(gateway_url, key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=MODEL_ID,
                messages=[{"role": "user", "content": "Who?"}],
                response_format=json_schema(schema),  # type: ignore[arg-type]
            )
        # without strict, the keyword is ignored and the request runs
        await client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Who?"}],
            max_tokens=1,
            response_format=json_schema(schema, strict=False),  # type: ignore[arg-type]
        )
    assert (refused.value.code, refused.value.param) == ("unsupported_schema", "response_format")
    assert "uniqueItems" in refused.value.message and "/properties/tags/uniqueItems" in refused.value.message
    assert len(synthetic_worker.jobs) == 1  # the refused one never reached the queue


@pytest.mark.parametrize(
    ("response_format", "where"),
    [
        (json_schema({"type": "strnig"}), ["response_format", "json_schema", "schema"]),
        ({"type": "yaml"}, ["response_format"]),
        # pydantic names the union's tag, then the field: response_format.json_schema(tag).json_schema.name
        (
            {"type": "json_schema", "json_schema": {"name": "has spaces"}},
            ["response_format", "json_schema", "json_schema", "name"],
        ),
    ],
)
async def test_the_native_route_refuses_a_bad_response_format_in_its_own_shape(
    gateway_url: str, issue_key: IssueKey, response_format: dict[str, Any], where: list[str]
) -> None:
    key, _ = await issue_key()
    async with httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {key}"}) as http:
        response = await http.post("/inference/generate", json={"prompt": "x", "response_format": response_format})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"].startswith("response_format")
    assert [str(part) for part in error["details"][0]["loc"][1 : 1 + len(where)]] == where
