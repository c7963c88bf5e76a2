"""Structured outputs in the worker: the grammar of a job's `response_format`, enforced on every step's logits.

The swarm returns logits and the worker samples every token itself, so a constraint needs no server's
cooperation: before each choice, the tokens the grammar cannot accept next are set to -inf; after it, the
engine's matcher is advanced with the chosen token. The model therefore can only write text the grammar
accepts, and once the grammar is complete (the JSON value closed) the generation ends. Nothing reaches the
swarm's spans: the constraint acts on sampling alone, so spot checks verify what they always verified, and
every constrained token is billed as any other.
"""

import sys
import threading
from typing import Any

import numpy as np
import torch
from llguidance import LLMatcher, LLTokenizer

from protocol.jobs import GenerateJob
from protocol.structured import PARSER_LIMITS, JsonObjectFormat, JsonSchemaFormat, grammar_of
from protocol.tools import tool_grammar

_tokenizers: dict[int, LLTokenizer] = {}
_tokenizers_lock = threading.Lock()


if sys.byteorder != "little":  # the mask's bits are read as bytes (see GrammarConstraint.mask)
    raise ImportError("workers.constraint reads llguidance's token mask as little-endian bytes")


class ConstraintError(ValueError):
    """The engine is in an error state, or refused the token chosen (the step's logits left nothing allowed)."""


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


def is_free_text(job: GenerateJob) -> bool:
    """True when the job's reply follows no grammar (`job_grammar` is None), told without compiling one: a free
    text run then skips the trip to the model's pool that building a constraint takes."""
    return not (job.tool_use is not None and job.tool_use.active) and not isinstance(
        job.response_format, JsonObjectFormat | JsonSchemaFormat
    )


def job_grammar(job: GenerateJob) -> str | None:
    """The grammar the job's reply must follow: its tools' when it may call one, else its response_format's;
    None for free text. Raises `protocol.structured.SchemaRefused` for one that cannot be compiled."""
    if job.tool_use is not None and job.tool_use.active:
        return tool_grammar(job.tool_use)
    if isinstance(job.response_format, JsonObjectFormat | JsonSchemaFormat):
        return grammar_of(job.response_format)
    return None


class GrammarConstraint:
    """One request's grammar: masks each step's logits and follows the tokens chosen.

    Steps must be taken in order, as the sampler's: `mask` the step's logits, choose among them, `accept` the
    choice. A recovering run `accept`s the tokens already on the stream first, as the sampler replays them.
    """

    def __init__(self, tokenizer: LLTokenizer, grammar: str) -> None:
        self._matcher = LLMatcher(tokenizer, grammar, limits=PARSER_LIMITS)
        if self._matcher.is_error():  # the grammar was checked without the tokenizer: a surprise, but say what
            raise ConstraintError(self._matcher.get_error())
        self._vocab_size = tokenizer.vocab_size
        self._words = np.zeros((self._vocab_size + 31) // 32, dtype=np.uint32)

    @property
    def complete(self) -> bool:
        """The grammar accepts nothing more (the JSON value is closed): the generation ends here."""
        return self._matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (1-D, float) with every token the grammar cannot accept next set to -inf."""
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if self._matcher.is_error():
            raise ConstraintError(self._matcher.get_error())
        # bit i of word w is token 32w + i: on a little-endian machine, bit j of byte k is token 8k + j
        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self._vocab_size].view(np.bool_)
        n = logits.numel()
        if allowed.size < n:  # logits padded past the tokenizer: those ids are no text
            allowed = np.concatenate([allowed, np.zeros(n - allowed.size, dtype=np.bool_)])
        return logits.masked_fill(torch.from_numpy(~allowed[:n]), float("-inf"))

    def accept(self, token_id: int) -> None:
        """Advance the grammar past the chosen token."""
        if not self._matcher.consume_token(token_id):
            raise ConstraintError(
                f"the response_format's grammar refused token {token_id}: {self._matcher.get_error()}"
            )
