"""Tiny models: deterministic, reusable, and loadable as ordinary Hugging Face checkpoints."""

import filecmp
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mesh.tiny_models import (
    FINGERPRINT_FILE,
    TINY_MODELS,
    TinyModelRecipe,
    ensure_tiny_model,
    fingerprint,
    write_tiny_model,
)
from protocol.catalog import ModelSpec

SMALL = TinyModelRecipe(name="far-test-llama-2", num_blocks=2, seed=11)


def test_the_same_recipe_writes_byte_identical_files(tmp_path: Path) -> None:
    write_tiny_model(SMALL, tmp_path / "a")
    write_tiny_model(SMALL, tmp_path / "b")

    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert (mismatch, errors) == ([], [])


def test_a_model_with_the_current_fingerprint_is_reused_not_regenerated(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path, SMALL)
    written = (path / "model.safetensors").stat().st_mtime_ns

    assert ensure_tiny_model(tmp_path, SMALL) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == written


def test_a_model_made_by_another_recipe_is_regenerated(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path, SMALL)
    (path / FINGERPRINT_FILE).write_text('{"fingerprint": "stale"}')

    ensure_tiny_model(tmp_path, SMALL)

    assert fingerprint(SMALL) in (path / FINGERPRINT_FILE).read_text()


def test_recipes_differ_in_name_and_block_count() -> None:
    assert len({r.name for r in TINY_MODELS}) == len({r.num_blocks for r in TINY_MODELS}) == len(TINY_MODELS) >= 2


def test_specs_point_at_the_generated_directories(tiny_models: tuple[ModelSpec, ...]) -> None:
    for spec, recipe in zip(tiny_models, TINY_MODELS, strict=True):
        assert spec.model_id == recipe.name and spec.dht_prefix == recipe.dht_prefix
        assert spec.source is not None and (Path(spec.source) / "config.json").is_file()


@pytest.mark.parametrize("text", ["naïve café 🚀", "Привет, мир", "東京 and 中文"])
def test_the_tokenizer_round_trips_multibyte_text_and_has_an_eos(tiny_models: tuple[ModelSpec, ...], text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[0].source)

    assert tokenizer.eos_token == "</s>" and tokenizer.eos_token_id is not None
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_specs_say_the_weights_are_random_and_count_them(tiny_models: tuple[ModelSpec, ...]) -> None:
    import math

    from safetensors import safe_open

    for spec in tiny_models:
        assert spec.family == "tiny-llama (random weights)" and spec.license and "random" in spec.license
        assert spec.source is not None and spec.context_length == 256
        with safe_open(str(Path(spec.source) / "model.safetensors"), "np") as weights:
            assert spec.parameters == sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
