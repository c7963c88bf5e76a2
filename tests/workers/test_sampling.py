import math
from typing import Any

import pytest
import torch

from protocol.requests import SamplingOptions
from workers.sampling import NonFiniteLogits, Sampler, choose_next_token


def test_temperature_zero_is_greedy() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert choose_next_token(logits, temperature=0.0, top_p=0.5, generator=torch.Generator().manual_seed(1)) == 1


def test_top_p_never_samples_outside_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    generator = torch.Generator().manual_seed(0)
    picks = {choose_next_token(logits, temperature=1.0, top_p=0.8, generator=generator) for _ in range(300)}
    assert picks == {0, 1}


def test_a_tiny_top_p_still_keeps_the_most_likely_token() -> None:
    logits = torch.tensor([1.0, 5.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    assert {choose_next_token(logits, temperature=1.5, top_p=0.01, generator=generator) for _ in range(50)} == {1}


def test_a_vanishing_temperature_is_greedy_instead_of_overflowing_to_nan() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    generator = torch.Generator().manual_seed(1)
    assert {choose_next_token(logits, temperature=1e-45, top_p=1.0, generator=generator) for _ in range(20)} == {1}


@pytest.mark.parametrize("temperature", [0.7, 0.0])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_the_servers_numbers_not_the_requests(bad: float, temperature: float) -> None:
    logits = torch.tensor([0.1, bad, 2.9])
    with pytest.raises(NonFiniteLogits, match="NaN or infinite"):
        choose_next_token(logits, temperature=temperature, top_p=1.0, generator=torch.Generator().manual_seed(1))


def test_greedy_takes_the_first_of_equal_maxima_and_a_masked_token_is_fine() -> None:
    logits = torch.tensor([float("-inf"), 2.0, 3.0, 3.0])
    assert choose_next_token(logits, temperature=0.0, top_p=1.0, generator=torch.Generator()) == 2


def _options(**fields: object) -> SamplingOptions:
    return SamplingOptions.model_validate(fields)


def _sampler(options: SamplingOptions, *, temperature: float = 1.0, seed_key: str = "req-1", **kw: Any) -> Sampler:
    return Sampler(
        options,
        temperature=temperature,
        top_p=kw.get("top_p", 1.0),
        seed_key=seed_key,
        prompt_ids=kw.get("prompt_ids", []),
        decode=lambda ids: "".join(f"<{i}>" for i in ids),
    )


def _draw(sampler: Sampler, steps: int, vocab: int = 50) -> list[int]:
    logits = torch.zeros(vocab)
    return [sampler.choose(logits) for _ in range(steps)]


def test_the_same_seed_draws_the_same_tokens_whatever_the_request_id() -> None:
    first = _draw(_sampler(_options(seed=7), seed_key="req-a"), 20)
    assert first == _draw(_sampler(_options(seed=7), seed_key="req-b"), 20)
    assert first != _draw(_sampler(_options(seed=8), seed_key="req-a"), 20)


def test_a_sampler_that_replays_earlier_tokens_continues_as_the_uninterrupted_one() -> None:
    whole = _draw(_sampler(_options(seed=3)), 12)
    resumed = _sampler(_options(seed=3))
    resumed.replay(whole[:5])
    assert _draw(resumed, 7) == whole[5:]


def test_top_k_samples_only_among_the_k_most_likely() -> None:
    sampler = _sampler(_options(top_k=2, seed=1))
    logits = torch.tensor([0.0, 3.0, 2.9, 2.8, 0.1])
    assert {sampler.choose(logits) for _ in range(200)} == {1, 2}


def test_a_presence_penalty_steers_greedy_decoding_away_from_tokens_already_generated() -> None:
    logits = torch.tensor([2.0, 1.5, 1.0])
    plain = _sampler(_options(), temperature=0.0)
    assert [plain.choose(logits) for _ in range(3)] == [0, 0, 0]
    penalised = _sampler(_options(presence_penalty=2.0), temperature=0.0)
    assert [penalised.choose(logits) for _ in range(3)] == [0, 1, 2]


def test_a_frequency_penalty_grows_with_each_occurrence() -> None:
    logits = torch.tensor([2.0, 1.0])
    sampler = _sampler(_options(frequency_penalty=0.6), temperature=0.0)
    assert [sampler.choose(logits) for _ in range(4)] == [0, 0, 1, 0]


def test_a_repetition_penalty_counts_the_prompt_too() -> None:
    logits = torch.tensor([2.0, 1.5])
    sampler = _sampler(_options(repetition_penalty=2.0), temperature=0.0, prompt_ids=[0])
    assert sampler.choose(logits) == 1  # 2.0 / 2 < 1.5


def test_logprobs_come_from_the_models_own_logits_with_the_top_alternatives() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    sampler = _sampler(_options(logprobs=True, top_logprobs=2), temperature=0.0, seed_key="x")
    assert sampler.choose(logits) == 0
    choice = sampler.last
    assert choice is not None and choice.logprob == pytest.approx(math.log(0.5))
    assert [(t.token_id, t.token) for t in choice.top] == [(0, "<0>"), (1, "<1>")]
    assert choice.top[1].logprob == pytest.approx(math.log(0.3))
    assert set(choice.event_fields()) == {"logprob", "top_logprobs"}


def test_without_logprobs_a_choice_adds_nothing_to_the_token_event() -> None:
    sampler = _sampler(_options(), temperature=0.0)
    sampler.choose(torch.tensor([1.0, 0.0]))
    assert sampler.last is not None and sampler.last.event_fields() == {}


def test_a_logit_bias_of_minus_100_bans_a_token_and_ids_outside_the_vocabulary_are_ignored() -> None:
    sampler = _sampler(_options(logit_bias={"0": -100, "99": 5}), temperature=0.0)
    assert sampler.choose(torch.tensor([3.0, 1.0])) == 1


def _extremes(schema: dict[str, Any]) -> list[float]:
    """The most degenerate values a JSON Schema number admits: its bounds (the first float past an exclusive one)."""
    values = [schema[k] for k in ("minimum", "maximum") if k in schema]
    if "exclusiveMinimum" in schema:
        values.append(math.nextafter(schema["exclusiveMinimum"], math.inf))
    if "exclusiveMaximum" in schema:
        values.append(math.nextafter(schema["exclusiveMaximum"], -math.inf))
    return values


def _bounded_options() -> list[tuple[str, float]]:
    """Every (parameter, value) at the edge of what the native API's document admits, read from the schema the
    gateway serves, so a bound loosened there is tested here."""
    from protocol.requests import GenerateRequest

    properties = GenerateRequest.model_json_schema()["properties"]
    cases = [
        (name, value)
        for name in ("temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty")
        for value in _extremes(properties[name])
    ]
    [bias] = properties["logit_bias"]["patternProperties"].values()
    return cases + [("logit_bias", value) for value in _extremes(bias)]


@pytest.mark.parametrize(("name", "value"), _bounded_options())
def test_every_sampling_parameter_at_the_edge_of_what_the_api_admits_still_samples(name: str, value: float) -> None:
    """What the schema admits, the worker can sample with: a value that overflowed after the prefill would fail the
    request with the swarm's work done (5e-324 as repetition_penalty did)."""
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(64, generator=generator) * 30  # a real model's logits span tens; fp16 ones reach 6e4
    logits[3], logits[5] = 6e4, -6e4
    temperature, top_p = 0.7, 1.0
    fields: dict[str, Any] = {}
    if name == "temperature":
        temperature = value
    elif name == "top_p":
        top_p = value
    elif name == "logit_bias":
        fields["logit_bias"] = {str(i): value for i in range(0, 64, 2)}
    else:
        fields[name] = int(value) if name == "top_k" else value
    sampler = _sampler(SamplingOptions(**fields), temperature=temperature, top_p=top_p, prompt_ids=[3, 5, 7, 9])
    for _ in range(8):
        assert 0 <= sampler.choose(logits) < 64
