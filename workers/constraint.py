"""Structured outputs in the worker: the grammar of a job's `response_format`, enforced on every step's logits.

The swarm returns logits and the worker samples every token itself, so a constraint needs no server's
cooperation: before each choice, the tokens the grammar cannot accept next are set to -inf; after it, the
engine's matcher is advanced with the chosen token. The model therefore can only write text the grammar
accepts, and once the grammar is complete (the JSON value closed) the generation ends. Nothing reaches the
swarm's spans: the constraint acts on sampling alone, so spot checks verify what they always verified, and
every constrained token is billed as any other.
"""

import threading
from typing import Any, Final

import torch
from llguidance import LLMatcher, LLTokenizer

from protocol.structured import PARSER_LIMITS, JsonObjectFormat, JsonSchemaFormat, grammar_of

_BITS: Final = torch.arange(32, dtype=torch.int32)
_tokenizers: dict[int, LLTokenizer] = {}
_tokenizers_lock = threading.Lock()


class ConstraintError(ValueError):
    """The grammar and the step's logits leave nothing to choose, or the matcher refused a token."""


def grammar_tokenizer(tokenizer: Any, *, vocab_size: int, eos_token_ids: frozenset[int]) -> LLTokenizer:
    """llguidance's view of a Hugging Face fast tokenizer, built once per tokenizer (about a second for a 49k
    vocabulary: every token's bytes are indexed), sized to the model's logits, which may be padded past it."""
    with _tokenizers_lock:
        key = id(tokenizer)
        if key not in _tokenizers:
            _tokenizers[key] = LLTokenizer(
                tokenizer.backend_tokenizer.to_str(),
                n_vocab=max(vocab_size, len(tokenizer)),
                eos_token=sorted(eos_token_ids) or None,
            )
        return _tokenizers[key]


class GrammarConstraint:
    """One request's grammar: masks each step's logits and follows the tokens chosen.

    Steps must be taken in order, as the sampler's: `mask` the step's logits, choose among them, `accept` the
    choice. A recovering run `accept`s the tokens already on the stream first, as the sampler replays them.
    """

    def __init__(self, tokenizer: LLTokenizer, response_format: JsonObjectFormat | JsonSchemaFormat) -> None:
        self._matcher = LLMatcher(tokenizer, grammar_of(response_format), limits=PARSER_LIMITS)
        if self._matcher.is_error():  # grammar_of compiled it without the tokenizer: a surprise, but say what
            raise ConstraintError(self._matcher.get_error())
        self._vocab_size = tokenizer.vocab_size
        self._words = torch.zeros((self._vocab_size + 31) // 32, dtype=torch.int32)

    @property
    def complete(self) -> bool:
        """The grammar accepts nothing more (the JSON value is closed): the generation ends here."""
        return self._matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (1-D, float) with every token the grammar cannot accept next set to -inf."""
        self._matcher.unsafe_compute_mask_ptr(self._words.data_ptr(), self._words.numel() * 4)
        if self._matcher.is_error():
            raise ConstraintError(self._matcher.get_error())
        allowed = ((self._words.unsqueeze(1) >> _BITS) & 1).flatten()[: self._vocab_size].bool()
        n = logits.numel()
        if allowed.numel() < n:  # logits padded past the tokenizer: those ids are no text
            allowed = torch.cat([allowed, torch.zeros(n - allowed.numel(), dtype=torch.bool)])
        masked = logits.masked_fill(~allowed[:n], float("-inf"))
        if not bool(torch.isfinite(masked).any()):
            raise ConstraintError("no token the response_format allows has a finite logit")
        return masked

    def accept(self, token_id: int) -> None:
        """Advance the grammar past the chosen token."""
        if not self._matcher.consume_token(token_id):
            raise ConstraintError(
                f"the response_format's grammar refused token {token_id}: {self._matcher.get_error()}"
            )
