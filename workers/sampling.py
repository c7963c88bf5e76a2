"""Choosing the next token from the logits of one step: greedy at (near) temperature 0, else nucleus sampling."""

from typing import Final

import torch

GREEDY_BELOW_TEMPERATURE: Final = 1e-4
"""Temperatures below this are greedy: dividing logits by a tiny temperature overflows float32 to inf, and
sampling from the resulting NaNs would fail every step (the request would run unbilled until no_route)."""


class SamplingError(ValueError):
    """The step's numbers cannot be sampled from (NaN or infinite logits): the request fails, the route is fine."""


def choose_next_token(logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """The next token id from a 1-D tensor of logits over the vocabulary."""
    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):  # -inf is a masked token, and fine
        raise SamplingError("the model returned NaN or infinite logits")
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise SamplingError(f"temperature {temperature:g} makes the probabilities overflow")
    if top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(sorted_ids[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())
