import pytest
import torch

from workers.sampling import SamplingError, choose_next_token


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_a_sampling_error_not_a_route_failure(bad: float) -> None:
    logits = torch.tensor([0.1, bad, 2.9])
    with pytest.raises(SamplingError, match="NaN or infinite"):
        choose_next_token(logits, temperature=0.7, top_p=1.0, generator=torch.Generator().manual_seed(1))
