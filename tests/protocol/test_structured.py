import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.jobs import GenerateJob
from protocol.requests import GenerateRequest
from protocol.structured import (
    MAX_SCHEMA_BYTES,
    JsonObjectFormat,
    JsonSchemaFormat,
    SchemaRefused,
    grammar_of,
)


def schema_format(schema: dict[str, Any], *, strict: bool | None = True) -> JsonSchemaFormat:
    return JsonSchemaFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}
    )


def job(**fields: Any) -> GenerateJob:
    return GenerateJob(
        request_id="req-1",
        model_id="far-tiny-llama-4",
        prompt="x",
        max_tokens=8,
        temperature=0.0,
        top_p=1.0,
        price_per_token_far=Decimal("0.001"),
        enqueued_at=0.0,
        **fields,
    )


def test_json_object_and_a_plain_schema_compile() -> None:
    assert grammar_of(JsonObjectFormat(type="json_object"))
    assert grammar_of(schema_format({"type": "object", "properties": {"a": {"type": "integer"}}}))


def test_strict_refuses_a_keyword_the_engine_cannot_enforce_and_says_where_it_is() -> None:
    schema = {"type": "object", "properties": {"not": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(SchemaRefused) as refused:
        grammar_of(schema_format(schema))
    assert "uniqueItems" in refused.value.reason and refused.value.where == "/properties/not/uniqueItems"


def test_without_strict_such_a_keyword_is_ignored() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert grammar_of(schema_format(schema, strict=None))
    assert grammar_of(schema_format(schema, strict=False))


@pytest.mark.parametrize(
    "schema",
    [{"type": "strnig"}, {"type": "string", "pattern": "[a-"}, {"$ref": "#/$defs/missing"}, {"anyOf": []}],
)
def test_a_schema_that_is_wrong_is_refused_strict_or_not(schema: dict[str, Any]) -> None:
    for strict in (True, False):
        with pytest.raises(SchemaRefused):
            grammar_of(schema_format(schema, strict=strict))


def test_a_schema_over_the_size_cap_is_refused_before_compiling() -> None:
    schema = {"enum": ["x" * 1000] * (MAX_SCHEMA_BYTES // 1000 + 1)}
    with pytest.raises(SchemaRefused, match="bytes"):
        grammar_of(schema_format(schema))


def test_text_is_no_constraint_and_a_name_follows_openai_rules() -> None:
    assert GenerateRequest(prompt="x", response_format={"type": "text"}).response_format is None  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        schema_format({}).model_validate({"type": "json_schema", "json_schema": {"name": "a b"}})
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="x", response_format={"type": "yaml"})  # type: ignore[arg-type]


def test_the_job_carries_the_schema_under_its_openai_name_and_leaves_it_out_when_unset() -> None:
    assert "response_format" not in job().payload()
    constrained = job(response_format=schema_format({"type": "object"}))
    payload = constrained.payload()
    assert payload["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert GenerateJob.model_validate(json.loads(json.dumps(payload))) == constrained
