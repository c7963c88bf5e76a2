"""`assert_english`, which the README snippets' tests rely on, passes the model's sentences and fails on noise:
what a randomly initialised model prints, as byte soup or as word pieces of SmolLM2's vocabulary drawn at random."""

import random

import pytest
from transformers import AutoTokenizer

from protocol.catalog import ModelSpec
from tests.real_text.helpers import assert_english

QUICK_START_REPLY = (
    ", which relies on the manipulation of quantum mechanics to perform calculations. Quantum computing has the"
)
"""SmolLM2's first 20 greedy tokens after "Explain quantum computing" (what the quick starts print, capped)."""


@pytest.mark.parametrize(
    ("reply", "mentions"),
    [(QUICK_START_REPLY, "quantum"), ("The capital of France is Paris.", "Paris")],
)
def test_the_models_sentences_are_english(reply: str, mentions: str) -> None:
    assert_english(reply, mentions=mentions, at_least_words=4)


def test_byte_soup_is_not_english() -> None:
    with pytest.raises(AssertionError):
        assert_english("\ufffdi\ufffd \u203bC\ufffd\u094d{\u02f2 quantum", mentions="quantum", at_least_words=1)


def test_random_word_pieces_of_the_vocabulary_are_not_english(smollm2: ModelSpec) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2.weights_source)
    draw, vocabulary = random.Random(27), tokenizer.vocab_size
    for _ in range(50):
        noise = tokenizer.decode([draw.randrange(vocabulary) for _ in range(16)]) + " quantum"
        with pytest.raises(AssertionError):
            assert_english(noise, mentions="quantum", at_least_words=4)
