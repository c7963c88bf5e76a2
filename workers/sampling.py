"""Choosing the next token from the logits of one step: greedy at (near) temperature 0, else nucleus sampling,
after the request's penalties, its response_format's grammar and top_k; and the log probabilities a request
may ask for."""

import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch

from protocol.events import TopLogprob
from protocol.requests import SamplingOptions
from workers.constraint import ConstraintError, GrammarConstraint

GREEDY_BELOW_TEMPERATURE: Final = 1e-4
"""Temperatures below this are greedy: dividing logits by a tiny temperature overflows float32 to inf, and
sampling from the resulting NaNs would fail every step (the request would run unbilled until no_route)."""


class SamplingError(ValueError):
    """The step cannot be sampled from: the request fails (its response_format cannot be followed, say)."""


class NonFiniteLogits(SamplingError):
    """The logits hold NaN or +inf. Every setting of a request is bounded and finite, so only the hidden states the
    servers returned can make them so (a hostile server, or a 16-bit one that overflowed): another route may not."""


def choose_next_token(logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """The next token id from a 1-D tensor of logits over the vocabulary."""
    if temperature < GREEDY_BELOW_TEMPERATURE:
        # One reduction rather than three: a NaN anywhere makes the maximum NaN and +inf makes it +inf, so the
        # maximum alone tells a step to refuse (-inf is a masked token, and fine); the index is argmax's, the first
        # of equal maxima. Greedy is the common case, and this runs once per token.
        best, index = torch.max(logits, dim=0)
        if not best.item() < math.inf:
            raise NonFiniteLogits("the model returned NaN or infinite logits")
        return int(index.item())
    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):  # -inf is a masked token, and fine
        raise NonFiniteLogits("the model returned NaN or infinite logits")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # finite logits past 1e34 at once: no honest model's
        raise NonFiniteLogits(f"the model's logits overflow at temperature {temperature:g}")
    if top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        # a top_p below float32's smallest number (5e-324) compares equal to the first token's 0.0: keep it anyway,
        # or nothing is left to draw from and torch raises, which would read as a broken route
        outside[0] = False
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(sorted_ids[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclass(frozen=True)
class Choice:
    """The token a step chose and, when the request asked for them, its log probability and the top alternatives."""

    token_id: int
    logprob: float | None = None
    top: tuple[TopLogprob, ...] = ()

    def event_fields(self) -> dict[str, Any]:
        """The fields a token event carries for this choice: none unless logprobs were asked for."""
        if self.logprob is None:
            return {}
        return {"logprob": self.logprob, "top_logprobs": list(self.top)}


class Sampler:
    """Chooses a request's tokens step after step, applying its penalties, top_k and seed.

    Every token is drawn from a generator seeded by (seed, token index) alone, so the same request with the same
    seed gives the same tokens on the same swarm, including across a failover or a recovering worker. Without a
    seed the request id stands in for it. Choice k > 0 of a request with n choices draws from (seed, k, index), so
    its choices differ while choice 0 is the reply the same request with n = 1 gets. Penalties count the tokens
    generated so far (repetition_penalty also the prompt's), as vLLM does: `choose` records each chosen token, so
    steps must be taken in order.
    """

    def __init__(
        self,
        options: SamplingOptions,
        *,
        temperature: float,
        top_p: float,
        seed_key: str,
        prompt_ids: Sequence[int],
        decode: Callable[[Sequence[int]], str],
        constraint: GrammarConstraint | None = None,
        choice: int = 0,
    ) -> None:
        self._options = options
        self._constraint = constraint
        self._decode = decode
        self._temperature = temperature
        self._top_p = top_p
        self._seed_key = str(options.seed) if options.seed is not None else seed_key
        if choice:
            self._seed_key += f"/{choice}"
        self._seen = set(prompt_ids)
        self._seen_ids: torch.Tensor | None = None
        self._counts: Counter[int] = Counter()
        self._index = 0
        self._generator = torch.Generator()
        self.last: Choice | None = None
        """The latest step's choice; read it before starting the next step."""

    @property
    def grammar_complete(self) -> bool:
        """The response_format's grammar accepts no more tokens (the JSON value is closed): the reply is done."""
        return self._constraint is not None and self._constraint.complete

    def replay(self, token_ids: Sequence[int]) -> None:
        """Account for tokens generated by an earlier run of the request, as if this sampler had chosen them."""
        for token_id in token_ids:
            self._record(token_id)
            self._follow(token_id)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token id from the step's 1-D logits over the vocabulary."""
        options = self._options
        adjusted = self._penalised(logits.float())
        if self._constraint is not None:  # after the penalties and logit_bias: nothing lifts a banned token again
            adjusted = self._constrained(adjusted)
        if options.top_k > 0 and options.top_k < adjusted.numel():
            kth = torch.topk(adjusted, options.top_k).values[-1]
            adjusted = adjusted.masked_fill(adjusted < kth, float("-inf"))
        if self._temperature >= GREEDY_BELOW_TEMPERATURE:  # greedy draws nothing: seeding would be wasted work
            self._generator.manual_seed(zlib.crc32(f"{self._seed_key}:{self._index}".encode()))
        token_id = choose_next_token(
            adjusted, temperature=self._temperature, top_p=self._top_p, generator=self._generator
        )
        self.last = self._choice(logits, token_id) if options.logprobs else Choice(token_id)
        self._record(token_id)
        self._follow(token_id)
        return token_id

    def _constrained(self, logits: torch.Tensor) -> torch.Tensor:
        assert self._constraint is not None
        try:
            return self._constraint.mask(logits)
        except ConstraintError as exc:
            raise SamplingError(f"the response_format cannot be followed: {exc}") from exc

    def _follow(self, token_id: int) -> None:
        if self._constraint is not None:
            try:
                self._constraint.accept(token_id)
            except ConstraintError as exc:
                raise SamplingError(f"the response_format cannot be followed: {exc}") from exc

    def _penalised(self, logits: torch.Tensor) -> torch.Tensor:
        options = self._options
        if options.repetition_penalty != 1.0 and self._seen:
            if self._seen_ids is None or len(self._seen_ids) != len(self._seen):
                self._seen_ids = torch.tensor(sorted(self._seen), dtype=torch.long)
            ids = self._seen_ids[self._seen_ids < logits.numel()]
            picked = logits[ids]
            logits = logits.clone()
            logits[ids] = torch.where(
                picked > 0, picked / options.repetition_penalty, picked * options.repetition_penalty
            )
        if (options.frequency_penalty or options.presence_penalty) and self._counts:
            ids = torch.tensor(list(self._counts), dtype=torch.long)
            counts = torch.tensor([self._counts[i] for i in self._counts], dtype=logits.dtype)
            keep = ids < logits.numel()
            logits = logits.clone()
            logits[ids[keep]] -= counts[keep] * options.frequency_penalty + options.presence_penalty
        if options.logit_bias:
            bias = [(int(i), b) for i, b in options.logit_bias.items() if int(i) < logits.numel()]
            if bias:
                logits = logits.clone()
                logits[torch.tensor([i for i, _ in bias])] += torch.tensor([b for _, b in bias], dtype=logits.dtype)
        return logits

    def _choice(self, logits: torch.Tensor, token_id: int) -> Choice:
        """Log probabilities from the model's own final logits (before temperature and penalties), as OpenAI's."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top: tuple[TopLogprob, ...] = ()
        if self._options.top_logprobs:
            values, ids = torch.topk(logprobs, min(self._options.top_logprobs, logprobs.numel()))
            top = tuple(
                TopLogprob(token=self._decode([int(i)]), token_id=int(i), logprob=float(v))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            )
        return Choice(token_id, float(logprobs[token_id].item()), top)

    def _record(self, token_id: int) -> None:
        self._seen.add(token_id)
        self._counts[token_id] += 1
        self._index += 1
