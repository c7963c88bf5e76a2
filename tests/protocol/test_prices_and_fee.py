"""A session costs its prompt at the prompt price and its tokens at the completion price; the platform's fee is
taken first, rounded down, and the providers share the rest, so payments + fee + remainder = cost, exactly."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.catalog import ModelCatalog, ModelSpec
from protocol.jobs import GenerateJob
from protocol.money import FAR_QUANTUM, far_sum, platform_fee, session_cost, split_with_fee
from protocol.settings import CommonSettings
from protocol.usage import NodeContribution, UsageRecord

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_session_costs_its_prompt_at_the_prompt_price_and_its_tokens_at_the_completion_price() -> None:
    assert session_cost(1000, 1, Decimal("0.00005"), Decimal("0.0001")) == Decimal("0.0501")
    awkward = session_cost(7, 3, Decimal("0.000000000000000007"), Decimal("33333333333333333333.333333333333333"))
    assert awkward == Decimal("99999999999999999999.999999999999999049")


def test_a_session_that_generated_no_token_does_not_pay_for_its_prompt() -> None:
    assert session_cost(4000, 0, Decimal("0.1"), Decimal("0.1")) == 0


def test_the_fee_is_basis_points_of_the_cost_rounded_down_to_18_decimals() -> None:
    assert platform_fee(Decimal("1"), 500) == Decimal("0.05")
    assert platform_fee(Decimal("0.000000000000000999"), 500) == Decimal("0.000000000000000049")  # 49.95 down
    assert platform_fee(Decimal("0.000000000000000019"), 1) == 0
    assert platform_fee(Decimal("99999999999999999999.999999999999999999"), 10_000) == Decimal(
        "99999999999999999999.999999999999999999"
    )
    with pytest.raises(ValueError, match="basis points"):
        platform_fee(Decimal(1), 10_001)


def test_providers_share_what_the_fee_leaves_by_work_and_the_platform_keeps_the_rounding() -> None:
    payments, fee, remainder = split_with_fee(Decimal("1"), {"a": 1, "b": 1, "c": 1}, 250)
    assert fee == Decimal("0.025")
    assert set(payments.values()) == {Decimal("0.325")}
    assert remainder == 0
    payments, fee, remainder = split_with_fee(Decimal("0.000000000000000101"), {"a": 1, "b": 2}, 333)
    assert (fee, payments, remainder) == (
        Decimal("0.000000000000000003"),
        {"a": Decimal("0.000000000000000032"), "b": Decimal("0.000000000000000065")},
        Decimal("0.000000000000000001"),
    )


@given(
    cost=st.decimals(min_value=0, max_value=Decimal(10) ** 19, places=18, allow_nan=False),
    fee_bps=st.integers(min_value=0, max_value=10_000),
    work=st.dictionaries(st.text(min_size=1, max_size=8), st.integers(min_value=0, max_value=10**12), max_size=12),
)
def test_payments_plus_fee_plus_remainder_equal_the_cost_exactly(
    cost: Decimal, fee_bps: int, work: dict[str, int]
) -> None:
    payments, fee, remainder = split_with_fee(cost, work, fee_bps)
    assert far_sum([*payments.values(), fee, remainder]) == cost
    with localcontext(prec=100):  # the test's own arithmetic, exact
        exact_fee = cost * fee_bps / Decimal(10_000)
    assert 0 <= exact_fee - fee < FAR_QUANTUM
    assert 0 <= remainder < FAR_QUANTUM * max(len(work), 1) or sum(work.values()) == 0
    assert all(p >= 0 and int(p.as_tuple().exponent) >= -18 for p in payments.values())


def record(**changes: Any) -> UsageRecord:
    """A session of 1,000 prompt tokens and 3 generated, at 0.00005 / 0.0001 FAR, with a 5% fee."""
    fields: dict[str, Any] = {
        "request_id": "req_priced",
        "model_id": "tiny",
        "status": "completed",
        "finish_reason": "length",
        "prompt_tokens": 1000,
        "tokens_generated": 3,
        "price_per_token_far": Decimal("0.0001"),
        "prompt_price_per_token_far": Decimal("0.00005"),
        "total_cost_far": Decimal("0.0503"),
        "platform_fee_bps": 500,
        "platform_fee_far": Decimal("0.002515"),
        "platform_remainder_far": Decimal("0.000000000000000001"),
        "started_at": START,
        "finished_at": START + timedelta(seconds=1),
        "worker_id": "w1",
        "contributions": tuple(
            NodeContribution(
                node_id=peer,
                blocks_served=2,
                tokens_contributed=1003,
                work_units=2006,
                payment_far=Decimal("0.015928333333333333"),
            )
            for peer in ("peerA", "peerB", "peerC")
        ),
    }
    return UsageRecord(**(fields | changes))


def test_a_record_with_both_prices_and_a_fee_balances_and_round_trips_through_the_stream() -> None:
    priced = record()
    assert UsageRecord.from_stream_fields(priced.to_stream_fields()) == priced


def test_a_record_whose_fee_is_not_its_basis_points_of_the_cost_is_refused() -> None:
    with pytest.raises(ValidationError, match="platform_fee_far"):
        record(platform_fee_far=Decimal("0.002516"), platform_remainder_far=Decimal(0))


def test_a_record_that_leaves_the_prompt_unbilled_is_refused() -> None:
    with pytest.raises(ValidationError, match="prompt price"):
        record(total_cost_far=Decimal("0.0003"))


def test_a_record_without_prompt_price_or_fee_leaves_them_out_so_an_older_consumer_still_parses_it() -> None:
    free_prompt = record(
        prompt_price_per_token_far=Decimal(0),
        total_cost_far=Decimal("0.0003"),
        platform_fee_bps=0,
        platform_fee_far=Decimal(0),
        platform_remainder_far=Decimal(0),
        contributions=(
            NodeContribution(
                node_id="a", blocks_served=1, tokens_contributed=3, work_units=3, payment_far=Decimal("0.0003")
            ),
        ),
    )
    written = json.loads(free_prompt.to_stream_fields()["record"])
    assert not {"prompt_price_per_token_far", "platform_fee_bps", "platform_fee_far"} & set(written)


def test_each_model_has_a_prompt_and_a_completion_price_and_the_older_name_still_sets_the_completion_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRICE_PER_TOKEN_FAR", "0.0002")
    monkeypatch.setenv("PROMPT_PRICE_PER_TOKEN_FAR", "0.00001")
    monkeypatch.setenv("DEFAULT_MODEL_ID", "plain")
    models = [
        {"model_id": "plain"},
        {"model_id": "old", "price_per_token_far": "0.5"},
        {"model_id": "new", "prompt_price_per_token_far": "0.1", "completion_price_per_token_far": "0.3"},
    ]
    monkeypatch.setenv("FAR_MESH_MODELS", json.dumps(models))
    catalog = CommonSettings.from_env().catalog
    quotes = {spec.model_id: catalog.quote(spec) for spec in catalog.models}
    assert quotes == {
        "plain": {
            "price_per_token_far": "0.0002",
            "prompt_price_per_token_far": "0.00001",
            "completion_price_per_token_far": "0.0002",
        },
        "old": {
            "price_per_token_far": "0.5",
            "prompt_price_per_token_far": "0.00001",
            "completion_price_per_token_far": "0.5",
        },
        "new": {
            "price_per_token_far": "0.3",
            "prompt_price_per_token_far": "0.1",
            "completion_price_per_token_far": "0.3",
        },
    }


def test_prompts_are_free_unless_a_prompt_price_is_set() -> None:
    catalog = ModelCatalog(models=(ModelSpec(model_id="m"),), default_model_id="m", default_price_far=Decimal("0.0001"))
    assert catalog.prompt_price_of(catalog.models[0]) == 0


def test_a_model_entry_naming_two_different_completion_prices_is_refused() -> None:
    with pytest.raises(ValidationError, match="same price"):
        ModelSpec(model_id="m", price_per_token_far=Decimal("0.1"), completion_price_per_token_far=Decimal("0.2"))


def test_a_job_without_prompt_price_or_fee_leaves_them_out_of_its_payload_so_an_older_worker_still_runs_it() -> None:
    fields: dict[str, Any] = {
        "request_id": "req_job",
        "model_id": "m",
        "prompt": "hi",
        "max_tokens": 4,
        "temperature": 0.0,
        "top_p": 1.0,
        "price_per_token_far": Decimal("0.0001"),
        "enqueued_at": 0.0,
    }
    assert not {"prompt_price_per_token_far", "platform_fee_bps"} & set(GenerateJob(**fields).payload())
    priced = GenerateJob(**fields, prompt_price_per_token_far=Decimal("0.00002"), platform_fee_bps=100)
    assert GenerateJob.model_validate(priced.payload()) == priced
    assert priced.cost_far(10, 2) == Decimal("0.0004")
    assert priced.cost_far(10, 0) == 0
