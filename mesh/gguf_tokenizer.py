"""The Hugging Face tokenizer a GGUF file describes in its metadata, rebuilt for transformers 4.34.

A GGUF file carries its tokenizer as arrays (`tokenizer.ggml.tokens`, `.token_type`, `.merges`) plus a few
scalars, not as a tokenizer.json. This module turns those back into a fast tokenizer, for the one family the mesh
converts: GPT-2-style byte-level BPE (`tokenizer.ggml.model` = "gpt2"). Its tokens are already written in the
byte-to-unicode alphabet byte-level BPE uses, so they go into the vocabulary as they are.

What the arrays do not say is how text is split before BPE; the pre-tokenizer name (`tokenizer.ggml.pre`) does.
The names known here split every digit on its own before the GPT-2 split, as the models were trained; any other
name is refused rather than guessed, because a wrong split still produces ids, only ones the model never saw.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CONTROL_TOKEN_TYPE = 3
"""llama.cpp's token type of a control (special) token; 1 is an ordinary one."""
DIGIT_SPLITTING_PRE_TOKENIZERS = frozenset({"smollm"})
"""`tokenizer.ggml.pre` values whose text is split into single digits, then GPT-2's way, before BPE."""


class UnsupportedTokenizer(ValueError):
    """The GGUF's tokenizer is not one this module can rebuild faithfully."""


@dataclass(frozen=True)
class GgufTokenizerSpec:
    """The tokenizer metadata of a GGUF file, read out of it (see `mesh.gguf_checkpoint.read_metadata`)."""

    model: str
    pre: str
    tokens: Sequence[str]
    token_types: Sequence[int]
    merges: Sequence[str]
    bos_token_id: int
    eos_token_id: int
    unknown_token_id: int
    padding_token_id: int | None
    add_bos_token: bool
    chat_template: str | None
    model_max_length: int

    @property
    def special_tokens(self) -> list[str]:
        return [t for t, kind in zip(self.tokens, self.token_types, strict=True) if kind == CONTROL_TOKEN_TYPE]


def build_tokenizer(spec: GgufTokenizerSpec) -> "PreTrainedTokenizerFast":
    """A fast tokenizer equal to the one `spec` describes, with its special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if spec.model != "gpt2":
        raise UnsupportedTokenizer(f"tokenizer model {spec.model!r}: only byte-level BPE ('gpt2') is converted")
    if spec.pre not in DIGIT_SPLITTING_PRE_TOKENIZERS:
        raise UnsupportedTokenizer(
            f"pre-tokenizer {spec.pre!r} is unknown here; known: {sorted(DIGIT_SPLITTING_PRE_TOKENIZERS)}"
        )
    if spec.add_bos_token:
        # The byte-level post-processor below prepends nothing; a model that expects a leading BOS would miss it.
        raise UnsupportedTokenizer("tokenizers that prepend BOS are not converted (add_bos_token is true)")
    if len(spec.tokens) != len(spec.token_types):
        raise UnsupportedTokenizer(f"{len(spec.tokens)} tokens but {len(spec.token_types)} token types")
    vocab = {token: index for index, token in enumerate(spec.tokens)}
    if len(vocab) != len(spec.tokens):
        raise UnsupportedTokenizer("the vocabulary names a token twice")
    merges = [_merge_pair(line) for line in spec.merges]

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    # Already in the vocabulary at their own ids: adding them only stops BPE from splitting them in text.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special_tokens])

    names: dict[str, Any] = {
        "bos_token": spec.tokens[spec.bos_token_id],
        "eos_token": spec.tokens[spec.eos_token_id],
        "unk_token": spec.tokens[spec.unknown_token_id],
    }
    if spec.padding_token_id is not None:
        names["pad_token"] = spec.tokens[spec.padding_token_id]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=spec.model_max_length,
        clean_up_tokenization_spaces=False,
        **names,
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def _merge_pair(line: str) -> tuple[str, str]:
    left, space, right = line.partition(" ")
    if not space or not left or not right or " " in right:
        raise UnsupportedTokenizer(f"merge {line!r} is not two tokens separated by one space")
    return left, right
