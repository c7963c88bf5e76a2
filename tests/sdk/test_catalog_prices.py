"""The Python SDK reads a model's prompt and completion prices and what the model is, and still reads a gateway that
quotes one price and says nothing of the model."""

from decimal import Decimal

from farlabs.catalog import MeshStatus, Model


def test_a_model_carries_its_prompt_and_completion_prices_as_decimals() -> None:
    item = {
        "model_id": "m",
        "active_nodes": 2,
        "status": "available",
        "price_per_token_far": "0.0003",
        "prompt_price_per_token_far": "0.000000000000000007",
        "completion_price_per_token_far": "0.0003",
    }
    model = Model.from_json(item)
    assert (model.prompt_price_per_token_far, model.completion_price_per_token_far, model.price_per_token_far) == (
        Decimal("0.000000000000000007"),
        Decimal("0.0003"),
        Decimal("0.0003"),
    )


def test_a_gateway_older_than_prompt_prices_reads_as_free_prompts_at_its_one_price() -> None:
    body = {"model_id": "m", "status": "connected", "active_nodes": 1, "price_per_token_far": "0.0001"}
    status = MeshStatus.from_json({**body, "active_sessions": 0, "snapshot_taken_at": None})
    model = Model.from_json({**body, "status": "available"})
    for quoted in (status, model):
        assert (quoted.prompt_price_per_token_far, quoted.completion_price_per_token_far) == (0, Decimal("0.0001"))


def test_a_model_says_what_it_is_and_an_older_gateways_model_says_nothing() -> None:
    body = {"model_id": "m", "status": "available", "active_nodes": 1, "price_per_token_far": "0.0001"}
    facts = {"family": "SmolLM2", "parameters": 134_515_008, "context_length": 8192, "license": "Apache-2.0"}

    described = Model.from_json({**body, **facts})
    older = Model.from_json(body)

    assert (described.family, described.parameters, described.context_length, described.license) == tuple(
        facts.values()
    )
    assert (older.family, older.parameters, older.context_length, older.license) == (None, None, None, None)
