"""Tiny Llama models generated on this machine, so a real Petals swarm can run where no hub download can.

Each model is a randomly initialised `LlamaForCausalLM` (fixed seed) with a byte-level BPE tokenizer trained
here on a fixed corpus that includes multi-byte UTF-8 text, saved in the standard Hugging Face layout
(config.json, model.safetensors, tokenizer files). Nothing downstream treats them specially: servers, clients
and transformers load them by path like any other checkpoint.

Generation is idempotent (`mesh.model_cache`): a model directory carries the fingerprint of the recipe that made
it, and a directory with the current fingerprint is reused as it is. Changing a recipe (or the libraries that
realise it) changes the fingerprint, and the model is regenerated.
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mesh.model_cache import FINGERPRINT_FILE as FINGERPRINT_FILE  # re-exported: tests name it from here
from mesh.model_cache import ensure_model_dir, models_dir
from protocol.catalog import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyModelRecipe:
    """Everything that determines a tiny model's files."""

    name: str
    num_blocks: int
    hidden_size: int = 64
    intermediate_size: int = 128
    num_attention_heads: int = 4
    vocab_size: int = 384
    max_position_embeddings: int = 256
    # Wider than Llama's 0.02, so that greedy decoding of a random model does not collapse onto one token.
    initializer_range: float = 0.2
    seed: int = 0

    @property
    def dht_prefix(self) -> str:
        return self.name


TINY_MODELS: tuple[TinyModelRecipe, ...] = (
    TinyModelRecipe(name="far-tiny-llama-4", num_blocks=4, seed=4),
    TinyModelRecipe(name="far-tiny-llama-6", num_blocks=6, seed=6),
)

CORPUS: tuple[str, ...] = (
    "The mesh streams tokens from many small servers, and every server is paid for the blocks it served.",
    "A request walks through the gateway, the queue, a worker and the swarm, then back as server-sent events.",
    "Petals splits a transformer into spans of blocks; hivemind's DHT tells a client who holds which span.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 $FAR 0.0001 per token.",
    "Café, naïve, façade, Grüße aus Köln, señor, smørrebrød, œuvre, Ångström.",
    "Привет, мир! Как дела? Сеть генерирует токены.",
    "日本語のテキストも少し含めます。東京、大阪、京都。",
    "中文文本：你好，世界。分布式推理。",
    "Ελληνικά: γεια σου κόσμε. العربية: مرحبا بالعالم. हिन्दी: नमस्ते दुनिया।",
    "Emoji survive byte-level BPE: 🚀 🌍 ✨ 🤖 ⚡ — and so do dashes – quotes “like these” and €£¥.",
    "def generate(prompt: str) -> str:\n    return prompt + ' and more'\n",
)
"""The tokenizer's training text; multi-byte characters make half-character decoding a case tests can hit."""

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


class TinyModelError(RuntimeError):
    """A tiny model could not be generated or its directory is unusable."""


def fingerprint(recipe: TinyModelRecipe) -> str:
    """A digest of the recipe, the corpus and the library versions that turn them into files."""
    import tokenizers
    import torch
    import transformers

    material = {
        "recipe": asdict(recipe),
        "corpus": CORPUS,
        "special_tokens": SPECIAL_TOKENS,
        "versions": [torch.__version__, transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def model_path(cache_dir: Path, recipe: TinyModelRecipe) -> Path:
    return models_dir(cache_dir) / recipe.name


TINY_FAMILY = "tiny-llama (random weights)"
TINY_LICENSE = "none (random weights generated locally)"


def spec_for(recipe: TinyModelRecipe, path: Path) -> ModelSpec:
    """The catalogue entry of a generated model, saying what it is: random weights, not a language model."""
    config = json.loads((path / "config.json").read_text())
    return ModelSpec(
        model_id=recipe.name,
        source=str(path),
        dht_prefix=recipe.dht_prefix,
        family=TINY_FAMILY,
        parameters=llama_parameter_count(config),
        context_length=int(config["max_position_embeddings"]),
        license=TINY_LICENSE,
    )


def llama_parameter_count(config: dict[str, Any]) -> int:
    """The weights of a Llama with this config.json: embeddings, the output layer unless tied, every block's
    attention (keys and values per key-value head), MLP and two norms, and the final norm."""
    hidden, layers, vocab = int(config["hidden_size"]), int(config["num_hidden_layers"]), int(config["vocab_size"])
    heads = int(config["num_attention_heads"])
    kv_width = int(config.get("num_key_value_heads") or heads) * (hidden // heads)
    block = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * int(config["intermediate_size"]) + 2 * hidden
    output = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    return vocab * hidden + output + layers * block + hidden


def ensure_tiny_models(cache_dir: Path, recipes: tuple[TinyModelRecipe, ...] = TINY_MODELS) -> tuple[ModelSpec, ...]:
    """Generate each recipe's model under `<cache_dir>/models/<name>` unless it is already there; return specs."""
    return tuple(spec_for(recipe, ensure_tiny_model(cache_dir, recipe)) for recipe in recipes)


def ensure_tiny_model(cache_dir: Path, recipe: TinyModelRecipe) -> Path:
    """The model's directory, generated first when missing or made by another recipe (`mesh.model_cache`)."""
    target = model_path(cache_dir, recipe)

    def write(directory: Path) -> dict[str, object]:
        write_tiny_model(recipe, directory)
        return {}

    if ensure_model_dir(target, fingerprint(recipe), write, {"recipe": asdict(recipe)}):
        logger.info("tiny model generated name=%s blocks=%d path=%s", recipe.name, recipe.num_blocks, target)
    return target


def write_tiny_model(recipe: TinyModelRecipe, directory: Path) -> None:
    """Train the tokenizer and initialise the model of `recipe`, saving both into `directory`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(CORPUS), vocab_size=recipe.vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS.values())
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **SPECIAL_TOKENS)
    tokenizer.model_max_length = recipe.max_position_embeddings
    tokenizer.save_pretrained(directory)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_blocks,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_attention_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        initializer_range=recipe.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        torch_dtype="float32",
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(recipe.seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(directory, safe_serialization=True)
    if not (directory / "model.safetensors").is_file():
        raise TinyModelError(f"{recipe.name}: transformers did not write model.safetensors into {directory}")
