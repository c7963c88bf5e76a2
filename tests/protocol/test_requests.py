"""GenerateRequest: the seed's body is accepted as is, and every bad field is named with its problem."""

from typing import Any

import pytest
from pydantic import ValidationError

from protocol.requests import GenerateRequest, SamplingOptions

SEED_BODY: dict[str, Any] = {
    "prompt": "Explain quantum computing in simple terms:",
    "max_tokens": 512,
    "temperature": 0.7,
    "top_p": 0.9,
    "user_wallet": "0x742d35Cc6634C0532925a3b844Bc454e4438f44e",
    "request_id": "req_abc123",
    "model_id": "meta-llama/Llama-2-7b-chat-hf",
}


def only_error(body: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as caught:
        GenerateRequest.model_validate(body)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["msg"]


def test_the_seed_example_body_is_valid_as_written() -> None:
    request = GenerateRequest.model_validate(SEED_BODY)
    assert request.model_dump(exclude={"provider", *SamplingOptions.model_fields}) == SEED_BODY
    assert request.provider is None  # the seed's body routes as any request did before preferences existed
    assert request.model_dump(include=set(SamplingOptions.model_fields)) == SamplingOptions().model_dump()


def test_only_the_prompt_is_required_and_defaults_are_sane() -> None:
    request = GenerateRequest.model_validate({"prompt": "hi"})
    assert (request.max_tokens, request.temperature, request.top_p) == (256, 0.7, 0.9)
    assert request.request_id is None and request.model_id is None and request.user_wallet is None


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("prompt", "", "at least 1 character"),
        ("prompt", "x" * 32_001, "at most 32000 characters"),
        ("prompt", 42, "valid string"),
        ("max_tokens", 0, "greater than or equal to 1"),
        ("max_tokens", 4097, "less than or equal to 4096"),
        ("max_tokens", 2.5, "valid integer"),
        ("temperature", -0.1, "greater than or equal to 0"),
        ("temperature", 2.01, "less than or equal to 2"),
        ("temperature", float("nan"), "finite number"),
        ("temperature", "0.5", "valid number"),
        ("temperature", False, "valid number"),
        ("top_p", 0, "greater than 0"),
        ("top_p", 1.5, "less than or equal to 1"),
        ("user_wallet", "0x1234", "should match pattern"),
        ("request_id", "has spaces", "should match pattern"),
        ("request_id", "r" * 65, "should match pattern"),
        ("model_id", "../etc/passwd", "should match pattern"),
    ],
)
def test_each_bad_field_is_named_with_its_problem(field: str, value: object, problem: str) -> None:
    loc, msg = only_error({**SEED_BODY, field: value})
    assert loc == (field,)
    assert problem in msg


def test_an_unknown_field_is_rejected_by_name_so_typos_are_not_silently_ignored() -> None:
    loc, msg = only_error({**SEED_BODY, "max_token": 5})
    assert loc == ("max_token",)
    assert "Extra inputs are not permitted" in msg


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", [""]),
        ("stop", ["x" * 129]),
        ("top_logprobs", 6),
        ("logprobs", 1),
        ("seed", 1.5),
        ("frequency_penalty", True),
        ("presence_penalty", 2.5),
        ("top_k", -1),
        ("repetition_penalty", 0),
        ("logit_bias", {"3": 101}),
    ],
)
def test_sampling_controls_are_bounded_and_strictly_typed(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        GenerateRequest.model_validate({"prompt": "hi", field: value})
    assert refused.value.errors()[0]["loc"][0] == field


def test_a_wallet_in_any_letter_case_is_read_as_its_checksummed_address() -> None:
    request = GenerateRequest.model_validate({"prompt": "hi", "user_wallet": SEED_BODY["user_wallet"].lower()})
    assert request.user_wallet == SEED_BODY["user_wallet"]


def test_an_integral_float_is_an_integer_as_json_means_it() -> None:
    assert GenerateRequest.model_validate({"prompt": "hi", "max_tokens": 4.0, "top_k": 2.0}).max_tokens == 4


def test_n_is_a_json_integer_from_1_to_the_ceiling_every_process_agrees_on() -> None:
    from protocol.requests import MAX_CHOICES

    assert GenerateRequest(prompt="x").n == 1 and GenerateRequest(prompt="x", n=2.0).n == 2  # type: ignore[arg-type]
    for bad in (0, MAX_CHOICES + 1, True, "2", 1.5):
        with pytest.raises(ValidationError):
            GenerateRequest(prompt="x", n=bad)  # type: ignore[arg-type]
