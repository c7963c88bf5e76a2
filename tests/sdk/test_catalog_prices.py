"""The Python SDK reads a model's prompt and completion prices, and still reads a gateway that quotes one price."""

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
