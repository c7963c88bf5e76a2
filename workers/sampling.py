"""Choosing the next token from the logits of one step: greedy at temperature 0, else nucleus sampling."""

import torch


def choose_next_token(logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """The next token id from a 1-D tensor of logits over the vocabulary."""
    if temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(sorted_ids[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())
